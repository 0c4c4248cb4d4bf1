"""Camera maths of the viewer (viewer/camera.py): viser camera <-> head-frame view matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from avatar.viewer.camera import (
    fov_from_intrinsics,
    head_offset_matrix,
    home_camera,
    intrinsics_from_fov,
    matrix_to_quat,
    quat_to_matrix,
    representative_view,
    viewmat_from_viser,
    viser_from_viewmat,
)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _random_viewmat(rng: np.random.Generator) -> np.ndarray:
    V = np.eye(4)
    V[:3, :3] = _random_rotation(rng)
    V[:3, 3] = rng.normal(size=3) + np.array([0, 0, 5.0])
    return V


@pytest.mark.parametrize("seed", range(5))
def test_viewmat_viser_round_trip(seed):
    rng = np.random.default_rng(seed)
    V = _random_viewmat(rng)
    wxyz, pos = viser_from_viewmat(V)
    assert wxyz[0] >= 0 and abs(np.linalg.norm(wxyz) - 1) < 1e-12
    np.testing.assert_allclose(viewmat_from_viser(wxyz, pos), V, atol=1e-10)
    # and the other way: a viser camera survives viewmat and back (q and -q are the same rotation)
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    p = rng.normal(size=3)
    q2, p2 = viser_from_viewmat(viewmat_from_viser(q, p))
    np.testing.assert_allclose(q2, q if q[0] >= 0 else -q, atol=1e-10)
    np.testing.assert_allclose(p2, p, atol=1e-10)


def test_quaternion_convention_matches_viser():
    """Our wxyz <-> matrix must be viser's (viser.transforms.SO3), or every view would be wrong."""
    import viser.transforms as tf
    rng = np.random.default_rng(0)
    for _ in range(10):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        np.testing.assert_allclose(quat_to_matrix(q), tf.SO3(q).as_matrix(), atol=1e-12)
        R = _random_rotation(rng)
        q_ours, q_viser = matrix_to_quat(R), tf.SO3.from_matrix(R).wxyz
        assert min(np.abs(q_ours - q_viser).max(), np.abs(q_ours + q_viser).max()) < 1e-10


def test_camera_centre_and_axes():
    """viser's position is the camera centre (maps to camera origin); +z of the camera is the view direction."""
    rng = np.random.default_rng(3)
    V = _random_viewmat(rng)
    wxyz, pos = viser_from_viewmat(V)
    np.testing.assert_allclose((V @ np.append(pos, 1))[:3], 0, atol=1e-10)
    R = quat_to_matrix(wxyz)
    ahead = pos + 2.0 * R[:, 2]  # 2 units along the viser camera's forward axis
    np.testing.assert_allclose((V @ np.append(ahead, 1))[:3], [0, 0, 2.0], atol=1e-10)


def test_intrinsics_fov_round_trip():
    K = intrinsics_from_fov(math.radians(40), 640, 480)
    assert K[0, 2] == 320 and K[1, 2] == 240 and K[0, 0] == K[1, 1]
    assert math.isclose(fov_from_intrinsics(K, 480), math.radians(40), rel_tol=1e-12)
    # half the image height subtends half the fov
    assert math.isclose(math.atan(240 / K[1, 1]), math.radians(20), rel_tol=1e-12)


def test_home_camera_reproduces_training_projection():
    """Rendering with the home viser camera projects head points exactly as the training camera did."""
    rng = np.random.default_rng(1)
    V = _random_viewmat(rng)
    W, H = 96, 128
    K = np.array([[150.0, 0, W / 2], [0, 150.0, H / 2], [0, 0, 1]])
    home = home_camera(V, K, H)
    V2 = viewmat_from_viser(home.wxyz, home.position)
    K2 = intrinsics_from_fov(home.fov, W, H)
    np.testing.assert_allclose(V2, V, atol=1e-10)
    np.testing.assert_allclose(K2, K, atol=1e-9)
    # the orbit centre lies on the optical axis at the depth of the head origin, so viser's
    # look_at does not rotate the camera, and "up" is the camera's -y
    c = (V @ np.append(home.look_at, 1))[:3]
    np.testing.assert_allclose(c[:2], 0, atol=1e-9)
    assert math.isclose(c[2], V[2, 3], rel_tol=1e-9)
    np.testing.assert_allclose(V[:3, :3] @ home.up, [0, -1, 0], atol=1e-10)


def test_head_offset_rotates_about_pivot_in_camera_axes():
    rng = np.random.default_rng(2)
    V = _random_viewmat(rng)
    pivot = rng.normal(size=3)
    np.testing.assert_allclose(head_offset_matrix(0, 0, 0, V[:3, :3], pivot), np.eye(4), atol=1e-12)
    M = head_offset_matrix(30, 0, 0, V[:3, :3], pivot)
    np.testing.assert_allclose((M @ np.append(pivot, 1))[:3], pivot, atol=1e-10)  # pivot stays
    # yaw turns about the training camera's vertical (y) axis: camera-y of every point is unchanged
    pts = rng.normal(size=(20, 3))
    before = pts @ V[:3, :3].T
    after = (pts @ M[:3, :3].T + M[:3, 3]) @ V[:3, :3].T
    np.testing.assert_allclose((after - before)[:, 1], 0, atol=1e-10)
    assert np.abs(after - before).max() > 0.1
    # roll turns about the optical axis: camera-z offsets from the pivot are unchanged
    Mr = head_offset_matrix(0, 0, 25, V[:3, :3], pivot)
    after_r = (pts @ Mr[:3, :3].T + Mr[:3, 3]) @ V[:3, :3].T
    np.testing.assert_allclose((after_r - before)[:, 2], 0, atol=1e-10)


def test_representative_view_is_the_middle_pose():
    angles = np.linspace(-0.3, 0.3, 7)
    Vs = []
    for a in angles:
        V = np.eye(4)
        V[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
        V[:3, 3] = [0, 0, 5]
        Vs.append(V)
    Vs = np.stack(Vs)[[6, 0, 5, 3, 1, 2, 4]]  # shuffled; the 0-angle view is now index 3
    assert representative_view(Vs) == 3
