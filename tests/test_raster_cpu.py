"""The C++ CPU driver against the PyTorch twin: forward and every gradient, sizes and edge cases.

The kernel runs in float32; the twin runs in float64 on the same (float32-representable) inputs.
Scenes are drawn fresh each run (seed in every failure message; CUDA_EXT_TEST_SEED replays).
Comparisons use `assert_close_robust` (tight elementwise tolerance, a tiny budget for alpha/T
threshold flips; a row that matches the float32 twin is a precision flip, not a kernel error).
Needs the built extension: conftest `require_ext()`.
"""

from __future__ import annotations

import pytest
import torch

import cuda_ext
from cuda_ext import _backend
from conftest import max_gap_while, require_ext
from test_raster_common import (
    assert_close_robust,
    camera,
    fresh_generator,
    random_gaussians,
    random_pose,
    run_rasterize,
)



@pytest.fixture(autouse=True)
def _compiled_ext():
    """Every test here runs the compiled driver: require('ext') (skip, or fail under AVATAR_REQUIRE)."""
    require_ext()


F64 = torch.float64
KEYS = ["image", "alpha", "depth", "v_means2d", "v_means", "v_quats", "v_scales", "v_opacities", "v_colors"]


def compare(g, vm, K, W, H, background=None, tile_size=16, seed=0, keys=KEYS, **tol):
    ours = run_rasterize(g, vm, K, W, H, "cpu", torch.float32, background, seed, tile_size)
    ref = run_rasterize(g, vm, K, W, H, "torch", F64, background, seed, tile_size)
    ref32 = run_rasterize(g, vm, K, W, H, "torch", torch.float32, background, seed, tile_size)
    assert ours["radii"].dtype == torch.int32
    assert (ours["radii"] - ref["radii"]).abs().max() <= 1
    for k in keys + (["v_background"] if background is not None else []):
        assert_close_robust(ours[k], ref[k], k, same_precision=ref32[k], **tol)
    return ours, ref


@pytest.mark.parametrize("n,W,H", [(1, 16, 16), (30, 45, 37), (200, 64, 48), (600, 97, 81)])
def test_random_scenes(n, W, H):
    gen = fresh_generator(n + W)
    vm, K = camera(W, H, f=0.9 * W)
    g = random_gaussians(n, gen, channels=3)
    ours, _ = compare(g, vm, K, W, H, background=torch.rand(3, generator=gen))
    if n > 1:
        assert ours["alpha"].max() > 0.05  # the scene is visible


def test_batched_cameras_channels_and_tiles():
    """B = 3 cameras, C = 5 feature channels, principal point off-centre, tile sizes 8 and 16, and 5 and 12 (rows
    that are not a whole number of the forward's 8-pixel lane groups); then C = 1..4 (the forward's fixed-channel
    copies)."""
    gen = fresh_generator(7)
    W, H = 50, 34
    g = random_gaussians(150, gen, channels=5, z=0.0)
    vm = torch.stack([random_pose(gen) for _ in range(3)])
    K = torch.tensor([[40.0, 0, 20.0], [0, 44.0, 19.0], [0, 0, 1]]).repeat(3, 1, 1)
    bg = torch.rand(3, 5, generator=gen)
    for ts in (8, 16, 5, 12, 32):
        compare(g, vm, K, W, H, background=bg, tile_size=ts, seed=ts)
    for c in (1, 2, 3, 4):
        gc = random_gaussians(150, fresh_generator(c), channels=c, z=0.0)
        compare(gc, vm, K, W, H, background=bg[:, :c], tile_size=16, seed=c)


