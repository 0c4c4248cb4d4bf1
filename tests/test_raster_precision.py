"""Precision of the float32 C++ kernel for long, thin (needle) Gaussians, against the float64 twin.

The projection backward turns conic gradients into 2D-covariance gradients. For needles (aspect up
to 1000:1, what densification grows around lips and hair) the long-axis component of that gradient
is a small difference of large terms, so a float32 form with separately rounded 1/det^2 products
lost 4-40% of d/d(scale_long) (issue 14: 1.1875 instead of 1.1409 for scales (2, 0.016, 0.03)).
These tests compare every gradient per Gaussian, per element, with a relative tolerance that float32
rounding meets (<= 4e-3 seen, mostly ~1e-4) and that the old form fails by 25x or more.

The reference is the float64 PyTorch twin on the same float32-representable inputs. The C++
extension must be built (no skip): `python3 -m pip install --no-build-isolation --no-deps -e .`.
"""

from __future__ import annotations

import math

import torch

import cuda_ext
from cuda_ext import _backend
from test_raster_common import BASE_SEED, fresh_generator

F64 = torch.float64
RTOL = 2e-2  # per element, relative to itself (new form: <= 4e-3 seen over seeds; old form: 0.5 to 3)
ATOL_FRAC = 1e-4  # plus this fraction of the largest |value| of the same Gaussian's parameter group


def setup_module():
    assert _backend.load_ext() is not None, "cuda_ext._C is not built: pip install --no-build-isolation -e ."


def quat_from_axis_angle(axis, angle):
    ax = torch.tensor(axis, dtype=F64)
    ax = ax / ax.norm()
    return torch.cat([torch.tensor([math.cos(angle / 2)], dtype=F64), math.sin(angle / 2) * ax])


def cam(W, H, f):
    K = torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]])
    return torch.eye(4)[None], K[None]


def render_grads(g, vm, K, W, H, backend, dtype, loss="sum", seed=0):
    """Forward + backward of cuda_ext.rasterize -> {name: tensor} (image and every gradient)."""
    p = {k: v.detach().to(dtype).clone().requires_grad_() for k, v in g.items()}
    out = cuda_ext.rasterize(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"], vm.to(dtype),
                             K.to(dtype), W, H, backend=backend)
    out.means2d.retain_grad()
    if loss == "sum":
        L = out.image.sum()
    else:  # fixed random cotangents, drawn in float64 and shared by both runs
        gen = torch.Generator().manual_seed(seed)
        L = (out.image * torch.randn(out.image.shape, generator=gen, dtype=F64).to(dtype)).sum()
        L = L + (out.alpha * torch.randn(out.alpha.shape, generator=gen, dtype=F64).to(dtype)).sum()
    L.backward()
    res = {"image": out.image, "alpha": out.alpha, "v_means2d": out.means2d.grad}
    res.update({"v_" + k: v.grad for k, v in p.items()})
    return {k: v.detach().double() for k, v in res.items()}


def check_rows(actual, expected, name, rtol=RTOL, atol_frac=ATOL_FRAC, same_precision=None):
    """Every element: |a - e| <= rtol |e| + atol_frac * max|e| over its own row (one Gaussian's group).

    `same_precision` (the PyTorch twin's float32 result): an element outside that bound passes if the kernel is no
    further from float64 than float32 arithmetic of the same formulas gets, in at most max(1, 0.5 %) of the rows.
    A needle whose projected conic is nearly singular (det 0.0022 against entries ~1, CUDA_EXT_TEST_SEED=1723359566,
    row 17) loses ~2 % on its short-axis scale gradients in float32: the kernel 2.3 %, the float32 twin 4.3 %."""
    a = actual.reshape(-1, actual.shape[-1]).double()
    e = expected.reshape(-1, expected.shape[-1]).double()
    assert torch.isfinite(a).all(), f"{name}: non-finite kernel values"
    row_scale = e.abs().amax(-1, keepdim=True)
    err = (a - e).abs()
    bad = err > rtol * e.abs() + atol_frac * row_scale
    if same_precision is not None and bad.any():
        f32 = (same_precision.reshape(-1, expected.shape[-1]).double() - e).abs()
        excused = bad & (err <= f32)
        if int(excused.any(-1).sum()) <= max(1, int(0.005 * a.shape[0])):
            bad = bad & ~excused
    if bad.any():
        i = int(bad.any(-1).nonzero()[0])
        rel = (err / e.abs().clamp_min(1e-30))[i]
        raise AssertionError(f"{name}: {int(bad.sum())} elements off; first row {i}: kernel {a[i].tolist()} vs "
                             f"float64 twin {e[i].tolist()} (rel err {rel.tolist()}) [CUDA_EXT_TEST_SEED={BASE_SEED}]")


