"""Spherical harmonics: the twin's basis against an independent property (orthonormality on the
sphere), and the CPU kernel against the twin (forward + gradients)."""

from __future__ import annotations

import math

import pytest
import torch

import cuda_ext
from cuda_ext import _torch_impl
from conftest import require_ext
from test_raster_common import assert_close_robust, fresh_generator


def fibonacci_sphere(n: int) -> torch.Tensor:
    """n nearly uniform unit vectors: [n, 3]."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = torch.sqrt(1 - z * z)
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)


def test_basis_is_orthonormal():
    """int_S2 Y_i Y_j = delta_ij: checks every constant and sign-free structure of the 16 bases."""
    n = 20000
    dirs = fibonacci_sphere(n) * 2.5  # unnormalised on purpose
    eye = torch.eye(16, dtype=torch.float64)  # coeffs picking one basis per channel
    Y = _torch_impl._spherical_harmonics(3, dirs, eye.expand(n, 16, 16))  # [n, 16]
    gram = (Y.T @ Y) * (4 * math.pi / n)
    torch.testing.assert_close(gram, eye, atol=2e-3, rtol=0)


def test_degree_zero_and_extra_coefficients_ignored():
    dirs = torch.randn(7, 3)
    coeffs = torch.randn(7, 16, 2)
    out0 = cuda_ext.spherical_harmonics(0, dirs, coeffs, backend="torch")
    torch.testing.assert_close(out0, _torch_impl.SH_C0 * coeffs[:, 0])
    out1 = cuda_ext.spherical_harmonics(1, dirs, coeffs, backend="torch")
    torch.testing.assert_close(out1, cuda_ext.spherical_harmonics(1, dirs, coeffs[:, :4], backend="torch"))
    with pytest.raises(ValueError, match="needs 9 coefficients"):
        cuda_ext.spherical_harmonics(2, dirs, coeffs[:, :4], backend="torch")


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_cpu_kernel_matches_twin(degree):
    require_ext()
    gen = fresh_generator(100 + degree)
    dirs = torch.randn(300, 3, generator=gen) * 3
    dirs[0] = 0.0  # zero direction: finite, no NaN
    coeffs = torch.randn(300, 16, 3, generator=gen)
    cot = torch.randn(300, 3, generator=gen)
    res = {}
    for be, dt in (("cpu", torch.float32), ("torch", torch.float64)):
        d = dirs.to(dt).clone().requires_grad_()
        c = coeffs.to(dt).clone().requires_grad_()
        out = cuda_ext.spherical_harmonics(degree, d, c, backend=be)
        (out * cot.to(dt)).sum().backward()
        v_d = d.grad if d.grad is not None else torch.zeros_like(d)  # degree 0 does not depend on dirs
        res[be] = (out, v_d, c.grad)
    for name, a, b in zip(("colors", "v_dirs", "v_coeffs"), res["cpu"], res["torch"]):
        assert_close_robust(a, b, name, max_bad_frac=0.0)
    assert res["cpu"][2][:, (degree + 1) ** 2 :].abs().sum() == 0


def test_cpu_kernel_broadcasting_shapes():
    """dirs [N, 3] with coeffs [B, N, K, C] broadcast like the twin."""
    require_ext()
    dirs = torch.randn(5, 3)
    coeffs = torch.randn(2, 5, 9, 4)
    a = cuda_ext.spherical_harmonics(2, dirs, coeffs, backend="cpu")
    b = cuda_ext.spherical_harmonics(2, dirs, coeffs, backend="torch")
    assert a.shape == (2, 5, 4)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