def test_faint_gaussians_binned_by_their_opacity_box():
    """The CPU driver bins a Gaussian to the tiles of its opacity-aware box (alpha >= 1/255), the twin to those of
    its 3-sigma radius: faint, large Gaussians straddling many 8-pixel tiles (an opacity of 0.02 reaches 1/255 at
    1.3 sigma, a third of the radius) must still give the twin's image and gradients, and the same image at every
    tile size (the default one included)."""
    gen = fresh_generator(23)
    W, H = 61, 47
    vm, K = camera(W, H, f=0.9 * W)
    g = random_gaussians(120, gen, scale=(0.1, 0.4), channels=3)
    g["opacities"] = torch.rand(120, generator=gen) * 0.04 + 0.005
    assert float(g["opacities"].min()) * 255 > 1  # each can reach 1/255 (else none would be drawn)
    ours, _ = compare(g, vm, K, W, H, background=torch.rand(3, generator=gen), tile_size=8)
    assert ours["alpha"].max() > 0.05  # the faint scene is drawn
    imgs = [cuda_ext.rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], vm, K, W, H,
                               tile_size=ts, backend="cpu").image for ts in (4, 8, 32, None)]
    for im in imgs[1:]:
        assert torch.equal(im, imgs[0])


def test_edge_cases():
    """Behind camera, on the near plane, off-screen (clamped Jacobian), covering the whole image,
    sub-pixel, zero and near-one opacity, degenerate scales, zero quaternion, equal depths."""
    gen = fresh_generator(11)
    W, H = 41, 27  # not multiples of 16
    vm, K = camera(W, H, f=35.0)
    base = random_gaussians(40, gen)
    extra_means = torch.tensor([
        [0.0, 0.0, -1.0],    # behind the camera
        [0.1, 0.0, 0.25],    # exactly on the near plane (near = 0.25 below): kept
        [0.1, 0.0, 0.2499],  # just in front of the near plane: culled
        [4.0, 0.0, 3.0],     # mean off-screen right, extent reaches in (Jacobian clamp)
        [-3.5, -2.8, 3.0],   # off-screen corner
        [60.0, 0.0, 3.0],    # far off-screen: culled
        [0.0, 0.0, 3.5],     # huge: covers the whole image
        [0.2, 0.1, 2.5],     # sub-pixel
        [-0.2, 0.1, 2.5],    # zero opacity
        [0.3, -0.2, 2.7],    # opacity near one (alpha clamped)
        [-0.3, -0.1, 2.8],   # degenerate: one zero scale
        [0.25, 0.25, 2.9],   # degenerate: all scales zero
        [-0.1, 0.3, 2.6],    # zero quaternion
        [0.05, 0.05, 3.1],   # equal depth twins (same depth, different index)
        [0.07, 0.04, 3.1],
    ])  # fmt: skip
    m = len(extra_means)
    extra_scales = torch.full((m, 3), 0.1)
    extra_scales[3] = 0.6
    extra_scales[4] = 0.8
    extra_scales[6] = 3.0
    extra_scales[7] = 1e-4
    extra_scales[10] = torch.tensor([0.1, 0.0, 0.1])
    extra_scales[11] = 0.0
    extra_quats = torch.randn(m, 4, generator=gen)
    extra_quats[12] = 0.0
    extra_op = torch.full((m,), 0.6)
    extra_op[6] = 0.3
    extra_op[8] = 0.0
    extra_op[9] = 0.9999
    g = {
        "means": torch.cat([base["means"], extra_means]),
        "quats": torch.cat([base["quats"], extra_quats]),
        "scales": torch.cat([base["scales"], extra_scales]),
        "opacities": torch.cat([base["opacities"], extra_op]),
        "colors": torch.rand(40 + m, 3, generator=gen),
    }
    ours = run_rasterize(g, vm, K, W, H, "cpu", torch.float32, seed=3)
    ref = run_rasterize(g, vm, K, W, H, "torch", F64, seed=3)
    # near = 0.01 by default in run_rasterize; re-run with near = 0.25 through the public API below
    for k in KEYS:
        assert_close_robust(ours[k], ref[k], k)
    radii = ours["radii"][0]
    assert radii[40].eq(0).all() and radii[45].eq(0).all()  # behind camera, far off-screen
    assert radii[43].gt(0).all() and radii[44].gt(0).all()  # off-screen means whose extent reaches in
    for k in KEYS[3:]:
        assert torch.isfinite(ours[k]).all()
        assert ours[k][..., 40, :].abs().max() == 0 if ours[k].dim() == 3 else ours[k][40].abs().max() == 0

    # near plane exactly at a float32-representable depth
    p_ours = cuda_ext.project_gaussians(g["means"], g["quats"], g["scales"], vm, K, W, H, near=0.25, backend="cpu")
    p_ref = cuda_ext.project_gaussians(g["means"].double(), g["quats"].double(), g["scales"].double(),
                                       vm.double(), K.double(), W, H, near=0.25, backend="torch")
    assert p_ours.radii[0, 41].gt(0).all() and p_ours.radii[0, 42].eq(0).all()
    assert torch.equal(p_ours.radii > 0, p_ref.radii > 0)


