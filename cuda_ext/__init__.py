"""Tile-based 3D Gaussian splatting kernels: projection, rasterization and spherical harmonics.

One math core (`csrc/core.h`, `__host__ __device__`) compiled twice: a C++ CPU driver parallel over
tiles, and a CUDA driver built when a CUDA torch is present. `_torch_impl.py` holds the readable
PyTorch twin of every op (the test oracle, and the fallback when nothing is compiled).
Conventions (OpenCV cameras, pixel centres at +0.5, conic layout) are in cuda_ext/README.md and
../shared/design/raster.md.

    from cuda_ext import project_gaussians, rasterize_to_pixels, rasterize, spherical_harmonics

`backend`: "auto" (compiled kernels for the tensors' device, else the twin with one warning),
"cuda", "cpu", "torch" (the twin), "gsplat" (gsplat's CUDA kernels, optional dependency).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from cuda_ext import _torch_impl
from cuda_ext._backend import Backend, available_backends, replay, resolve
from cuda_ext._torch_impl import Projection

__all__ = [
    "Backend",
    "Projection",
    "RasterOutput",
    "available_backends",
    "default_tile_size",
    "project_gaussians",
    "rasterize",
    "rasterize_to_pixels",
    "replay",
    "spherical_harmonics",
]


class RasterOutput(NamedTuple):
    """Output of `rasterize`."""

    image: Tensor  # [B, H, W, C] composited colour/features (+ T * background)
    alpha: Tensor  # [B, H, W, 1] accumulated opacity 1 - T_final
    depth: Tensor | None  # [B, H, W, 1] expected depth sum(w z) / max(alpha, 1e-10), or None
    means2d: Tensor  # [B, N, 2] autograd intermediate: call means2d.retain_grad() for densification stats
    radii: Tensor  # [B, N, 2] int32, 0 = culled


def default_tile_size(backend: str) -> int:
    """Tile side in pixels when a caller gives none: 16 on the GPU (gsplat's and the CUDA driver's block of 16x16
    threads) and in the twin, 32 in the C++ CPU driver. The image does not depend on it (each pixel composites
    the same depth-sorted Gaussians, tests/test_raster_twin.py); on the CPU a tile is one task whose Gaussians
    are walked row by row, and 32-pixel tiles cut the per-tile and per-row work: the head crop of a 512x512
    frame (13.4k Gaussians, 420x465 px, 1 thread) renders in 62 ms against 76 ms with 16-pixel tiles. 32 is
    also the drivers' upper bound (a CUDA block holds at most 32x32 threads)."""
    return 32 if backend == "cpu" else 16


def project_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] (w, x, y, z), normalised inside; |q| -> 0 gives the identity
    scales: Tensor,  # [N, 3] activated (> 0)
    viewmats: Tensor,  # [B, 4, 4] world -> camera, OpenCV (x right, y down, +z forward)
    Ks: Tensor,  # [B, 3, 3]
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
    backend: Backend = "auto",
) -> Projection:
    """Project 3D Gaussians to screen-space 2D Gaussians (EWA splatting with a clamped Jacobian).

    Returns Projection(means2d [B,N,2] pixels, conics [B,N,3] (Q00,Q01,Q11), depths [B,N] camera z,
    radii [B,N,2] int32, 0 = culled). Culled Gaussians (z outside [near, far], degenerate, or box
    off-image) have zero means2d/conics and zero gradients. Differentiable w.r.t. means, quats, scales.
    """
    which = resolve(backend, means.device, "project_gaussians")
    if which in ("cpu", "cuda"):
        from cuda_ext import _wrapper

        return _wrapper.project_gaussians(means, quats, scales, viewmats, Ks, width, height, near, far, eps2d)
    if which == "gsplat":
        from cuda_ext import _gsplat

        return _gsplat.project_gaussians(means, quats, scales, viewmats, Ks, width, height, near, far, eps2d)
    return _torch_impl._project_gaussians(means, quats, scales, viewmats, Ks, width, height, near, far, eps2d)


