"""backend="gsplat": the same ops on gsplat's CUDA kernels (optional dependency, GPU only).

Used as the peer in tests/test_raster_gpu.py and bench/raster.py. gsplat 1.5.3 differs from us in
two documented places (raster.md 1.7, 3): its alpha clamp is 0.999 (ours 0.99) and its projection
box is opacity-aware when opacities are passed (we pass none, so both use the 3.33-sigma box).
Import is lazy: this module is only loaded when the backend is selected.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cuda_ext._torch_impl import Projection


def project_gaussians(means, quats, scales, viewmats, Ks, width, height, near, far, eps2d) -> Projection:
    from gsplat import fully_fused_projection

    radii, means2d, depths, conics, _ = fully_fused_projection(
        means, None, quats, scales, viewmats, Ks, int(width), int(height), eps2d=eps2d, near_plane=near,
        far_plane=far, packed=False,
    )  # fmt: skip
    if radii.dim() == means2d.dim() - 1:  # gsplat < 1.5 returns one radius per Gaussian
        radii = radii[..., None].expand(*radii.shape, 2)
    return Projection(means2d, conics, depths, radii.to(torch.int32))


def rasterize_to_pixels(means2d, conics, colors, opacities, depths, radii, width, height, tile_size,
                        background) -> tuple[Tensor, Tensor]:
    from gsplat import isect_offset_encode, isect_tiles
    from gsplat import rasterize_to_pixels as gs_rasterize

    B = means2d.shape[0]
    tiles_x = (int(width) + tile_size - 1) // tile_size
    tiles_y = (int(height) + tile_size - 1) // tile_size
    _, isect_ids, flatten_ids = isect_tiles(means2d, radii, depths, tile_size, tiles_x, tiles_y)
    offsets = isect_offset_encode(isect_ids, B, tiles_x, tiles_y)
    return gs_rasterize(
        means2d, conics, colors, opacities.contiguous(), int(width), int(height), tile_size, offsets,
        flatten_ids, backgrounds=background,
    )  # fmt: skip