def test_many_gaussians_in_one_tile():
    """2000 Gaussians stacked in one 16x16 tile: deep lists, early termination, T near 1e-4."""
    gen = fresh_generator(5)
    W, H = 40, 40
    vm, K = camera(W, H, f=40.0)
    n = 2000
    g = random_gaussians(n, gen, spread=0.02, z=3.0, scale=(0.005, 0.05))
    g["opacities"] = torch.rand(n, generator=gen) * 0.5 + 0.5
    ours, _ = compare(g, vm, K, W, H, background=torch.rand(3, generator=gen))
    assert ours["alpha"].max() > 0.999  # some pixels terminated


def test_projection_matches_twin():
    gen = fresh_generator(9)
    W, H = 64, 48
    g = random_gaussians(500, gen, z=0.0, spread=0.8)
    vm = torch.stack([random_pose(gen, dist=2.5) for _ in range(2)])
    K = torch.tensor([[50.0, 0, 30.0], [0, 52.0, 25.0], [0, 0, 1]]).repeat(2, 1, 1)
    args = (vm, K, W, H)
    params = [g[k].clone().requires_grad_() for k in ("means", "quats", "scales")]
    params64 = [g[k].double().requires_grad_() for k in ("means", "quats", "scales")]
    p = cuda_ext.project_gaussians(*params, *args, backend="cpu")
    q = cuda_ext.project_gaussians(*params64, vm.double(), K.double(), W, H, backend="torch")
    assert (p.radii - q.radii).abs().max() <= 1
    vis = (p.radii > 0).all(-1) & (q.radii > 0).all(-1)
    assert vis.float().mean() > 0.5
    for name, a, b in (("means2d", p.means2d, q.means2d), ("conics", p.conics, q.conics), ("depths", p.depths, q.depths)):
        assert_close_robust(a[vis], b[vis], name, max_bad_frac=0.0)
    cot = [torch.randn(t.shape, generator=gen) for t in (p.means2d, p.conics, p.depths)]
    sum((t * c).sum() for t, c in zip((p.means2d, p.conics, p.depths), cot)).backward()
    sum((t * c.double()).sum() for t, c in zip((q.means2d, q.conics, q.depths), cot)).backward()
    for name, a, b in zip(("v_means", "v_quats", "v_scales"), params, params64):
        assert_close_robust(a.grad, b.grad, name, max_bad_frac=0.0)


def test_deterministic_across_thread_counts():
    gen = fresh_generator(13)
    W, H = 48, 40
    vm, K = camera(W, H, f=40.0)
    g = random_gaussians(300, gen)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = run_rasterize(g, vm, K, W, H, "cpu", torch.float32)
        torch.set_num_threads(2)
        b = run_rasterize(g, vm, K, W, H, "cpu", torch.float32)
    finally:
        torch.set_num_threads(old)
    for k in KEYS:
        assert torch.equal(a[k], b[k]), k


def test_empty_scene_and_tiny_image():
    vm, K = camera(1, 1, f=2.0)
    g = {"means": torch.tensor([[0.0, 0.0, -2.0]]), "quats": torch.tensor([[1.0, 0, 0, 0]]),
         "scales": torch.full((1, 3), 0.1), "opacities": torch.tensor([0.5]), "colors": torch.rand(1, 2)}
    bg = torch.tensor([0.25, 0.5])
    ours = run_rasterize(g, vm, K, 1, 1, "cpu", torch.float32, background=bg)
    torch.testing.assert_close(ours["image"][0, 0, 0], bg)
    assert ours["alpha"].abs().max() == 0 and ours["v_means"].abs().max() == 0
    g["means"][0, 2] = 2.0  # now visible in the single pixel
    compare(g, vm, K, 1, 1, background=bg)


