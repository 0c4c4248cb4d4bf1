"""Per-playback and per-browser state of the viewer, the adaptive-resolution rule, and small helpers
reading an `Avatar` (viewer/server.py uses them)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from avatar.viewer.clips import Clip

TARGET_FPS_PLAYING = 12.0
"""Frame rate the adaptive resolution aims for while audio plays (CPU)."""
TARGET_FPS_MOVING = 10.0
"""Frame rate the adaptive resolution aims for while the camera or a slider moves."""
SETTLE_S = 0.3
"""After this long without a change, one full-resolution frame replaces the reduced one."""
MIN_SCALE = 0.2
"""Lowest adaptive resolution factor."""
MAX_RENDER_WIDTH = 2048
AUDIO_REPORT_LATENCY_S = 0.01
"""Typical delay between a sync click in the browser and the server seeing it (loopback)."""
SYNC_MARK_S = 0.3
"""Audio time of the browser's first audio-clock mark (see `play`)."""
SYNC_PERIOD_S = 0.5
"""Audio time between the following marks."""
MAX_LATENCY_COMP_S = 0.25
"""Cap on the render-latency look-ahead (the first, warm-up render can take a second)."""
SYNC_TIMEOUT_S = 3.0
"""Start the clock anyway when no browser reports that the audio started (autoplay blocked)."""


@dataclasses.dataclass
class Playback:
    clip: Clip
    windows: Any
    """[N, W, D] feature windows of the clip from the engine (`Speaker.windows`)."""
    sent: float
    """time.monotonic() when the audio was sent to the browsers."""
    start: float | None = None
    """time.monotonic() at which audio time 0 played in the browser; None until a browser reports
    (through the hidden sync button) that playback started."""
    sync_client: int | None = None
    """The browser whose audio clock drives this playback (the first to report)."""
    sync_clicks: int = 0

    def clock_start(self, now: float) -> float:
        """Audio time 0 on the server clock; falls back to the send time when no browser reports."""
        if self.start is None and now - self.sent > SYNC_TIMEOUT_S:
            self.start = self.sent + 0.05
        return self.start if self.start is not None else now

    @property
    def num_frames(self) -> int:
        return int(self.windows.shape[0])


@dataclasses.dataclass
class ClientState:
    """Per-browser render state."""

    client: Any
    stats: Any = None
    dirty: bool = True
    last_change: float = 0.0
    scale: float = 1.0
    last_scaled: bool = False
    frame_interval_ema: float = 0.0
    render_s_ema: float = 0.0
    last_push: float = 0.0
    frames: int = 0
    last_size: tuple[int, int] = (0, 0)
    last_stats: float = 0.0
    last_rgb: np.ndarray | None = None
    last_k: int = -1
    """Audio frame shown last (-1: idle face)."""


def adapt_scale(scale: float, render_s: float, target_s: float, gain: float = 0.7) -> float:
    """Next resolution factor (of the height) after a frame that took `render_s` at `scale`.

    Render cost grows with the pixel count, i.e. with scale^2, so the scale that meets the target
    is scale * sqrt(target / measured); `gain` < 1 damps the step so timing noise does not make
    the resolution flicker. Clamped to [MIN_SCALE, 1].
    """
    step = math.sqrt(target_s / max(render_s, 1e-4)) ** gain
    return float(np.clip(scale * step, MIN_SCALE, 1.0))

def to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def avatar_device(avatar):
    import torch

    dev = getattr(avatar, "device", None)
    if dev is not None:
        return torch.device(dev)
    bg = getattr(avatar, "background", None)
    return bg.device if hasattr(bg, "device") else torch.device("cpu")


def gaussian_centres(avatar) -> np.ndarray | None:
    """[G, 3] Gaussian centres in the head frame (canonical, undeformed), or None if unavailable.

    Reads `avatar.model`'s head/mouth sets (head frame) and its torso set, which lives in the
    camera frame of `ref_viewmat` (avatar/model/avatar_model.py) and is mapped back to the head frame.
    """
    model = getattr(avatar, "model", None)
    try:
        import torch

        with torch.no_grad():
            parts = [model.head.means, model.mouth.means]
            if len(model.torso) > 0:
                inv = torch.linalg.inv(model.ref_viewmat)  # [4, 4] reference camera -> head
                parts.append(model.torso.means @ inv[:3, :3].T + inv[:3, 3])
            return torch.cat(parts).float().cpu().numpy()  # [G, 3]
    except Exception:  # noqa: BLE001 - the overlay is optional; other Avatar implementations may lack it
        return None


def head_pivot(avatar, fallback: np.ndarray) -> np.ndarray:
    """[3] point the head offset sliders turn about: the centre of the model's motion box."""
    c = getattr(getattr(avatar, "model", None), "center", None)
    if c is None:
        return fallback
    return np.asarray(to_numpy(c), np.float64).reshape(3)
