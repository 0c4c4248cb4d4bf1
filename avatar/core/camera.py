"""Camera and pose maths shared by the engine, the viewer and the tools: one definition of each.

Conventions (avatar/core/dataset_format.py): a viewmat is the head-to-camera transform,
X_cam = R X_head + t, OpenCV camera axes (x right, y down, z forward). The "world" of a free-view
camera move C is the training camera's frame, so the final viewmat of a head pose H is C @ H.

Angles in degrees, in CAMERA axes: +yaw turns the face towards image right, +pitch nods the chin
down, +roll tilts the head clockwise in the image (`camera_rotation`). `avatar speak --yaw` and the
viewer's yaw slider both use it.

Pure numpy (scipy for the rotation means); no torch, so any layer may import it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def _rot():
    from scipy.spatial.transform import Rotation

    return Rotation


# ---------------------------------------------------------------------------------------------
# rotations


def camera_rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """[3, 3] float64 rotation in camera axes, applied as roll @ pitch @ yaw.

    yaw: about -y (y points down, so +yaw turns the face towards image right), pitch: about +x
    (+ nods the chin down), roll: about +z, the optical axis (+ tilts clockwise in the image)."""
    y, p, r = (math.radians(v) for v in (yaw_deg, pitch_deg, roll_deg))
    Ry = np.array([[math.cos(y), 0.0, -math.sin(y)], [0.0, 1.0, 0.0], [math.sin(y), 0.0, math.cos(y)]])  # about -y
    Rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(p), -math.sin(p)], [0.0, math.sin(p), math.cos(p)]])
    Rz = np.array([[math.cos(r), -math.sin(r), 0.0], [math.sin(r), math.cos(r), 0.0], [0.0, 0.0, 1.0]])
    return Rz @ Rx @ Ry


def euler_camera(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """[3, 3] float32 `camera_rotation` (what the renderer's float32 poses are built from)."""
    return camera_rotation(yaw_deg, pitch_deg, roll_deg).astype(np.float32)


def about_pivot(Rm: np.ndarray, pivot: np.ndarray) -> np.ndarray:
    """[4, 4] rigid transform rotating by `Rm` [3, 3] about the point `pivot` [3] (camera coords)."""
    M = np.eye(4, dtype=np.float32)
    M[:3, :3] = Rm
    M[:3, 3] = pivot - Rm @ pivot
    return M


def apply_head_offset(viewmat: np.ndarray, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotate the head of `viewmat` [4, 4] about its own origin (t) by camera-axis angles in degrees."""
    if yaw == 0 and pitch == 0 and roll == 0:
        return viewmat
    return about_pivot(euler_camera(yaw, pitch, roll), viewmat[:3, 3].astype(np.float32)) @ viewmat


def quat_to_matrix(wxyz: np.ndarray) -> np.ndarray:
    """[4] unit quaternion (w, x, y, z; normalised here) -> [3, 3] rotation matrix."""
    w, x, y, z = np.asarray(wxyz, np.float64) / np.linalg.norm(wxyz)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """[3, 3] rotation -> [4] wxyz with w >= 0 (Shepperd's method: pivot on the largest diagonal term)."""
    m = np.asarray(R, np.float64)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    cands = np.array([
        [1 + tr, m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]],
        [m[2, 1] - m[1, 2], 1 + m[0, 0] - m[1, 1] - m[2, 2], m[0, 1] + m[1, 0], m[0, 2] + m[2, 0]],
        [m[0, 2] - m[2, 0], m[0, 1] + m[1, 0], 1 - m[0, 0] + m[1, 1] - m[2, 2], m[1, 2] + m[2, 1]],
        [m[1, 0] - m[0, 1], m[0, 2] + m[2, 0], m[1, 2] + m[2, 1], 1 - m[0, 0] - m[1, 1] + m[2, 2]],
    ])  # [4 candidates, 4]
    q = cands[int(np.argmax([tr, m[0, 0], m[1, 1], m[2, 2]]))]
    q = q / np.linalg.norm(q)
    return -q if q[0] < 0 else q


# ---------------------------------------------------------------------------------------------
# intrinsics


def intrinsics_from_fov(fov_y: float, width: int, height: int) -> np.ndarray:
    """[3, 3] pinhole K with a centred principal point for a vertical field of view (radians)."""
    f = 0.5 * height / math.tan(0.5 * fov_y)
    return np.array([[f, 0.0, 0.5 * width], [0.0, f, 0.5 * height], [0.0, 0.0, 1.0]])


def fov_from_intrinsics(K: np.ndarray, height: int) -> float:
    """Vertical field of view (radians) of K for an image `height` pixels tall."""
    return 2.0 * math.atan(0.5 * height / float(np.asarray(K)[1, 1]))


# ---------------------------------------------------------------------------------------------
# pose tracks


def pose_vectors(viewmats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split [N, 4, 4] into (mean rotation [3, 3], mean translation [3], x [N, 6] = [rotvec(R R̄ᵀ), t - t̄])."""
    R = _rot()
    rots = R.from_matrix(viewmats[:, :3, :3].astype(np.float64))
    mean_r = rots.mean()
    t = viewmats[:, :3, 3].astype(np.float64)
    t_mean = t.mean(axis=0)
    rv = (rots * mean_r.inv()).as_rotvec()
    return mean_r.as_matrix(), t_mean, np.concatenate([rv, t - t_mean], axis=1)


def pose_from_vector(x: np.ndarray, mean_R: np.ndarray, mean_t: np.ndarray) -> np.ndarray:
    """Inverse of `pose_vectors` for one or many rows: x [..., 6] -> [..., 4, 4] float32."""
    R = _rot()
    x = np.asarray(x, np.float64)
    flat = x.reshape(-1, 6)
    rots = R.from_rotvec(flat[:, :3]) * R.from_matrix(mean_R)
    out = np.tile(np.eye(4, dtype=np.float32), (flat.shape[0], 1, 1))
    out[:, :3, :3] = rots.as_matrix()
    out[:, :3, 3] = flat[:, 3:] + mean_t
    return out.reshape(x.shape[:-1] + (4, 4))


def blend_poses(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    """Slerp/lerp between two [4, 4] poses: w = 0 -> a, w = 1 -> b."""
    R = _rot()
    from scipy.spatial.transform import Slerp

    s = Slerp([0.0, 1.0], R.from_matrix(np.stack([a[:3, :3], b[:3, :3]]).astype(np.float64)))
    out = np.eye(4, dtype=np.float32)
    out[:3, :3] = s([w]).as_matrix()[0]
    out[:3, 3] = (1 - w) * a[:3, 3] + w * b[:3, 3]
    return out


def pose_step_sizes(viewmats: np.ndarray, length_scale: float = 1.0) -> np.ndarray:
    """[N-1] frame-to-frame pose change: rotation angle (rad) + translation distance / length_scale."""
    R = _rot()
    r = R.from_matrix(viewmats[:, :3, :3].astype(np.float64))
    ang = (r[1:] * r[:-1].inv()).magnitude()
    dt = np.linalg.norm(np.diff(viewmats[:, :3, 3], axis=0), axis=1) / length_scale
    return ang + dt


# ---------------------------------------------------------------------------------------------
# orbit (world = training camera frame; C_k maps it to the new camera)


def orbit_at(k: int, degrees: float, pivot: np.ndarray, fps: float, period_s: float = 6.0) -> np.ndarray:
    """[4, 4] camera move of frame k swinging the camera around `pivot` (the mean head position, [3])
    left and right: yaw(k) = (degrees / 2) sin(2 pi k / (fps period_s)), i.e. `degrees` peak to peak.
    Rotating about the head keeps the head centred in the image."""
    yaw = 0.5 * degrees * math.sin(2 * math.pi * k / (fps * period_s))
    # moving the camera by +yaw around the head = rotating the world by -yaw about the pivot
    return about_pivot(euler_camera(-yaw, 0.0, 0.0), np.asarray(pivot, np.float32))


def orbit_path(num_frames: int, degrees: float, pivot: np.ndarray, fps: float, period_s: float = 6.0) -> np.ndarray:
    """[num_frames, 4, 4] `orbit_at` for frames 0 ... num_frames - 1."""
    if not num_frames:
        return np.zeros((0, 4, 4), np.float32)
    return np.stack([orbit_at(k, degrees, pivot, fps, period_s) for k in range(num_frames)])


# ---------------------------------------------------------------------------------------------
# output frames: the size contract of `avatar speak` / `avatar view` (issue 12)

MAX_OUTPUT_SIDE = 8192
"""Largest output side accepted (pixels): beyond it the encoder and the memory give out, not the model."""
MIN_OUTPUT_SIDE = 16
"""Smallest output side accepted (pixels)."""
FIT_MODES = ("stretch", "pad", "crop")
"""How a size whose aspect differs from the source is filled: stretch (scale x and y apart), pad (scale to
fit inside, letterbox the rest), crop (scale to cover, cut the overflow)."""


@dataclasses.dataclass(frozen=True)
class OutputFrame:
    """Where the source image lands in the output frame.

    The renderer draws a (render_w, render_h) image whose pixel u = sx * u_src + ox (v likewise) for a
    source pixel u_src, i.e. intrinsics K_render = diag(sx, sy, 1) @ K_src + offsets; that image is then
    pasted at (pad_x, pad_y) into the (width, height) output (`pad` mode; elsewhere the two coincide)."""

    width: int
    height: int
    render_w: int
    render_h: int
    sx: float
    sy: float
    ox: float = 0.0
    oy: float = 0.0
    pad_x: int = 0
    pad_y: int = 0

    def intrinsics(self, K_src: np.ndarray) -> np.ndarray:
        """[3, 3] K of the render image for the source intrinsics K_src (pixels of the source)."""
        K = np.asarray(K_src, np.float64).copy()
        K[0] = K[0] * self.sx
        K[1] = K[1] * self.sy
        K[0, 2] += self.ox
        K[1, 2] += self.oy
        return K

    @property
    def padded(self) -> bool:
        return (self.render_w, self.render_h) != (self.width, self.height)


def parse_size(text: str) -> tuple[int | None, int | None]:
    """'WxH' | 'Wx' | 'xH' | 'W' -> (W or None, H or None). One-line `ValueError` for anything else."""
    s = str(text).strip().lower().replace("×", "x")
    import re

    m = re.fullmatch(r"(\d+)?\s*(?:x\s*(\d+)?)?", s)
    if not s or m is None or (m.group(1) is None and m.group(2) is None):
        raise ValueError(f"--size '{text}': use WIDTHxHEIGHT in pixels (e.g. 1280x720), or 1280x / x720 to keep the aspect")
    w = int(m.group(1)) if m.group(1) is not None else None
    h = int(m.group(2)) if m.group(2) is not None else None
    for name, v in (("width", w), ("height", h)):
        if v is not None and not MIN_OUTPUT_SIDE <= v <= MAX_OUTPUT_SIDE:
            raise ValueError(f"--size '{text}': {name} {v} is outside {MIN_OUTPUT_SIDE}..{MAX_OUTPUT_SIDE} pixels")
    return w, h


def output_frame(src_w: int, src_h: int, size: str | tuple | None = None, scale: float | None = None,
                 fit: str | None = None) -> OutputFrame:
    """The output frame for a source of src_w x src_h pixels (issue 12's size contract).

    Default: the source size. `scale` F: round(F x source), aspect kept. `size`: 'WxH' (both given: that
    exact size; its aspect must match the source's to within the rounding of one pixel unless `fit` says how
    to fill it: stretch / pad / crop), or one side ('1280x', 'x720', aspect kept). Raises `ValueError`
    with one line for a bad request (the CLI turns it into exit code 2)."""
    if size is not None and scale is not None:
        raise ValueError("--size and --scale both given: choose one")
    if fit is not None and fit not in FIT_MODES:
        raise ValueError(f"--fit '{fit}': choose from {', '.join(FIT_MODES)}")
    w, h = (size if isinstance(size, tuple) else parse_size(size)) if size is not None else (None, None)
    if scale is not None:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"--scale {scale}: must be a positive number")
        w, h = int(round(src_w * scale)), None
    if w is not None and h is None:
        h = int(round(src_h * w / src_w))
    elif h is not None and w is None:
        w = int(round(src_w * h / src_h))
    if w is None:
        w, h = int(src_w), int(src_h)
    assert h is not None
    for name, v in (("width", w), ("height", h)):
        if not MIN_OUTPUT_SIDE <= v <= MAX_OUTPUT_SIDE:
            what = f"--scale {scale}" if scale is not None else f"--size {size}"
            raise ValueError(f"{what}: output {name} {v} is outside {MIN_OUTPUT_SIDE}..{MAX_OUTPUT_SIDE} pixels")
    sx, sy = w / src_w, h / src_h
    same_aspect = abs(round(src_h * sx) - h) <= 1 or abs(round(src_w * sy) - w) <= 1
    if same_aspect or fit == "stretch":
        return OutputFrame(w, h, w, h, sx, sy)
    if fit is None:
        raise ValueError(f"--size {w}x{h}: aspect {w / h:.3f} differs from the source's {src_w}x{src_h} ({src_w / src_h:.3f}); "
                         f"add --fit pad (letterbox), --fit crop (fill and cut) or --fit stretch, or give one side only")
    s = min(sx, sy) if fit == "pad" else max(sx, sy)
    rw, rh = int(round(src_w * s)), int(round(src_h * s))
    if fit == "pad":
        return OutputFrame(w, h, rw, rh, s, s, 0.0, 0.0, (w - rw) // 2, (h - rh) // 2)
    return OutputFrame(w, h, w, h, s, s, (w - src_w * s) / 2, (h - src_h * s) / 2)


# ---------------------------------------------------------------------------------------------
# head crop (the head layer of the renderer, avatar/engine/composite.py)


def crop_intrinsics(K: np.ndarray, x0: float, y0: float, density: float = 1.0) -> np.ndarray:
    """[3, 3] K of a crop whose top-left corner is pixel (x0, y0) of the image of K, rendered at `density`
    crop pixels per image pixel: the same focal (times density) with the principal point shifted,
    cx' = (cx - x0) density. A pixel centre u' + 0.5 of the crop is image position x0 + (u' + 0.5) / density."""
    Kc = np.asarray(K, np.float64).copy()
    Kc[0, 2] -= x0
    Kc[1, 2] -= y0
    Kc[:2] *= density
    return Kc
