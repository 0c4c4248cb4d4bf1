"""`FrameEngine`: push audio, pop the model inputs of every frame as soon as they are final.

One engine serves offline rendering, streaming and the viewer (avatar/engine/speaker.py drives it):
audio is pushed in chunks of any size; a frame is emitted as soon as everything it depends on is known:
  1. features: computed per *segment* of G frames with P frames of past and F frames of future audio
     context (zero outside the audio), so a frame's features never depend on how the audio was cut
     into chunks (`Segmenting`). Offline uses long segments (30 s, 1.5 s context, like preprocess's
     chunking); streaming uses short causal ones.
  2. silence: a `SpeechGate` with `pad_after` frames of look-ahead; non-speech rows are replaced by the
     training clip's silent closed-mouth row (model.md §5) and their windows cross-faded to the real
     training window the model renders most closed (avatar/engine/features.py `closed_mouth_window`).
  3. the model's feature window (rows k - past ... k + future, edge padded at the clip ends exactly like
     `Avatar.feature_windows`) needs `lookahead` future rows.
  4. head pose / blink / camera come from a sequential `motion` source (avatar/engine/track.py), or none
     (the viewer poses the head itself).
Hence the streaming output equals the offline output frame for frame for the same segment settings.

The audio entry (`push`) is where every caller's audio is validated, once: NaN or infinite samples
stop the render with one `AvatarError` line before they reach the extractor or an encoder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import numpy as np

from avatar.core.audio import SAMPLE_RATE
from avatar.engine.gate import SpeechGate, close_mouth
from avatar.errors import AvatarError

FeatureFn = Callable[[np.ndarray, int, float], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Segmenting:
    """How the engine cuts the audio for the feature extractor, in frames."""

    frames: int
    """G: frames per feature segment."""
    past: int
    """P: frames of past audio context given to the extractor."""
    future: int
    """F: frames of future audio context (part of the delay)."""


class MotionSource(Protocol):
    """Sequential per-frame motion (avatar/engine/track.py `MotionTrack`)."""

    needs_level: bool

    def frame(self, k: int, level_db: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(head [4, 4], head with offsets [4, 4], camera move [4, 4], blink) of frame k."""
        ...


@dataclasses.dataclass
class FrameBatch:
    """Model inputs of consecutive frames, as `FrameEngine.take` returns them."""

    index: list[int]
    windows: np.ndarray
    """[B, W, D] feature windows (gated, silence cross-faded)."""
    speech: np.ndarray
    """[B] speech weight per frame (1 speech, 0 silence, ramps between)."""
    viewmats: np.ndarray | None = None
    """[B, 4, 4] head -> training camera with the head offsets (None without a motion source)."""
    cameras: np.ndarray | None = None
    """[B, 4, 4] camera moves, training camera -> output camera."""
    blinks: np.ndarray | None = None
    """[B] blink values."""


