"""Stage 3 (pose + camera): bundle adjustment on synthetic landmarks with known poses, and its helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from avatar.preprocess.pose import (IRIS_DIAMETER_CM, RIGID_INDICES, _umeyama_batch, fit_pose, high_freq_jitter,
                                    project_points, rotation_jitter_deg, translation_jitter, triangulate)

W = H = 512
F_TRUE = 0.5 * W / math.tan(math.radians(24.0) / 2)


def synthetic_face(seed: int = 0) -> np.ndarray:
    """[478, 3] cm: a curved face-like point cloud (z away from the camera), irises 1.17 cm wide."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-6.5, 6.5, 478)
    y = rng.uniform(-8.0, 9.0, 478)
    z = 0.06 * x ** 2 + 0.03 * y ** 2 - 3.0 * np.exp(-(x ** 2 + y ** 2) / 6)  # nose bump toward the camera
    S = np.stack([x, y, z], 1)
    for (a, b), cx in (((469, 471), -3.2), ((474, 476), 3.2)):
        S[a] = [cx - IRIS_DIAMETER_CM / 2, -2.5, 0.5]
        S[b] = [cx + IRIS_DIAMETER_CM / 2, -2.5, 0.5]
    S[234], S[454] = [-7.0, 0.0, 4.0], [7.0, 0.0, 4.0]
    return S


def synthetic_track(n: int = 150, noise_px: float = 0.3, seed: int = 0):
    """Smooth head motion -> (lm2d [N,478,2], mediapipe-like depth [N,478] px, R [N,3,3], t [N,3], S)."""
    rng = np.random.default_rng(seed)
    S = synthetic_face(seed)
    k = np.arange(n)
    ang = np.stack([np.radians(8) * np.sin(2 * np.pi * k / 70), np.radians(15) * np.sin(2 * np.pi * k / 90 + 1),
                    np.radians(4) * np.sin(2 * np.pi * k / 50)], 1)
    R = Rotation.from_euler("xyz", ang).as_matrix()  # [N, 3, 3]
    t = np.stack([1.5 * np.sin(2 * np.pi * k / 80), 1.0 * np.cos(2 * np.pi * k / 60), 60 + 3 * np.sin(2 * np.pi * k / 100)], 1)
    X = np.einsum("nij,pj->npi", R, S) + t[:, None]  # [N, 478, 3]
    uv = F_TRUE * X[..., :2] / X[..., 2:3] + W / 2
    depth = (X[..., 2] - t[:, None, 2]) * F_TRUE / t[:, None, 2]  # weak-perspective z in pixels, like MediaPipe
    lm = uv + noise_px * rng.standard_normal(uv.shape)
    return lm.astype(np.float32), depth.astype(np.float32), R, t, S


def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(0)
    src = rng.standard_normal((40, 3))
    R = Rotation.random(5, random_state=1).as_matrix()
    s = rng.uniform(0.5, 2, 5)
    c = rng.standard_normal((5, 3))
    dst = s[:, None, None] * np.einsum("nij,pj->npi", R, src) + c[:, None]
    s2, R2, c2 = _umeyama_batch(src, dst)
    np.testing.assert_allclose(s2, s, rtol=1e-9)
    np.testing.assert_allclose(R2, R, atol=1e-9)
    np.testing.assert_allclose(c2, c, atol=1e-9)


def test_triangulate_exact_without_noise():
    lm, depth, R, t, S = synthetic_track(n=20, noise_px=0.0)
    P = triangulate(R, t, F_TRUE, W / 2, H / 2, lm.astype(np.float64), np.zeros_like(S), prior_weight=1e-9)
    np.testing.assert_allclose(P, S, atol=2e-3)


def test_jitter_metrics():
    n = 50
    R = Rotation.from_euler("y", (np.radians(0.5) * np.arange(n))[:, None]).as_matrix()  # constant angular velocity
    assert rotation_jitter_deg(R) == pytest.approx(0.0, abs=1e-6)
    R2 = Rotation.from_euler("y", (np.radians(0.5) * np.arange(n) + np.radians(0.2) * (np.arange(n) % 2))[:, None]).as_matrix()
    assert rotation_jitter_deg(R2) == pytest.approx(0.4, rel=1e-3)  # ±0.2° zig-zag: |Δω| = 0.4°
    t = np.stack([np.arange(n) * 0.1, np.zeros(n), np.full(n, 50.0)], 1)
    assert translation_jitter(t) == pytest.approx(0.0, abs=1e-9)
    p = np.stack([np.arange(n, dtype=float), np.zeros(n)], 1)
    assert high_freq_jitter(p) == pytest.approx(0.0, abs=1e-9)


def test_bundle_adjustment_recovers_poses():
    lm, depth, R_true, t_true, S_true = synthetic_track()
    cam, q = fit_pose(lm, depth, W, H, progress=False)
    n = len(lm)
    assert cam.R.shape == (n, 3, 3) and cam.t.shape == (n, 3) and cam.shape3d.shape == (478, 3)
    # reprojection at the noise level (0.3 px per axis -> mean norm ~0.38 px)
    assert q.reproj_px < 0.6
    assert q.ok
    # relative rotations (the head frame's orientation is a gauge): R_k R_0^T vs truth, within 1 degree
    rel_fit = np.einsum("nij,kj->nik", cam.R, cam.R[0])
    rel_true = np.einsum("nij,kj->nik", R_true, R_true[0])
    err = Rotation.from_matrix(np.einsum("nij,nkj->nik", rel_fit, rel_true)).magnitude()
    assert np.degrees(err).max() < 1.0
    # the focal prior (24 degrees) matches the truth here, and the fit keeps it
    assert cam.focal == pytest.approx(F_TRUE, rel=0.05)
    # metric scale from the iris: the fitted shape's head width is the true one within 5 %
    hw = np.linalg.norm(cam.shape3d[234] - cam.shape3d[454])
    assert hw == pytest.approx(14.0, rel=0.05)
    # depth within 5 % (scale and focal are consistent)
    assert np.median(cam.t[:, 2]) == pytest.approx(np.median(t_true[:, 2]), rel=0.05)
    # all 478 points reproject well (non-rigid ones are triangulated with the poses fixed)
    proj = np.stack([project_points(cam, k, cam.shape3d) for k in range(0, n, 10)])
    assert np.linalg.norm(proj - lm[::10], axis=-1).mean() < 0.8


def test_temporal_prior_reduces_jitter():
    lm, depth, *_ = synthetic_track(noise_px=1.0, seed=2)
    _, q_free = fit_pose(lm, depth, W, H, smooth_rot=0.0, smooth_trans=0.0, smooth_depth=0.0, progress=False)
    _, q_smooth = fit_pose(lm, depth, W, H, progress=False)
    assert q_smooth.rot_jitter_deg < 0.7 * q_free.rot_jitter_deg
    assert q_smooth.trans_jitter_rel < 0.7 * q_free.trans_jitter_rel
    assert q_smooth.reproj_px < 1.1 * q_free.reproj_px  # smoothness costs little reprojection


def test_rigid_set_excludes_mouth_and_eyes():
    from avatar.core.landmarks import EAR_POINTS
    from avatar.core.landmarks import INNER_LIP_PAIR

    nonrigid = set(INNER_LIP_PAIR) | {61, 291, 152, 136, 365} | {p for eye in EAR_POINTS for p in eye[1:3] + eye[4:6]}
    assert not nonrigid & set(RIGID_INDICES)
