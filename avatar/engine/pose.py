"""Head pose and camera-path generators of the engine (`SpeakConfig.pose`, `--camera-path`).

All generators are *sequential*: frame k depends only on frames < k and on inputs up to a fixed
look-ahead, so the offline renderer and the streaming renderer (avatar/engine/engine.py) produce the
same motion for the same audio. Camera maths (rotations, orbit, pose vectors) live in
avatar/core/camera.py.

- `replay` loops the training poses with a crossfade (or ping-pong) at the loop point, so there is
  no visible jump (TalkingGaussian replays training poses for new audio, ../shared/design/model.md §2.6;
  we only make the loop seamless); `static` holds the mean pose; `audio` generates motion whose rhythm
  follows the speech (`AudioPoseModel`); a motion .npz replays exported head poses (`PoseFromFile`).
- Camera: `orbit_at` (core) swings the camera around the head; `load_camera_path` reads a file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np

from avatar.core.camera import (
    about_pivot,
    blend_poses,
    euler_camera,
    pose_from_vector,
    pose_vectors,
)
from avatar.engine.config import LoopMode
from avatar.errors import AvatarError

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
    def fit(cls, viewmats: np.ndarray, fps: float, level_db: np.ndarray | None = None, smooth_frames: float = 1.5) -> AudioPoseModel:
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

    def generator(self, seed: int = 0) -> AudioPose:
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


class PoseFromFile:
    """`--pose FILE`: the `head` poses [N, 4, 4] of an exported motion .npz; frames past the end hold the last."""

    def __init__(self, path: str | os.PathLike):
        p = Path(path)
        try:
            z = np.load(p, allow_pickle=False)
            self.head = np.asarray(z["head"], np.float32)
        except (OSError, KeyError, ValueError) as e:
            raise AvatarError(f"{p}: --pose expects replay, static, audio or an exported motion .npz with 'head' ({type(e).__name__})") from None
        if self.head.ndim != 3 or self.head.shape[1:] != (4, 4) or len(self.head) == 0:
            raise AvatarError(f"{p}: 'head' must be [N, 4, 4]")

    def pose(self, k: int, level_db: float | None = None) -> np.ndarray:
        return self.head[min(k, len(self.head) - 1)]


class RetimedPose:
    """Play a pose generator recorded at `source_fps` at its own speed whatever the output fps."""

    def __init__(self, gen, source_fps: float, fps: float):
        self.gen, self.ratio = gen, float(source_fps) / float(fps)

    def pose(self, k: int, level_db: float | None = None) -> np.ndarray:
        return self.gen.pose(int(round(k * self.ratio)))


# ---------------------------------------------------------------------------------------------
# camera paths (world = training camera frame; C_k maps it to the new camera)


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