class FrameEngine:
    """Push audio (`push`, `end`), pop frames (`ready_count`, `take`). See the module docstring."""

    def __init__(self, fps: float, feature_fn: FeatureFn, segmenting: Segmenting, *, window_past: int,
                 window_future: int, lookahead: int, gate: SpeechGate | None = None,
                 silent_row: np.ndarray | None = None, silent_window: np.ndarray | None = None,
                 motion: MotionSource | None = None, record: bool = False):
        self.fps = float(fps)
        self.feature_fn = feature_fn
        self.G, self.P, self.F = int(segmenting.frames), int(segmenting.past), int(segmenting.future)
        self.spf = SAMPLE_RATE / self.fps  # samples per frame
        self.r = int(window_past)  # past rows of the window
        self.win_after = int(window_future)  # the model's look-ahead
        self.look = int(lookahead)  # rows actually waited for (<= win_after)
        self.gate = gate
        self.silent_row, self.silent_window = silent_row, silent_window
        self.motion = motion
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # absolute sample index of _buf[0]
        self.samples_pushed = 0
        self.ended = False
        self.num_frames: int | None = None
        self._rows: dict[int, np.ndarray] = {}  # gated feature rows by frame
        self._weights: dict[int, float] = {}  # speech weight by frame
        self._raw: dict[int, np.ndarray] = {}
        self._raw_upto = 0  # frames whose raw features exist
        self._gated_upto = 0
        self.emitted = 0
        self.speech_frames = 0
        self.record: dict[str, list] | None = (
            {k: [] for k in ("head", "viewmats", "camera", "blink", "speech", "feats")} if record else None)
        """Per-frame motion of this render (`Speaker.export_motion`), or None."""

    # -- introspection (tests check memory stays bounded) ------------------------------------------
    @property
    def buffered_samples(self) -> int:
        return int(self._buf.shape[0])

    @property
    def buffered_rows(self) -> int:
        return len(self._rows) + len(self._raw)

    # -- audio in -------------------------------------------------------------------------------
    def push(self, wav: np.ndarray) -> None:
        """Append 16 kHz mono float samples. Raises `AvatarError` on NaN/inf samples (every caller's
        audio passes here, so this is the one check)."""
        wav = np.asarray(wav, np.float32).ravel()
        if wav.size == 0:
            return
        bad = ~np.isfinite(wav)
        if bad.any():
            t = (self.samples_pushed + int(np.argmax(bad))) / SAMPLE_RATE
            raise AvatarError(f"the audio holds NaN or infinite samples (first at {t:.2f} s); "
                              f"fix or re-export the file")
        self._buf = np.concatenate([self._buf, wav])
        self.samples_pushed += wav.shape[0]
        if self.gate is not None:
            self.gate.push(wav)

    def end(self) -> None:
        """No more audio: the clip has round(duration x fps) frames."""
        self.ended = True
        self.num_frames = int(round(self.samples_pushed / SAMPLE_RATE * self.fps))
        if self.gate is not None:
            self.gate.end()

    def _audio(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) (absolute), zero outside [0, samples_pushed)."""
        out = np.zeros(b - a, np.float32)
        lo, hi = max(a, self._buf_start), min(b, self._buf_start + self._buf.shape[0])
        if hi > lo:
            out[lo - a:hi - a] = self._buf[lo - self._buf_start:hi - self._buf_start]
        return out

    # -- features -------------------------------------------------------------------------------
    def _compute_segments(self) -> None:
        while True:
            a = self._raw_upto
            if self.num_frames is not None and a >= self.num_frames:
                return
            b = a + self.G
            s1 = int(round((b + self.F) * self.spf))
            if not self.ended and s1 > self.samples_pushed:
                return
            # No padding before the audio start, and none past end + F frames: long stretches of
            # artificial silence would skew the extractor's per-utterance normalisation.
            fa = max(a - self.P, 0)
            fb = b + self.F if self.num_frames is None else min(b, self.num_frames) + self.F
            seg = self._audio(int(round(fa * self.spf)), int(round(fb * self.spf)))
            feats = np.asarray(self.feature_fn(seg, fb - fa, self.fps), np.float32)
            for j in range(a, b if self.num_frames is None else min(b, self.num_frames)):
                self._raw[j] = feats[j - fa]
            self._raw_upto = b

    def _gate_rows(self) -> None:
        n = self.num_frames
        while self._gated_upto < self._raw_upto and (n is None or self._gated_upto < n):
            k = self._gated_upto
            if self.gate is None or self.silent_row is None:
                w = 1.0
                speech = True
            else:
                nxt = k + 1 if n is None else min(k + 1, n - 1)
                if not (self.gate.ready(k, n) and self.gate.ready(nxt, n)):
                    return
                speech = self.gate.speech(k)
                # 3-frame box over the speech flags: a one-frame ramp in and out of silence
                nb = [self.gate.speech(j) for j in (k - 1, k, k + 1) if j >= 0 and (n is None or j < n)]
                w = float(np.mean(nb)) if nb else float(speech)
            row = self._raw.pop(k)
            self._rows[k] = close_mouth(row, self.silent_row, w) if self.silent_row is not None else row
            self._weights[k] = w
            self.speech_frames += int(speech)
            if self.record is not None:
                self.record["speech"].append(float(w))
                self.record["feats"].append(self._rows[k])
            self._gated_upto += 1

    # -- frames out -----------------------------------------------------------------------------
    def ready_count(self) -> int:
        """How many frames (from `emitted`) can be taken now."""
        self._compute_segments()
        self._gate_rows()
        n = self.num_frames
        last = self._gated_upto - 1  # highest frame with a final row
        if n is not None and self._gated_upto >= n:
            return n - self.emitted
        # frame k needs rows up to k + look (those exist only if < gated_upto)
        return max(0, last - self.look + 1 - self.emitted)

    def take(self, count: int) -> FrameBatch:
        """The model inputs of the next `count` frames (at most `ready_count()`)."""
        n = self.num_frames
        W = self.r + self.win_after + 1
        wins, speech, vms, cams, blinks, idx = [], [], [], [], [], []
        for _ in range(count):
            k = self.emitted
            hi = (n - 1) if n is not None else None
            rows = []
            for o in range(-self.r, W - self.r):
                j = max(0, k + min(o, self.look))
                if hi is not None:
                    j = min(j, hi)
                rows.append(self._rows[j])
            win = np.stack(rows)
            sw, wk = self.silent_window, self._weights.get(k, 1.0)
            if sw is not None and wk < 1.0 and sw.shape == win.shape:
                # silence: the real training window the model renders most closed, cross-faded over the
                # gate's one-frame ramp
                win = (wk * win + (1.0 - wk) * sw).astype(np.float32)
            wins.append(win)
            speech.append(wk)
            if self.motion is not None:
                level = None
                if self.motion.needs_level:
                    c = int(round(k * self.spf))
                    half = int(round(self.spf))
                    seg = self._audio(c - half, c + half)
                    level = float(10 * np.log10(np.mean(seg.astype(np.float64) ** 2) + 1e-10))
                head, vm, cam, blink = self.motion.frame(k, level)
                vms.append(vm)
                cams.append(cam)
                blinks.append(blink)
                if self.record is not None:
                    self.record["head"].append(head)
                    self.record["viewmats"].append((cam @ vm).astype(np.float32))
                    self.record["camera"].append(cam)
                    self.record["blink"].append(blink)
            idx.append(k)
            self.emitted += 1
        self._trim()
        m = self.motion is not None
        return FrameBatch(idx, np.stack(wins), np.asarray(speech, np.float32),
                          np.stack(vms) if m else None, np.stack(cams) if m else None,
                          np.asarray(blinks, np.float32) if m else None)

    def _trim(self) -> None:
        """Drop rows and audio no later frame can need (memory stays bounded)."""
        k = self.emitted
        for j in [j for j in self._rows if j < k - self.r - 1]:
            del self._rows[j]
        for j in [j for j in self._weights if j < k]:
            del self._weights[j]
        keep_from = min(int(round((self._raw_upto - self.P) * self.spf)), int(round((k - 2) * self.spf)))
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