def single_needle(scales, quat, z=4.0, xy=(0.1, -0.05)):
    return dict(
        means=torch.tensor([[xy[0], xy[1], z]]),
        quats=quat.float()[None],
        scales=torch.tensor([scales]),
        opacities=torch.tensor([0.8]),
        colors=torch.tensor([[1.0, 0.5, 0.25]]),
    )


def test_issue_14_needle_scale_gradient():
    """The exact case of issue 14 (scales (2, 0.016, 0.03), z = 4, f = 70, 64x64), several orientations."""
    W = H = 64
    vm, K = cam(W, H, 70.0)
    for axis, angle in [((0.3, 0.5, 0.8), 0.7), ((1, 0, 0), 0.4), ((0, 0, 1), 0.9), ((0.2, -1, 0.1), 1.3)]:
        g = single_needle((2.0, 0.016, 0.03), quat_from_axis_angle(axis, angle))
        ours = render_grads(g, vm, K, W, H, "cpu", torch.float32)
        ref = render_grads(g, vm, K, W, H, "torch", F64)
        assert ref["alpha"].max() > 0.3  # the needle is on screen
        # the long-axis gradient is not negligible: the check below is a real test of it
        assert ref["v_scales"][0, 0].abs() > 1e-3 * ref["v_scales"][0].abs().max()
        for k in ("image", "alpha"):
            assert (ours[k] - ref[k]).abs().max() < 5e-4, k  # forward: float32 conic of a needle
        for k in ("v_means2d", "v_means", "v_quats", "v_scales", "v_opacities", "v_colors"):
            t = ours[k] if ours[k].dim() > 1 else ours[k][:, None]
            r = ref[k] if ref[k].dim() > 1 else ref[k][:, None]
            check_rows(t, r, f"{k} axis={axis}")


def test_needles_up_to_1000_to_1_all_gradients():
    """Single needles of aspect 10..1000 at random orientations and places, random cotangents."""
    gen = fresh_generator(1401)
    W, H = 64, 48
    vm, K = cam(W, H, 60.0)
    for i, aspect in enumerate([10, 50, 100, 300, 1000, 1000]):
        long = float(0.3 + 1.7 * torch.rand((), generator=gen))
        mid = long / aspect * float(1 + 2 * torch.rand((), generator=gen))
        sc = [long, long / aspect, min(mid, long)]
        perm = torch.randperm(3, generator=gen).tolist()
        g = single_needle([sc[j] for j in perm], torch.randn(4, generator=gen, dtype=F64),
                          z=float(3 + 2 * torch.rand((), generator=gen)),
                          xy=tuple((0.4 * torch.randn(2, generator=gen)).tolist()))
        ours = render_grads(g, vm, K, W, H, "cpu", torch.float32, loss="randn", seed=i)
        ref = render_grads(g, vm, K, W, H, "torch", F64, loss="randn", seed=i)
        if ref["alpha"].max() < 0.05:
            continue  # off screen: nothing to compare (still counted below)
        for k in ("v_means2d", "v_means", "v_quats", "v_scales", "v_opacities", "v_colors"):
            t = ours[k] if ours[k].dim() > 1 else ours[k][:, None]
            r = ref[k] if ref[k].dim() > 1 else ref[k][:, None]
            check_rows(t, r, f"{k} aspect={aspect} scales={sc}")


