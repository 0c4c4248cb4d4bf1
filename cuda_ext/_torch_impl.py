"""Readable PyTorch twins of every `cuda_ext` op: the oracle for the C++/CUDA drivers.

Each function here mirrors the public op of the same name without the leading underscore
(`_project_gaussians` <-> `cuda_ext.project_gaussians`, ...). They are written for clarity, are
differentiable through plain autograd (float32 or float64) and make exactly the same decisions as
the compiled drivers:

* projection: EWA splatting (Zwicker et al. 2002) as used by 3DGS (Kerbl et al. 2023,
  https://arxiv.org/abs/2308.04079) with gsplat's asymmetric Jacobian clamp and `eps2d` low-pass;
  ../shared/design/raster.md sections 1.1-1.9.
* rasterization: per-tile lists sorted by (depth, index), front-to-back compositing with alpha clamp
  0.99, skip alpha < 1/255, stop when the transmittance would drop below 1e-4 (raster.md section 3).
* spherical harmonics up to degree 3 with the INRIA constants (raster.md section 5).

Masks (culling, skips, termination) are non-differentiable; every value that can be undefined for a
culled Gaussian (division by z, 1/det) is computed from a "safe" substitute so that gradients of
culled Gaussians are exactly zero and never NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

# Shared constants: the C++ core (csrc/core.h) uses the same numbers.
ALPHA_MAX = 0.99  # alpha clamp; with T_MIN gives 1/(1-alpha) <= 100 in the backward
ALPHA_MIN = 1.0 / 255.0  # contributions below this are skipped
T_MIN = 1e-4  # stop when the transmittance would drop below this
GAUSSIAN_EXTENT = 3.33  # box half-width in sigmas; sqrt(2 ln 255) = 3.329 so the box holds every alpha >= 1/255
CLAMP_FOV_MARGIN = 0.3  # Jacobian clamp margin as a fraction of tan(fov/2) (gsplat persp_proj)
QUAT_NORM2_MIN = 1e-24  # |q|^2 floor: a zero quaternion becomes the identity rotation, no NaN
DIR_NORM2_MIN = 1e-24  # same guard for SH directions
DEPTH_ALPHA_EPS = 1e-10  # expected depth = sum w z / max(alpha, eps)

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


class Projection(NamedTuple):
    """Output of `project_gaussians` (all per camera b and Gaussian n)."""

    means2d: Tensor  # [B, N, 2] pixel coordinates; pixel (i, j) has its centre at (j + 0.5, i + 0.5)
    conics: Tensor  # [B, N, 3] inverse 2D covariance (Q00, Q01, Q11)
    depths: Tensor  # [B, N] camera-space z
    radii: Tensor  # [B, N, 2] int32 half-widths of the pixel box in x and y; 0 = culled


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices from (w, x, y, z) quaternions, normalised here; |q| -> 0 gives the identity.

    quats: [..., 4] -> [..., 3, 3]
    """
    q2 = (quats * quats).sum(-1, keepdim=True)  # [..., 1]
    q = quats * torch.rsqrt(q2.clamp_min(QUAT_NORM2_MIN))  # [..., 4]
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, -1).reshape(q.shape[:-1] + (3, 3))


