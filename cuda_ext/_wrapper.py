"""Autograd Functions around the compiled ops (`cuda_ext._C`, CPU or CUDA driver).

The compiled kernels are float32; inputs of other float dtypes are cast in and the gradients cast
back by autograd. Every call goes through `_backend.debug_call`, so CUDA_EXT_DEBUG_DUMP=dir saves
a failing call's inputs for `cuda_ext.replay`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cuda_ext._backend import debug_call, load_ext
from cuda_ext._torch_impl import Projection


def _f32(t: Tensor) -> Tensor:
    return t.to(torch.float32).contiguous()


def _call(op: str, *args):
    ext = load_ext()
    return debug_call(op, getattr(ext, op), *args)


class _ProjectGaussians(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, viewmats, Ks, width, height, near, far, eps2d):
        means2d, conics, depths, radii = _call("project_fwd", means, quats, scales, viewmats, Ks, width, height,
                                               near, far, eps2d)
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, radii)
        ctx.cfg = (width, height, near, far, eps2d)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii):
        means, quats, scales, viewmats, Ks, radii = ctx.saved_tensors
        v_means, v_quats, v_scales = _call(
            "project_bwd", means, quats, scales, viewmats, Ks, *ctx.cfg, radii,
            _f32(v_means2d), _f32(v_conics), _f32(v_depths),
        )  # fmt: skip
        return v_means, v_quats, v_scales, None, None, None, None, None, None, None


def project_gaussians(means, quats, scales, viewmats, Ks, width, height, near, far, eps2d) -> Projection:
    dtype = means.dtype
    out = _ProjectGaussians.apply(
        _f32(means), _f32(quats), _f32(scales), _f32(viewmats), _f32(Ks),
        int(width), int(height), float(near), float(far), float(eps2d),
    )  # fmt: skip
    means2d, conics, depths, radii = out
    return Projection(means2d.to(dtype), conics.to(dtype), depths.to(dtype), radii)


class _RasterizeToPixels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, depths, radii, background, width, height, tile_size):
        image, alpha, t_final, last, tile_offsets, flat_ids = _call(
            "rasterize_fwd", means2d, conics, colors, opacities, depths, radii, background, width, height, tile_size
        )
        ctx.save_for_backward(means2d, conics, colors, opacities, radii, background, tile_offsets, flat_ids,
                              t_final, last)
        ctx.cfg = (width, height, tile_size)
        return image, alpha

    @staticmethod
    def backward(ctx, v_image, v_alpha):
        means2d, conics, colors, opacities, radii, background, tile_offsets, flat_ids, t_final, last = (
            ctx.saved_tensors
        )
        width, height, tile_size = ctx.cfg
        v_image = _f32(v_image)
        v_alpha = _f32(v_alpha)
        v_means2d, v_conics, v_colors, v_op = _call(
            "rasterize_bwd", means2d, conics, colors, opacities, radii, background, width, height, tile_size,
            tile_offsets, flat_ids, t_final, last, v_image, v_alpha,
        )  # fmt: skip
        v_bg = None
        if background is not None and ctx.needs_input_grad[6]:
            v_bg = (v_image * t_final[..., None]).sum((1, 2))  # [B, C]
        return v_means2d, v_conics, v_colors, v_op, None, None, v_bg, None, None, None


def rasterize_to_pixels(means2d, conics, colors, opacities, depths, radii, width, height, tile_size, background):
    dtype = colors.dtype
    bg = None if background is None else _f32(background)
    image, alpha = _RasterizeToPixels.apply(
        _f32(means2d), _f32(conics), _f32(colors), _f32(opacities), _f32(depths),
        radii.to(torch.int32).contiguous(), bg, int(width), int(height), int(tile_size),
    )  # fmt: skip
    return image.to(dtype), alpha.to(dtype)


class _SphericalHarmonics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, degree, dirs, coeffs):
        out = _call("sh_fwd", degree, dirs, coeffs)
        ctx.save_for_backward(dirs, coeffs)
        ctx.degree = degree
        return out

    @staticmethod
    def backward(ctx, v_out):
        dirs, coeffs = ctx.saved_tensors
        v_coeffs, v_dirs = _call("sh_bwd", ctx.degree, dirs, coeffs, _f32(v_out), bool(ctx.needs_input_grad[1]))
        return None, (v_dirs if ctx.needs_input_grad[1] else None), v_coeffs


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    batch = torch.broadcast_shapes(dirs.shape[:-1], coeffs.shape[:-2])
    K, C = coeffs.shape[-2:]
    d = _f32(dirs.expand(batch + (3,)).reshape(-1, 3))  # [M, 3]
    c = _f32(coeffs.expand(batch + (K, C)).reshape(-1, K, C))  # [M, K, C]
    out = _SphericalHarmonics.apply(int(degree), d, c)  # [M, C]
    return out.reshape(batch + (C,)).to(coeffs.dtype)
