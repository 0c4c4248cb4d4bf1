"""Camera conversions between viser's browser camera and the avatar's head-frame view matrices.

The viewer's 3D world IS the avatar's canonical head frame (the frame `pose.npz` maps into the
camera, see avatar/core/dataset_format.py). viser reports each browser's camera as a camera-to-world pose in
the OpenCV convention (x right, y down, z forward; viser/_viser.py `CameraHandle.wxyz`: "the R in
P_world = [R | t] p_camera"), plus a vertical field of view. The avatar renders from a
world(head)-to-camera `viewmat` (also OpenCV) and pinhole intrinsics `K`, so:

    viewmat = [[R^T, -R^T t], [0, 0, 0, 1]]        (R = rotation of wxyz, t = position)
    K       = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]],  f = (H / 2) / tan(fov / 2)

Pure numpy, no viser import, so the maths is unit-testable on its own. Rotations, quaternions and
intrinsics are the shared ones of avatar/core/camera.py (re-exported here for the viewer's callers).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from avatar.core.camera import (
    camera_rotation,
    fov_from_intrinsics,
    intrinsics_from_fov,
    matrix_to_quat,
    quat_to_matrix,
)

__all__ = ["HomeCamera", "camera_rotation", "fov_from_intrinsics", "head_offset_matrix", "home_camera",
           "intrinsics_from_fov", "matrix_to_quat", "quat_to_matrix", "representative_view", "viewmat_from_viser",
           "viser_from_viewmat"]


def viewmat_from_viser(wxyz: np.ndarray, position: np.ndarray) -> np.ndarray:
    """viser camera (camera-to-world rotation `wxyz` [4], centre `position` [3]) -> [4, 4] world-to-camera."""
    R = quat_to_matrix(wxyz)  # [3, 3] camera -> world
    t = np.asarray(position, np.float64)  # [3]
    V = np.eye(4)
    V[:3, :3] = R.T
    V[:3, 3] = -R.T @ t
    return V


def viser_from_viewmat(viewmat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[4, 4] world-to-camera -> (wxyz [4], position [3]) of viser's camera-to-world pose."""
    V = np.asarray(viewmat, np.float64)
    R = V[:3, :3].T  # camera -> world
    return matrix_to_quat(R), -R @ V[:3, 3]


def head_offset_matrix(yaw_deg: float, pitch_deg: float, roll_deg: float, train_R: np.ndarray,
                       pivot: np.ndarray) -> np.ndarray:
    """[4, 4] rigid motion of the head, in head coordinates, for a yaw/pitch/roll offset.

    The angles are read in the training camera's axes with `avatar speak --yaw/--pitch/--roll`'s
    convention (avatar/core/camera.py `camera_rotation`: +yaw turns the face towards image right), so
    "yaw" turns the head left/right as the person was filmed, whatever the canonical frame's axes are;
    the head turns about `pivot` (head frame). The rendered view is then `viewmat @ M`.
    """
    Rc = camera_rotation(yaw_deg, pitch_deg, roll_deg)  # camera axes
    Rt = np.asarray(train_R, np.float64)  # [3, 3] head -> training camera
    Rh = Rt.T @ Rc @ Rt  # the same rotation in head axes
    p = np.asarray(pivot, np.float64)
    M = np.eye(4)
    M[:3, :3] = Rh
    M[:3, 3] = p - Rh @ p
    return M


@dataclasses.dataclass
class HomeCamera:
    """The viser camera that reproduces a training view: what "reset camera" returns to."""

    wxyz: np.ndarray
    """[4] camera-to-world rotation."""
    position: np.ndarray
    """[3] camera centre in the head frame."""
    look_at: np.ndarray
    """[3] orbit centre: the point on the optical axis at the depth of the head origin."""
    up: np.ndarray
    """[3] the camera's up direction (-y) in the head frame: orbiting keeps the head upright."""
    fov: float
    """Vertical field of view in radians."""


def home_camera(viewmat: np.ndarray, K: np.ndarray, height: int) -> HomeCamera:
    """viser camera equal to the training camera `viewmat` [4, 4] / `K` [3, 3] at `height` pixels.

    `look_at` lies on the optical axis (so setting it does not rotate the camera) at the depth of
    the head origin, so orbiting turns around the head rather than around the camera.
    """
    V = np.asarray(viewmat, np.float64)
    wxyz, pos = viser_from_viewmat(V)
    R = V[:3, :3].T  # camera -> world
    depth = float(V[2, 3]) if V[2, 3] > 1e-6 else 1.0
    return HomeCamera(wxyz=wxyz, position=pos, look_at=pos + R[:, 2] * depth, up=-R[:, 1],
                      fov=fov_from_intrinsics(K, height))


def representative_view(viewmats: np.ndarray) -> int:
    """Index of the training view closest to the mean pose (the "front" view to start from).

    Distance = rotation angle to the chordal mean rotation plus relative translation offset.
    """
    V = np.asarray(viewmats, np.float64)  # [N, 4, 4]
    Rm = V[:, :3, :3].mean(0)
    U, _, Vt = np.linalg.svd(Rm)
    Rmean = U @ np.diag([1, 1, np.sign(np.linalg.det(U @ Vt))]) @ Vt  # [3, 3] projected to SO(3)
    tmean = V[:, :3, 3].mean(0)
    cos = (np.einsum("nij,ij->n", V[:, :3, :3], Rmean) - 1) / 2
    ang = np.arccos(np.clip(cos, -1, 1))  # [N]
    dt = np.linalg.norm(V[:, :3, 3] - tmean, axis=1) / max(np.linalg.norm(tmean), 1e-6)  # [N]
    return int(np.argmin(ang + dt))
