"""CUDA driver against the twin and against gsplat.

GPU tests: skipped, naming why, without a CUDA device. With one, an extension built without CUDA is a
missing build (conftest `require('ext')`: a failure in CI). The gsplat comparison needs the optional
`.[gsplat]` extra and says so when it is absent.
"""

from __future__ import annotations

import pytest
import torch

import cuda_ext
from cuda_ext import _backend
from conftest import require
from test_raster_common import assert_close_robust, camera, fresh_generator, random_gaussians, run_rasterize

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]
KEYS = ["image", "alpha", "depth", "v_means2d", "v_means", "v_quats", "v_scales", "v_opacities", "v_colors"]


def _need_cuda_ext():
    if not _backend.ext_has_cuda():
        require("ext", "cuda_ext._C was built without CUDA on a machine with a CUDA device (reinstall with a CUDA torch)")


def _to(g: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in g.items()}


@pytest.mark.parametrize("n,W,H", [(50, 45, 37), (800, 128, 96)])
def test_cuda_matches_twin(n, W, H):
    _need_cuda_ext()
    gen = fresh_generator(n)
    vm, K = camera(W, H, f=0.9 * W)
    g = random_gaussians(n, gen)
    bg = torch.rand(3, generator=gen)
    ours = run_rasterize(_to(g, "cuda"), vm.cuda(), K.cuda(), W, H, "cuda", torch.float32, bg.cuda())
    ref = run_rasterize(g, vm, K, W, H, "torch", torch.float64, bg)
    for k in KEYS + ["v_background"]:
        # __expf (fast math) vs exp: a few more threshold flips than on the CPU (raster.md 8)
        assert_close_robust(ours[k].cpu(), ref[k], k, rtol=2e-3, max_bad_frac=0.005)


def test_cuda_matches_cpu_driver():
    _need_cuda_ext()
    gen = fresh_generator(3)
    W, H = 64, 48
    vm, K = camera(W, H, f=50.0)
    g = random_gaussians(400, gen)
    a = run_rasterize(_to(g, "cuda"), vm.cuda(), K.cuda(), W, H, "cuda", torch.float32)
    b = run_rasterize(g, vm, K, W, H, "cpu", torch.float32)
    for k in KEYS:
        assert_close_robust(a[k].cpu(), b[k], k, rtol=2e-3, max_bad_frac=0.005)


def test_cuda_matches_gsplat_on_same_scene():
    _need_cuda_ext()
    if "gsplat" not in cuda_ext.available_backends():
        pytest.skip("gsplat is not installed (optional extra: pip install -e '.[gsplat]')")
    gen = fresh_generator(4)
    W, H = 96, 80
    vm, K = camera(W, H, f=70.0)
    g = random_gaussians(500, gen)
    g["opacities"] = g["opacities"].clamp_max(0.95)  # below both alpha clamps (ours 0.99, gsplat 0.999)
    a = run_rasterize(_to(g, "cuda"), vm.cuda(), K.cuda(), W, H, "cuda", torch.float32, render_depth=False)
    b = run_rasterize(_to(g, "cuda"), vm.cuda(), K.cuda(), W, H, "gsplat", torch.float32, render_depth=False)
    for k in ["image", "alpha", "v_means2d", "v_means", "v_opacities", "v_colors"]:
        assert_close_robust(a[k].cpu(), b[k].cpu(), k, rtol=5e-3, max_bad_frac=0.01)
