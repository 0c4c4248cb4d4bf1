"""Everything `avatar speak` drives besides the audio features: head pose, camera, blinks, silence.

All generators are *sequential*: frame k depends only on frames < k and on inputs up to a fixed
look-ahead, so the offline renderer and the streaming renderer (avatar/engine/speak.py) produce the same
motion for the same audio.

Conventions (avatar/core/dataset_format.py): a viewmat is the head-to-camera transform, X_cam = R X_head + t,
OpenCV camera axes (x right, y down, z forward). The "world" is the training camera's frame, so a
camera move C (world -> new camera) gives the final viewmat C @ H for a head pose H.

- Head pose (`PoseMode`): `replay` loops the training poses with a crossfade (or ping-pong) at the
  loop point, so there is no visible jump (TalkingGaussian replays training poses for new audio,
  ../shared/design/model.md §2.6; we only make the loop seamless); `static` holds the mean pose;
  `audio` generates motion whose rhythm follows the speech (`AudioPoseModel`).
- Offsets `--yaw/--pitch/--roll` rotate the head about its own origin, in camera axes.
- Camera: `orbit_path` swings the camera around the head; `load_camera_path` reads a file.
- Blinks (`BlinkModel`): a renewal process whose rate, inter-blink spread, duration and shape are
  measured on the training clip's blink signal.
- Silence: `SpeechGate` marks non-speech frames (silero-vad, or an energy threshold) and
  `close_mouth` swaps their feature rows for the training clip's own silent, closed-mouth rows,
  the mitigation for "mouth ajar on silence" in ../shared/design/model.md §5 (TG #21, SyncTalk #64).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Literal

import numpy as np

from avatar.core.audio import SAMPLE_RATE
from avatar.errors import AvatarError

PoseMode = Literal["replay", "static", "audio"]
LoopMode = Literal["crossfade", "pingpong"]
BlinkMode = Literal["auto", "off"]
VadKind = Literal["silero", "energy"]


# ---------------------------------------------------------------------------------------------
# rotations / poses


def _rot():
    from scipy.spatial.transform import Rotation

    return Rotation


def euler_camera(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """[3, 3] rotation in camera axes: +yaw turns the face towards image right, +pitch nods the chin
    down, +roll tilts the head clockwise in the image. Applied as roll @ pitch @ yaw."""
    R = _rot()
    yaw = R.from_rotvec(np.array([0.0, -1.0, 0.0]) * math.radians(yaw_deg))
    pitch = R.from_rotvec(np.array([1.0, 0.0, 0.0]) * math.radians(pitch_deg))
    roll = R.from_rotvec(np.array([0.0, 0.0, 1.0]) * math.radians(roll_deg))
    return (roll * pitch * yaw).as_matrix().astype(np.float32)


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
# head pose generators (sequential: `pose(k)` for k = 0, 1, 2, ...)


class ReplayPose:
    """Loop the training poses without a jump at the loop point.

    `crossfade`: the cycle is N - L frames long; its first L frames blend the clip's last L frames
    (which continue from where the cycle ended) into its first L frames, so both seams are continuous.
    `pingpong`: play forwards then backwards (continuous position, velocity reverses at the ends).
    """

    def __init__(self, viewmats: np.ndarray, loop: LoopMode = "crossfade", crossfade_frames: int = 25, smooth_frames: float = 0.0):
        v = np.asarray(viewmats, np.float32)
        if v.ndim != 3 or v.shape[1:] != (4, 4) or v.shape[0] == 0:
            raise AvatarError(f"training poses must be [N, 4, 4], got {tuple(v.shape)}")
        if smooth_frames > 0 and v.shape[0] > 3:
            v = smooth_poses(v, smooth_frames)
        n = v.shape[0]
        self.loop = loop
        if loop == "pingpong" or n < 4:
            cyc = np.concatenate([v, v[-2:0:-1]]) if n > 2 else v
        else:
            L = int(max(1, min(crossfade_frames, n // 3)))
            m = n - L
            cyc = v[:m].copy()
            for j in range(L):
                w = (j + 1) / (L + 1)
                cyc[j] = blend_poses(v[m + j], v[j], w)
        self.cycle = cyc  # [M, 4, 4]

    def pose(self, k: int, level_db: float | None = None) -> np.ndarray:
        return self.cycle[k % self.cycle.shape[0]]


class StaticPose:
    """Hold one pose: the training clip's mean rotation and translation."""

    def __init__(self, viewmats: np.ndarray):
        mean_R, mean_t, _ = pose_vectors(np.asarray(viewmats, np.float32))
        self.M = np.eye(4, dtype=np.float32)
        self.M[:3, :3] = mean_R
        self.M[:3, 3] = mean_t

    def pose(self, k: int, level_db: float | None = None) -> np.ndarray:
        return self.M