def rasterize_to_pixels(
    means2d: Tensor,  # [B, N, 2]
    conics: Tensor,  # [B, N, 3]
    colors: Tensor,  # [B, N, C], any C >= 1
    opacities: Tensor,  # [B, N] or [N], activated (0..1)
    depths: Tensor,  # [B, N] sort key
    radii: Tensor,  # [B, N, 2] int32, 0 = culled
    width: int,
    height: int,
    tile_size: int | None = None,  # None: default_tile_size(which backend runs)
    background: Tensor | None = None,  # [B, C] or [C]
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of depth-sorted 2D Gaussians per tile.

    alpha_i = min(0.99, o_i exp(-sigma_i)); contributions with alpha < 1/255 are skipped; a pixel stops
    before the Gaussian that would take its transmittance below 1e-4. Ties in depth resolve by index.
    Returns (image [B,H,W,C] = sum w_i c_i + T bg, alpha [B,H,W,1] = 1 - T). Differentiable w.r.t.
    means2d, conics, colors, opacities and background.
    """
    B, N, C = colors.shape
    if opacities.dim() == 1:
        opacities = opacities[None].expand(B, N)
    if background is not None and background.dim() == 1:
        background = background[None].expand(B, C)
    which = resolve(backend, means2d.device, "rasterize_to_pixels")
    tile_size = default_tile_size(which) if tile_size is None else int(tile_size)
    if which in ("cpu", "cuda"):
        from cuda_ext import _wrapper

        return _wrapper.rasterize_to_pixels(
            means2d, conics, colors, opacities, depths, radii, width, height, tile_size, background
        )
    if which == "gsplat":
        from cuda_ext import _gsplat

        return _gsplat.rasterize_to_pixels(
            means2d, conics, colors, opacities, depths, radii, width, height, tile_size, background
        )
    return _torch_impl._rasterize_to_pixels(
        means2d, conics, colors, opacities, depths, radii, width, height, tile_size, background
    )


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, C] or [B, N, C]
    viewmats: Tensor,  # [B, 4, 4]
    Ks: Tensor,  # [B, 3, 3]
    width: int,
    height: int,
    background: Tensor | None = None,  # [B, C] or [C]
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
    tile_size: int | None = None,
    render_depth: bool = True,
    backend: Backend = "auto",
) -> RasterOutput:
    """Project + rasterize in one call; optionally renders expected depth as an extra channel.

    The depth channel is composited with the colours (one pass), so it shares their weights w_i:
    depth = sum w_i z_i / max(alpha, 1e-10). `means2d` in the output is the projection's tensor,
    so `out.means2d.retain_grad()` before backward gives the screen-space gradient for densification.
    """
    B = viewmats.shape[0]
    proj = project_gaussians(means, quats, scales, viewmats, Ks, width, height, near, far, eps2d, backend)
    if colors.dim() == 2:
        colors = colors[None].expand(B, -1, -1)
    C = colors.shape[-1]
    feats = colors
    if render_depth:
        feats = torch.cat([colors, proj.depths[..., None].to(colors.dtype)], -1)  # [B, N, C+1]
    bg = background
    if bg is not None:
        if bg.dim() == 1:
            bg = bg[None].expand(B, C)
        if render_depth:
            bg = torch.cat([bg, torch.zeros_like(bg[:, :1])], -1)  # depth has no background
    img, alpha = rasterize_to_pixels(
        proj.means2d, proj.conics, feats, opacities, proj.depths, proj.radii, width, height, tile_size, bg, backend
    )
    depth = None
    if render_depth:
        depth = img[..., C:] / alpha.clamp_min(_torch_impl.DEPTH_ALPHA_EPS)
        img = img[..., :C]
    return RasterOutput(img, alpha, depth, proj.means2d, proj.radii)


def spherical_harmonics(
    degree: int,
    dirs: Tensor,  # [..., 3], need not be normalised
    coeffs: Tensor,  # [..., K, C], K >= (degree + 1)^2
    backend: Backend = "auto",
) -> Tensor:
    """Evaluate real SH of `degree` (0..3) along `dirs` -> [..., C].

    Returns the raw sum over bases: no +0.5 offset and no clamp (3DGS applies max(x + 0.5, 0) after
    this; do it in the caller so the activation stays visible there). Differentiable w.r.t. coeffs
    and dirs.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"cuda_ext.spherical_harmonics: degree must be 0..3, got {degree}")
    if coeffs.shape[-2] < (degree + 1) ** 2:
        raise ValueError(
            f"cuda_ext.spherical_harmonics: degree {degree} needs {(degree + 1) ** 2} coefficients, "
            f"got coeffs of shape {tuple(coeffs.shape)}"
        )
    which = resolve(backend, coeffs.device, "spherical_harmonics")
    if which in ("cpu", "cuda"):
        from cuda_ext import _wrapper

        return _wrapper.spherical_harmonics(degree, dirs, coeffs)
    return _torch_impl._spherical_harmonics(degree, dirs, coeffs)