def _project_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    viewmats: Tensor,  # [B, 4, 4]
    Ks: Tensor,  # [B, 3, 3]
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
) -> Projection:
    """Twin of `cuda_ext.project_gaussians`: world-space 3D Gaussians -> 2D screen-space Gaussians."""
    # 3D covariance: Sigma = R S S^T R^T (raster.md 1.2)
    R = quat_to_rotmat(quats)  # [N, 3, 3]
    M = R * scales[:, None, :]  # [N, 3, 3] = R diag(s)
    cov = M @ M.transpose(-1, -2)  # [N, 3, 3]

    # world -> camera (raster.md 1.1)
    Rw = viewmats[:, :3, :3]  # [B, 3, 3]
    tw = viewmats[:, :3, 3]  # [B, 3]
    t = torch.einsum("bij,nj->bni", Rw, means) + tw[:, None, :]  # [B, N, 3]
    cov_c = Rw[:, None] @ cov[None] @ Rw[:, None].transpose(-1, -2)  # [B, N, 3, 3]

    x, y, z = t.unbind(-1)  # [B, N] each
    valid = (z >= near) & (z <= far)  # [B, N]
    z_safe = torch.where(valid, z, torch.ones_like(z))  # avoid 1/0 for culled Gaussians

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [B, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]  # [B, 1]
    # Jacobian of the pinhole projection with gsplat's asymmetric clamp (raster.md 1.4)
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + CLAMP_FOV_MARGIN * tan_fovx
    lim_x_neg = cx / fx + CLAMP_FOV_MARGIN * tan_fovx
    lim_y_pos = (height - cy) / fy + CLAMP_FOV_MARGIN * tan_fovy
    lim_y_neg = cy / fy + CLAMP_FOV_MARGIN * tan_fovy
    rz = 1.0 / z_safe
    tx = z_safe * torch.minimum(torch.maximum(x * rz, -lim_x_neg), lim_x_pos)  # [B, N]
    ty = z_safe * torch.minimum(torch.maximum(y * rz, -lim_y_neg), lim_y_pos)  # [B, N]
    zero = torch.zeros_like(z)
    J = torch.stack(
        [fx * rz, zero, -fx * tx * rz * rz, zero, fy * rz, -fy * ty * rz * rz], -1
    ).reshape(z.shape + (2, 3))  # [B, N, 2, 3]

    cov2d = J @ cov_c @ J.transpose(-1, -2)  # [B, N, 2, 2]
    a = cov2d[..., 0, 0] + eps2d
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b  # [B, N]
    valid = valid & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)  # [B, N, 3]

    u = fx * x * rz + cx
    v = fy * y * rz + cy
    means2d = torch.stack([u, v], -1)  # [B, N, 2]

    # tight axis-aligned box at GAUSSIAN_EXTENT sigmas (raster.md 1.7), then off-image cull (1.8)
    with torch.no_grad():
        a_safe = torch.where(valid, a, torch.ones_like(a))
        c_safe = torch.where(valid, c, torch.ones_like(c))
        rx = torch.ceil(GAUSSIAN_EXTENT * torch.sqrt(a_safe))
        ry = torch.ceil(GAUSSIAN_EXTENT * torch.sqrt(c_safe))
        valid = valid & (u + rx > 0) & (u - rx < width) & (v + ry > 0) & (v - ry < height)
        radii = torch.stack([rx, ry], -1).to(torch.int32) * valid[..., None]  # [B, N, 2]

    means2d = torch.where(valid[..., None], means2d, torch.zeros_like(means2d))
    conics = torch.where(valid[..., None], conics, torch.zeros_like(conics))
    depths = torch.where(valid, z, z.detach())  # culled: value kept, gradient zero (as in the drivers)
    return Projection(means2d, conics, depths, radii)


def tile_rects(means2d: Tensor, radii: Tensor, width: int, height: int, tile_size: int) -> Tensor:
    """Half-open tile rectangle [x0, x1) x [y0, y1) of every Gaussian, clamped to the grid (raster.md 1.9).

    means2d: [..., 2], radii: [..., 2] -> [..., 4] int64 (x0, y0, x1, y1); culled Gaussians get an empty rect.
    """
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    m = means2d.detach().float()
    r = radii.float()
    x0 = torch.floor((m[..., 0] - r[..., 0]) / tile_size).clamp(0, tiles_x)
    x1 = torch.ceil((m[..., 0] + r[..., 0]) / tile_size).clamp(0, tiles_x)
    y0 = torch.floor((m[..., 1] - r[..., 1]) / tile_size).clamp(0, tiles_y)
    y1 = torch.ceil((m[..., 1] + r[..., 1]) / tile_size).clamp(0, tiles_y)
    rect = torch.stack([x0, y0, x1, y1], -1).long()
    visible = (radii[..., 0] > 0) & (radii[..., 1] > 0)
    return rect * visible[..., None]


def _composite(
    pix: Tensor,  # [P, 2] pixel centres
    means2d: Tensor,  # [L, 2] sorted front to back
    conics: Tensor,  # [L, 3]
    colors: Tensor,  # [L, C]
    opacities: Tensor,  # [L]
) -> tuple[Tensor, Tensor]:
    """Dense front-to-back compositing of L sorted Gaussians over P pixels -> (colour [P, C], T_final [P])."""
    d = means2d[None, :, :] - pix[:, None, :]  # [P, L, 2]
    dx, dy = d[..., 0], d[..., 1]
    sigma = 0.5 * (conics[:, 0] * dx * dx + conics[:, 2] * dy * dy) + conics[:, 1] * dx * dy  # [P, L]
    alpha = torch.clamp_max(opacities * torch.exp(-sigma), ALPHA_MAX)  # [P, L]
    with torch.no_grad():
        keep = (sigma >= 0) & (alpha >= ALPHA_MIN)
        # transmittance after each Gaussian; it is non-increasing, so "T_next >= T_MIN" is a prefix mask
        t_next = torch.cumprod(torch.where(keep, 1 - alpha, torch.ones_like(alpha)), dim=1)
        keep = keep & (t_next >= T_MIN)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    one_minus = 1 - alpha
    T_incl = torch.cumprod(one_minus, dim=1)  # [P, L]
    T = torch.cat([torch.ones_like(T_incl[:, :1]), T_incl[:, :-1]], dim=1)  # exclusive prefix product
    w = alpha * T  # [P, L]
    color = w @ colors  # [P, C]
    T_final = T_incl[:, -1] if alpha.shape[1] > 0 else torch.ones_like(pix[:, 0])
    return color, T_final