def _needle_batch(n, gen, max_aspect=1000.0):
    """n needles in front of the camera with log-uniform aspect in [3, max_aspect]."""
    long = 0.2 + 1.8 * torch.rand(n, generator=gen)
    aspect = torch.exp(math.log(3) + torch.rand(n, generator=gen) * (math.log(max_aspect) - math.log(3)))
    short = long / aspect
    mid = torch.minimum(short * torch.exp(3 * torch.rand(n, generator=gen)), long)
    scales = torch.stack([long, short, mid], -1)
    idx = torch.argsort(torch.rand(n, 3, generator=gen), -1)
    scales = torch.gather(scales, 1, idx)
    means = torch.randn(n, 3, generator=gen) * 0.5
    means[:, 2] += 4.0
    return means, torch.randn(n, 4, generator=gen), scales


def test_projection_backward_needles_per_gaussian():
    """project_gaussians alone, 400 needles (aspect 3..1000), cotangents shaped like the rasterizer's:
    v_conic = sum_k w_k (dx^2/2, dx dy, dy^2/2) over offsets d_k drawn from each Gaussian's own 2D
    distribution, so the long axis carries the large conic gradient as in a real render."""
    gen = fresh_generator(1402)
    W, H = 64, 64
    vm, K = cam(W, H, 70.0)
    means, quats, scales = _needle_batch(400, gen)
    p32 = [t.clone().requires_grad_() for t in (means, quats, scales)]
    p64 = [t.double().requires_grad_() for t in (means, quats, scales)]
    t32 = [t.clone().requires_grad_() for t in (means, quats, scales)]
    ours = cuda_ext.project_gaussians(*p32, vm, K, W, H, backend="cpu")
    ref = cuda_ext.project_gaussians(*p64, vm.double(), K.double(), W, H, backend="torch")
    twin = cuda_ext.project_gaussians(*t32, vm, K, W, H, backend="torch")
    vis = (ours.radii > 0).all(-1) & (ref.radii > 0).all(-1)
    assert vis.float().mean() > 0.5
    # cotangents (float64, built from the reference conic)
    Q = ref.conics.detach()[0]  # [N, 3]
    Qm = torch.stack([Q[:, 0], Q[:, 1], Q[:, 1], Q[:, 2]], -1).reshape(-1, 2, 2)
    cov = torch.linalg.inv(torch.where(vis[0, :, None, None], Qm, torch.eye(2, dtype=F64)))
    L = torch.linalg.cholesky(cov)  # [N, 2, 2]
    d = (L[:, None] @ torch.randn(400, 16, 2, 1, generator=gen, dtype=F64)).squeeze(-1)  # [N, 16, 2]
    w = torch.randn(400, 16, generator=gen, dtype=F64)
    v_conic = torch.stack([(w * d[..., 0] ** 2).sum(1) / 2, (w * d[..., 0] * d[..., 1]).sum(1),
                           (w * d[..., 1] ** 2).sum(1) / 2], -1)[None]
    v_m2 = torch.randn(1, 400, 2, generator=gen, dtype=F64) * 0.1
    v_dep = torch.randn(1, 400, generator=gen, dtype=F64)
    for proj, dt in ((ours, torch.float32), (ref, F64), (twin, torch.float32)):
        ((proj.conics * v_conic.to(dt)).sum() + (proj.means2d * v_m2.to(dt)).sum()
         + (proj.depths * v_dep.to(dt)).sum()).backward()
    keep = vis[0]
    for name, a, b, c in zip(("v_means", "v_quats", "v_scales"), p32, p64, t32):
        check_rows(a.grad[keep], b.grad[keep], name, same_precision=c.grad[keep])
