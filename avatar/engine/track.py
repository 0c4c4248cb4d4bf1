"""Per-frame motion of a render: head pose, head offsets, camera move and blink, from a `SpeakConfig`.

`Motion` holds what is fitted once per avatar and config (the audio-driven pose model, the blink model,
the camera path); `Motion.track()` gives a fresh sequential `MotionTrack` for one render, which the
`FrameEngine` steps frame by frame (avatar/engine/engine.py).

Free-view camera (--orbit, --camera-path): the camera move C_k (training-camera frame -> new camera
frame) is kept apart from the head pose H_k (head -> training camera, with the --yaw/--pitch/--roll
offsets): the head is drawn with C_k H_k, the torso is built from H_k in the training-camera frame and
then moved by C_k, so head, neck and torso turn together (avatar/engine/runtime.py `Avatar.render`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from avatar.core.camera import apply_head_offset, orbit_at
from avatar.engine.blink import BlinkModel, ConstantBlink, FileBlink
from avatar.engine.config import SpeakConfig
from avatar.engine.pose import (
    AudioPoseModel,
    CameraPath,
    PoseFromFile,
    ReplayPose,
    RetimedPose,
    StaticPose,
    load_camera_path,
)
from avatar.errors import AvatarError


class Motion:
    """Motion generators of one config for one avatar's training poses [N, 4, 4] and blinks [N]."""

    def __init__(self, cfg: SpeakConfig, train_viewmats: np.ndarray, train_blink: np.ndarray, train_fps: float,
                 fps: float, level_db: np.ndarray | None = None):
        c = self.cfg = cfg
        self.train_viewmats = np.asarray(train_viewmats, np.float32)  # [N, 4, 4]
        self.train_blink = np.asarray(train_blink, np.float32)  # [N]
        self.train_fps, self.fps = float(train_fps), float(fps)
        self.level_db = level_db  # [N] training audio level (for --pose audio), or None
        self.pivot = self.train_viewmats[:, :3, 3].mean(axis=0)  # mean head position in the camera frame
        self.camera_path: CameraPath | None = load_camera_path(c.camera_path, self.pivot) if c.camera_path else None
        if c.pose not in ("replay", "static", "audio") and not Path(c.pose).is_file():
            raise AvatarError(f"--pose '{c.pose}': use replay, static, audio, or an exported motion .npz file")
        if c.blink not in ("auto", "off") and not Path(c.blink).is_file():
            raise AvatarError(f"--blink '{c.blink}': use auto, off, or a per-frame blink file (no such file)")
        self.needs_level = c.pose == "audio"
        self._pose_model: AudioPoseModel | None = None
        self._blink_model: BlinkModel | None = None

    @property
    def moving_camera(self) -> bool:
        return self.camera_path is not None or bool(self.cfg.orbit)

    def track(self) -> MotionTrack:
        """Fresh generators for one render (same seed -> same motion)."""
        return MotionTrack(self, self._make_pose(), self._make_blink())

    def _make_pose(self):
        c = self.cfg
        if c.pose == "replay":
            rp = ReplayPose(self.train_viewmats, loop=c.loop)
            return rp if abs(self.train_fps - self.fps) < 1e-6 else RetimedPose(rp, self.train_fps, self.fps)
        if c.pose == "static":
            return StaticPose(self.train_viewmats)
        if c.pose == "audio":
            if self._pose_model is None:
                lvl = self.level_db
                self._pose_model = AudioPoseModel.fit(self.train_viewmats, self.train_fps,
                                                      lvl if lvl is not None and len(lvl) == len(self.train_viewmats) else None)
            # the coarse step is ~0.2 s whatever the output fps (the AR dynamics are per step)
            return dataclasses.replace(self._pose_model, step_frames=max(1, int(round(self.fps / 5.0)))).generator(c.seed)
        return PoseFromFile(c.pose)

    def _make_blink(self):
        c = self.cfg
        if c.blink == "off":
            return ConstantBlink(float(np.median(self.train_blink)) if self.train_blink.size else 0.0)
        if c.blink == "auto":
            if self._blink_model is None:
                self._blink_model = BlinkModel.fit(self.train_blink, self.train_fps)
            return dataclasses.replace(self._blink_model, fps=self.fps).generator(c.seed)
        return FileBlink(c.blink)

    def camera(self, k: int) -> np.ndarray:
        """[4, 4] camera move of frame k (training camera -> output camera)."""
        c = self.cfg
        M = np.eye(4, dtype=np.float32)
        if self.camera_path is not None:
            M = self.camera_path.at(k)
        if c.orbit:
            M = orbit_at(k, c.orbit, self.pivot, self.fps, c.orbit_period) @ M
        return M

    def view(self, head: np.ndarray) -> np.ndarray:
        """Head -> training camera: the pose plus the --yaw/--pitch/--roll offsets (the camera move is apart)."""
        c = self.cfg
        return np.asarray(apply_head_offset(np.asarray(head, np.float32), c.yaw, c.pitch, c.roll), np.float32)


class MotionTrack:
    """One render's sequential motion: `frame(k, level_db)` for k = 0, 1, 2, ..."""

    def __init__(self, motion: Motion, pose, blink):
        self.motion, self.pose, self.blink = motion, pose, blink
        self.needs_level = motion.needs_level

    def frame(self, k: int, level_db: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(head [4, 4] before offsets, head with offsets [4, 4], camera move [4, 4], blink) of frame k."""
        head = self.pose.pose(k, level_db)
        return head, self.motion.view(head), self.motion.camera(k), self.blink.value(k)


def check_lip_scale(v: float) -> None:
    if v < 0 or not math.isfinite(v):
        raise AvatarError(f"--lip-scale must be >= 0, got {v}")