def _rasterize_to_pixels(
    means2d: Tensor,  # [B, N, 2]
    conics: Tensor,  # [B, N, 3]
    colors: Tensor,  # [B, N, C]
    opacities: Tensor,  # [B, N] or [N]
    depths: Tensor,  # [B, N]
    radii: Tensor,  # [B, N, 2]
    width: int,
    height: int,
    tile_size: int = 16,
    background: Tensor | None = None,  # [B, C] or [C]
) -> tuple[Tensor, Tensor]:
    """Twin of `cuda_ext.rasterize_to_pixels` -> (image [B, H, W, C], alpha [B, H, W, 1]).

    Works tile by tile like the drivers: each tile composites the Gaussians whose tile rectangle
    contains it, sorted by (depth, index). Because the box holds every pixel with alpha >= 1/255
    the result equals a dense all-pairs evaluation; the tiles only keep memory at [256 x L] per tile.
    """
    B, N, C = colors.shape
    if opacities.dim() == 1:
        opacities = opacities[None].expand(B, N)
    if background is not None and background.dim() == 1:
        background = background[None].expand(B, C)
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    rects = tile_rects(means2d, radii, width, height, tile_size)  # [B, N, 4]
    dev, dt = means2d.device, means2d.dtype

    images, alphas = [], []
    order_parts = []  # flat pixel index of every row appended, to undo the tile order
    for b in range(B):
        cols_b, t_b = [], []
        for ty in range(tiles_y):
            for tx in range(tiles_x):
                x_lo, x_hi = tx * tile_size, min((tx + 1) * tile_size, width)
                y_lo, y_hi = ty * tile_size, min((ty + 1) * tile_size, height)
                jj, ii = torch.meshgrid(
                    torch.arange(x_lo, x_hi, device=dev), torch.arange(y_lo, y_hi, device=dev), indexing="xy"
                )
                pix = torch.stack([jj.reshape(-1), ii.reshape(-1)], -1).to(dt) + 0.5  # [P, 2]
                if b == 0:
                    order_parts.append((ii * width + jj).reshape(-1))
                r = rects[b]
                hit = (r[:, 0] <= tx) & (tx < r[:, 2]) & (r[:, 1] <= ty) & (ty < r[:, 3])
                ids = torch.nonzero(hit).squeeze(1)  # ascending index
                # stable sort by depth: ties resolve by ascending index, as in the drivers
                ids = ids[torch.sort(depths[b, ids].detach(), stable=True).indices]
                col, T = _composite(pix, means2d[b, ids], conics[b, ids], colors[b, ids], opacities[b, ids])
                cols_b.append(col)
                t_b.append(T)
        cols_b = torch.cat(cols_b, 0)  # [H*W, C] in tile order
        t_b = torch.cat(t_b, 0)  # [H*W]
        if background is not None:
            cols_b = cols_b + t_b[:, None] * background[b]
        images.append(cols_b)
        alphas.append(1 - t_b)
    inv = torch.empty(height * width, dtype=torch.long, device=dev)
    order = torch.cat(order_parts)
    inv[order] = torch.arange(order.numel(), device=dev)
    image = torch.stack([im[inv] for im in images]).reshape(B, height, width, C)
    alpha = torch.stack([a[inv] for a in alphas]).reshape(B, height, width, 1)
    return image, alpha


def _spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Twin of `cuda_ext.spherical_harmonics`: sum_k basis_k(normalise(dirs)) * coeffs[..., k, :].

    dirs: [..., 3] (any length; normalised here), coeffs: [..., K, C] with K >= (degree+1)^2 -> [..., C].
    No +0.5 offset and no clamp: the caller applies its own activation (3DGS uses max(x + 0.5, 0)).
    """
    d2 = (dirs * dirs).sum(-1, keepdim=True)
    n = dirs * torch.rsqrt(d2.clamp_min(DIR_NORM2_MIN))  # [..., 3]
    x, y, z = n.unbind(-1)
    basis = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        basis += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        basis += [
            SH_C2[0] * xy,
            SH_C2[1] * yz,
            SH_C2[2] * (2 * zz - xx - yy),
            SH_C2[3] * xz,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        basis += [
            SH_C3[0] * y * (3 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3 * yy),
        ]
    basis_t = torch.stack(basis, -1)  # [..., K']
    k = basis_t.shape[-1]
    return (basis_t[..., None] * coeffs[..., :k, :]).sum(-2)


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per channel for a degree: (degree + 1)^2."""
    return (degree + 1) ** 2
