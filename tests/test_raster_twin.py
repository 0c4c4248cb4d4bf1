"""The PyTorch twin (`cuda_ext/_torch_impl.py`): closed-form checks, float64 gradcheck, API contract.

Runs without the compiled extension (backend="torch" everywhere).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import cuda_ext
from cuda_ext import _backend, _torch_impl
from test_raster_common import camera, fresh_generator, random_gaussians

F64 = torch.float64


def test_single_gaussian_closed_form():
    """An isotropic Gaussian on the optical axis: projection and pixel value in closed form."""
    W, H, f, z, s, o = 33, 21, 40.0, 2.0, 0.05, 0.7
    vm, K = camera(W, H, f=f, cx=10.5, cy=7.5, dtype=F64)
    means = torch.tensor([[0.0, 0.0, z]], dtype=F64)
    quats = torch.tensor([[2.0, 0.0, 0.0, 0.0]], dtype=F64)  # unnormalised identity
    scales = torch.full((1, 3), s, dtype=F64)
    p = cuda_ext.project_gaussians(means, quats, scales, vm, K, W, H, backend="torch")
    var = (f * s / z) ** 2 + 0.3
    torch.testing.assert_close(p.means2d[0, 0], torch.tensor([10.5, 7.5], dtype=F64))
    torch.testing.assert_close(p.conics[0, 0], torch.tensor([1 / var, 0.0, 1 / var], dtype=F64))
    assert p.depths[0, 0].item() == z
    r = math.ceil(3.33 * math.sqrt(var))
    assert p.radii[0, 0].tolist() == [r, r]

    color = torch.tensor([[[0.2, 0.4, 0.8]]], dtype=F64)
    bg = torch.tensor([0.1, 0.1, 0.1], dtype=F64)
    img, alpha = cuda_ext.rasterize_to_pixels(p.means2d, p.conics, color, torch.tensor([o], dtype=F64), p.depths,
                                              p.radii, W, H, background=bg, backend="torch")
    # pixel (i=7, j=12): centre (12.5, 7.5), dx = -2
    a = o * math.exp(-0.5 * 4 / var)
    torch.testing.assert_close(alpha[0, 7, 12, 0].item(), a)
    torch.testing.assert_close(img[0, 7, 12], color[0, 0] * a + (1 - a) * bg)
    # far pixel: alpha < 1/255 is skipped, background only
    torch.testing.assert_close(img[0, 20, 32], bg)
    assert alpha[0, 20, 32, 0].item() == 0.0


def test_compositing_order_clamp_and_termination():
    """Front-to-back order by depth, alpha clamp at 0.99, and the stop before T < 1e-4."""
    W = H = 8
    vm, K = camera(W, H, f=20.0, dtype=F64)
    n = 3
    means2d = torch.full((1, n, 2), 4.0, dtype=F64)
    conics = torch.tensor([[1e-3, 0.0, 1e-3]], dtype=F64).expand(1, n, 3)
    colors = torch.eye(3, dtype=F64)[None]  # red, green, blue
    depths = torch.tensor([[3.0, 1.0, 2.0]], dtype=F64)  # green in front, then blue, then red
    radii = torch.full((1, n, 2), 200, dtype=torch.int32)
    op = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    img, alpha = cuda_ext.rasterize_to_pixels(means2d, conics, colors, op, depths, radii, W, H, backend="torch")
    px = img[0, 3, 3]
    sig = 0.5 * 1e-3 * 2 * 0.25
    a = min(0.99, math.exp(-sig))  # clamped to 0.99
    assert a == 0.99
    # green: 0.99; blue: 0.99 * 0.01 -> T = 1e-4 (not < 1e-4, kept); red would take T below 1e-4: stopped
    torch.testing.assert_close(px, torch.tensor([0.0, 0.99, 0.0099], dtype=F64))
    torch.testing.assert_close(alpha[0, 3, 3, 0], torch.tensor(1 - 1e-4, dtype=F64))


def test_tile_size_does_not_change_result():
    """The box holds every alpha >= 1/255, so tiles (any size) equal one dense tile over the image."""
    gen = fresh_generator(0)
    W, H = 37, 29
    vm, K = camera(W, H, f=30.0, dtype=F64)
    g = {k: v.to(F64) for k, v in random_gaussians(40, gen, channels=2).items()}
    outs = []
    for ts in (4, 16, 64):
        r = cuda_ext.rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], vm, K, W, H,
                               tile_size=ts, backend="torch")
        outs.append(r)
    for r in outs[1:]:
        torch.testing.assert_close(r.image, outs[0].image, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r.depth, outs[0].depth, rtol=1e-12, atol=1e-12)


def test_gradcheck_rasterize_float64():
    gen = torch.Generator().manual_seed(1)
    W, H = 11, 9
    vm, K = camera(W, H, f=14.0, cx=5.0, dtype=F64)
    g = {k: v.to(F64) for k, v in random_gaussians(5, gen, spread=0.4, scale=(0.1, 0.3)).items()}
    bg = torch.tensor([0.3, 0.2, 0.1], dtype=F64)

    def f(means, quats, scales, opacities, colors, background):
        r = cuda_ext.rasterize(means, quats, scales, opacities, colors, vm, K, W, H, background=background,
                               tile_size=4, backend="torch")
        return r.image, r.alpha, r.depth

    inputs = [g[k].clone().requires_grad_() for k in ("means", "quats", "scales", "opacities", "colors")]
    assert torch.autograd.gradcheck(f, inputs + [bg.clone().requires_grad_()], atol=1e-6, rtol=1e-4)


def test_gradcheck_projection_with_clamp_float64():
    """Jacobian clamp active (means outside the frustum), several cameras, cx != W/2."""
    gen = torch.Generator().manual_seed(2)
    W, H = 20, 16
    g = {k: v.to(F64) for k, v in random_gaussians(6, gen, spread=0.3).items()}
    g["means"][:3, 0] += torch.tensor([3.2, -3.6, 2.9], dtype=F64)  # |x/z| beyond the clamp limit
    g["scales"][:3] = 0.9  # ... with an extent that still reaches into the image
    vm = torch.eye(4, dtype=F64).repeat(2, 1, 1)
    vm[1, 0, 3] = 0.3
    K = torch.tensor([[[18.0, 0, 7.0], [0, 21.0, 8.0], [0, 0, 1]]], dtype=F64).repeat(2, 1, 1)
    p = cuda_ext.project_gaussians(g["means"], g["quats"], g["scales"], vm, K, W, H, backend="torch")
    vis = (p.radii > 0).all(-1)  # [B, N]
    u_over_limit = (p.means2d[..., 0] - 7.0) / 18.0 > (W - 7.0) / 18.0 + 0.3 * 0.5 * W / 18.0
    assert (vis & u_over_limit).any(), "the test scene must exercise the clamp"

    def f(means, quats, scales):
        p = cuda_ext.project_gaussians(means, quats, scales, vm, K, W, H, eps2d=0.3, backend="torch")
        # culled Gaussians have zero depth gradients by contract; compare visible ones only
        return p.means2d, p.conics, torch.where(vis, p.depths, torch.zeros_like(p.depths))

    inputs = [g[k].clone().requires_grad_() for k in ("means", "quats", "scales")]
    assert torch.autograd.gradcheck(f, inputs, atol=1e-6, rtol=1e-4)


def test_culled_gaussians_get_zero_finite_gradients():
    W, H = 16, 12
    vm, K = camera(W, H, f=20.0)
    means = torch.tensor([[0.0, 0.0, -1.0],   # behind the camera
                          [0.0, 0.0, 0.0],    # at the camera centre (z = 0)
                          [50.0, 0.0, 1.0],   # far off-screen
                          [0.0, 0.0, 2.0]])   # visible
    quats = torch.tensor([[0.0, 0.0, 0.0, 0.0]] * 4)  # zero quaternions: identity, no NaN
    scales = torch.full((4, 3), 0.05)
    params = [t.clone().requires_grad_() for t in (means, quats, scales)]
    op = torch.full((4,), 0.8, requires_grad=True)
    col = torch.rand(4, 3, requires_grad=True)
    r = cuda_ext.rasterize(*params, op, col, vm, K, W, H, backend="torch")
    assert r.radii[0, :3].eq(0).all() and r.radii[0, 3].gt(0).all()
    (r.image.sum() + r.depth.sum() + r.alpha.sum()).backward()
    for t in params + [op, col]:
        assert torch.isfinite(t.grad).all()
        assert t.grad[:3].abs().max() == 0
    assert params[0].grad[3].abs().sum() > 0


def test_gradcheck_spherical_harmonics_float64():
    gen = torch.Generator().manual_seed(3)
    dirs = torch.randn(4, 2, 3, generator=gen, dtype=F64) * 3  # unnormalised
    for degree in range(4):
        coeffs = torch.randn(4, 2, 16, 3, generator=gen, dtype=F64)
        assert torch.autograd.gradcheck(
            lambda d, c: cuda_ext.spherical_harmonics(degree, d, c, backend="torch"),
            (dirs.clone().requires_grad_(), coeffs.requires_grad_()),
        )


def test_backend_fallback_warns_once(monkeypatch):
    monkeypatch.setattr(_backend, "_ext", None)
    monkeypatch.setattr(_backend, "_ext_tried", True)
    monkeypatch.setattr(_backend, "_ext_error", "test: extension missing")
    monkeypatch.setattr(_backend, "_warned", set())
    d = torch.randn(5, 3)
    c = torch.randn(5, 4, 2)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        a = cuda_ext.spherical_harmonics(1, d, c, backend="auto")
        cuda_ext.spherical_harmonics(1, d, c, backend="auto")
    msgs = [str(w.message) for w in rec if "cuda_ext" in str(w.message)]
    assert len(msgs) == 1 and "PyTorch twin" in msgs[0] and "test: extension missing" in msgs[0]
    torch.testing.assert_close(a, _torch_impl._spherical_harmonics(1, d, c))
    assert cuda_ext.available_backends() == ["torch"] or "gsplat" in cuda_ext.available_backends()
    with pytest.raises(ValueError, match="unknown backend"):
        cuda_ext.spherical_harmonics(1, d, c, backend="vulkan")  # type: ignore[arg-type]