def smooth_poses(viewmats: np.ndarray, sigma_frames: float) -> np.ndarray:
    """Gaussian-smooth a pose track in the tangent space of its mean (ER-NeRF's `--smooth_path`
    averages 7 frames, ../shared/design/model.md §3)."""
    from scipy.ndimage import gaussian_filter1d

    mean_R, mean_t, x = pose_vectors(viewmats)
    xs = gaussian_filter1d(x, sigma_frames, axis=0, mode="nearest")
    return pose_from_vector(xs, mean_R, mean_t)


def speech_level(level_db: np.ndarray | float, floor_db: float = -60.0, ref_db: float = -20.0) -> np.ndarray:
    """Map an RMS level in dBFS to [0, 1] (0 = silence at `floor_db`, 1 = loud speech at `ref_db`)."""
    return np.clip((np.asarray(level_db, np.float64) - floor_db) / (ref_db - floor_db), 0.0, 1.0)


@dataclasses.dataclass
class AudioPoseModel:
    """Head motion driven by speech loudness, learned per person from the training clip.

    The pose (x = [rotvec, t] around the mean pose, 6 dims) is modelled at a coarse rate of
    `step_frames` video frames (~5 Hz, where head sway lives) as a 2nd-order ARX process per dim:

        X_j = a1 X_{j-1} + a2 X_{j-2} + b0 (U_{j-2} - mean U) + b1 (U_{j-2} - U_{j-3}) + sigma(U_{j-2}) eps_j,
        sigma(U)^2 = v0 + v1 U,  eps ~ N(0, 1),  U_j = mean speech level in [0, 1] over coarse step j

    and rendered at full rate with a uniform quadratic B-spline through the coarse values (C1-smooth,
    no visible steps). The speech level drives the motion with a two-step (~0.2-0.4 s) reaction lag,
    which keeps the generator causal for streaming.
    a (the person's own sway rhythm) comes from Yule-Walker on the smoothed, decimated training poses
    (stable, and its stationary variance equals the clip's), b (loudness and onsets pushing the head,
    e.g. nods on stressed syllables) and v (more motion while talking than while listening) from least
    squares on the innovations against the training audio's level; the innovation scale is finally
    calibrated by simulation so the generated spread matches the clip's.
    This follows the finding that head motion is linearly predictable from prosody (Yehia, Kuratate,
    Vatikiotis-Bateson, "Linking facial animation, head motion and speech acoustics", J. Phonetics 30(3),
    2002) and that its amplitude rises with speech activity (Busso et al., "Rigid head motion in
    expressive speech animation", IEEE TASLP 15(3), 2007); the stochastic coarse-rate ARX form is our
    own simplification. Output is soft-clipped to (a margin around) the training range so the renderer
    never sees a pose far outside what it was trained on.
    """

    fps: float
    mean_R: np.ndarray  # [3, 3]
    mean_t: np.ndarray  # [3]
    a: np.ndarray  # [6, 2]
    b: np.ndarray  # [6, 2]
    c: np.ndarray  # [6, 2] log sigma at U = 0 and log(sigma(1) / sigma(0))
    lo: np.ndarray  # [6] soft-clip bounds
    hi: np.ndarray  # [6]
    u_mean: float = 0.0
    """Mean training speech level (the b0 term acts on U - u_mean)."""
    step_frames: int = 5
    """Video frames per coarse step."""

    @classmethod
    def fit(cls, viewmats: np.ndarray, fps: float, level_db: np.ndarray | None = None, smooth_frames: float = 1.5) -> "AudioPoseModel":
        """Fit on training poses [N, 4, 4] and (optionally) the training audio level [N] dBFS."""
        from scipy.ndimage import gaussian_filter1d

        v = np.asarray(viewmats, np.float32)
        mean_R, mean_t, x = pose_vectors(v)
        n = x.shape[0]
        D = max(1, int(round(fps / 5.0)))
        u = speech_level(level_db) if level_db is not None and len(level_db) == n else np.zeros(n)
        a = np.zeros((6, 2))
        b = np.zeros((6, 2))
        c = np.zeros((6, 2))
        lo = np.percentile(x, 1, axis=0) if n else np.zeros(6)
        hi = np.percentile(x, 99, axis=0) if n else np.zeros(6)
        mid, half = (hi + lo) / 2, np.maximum((hi - lo) / 2, 1e-9)
        lo, hi = mid - 1.5 * half, mid + 1.5 * half  # soft-clip bounds: rarely reached, so no bouncing
        m = n // D
        if m < 8:  # too short to fit dynamics: a slow, small random sway inside the range
            a[:, 0] = 0.9
            c[:, 0] = np.log(np.maximum(x.std(axis=0) if n > 1 else np.full(6, 1e-3), 1e-9) * 0.3)
            return cls(fps, mean_R, mean_t, a, b, c, lo, hi, 0.0, D)
        xs = gaussian_filter1d(x, max(smooth_frames, D / 2.0), axis=0, mode="nearest") if smooth_frames > 0 else x
        X = xs[: m * D].reshape(m, D, 6)[:, D // 2]  # [m, 6] coarse poses (centre of each step)
        U = u[: m * D].reshape(m, D).mean(axis=1)  # [m] coarse speech level
        has_audio = U.std() > 1e-3
        for i in range(6):
            xi = X[:, i] - X[:, i].mean()
            r = np.array([np.dot(xi[: m - j], xi[j:]) / m for j in range(3)])
            if r[0] <= 1e-18:
                a[i] = [0.9, 0.0]
                c[i] = [math.log(1e-9), 0.0]
                continue
            a_i = _stabilise_ar(np.linalg.solve(np.array([[r[0], r[1]], [r[1], r[0]]]) + 1e-12 * np.eye(2), r[1:]))
            a[i] = a_i
            e = xi[3:] - a_i[0] * xi[2:-1] - a_i[1] * xi[1:-2]  # innovations of steps 3..m-1
            if has_audio:
                Ul = U[1:-2]  # U_{j-2}
                Ud = U[1:-2] - U[:-3]  # U_{j-2} - U_{j-3}
                A = np.stack([Ul - U.mean(), Ud], axis=1)
                b[i] = np.linalg.lstsq(A, e, rcond=None)[0]
                e = e - A @ b[i]
                V = np.stack([np.ones_like(Ul), Ul], axis=1)
                v0, v1 = np.linalg.lstsq(V, e ** 2, rcond=None)[0]
                s_quiet = max(v0, 0.05 * e.var(), 1e-24)
                s_loud = max(v0 + v1, 0.05 * e.var(), 1e-24)
                c[i] = [0.5 * math.log(s_quiet), 0.5 * math.log(s_loud / s_quiet)]
            else:
                c[i] = [0.5 * math.log(max(e.var(), 1e-24)), 0.0]
        model = cls(fps, mean_R, mean_t, a, b, c, lo, hi, float(U.mean()) if has_audio else 0.0, D)
        model._calibrate(x, u)
        return model

    def _calibrate(self, x: np.ndarray, u: np.ndarray, rounds: int = 3, sims: int = 2) -> None:
        """Match the generated spread to the training clip's: simulate on the training level track and
        rescale each dimension's innovation (spline smoothing, loudness terms and the soft clip change it)."""
        target = x.std(axis=0)
        for _ in range(rounds):
            got = np.mean([AudioPose(self, seed=1000 + s).simulate(u).std(axis=0) for s in range(sims)], axis=0)
            ratio = np.clip(target / np.maximum(got, 1e-12), 0.2, 5.0)
            self.c[:, 0] += np.log(np.where(target > 1e-9, ratio, 1.0))

    def generator(self, seed: int = 0) -> "AudioPose":
        return AudioPose(self, seed)

    def to_dict(self) -> dict:
        return {k: np.asarray(v).tolist() if isinstance(v, np.ndarray) else v for k, v in dataclasses.asdict(self).items()}


def _stabilise_ar(a: np.ndarray, max_root: float = 0.995) -> np.ndarray:
    """Shrink AR(2) coefficients until both roots of z^2 - a1 z - a2 lie inside |z| <= max_root."""
    a = np.asarray(a, np.float64).copy()
    for _ in range(60):
        roots = np.roots([1.0, -a[0], -a[1]])
        if np.all(np.abs(roots) <= max_root):
            return a
        a *= 0.97
    return np.array([0.9, 0.0])


class AudioPose:
    """Sequential sampler of `AudioPoseModel`: `pose(k, level_db)` for k = 0, 1, ... in order."""

    def __init__(self, model: AudioPoseModel, seed: int = 0):
        self.m = model
        self.rng = np.random.default_rng(seed)
        self.k = 0
        self.span = np.maximum((model.hi - model.lo) / 2, 1e-9)
        self.centre = (model.hi + model.lo) / 2
        self.X = [np.zeros(6), np.zeros(6)]  # coarse values X_{-1}, X_0 (start at the mean pose)
        self.U: list[float] = []  # completed coarse speech levels U_0, U_1, ...
        self._u_sum = 0.0
        self._off = 0

    def pose(self, k: int, level_db: float | None = None) -> np.ndarray:
        if k != self.k:
            raise AvatarError(f"audio pose generator must be stepped in order (asked frame {k}, expected {self.k})")
        u = float(speech_level(level_db if level_db is not None else -100.0))
        return pose_from_vector(self.step(u), self.m.mean_R, self.m.mean_t)

    def simulate(self, u: np.ndarray) -> np.ndarray:
        """[N, 6] pose vectors for a speech-level track u [N] in [0, 1] (from the current state)."""
        return np.stack([self.step(float(v)) for v in u]) if len(u) else np.zeros((0, 6))

    def _coarse(self, j: int) -> np.ndarray:
        """Generate X_j (j >= 1) from X_{j-1}, X_{j-2} and U_{j-2} (known: that step is complete)."""
        m = self.m
        Ul = self.U[j - 2] if j - 2 >= 0 else 0.0
        Up = self.U[j - 3] if j - 3 >= 0 else Ul
        x1, x2 = self.X[-1], self.X[-2]
        eps = self.rng.standard_normal(6)
        x = (m.a[:, 0] * x1 + m.a[:, 1] * x2 + m.b[:, 0] * (Ul - m.u_mean) + m.b[:, 1] * (Ul - Up)
             + np.exp(m.c[:, 0] + m.c[:, 1] * Ul) * eps)
        return self.centre + self.span * np.tanh((x - self.centre) / self.span)  # smooth soft clip

    def step(self, u: float) -> np.ndarray:
        """Advance one frame with speech level u in [0, 1]; returns the pose vector x [6]."""
        D = self.m.step_frames
        k = self.k
        j, r = divmod(k, D)
        if r == 0 and k > 0:  # a coarse step just completed
            self.U.append(self._u_sum / D)
            self._u_sum = 0.0
        # self.X[i] holds coarse step i - 1 + self._off; we need steps j-1, j, j+1
        while len(self.X) + self._off < j + 3:
            self.X.append(self._coarse(len(self.X) - 1 + self._off))
        i = j - self._off
        p0, p1, p2 = self.X[i], self.X[i + 1], self.X[i + 2]
        t = r / D
        x = 0.5 * (1 - t) ** 2 * p0 + (0.5 + t - t * t) * p1 + 0.5 * t * t * p2  # uniform quadratic B-spline
        if i >= 2:  # keep memory bounded on hour-long audio (the AR needs only the last two values)
            del self.X[0]
            self._off += 1
        self._u_sum += u
        self.k += 1
        return x


# ---------------------------------------------------------------------------------------------
# camera paths (world = training camera frame; C_k maps it to the new camera)


def orbit_path(num_frames: int, degrees: float, pivot: np.ndarray, fps: float, period_s: float = 6.0) -> np.ndarray:
    """[num_frames, 4, 4] camera moves swinging the camera around `pivot` (the mean head position, [3])
    left and right: yaw(k) = (degrees / 2) sin(2 pi k / (fps period_s)), i.e. `degrees` peak to peak.
    Rotating about the head keeps the head centred in the image."""
    k = np.arange(num_frames)
    return np.stack([orbit_at(int(i), degrees, pivot, fps, period_s) for i in k]) if num_frames else np.zeros((0, 4, 4), np.float32)


def orbit_at(k: int, degrees: float, pivot: np.ndarray, fps: float, period_s: float = 6.0) -> np.ndarray:
    """One frame of `orbit_path` (streaming)."""
    yaw = 0.5 * degrees * math.sin(2 * math.pi * k / (fps * period_s))
    # moving the camera by +yaw around the head = rotating the world by -yaw about the pivot
    return about_pivot(euler_camera(-yaw, 0.0, 0.0), np.asarray(pivot, np.float32))


class CameraPath:
    """Per-frame camera moves C_k from a file; frames past the end hold the last entry.

    Accepted files:
    - `.json`: a list of 4x4 matrices (world -> camera, world = training camera; identity = the training
      camera), or `{"camera": [...]}` / `{"viewmats": [...]}` with such a list, or a list of
      `{"yaw": deg, "pitch": deg, "roll": deg}` camera rotations about the head (like --orbit).
    - `.npy` [N, 4, 4] or `.npz` with `camera` [N, 4, 4] (what `--export-motion` writes).
    """

    def __init__(self, moves: np.ndarray, source: str = ""):
        self.moves = moves.astype(np.float32)
        self.source = source

    def at(self, k: int) -> np.ndarray:
        return self.moves[min(k, self.moves.shape[0] - 1)]


def load_camera_path(path: str | os.PathLike, pivot: np.ndarray) -> CameraPath:
    p = Path(path)
    if not p.is_file():
        raise AvatarError(f"{p}: no such camera-path file")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif p.suffix == ".npz":
            z = np.load(p, allow_pickle=False)
            key = "camera" if "camera" in z else ("viewmats" if "viewmats" in z else None)
            if key is None:
                raise AvatarError(f"{p}: .npz needs a 'camera' [N, 4, 4] array (as written by --export-motion)")
            arr = z[key]
        else:
            obj = json.loads(p.read_text())
            if isinstance(obj, dict):
                obj = obj.get("camera", obj.get("viewmats"))
            if not isinstance(obj, list) or not obj:
                raise AvatarError(f"{p}: expected a non-empty JSON list of 4x4 matrices or of {{yaw, pitch, roll}} objects")
            if isinstance(obj[0], dict):
                pv = np.asarray(pivot, np.float32)
                arr = np.stack([about_pivot(euler_camera(-float(d.get("yaw", 0)), -float(d.get("pitch", 0)), -float(d.get("roll", 0))), pv)
                                for d in obj])
            else:
                arr = np.asarray(obj, np.float32)
    except (ValueError, TypeError, KeyError, OSError, json.JSONDecodeError) as e:
        raise AvatarError(f"{p}: unreadable camera path ({type(e).__name__}: {str(e)[:100]})") from None
    arr = np.asarray(arr, np.float32)
    if arr.ndim != 3 or arr.shape[1:] != (4, 4) or arr.shape[0] == 0 or not np.isfinite(arr).all():
        raise AvatarError(f"{p}: camera path must be N 4x4 matrices, got shape {tuple(arr.shape)}")
    return CameraPath(arr, str(p))


# ---------------------------------------------------------------------------------------------
# blinks


@dataclasses.dataclass
class BlinkModel:
    """Blink statistics of the training clip: rate, inter-blink interval spread, shape, open level.

    Events are found with a hysteresis threshold on the person-normalised blink signal (1 = closed).
    Intervals are drawn from a gamma distribution with the measured mean and coefficient of variation
    (inter-blink intervals are right-skewed, roughly gamma; Ponder & Kennedy 1927, Bentivoglio et al.
    1997). When the clip holds fewer than two blinks, the textbook values are used: 17 blinks/min
    during rest/speech (Bentivoglio et al., Mov. Disord. 12(6), 1997) and ~0.25 s per blink.
    """

    fps: float
    mean_interval_s: float
    cv: float
    template: np.ndarray  # [L] blink profile (0 = baseline, 1 = peak)
    peak: float
    baseline: float
    learned: bool

    @classmethod
    def fit(cls, blink: np.ndarray, fps: float) -> "BlinkModel":
        b = np.asarray(blink, np.float64).ravel()
        b = np.nan_to_num(b, nan=0.0)
        n = b.shape[0]
        baseline = float(np.median(b)) if n else 0.0
        events = _blink_events(b, hi=max(0.5, baseline + 0.3), lo=max(0.3, baseline + 0.15))
        default_len = max(3, int(round(0.25 * fps)))
        if len(events) >= 2:
            onsets = np.array([e[0] for e in events], np.float64)
            intervals = np.diff(onsets) / fps
            mean_i = float(intervals.mean()) if len(intervals) else n / fps
            cv = float(np.clip(intervals.std() / max(mean_i, 1e-6), 0.2, 1.5)) if len(intervals) > 1 else 0.5
            # Template: mean profile around each event's peak, baseline-subtracted, normalised to peak 1.
            lengths = [e[1] - e[0] for e in events]
            half = int(np.clip(np.median(lengths), 1, fps)) + 1
            prof = []
            for s, e in events:
                pk = s + int(np.argmax(b[s:e]))
                if pk - half >= 0 and pk + half < n:
                    prof.append(b[pk - half:pk + half + 1])
            peak = float(np.median([b[s:e].max() for s, e in events]))
            if prof:
                tpl = np.mean(prof, axis=0) - baseline
                tpl = np.clip(tpl / max(tpl.max(), 1e-6), 0.0, 1.0)
                nz = np.nonzero(tpl > 0.02)[0]  # trim the flat (open-eye) ends
                tpl = tpl[nz[0]:nz[-1] + 1] if len(nz) else tpl
            else:
                tpl = np.sin(np.linspace(0, np.pi, default_len)) ** 2
            return cls(fps, mean_i, cv, tpl.astype(np.float32), peak, baseline, True)
        peak = float(b.max()) if n and b.max() > baseline + 0.3 else 1.0
        tpl = np.sin(np.linspace(0, np.pi, default_len + 2)[1:-1]) ** 2
        return cls(fps, 60.0 / 17.0, 0.5, tpl.astype(np.float32), peak, baseline, False)

    @property
    def rate_per_min(self) -> float:
        return 60.0 / self.mean_interval_s

    def generator(self, seed: int = 0) -> "BlinkTrack":
        return BlinkTrack(self, seed)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["template"] = self.template.tolist()
        d["rate_per_min"] = self.rate_per_min
        return d


def _blink_events(b: np.ndarray, hi: float, lo: float) -> list[tuple[int, int]]:
    """Half-open frame ranges where b rises above `hi` (and until it falls below `lo`)."""
    out = []
    on = False
    start = 0
    for k, v in enumerate(b):
        if not on and v > hi:
            on, start = True, k
            while start > 0 and b[start - 1] > lo:
                start -= 1
        elif on and v < lo:
            on = False
            out.append((start, k))
    if on:
        out.append((start, len(b)))
    return out


class BlinkTrack:
    """Lazily generated blink signal: `value(k)` (any k, deterministic for a seed)."""

    def __init__(self, model: BlinkModel, seed: int = 0):
        self.m = model
        self.rng = np.random.default_rng(seed)
        self.onsets: list[int] = []
        shape = 1.0 / max(model.cv, 1e-3) ** 2
        self._shape, self._scale = shape, model.mean_interval_s / shape
        self._next = self._draw() * 0.5  # the first blink comes a little sooner than average

    def _draw(self) -> float:
        return float(self.rng.gamma(self._shape, self._scale))

    def value(self, k: int) -> float:
        m = self.m
        L = len(m.template)
        min_gap = L + 2
        while not self.onsets or self.onsets[-1] <= k + L:
            onset = int(round(self._next * m.fps))
            if self.onsets and onset < self.onsets[-1] + min_gap:
                onset = self.onsets[-1] + min_gap
            self.onsets.append(onset)
            self._next = onset / m.fps + self._draw()
        v = 0.0
        for s in reversed(self.onsets):
            if s + L <= k - L:
                break
            if s <= k < s + L:
                v = max(v, float(m.template[k - s]))
        return m.baseline + (m.peak - m.baseline) * v


class ConstantBlink:
    """`--blink off`: eyes held at the training clip's open level."""

    def __init__(self, level: float):
        self.level = float(level)

    def value(self, k: int) -> float:
        return self.level


class FileBlink:
    """`--blink FILE`: per-frame values from .npy/.txt/.json (a list) or the `blink` array of an
    exported motion .npz; frames past the end hold the last value."""

    def __init__(self, path: str | os.PathLike):
        p = Path(path)
        if not p.is_file():
            raise AvatarError(f"{p}: no such blink file (give auto, off, or a .npy/.txt/.json/.npz file)")
        try:
            if p.suffix == ".npz":
                z = np.load(p, allow_pickle=False)
                if "blink" not in z:
                    raise AvatarError(f"{p}: .npz has no 'blink' array")
                arr = z["blink"]
            elif p.suffix == ".npy":
                arr = np.load(p, allow_pickle=False)
            elif p.suffix == ".json":
                obj = json.loads(p.read_text())
                arr = obj.get("blink") if isinstance(obj, dict) else obj
            else:
                arr = np.loadtxt(p, dtype=np.float32, ndmin=1)
            arr = np.asarray(arr, np.float32).ravel()
        except (ValueError, TypeError, OSError, json.JSONDecodeError) as e:
            raise AvatarError(f"{p}: unreadable blink file ({type(e).__name__}); expected one value per frame") from None
        if arr.size == 0 or not np.isfinite(arr).all():
            raise AvatarError(f"{p}: blink file is empty or holds NaN/inf")
        self.values = np.clip(arr, 0.0, 1.0)

    def value(self, k: int) -> float:
        return float(self.values[min(k, len(self.values) - 1)])


# ---------------------------------------------------------------------------------------------
# silence -> closed mouth


class SpeechGate:
    """Streaming per-frame speech detector: `push(wav16k)` then `frames_ready()` / `speech(k)`.

    `silero`: silero-vad's probability per 512-sample (32 ms) window, computed chunk by chunk with
    the model's own state (identical to `get_speech_timestamps`' internal pass, so offline and
    streaming agree); a frame's probability is the max over windows overlapping its 1/fps span.
    `energy`: RMS level over the frame's span above `energy_db` dBFS.
    Then hysteresis (on >= `threshold`, off < `threshold - 0.15`) and padding: a frame counts as
    speech if any frame within [k - pad_before, k + pad_after] is speech, so plosive onsets and
    word ends keep their mouth shapes. `pad_after` frames is this gate's look-ahead.
    """

    WINDOW = 512
    RATE = SAMPLE_RATE

    def __init__(self, fps: float, kind: VadKind = "silero", threshold: float = 0.5, energy_db: float = -45.0,
                 pad_before: int = 3, pad_after: int = 2):
        self.fps = float(fps)
        self.kind = kind
        self.threshold = float(threshold)
        self.energy_db = float(energy_db)
        self.pad_before, self.pad_after = int(pad_before), int(pad_after)
        self._buf = np.zeros(0, np.float32)
        self._consumed = 0  # samples fed to the model
        self._probs: list[float] = []  # one per 512-sample window
        self._raw: list[bool] = []  # per-frame raw decision (after hysteresis)
        self._state = False
        self._ended = False
        self._total = None
        self._ebuf = np.zeros(0, np.float32)  # energy mode: samples from absolute index _ebuf_start on
        self._ebuf_start = 0
        self._model = None
        if kind == "silero":
            import torch
            from silero_vad import load_silero_vad

            self._torch = torch
            self._model = load_silero_vad()
            self._model.reset_states()
        elif kind != "energy":
            raise AvatarError(f"unknown voice-activity detector '{kind}' (silero or energy)")

    def push(self, wav: np.ndarray) -> None:
        wav = np.asarray(wav, np.float32).ravel()
        if self.kind == "energy":
            self._ebuf = np.concatenate([self._ebuf, wav])
            self._consumed += wav.shape[0]
            return
        self._buf = np.concatenate([self._buf, wav])
        n = (self._buf.shape[0] // self.WINDOW) * self.WINDOW
        if n:
            with self._torch.no_grad():
                for i in range(0, n, self.WINDOW):
                    x = self._torch.from_numpy(self._buf[i:i + self.WINDOW].copy())
                    self._probs.append(float(self._model(x, self.RATE)))
            self._buf = self._buf[n:]
            self._consumed += n

    def end(self) -> None:
        """No more audio: pad the last partial window with silence."""
        if self._ended:
            return
        self._total = self._consumed + (self._buf.shape[0] if self.kind == "silero" else 0)
        if self.kind == "silero" and self._buf.shape[0]:
            self.push(np.zeros(self.WINDOW - self._buf.shape[0], np.float32))
        self._ended = True

    def _frame_raw_available(self) -> int:
        """Frames whose raw decision can be made from the audio seen so far."""
        if self._ended:
            return 10 ** 12
        # frame k needs audio up to (k + 0.5) / fps
        t = self._consumed / self.RATE
        return max(0, int(math.floor(t * self.fps - 0.5 + 1e-9)) + 1) if t > 0 else 0

    def _decide(self, k: int) -> bool:
        a = (k - 0.5) / self.fps
        b = (k + 0.5) / self.fps
        if self.kind == "energy":
            ia = max(0, int(round(a * self.RATE)) - self._ebuf_start)
            ib = max(0, int(round(b * self.RATE)) - self._ebuf_start)
            seg = self._ebuf[ia:ib].astype(np.float64)
            e = float((seg ** 2).sum()) / max(round((b - a) * self.RATE), 1)
            p = 1.0 if 10 * math.log10(e + 1e-10) > self.energy_db else 0.0
            drop = max(0, int(round(b * self.RATE)) - 1 - self._ebuf_start - int(self.RATE / self.fps))
            if drop > 0:  # keep memory bounded: the next frame starts after this one's centre
                self._ebuf = self._ebuf[drop:]
                self._ebuf_start += drop
        else:
            wa = max(0, int(math.floor(a * self.RATE / self.WINDOW)))
            wb = int(math.ceil(b * self.RATE / self.WINDOW))
            seg = self._probs[wa:min(wb, len(self._probs))]
            p = max(seg) if seg else 0.0
        if self._state:
            self._state = p >= self.threshold - 0.15
        else:
            self._state = p >= self.threshold
        return self._state

    def advance(self, upto: int) -> None:
        """Compute raw decisions for frames < upto (as far as the audio allows)."""
        lim = min(upto, self._frame_raw_available())
        while len(self._raw) < lim:
            self._raw.append(self._decide(len(self._raw)))

    def ready(self, k: int, num_frames: int | None = None) -> bool:
        """Whether speech(k) is final: raw decisions known up to k + pad_after (or the clip end)."""
        need = k + self.pad_after + 1
        if num_frames is not None:
            need = min(need, num_frames)
        self.advance(need)
        return len(self._raw) >= need

    def speech(self, k: int) -> bool:
        a = max(0, k - self.pad_before)
        b = min(len(self._raw), k + self.pad_after + 1)
        return any(self._raw[a:b])


def silent_rows(train_feats: np.ndarray, level_db: np.ndarray | None, mouth_open: np.ndarray | None, k: int = 8) -> np.ndarray:
    """[D] the training clip's feature of silence with a closed mouth.

    Scores each training frame by rank of audio level plus rank of mouth opening (lower = better),
    averages the `k` best rows. With neither signal, falls back to the lowest-energy-looking rows
    (smallest feature norm), a weak but deterministic choice.
    """
    f = np.asarray(train_feats, np.float32)
    n = f.shape[0]
    score = np.zeros(n)
    used = False
    for sig in (level_db, mouth_open):
        if sig is not None and len(sig) == n:
            score += np.argsort(np.argsort(np.asarray(sig, np.float64))) / max(n - 1, 1)
            used = True
    if not used:
        score = np.linalg.norm(f, axis=1)
    best = np.argsort(score, kind="stable")[: max(1, min(k, n))]
    return f[best].mean(axis=0)


def close_mouth(row: np.ndarray, silent: np.ndarray, speech_weight: float) -> np.ndarray:
    """Blend one feature row towards the silent row: weight 1 keeps speech, 0 gives silence."""
    if speech_weight >= 1.0:
        return row
    return speech_weight * row + (1.0 - speech_weight) * silent