def test_input_checks():
    ext = _backend.load_ext()
    m = torch.zeros(4, 3)
    q = torch.zeros(4, 4)
    vm, K = camera(8, 8)
    with pytest.raises(RuntimeError, match="means must be float32"):
        ext.project_fwd(m.double(), q, m, vm, K, 8, 8, 0.01, 1e10, 0.3)
    with pytest.raises(RuntimeError, match="quats must have shape"):
        ext.project_fwd(m, m, m, vm, K, 8, 8, 0.01, 1e10, 0.3)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.project_fwd(torch.zeros(3, 4).t(), q, m, vm, K, 8, 8, 0.01, 1e10, 0.3)
    with pytest.raises(RuntimeError, match="int32"):
        ext.rasterize_fwd(torch.zeros(1, 4, 2), torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), torch.zeros(1, 4),
                          torch.zeros(1, 4), torch.zeros(1, 4, 2), None, 8, 8, 16)


def test_debug_dump_saves_failing_call(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_EXT_DEBUG_DUMP", str(tmp_path))
    d = torch.randn(3, 3)
    bad = torch.randn(3, 2, 2)  # degree 1 needs 4 coefficients
    with pytest.raises(RuntimeError, match="coefficients"):
        _backend.debug_call("sh_fwd", _backend.load_ext().sh_fwd, 1, d, bad)
    dumps = list(tmp_path.glob("sh_fwd-*.pt"))
    assert len(dumps) == 1
    rec = torch.load(dumps[0])
    assert rec["op"] == "sh_fwd" and torch.equal(rec["args"][1], d)
    with pytest.raises(RuntimeError, match="coefficients"):
        cuda_ext.replay(dumps[0])


def test_gradients_fit_a_target_image():
    """Adam on the CPU driver's gradients recovers a target rendered from other Gaussians."""
    gen = fresh_generator(17)
    W = H = 32
    vm, K = camera(W, H, f=30.0)
    target_g = random_gaussians(60, gen, spread=0.5, scale=(0.05, 0.2))
    with torch.no_grad():
        target = cuda_ext.rasterize(*(target_g[k] for k in ("means", "quats", "scales", "opacities", "colors")),
                                    vm, K, W, H, backend="cpu").image
    g = random_gaussians(120, gen, spread=0.5, scale=(0.05, 0.2))
    params = {k: v.clone().requires_grad_() for k, v in g.items()}
    params["opacities"] = torch.logit(g["opacities"].clamp(0.05, 0.95)).requires_grad_()
    params["scales"] = torch.log(g["scales"]).requires_grad_()
    opt = torch.optim.Adam(params.values(), lr=0.02)
    losses = []
    for _ in range(40):
        out = cuda_ext.rasterize(params["means"], params["quats"], torch.exp(params["scales"]),
                                 torch.sigmoid(params["opacities"]), params["colors"], vm, K, W, H,
                                 render_depth=False, backend="cpu")
        loss = (out.image - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])


def test_the_kernels_let_other_python_threads_run():
    """The compiled ops release the GIL while they compute (a server's event loop thread encodes and sends
    WebRTC frames while a frame is rasterized): a thread that only reads the clock never pauses for a whole
    kernel call, which here lasts hundreds of milliseconds."""
    gen = fresh_generator(5)
    W = H = 384
    vm, K = camera(W, H, f=0.9 * W)
    g = random_gaussians(20000, gen, channels=3)
    run_rasterize(g, vm, K, W, H, "cpu", torch.float32)  # warm-up
    gap, dur = max_gap_while(lambda: run_rasterize(g, vm, K, W, H, "cpu", torch.float32))
    assert dur > 0.1  # forward + backward of 20k Gaussians at 384x384: long enough to see a held GIL
    assert gap < 0.25 * dur, f"another thread paused {1000 * gap:.0f} ms during a {1000 * dur:.0f} ms call"
