"""Silence -> closed mouth: the speech gate and the silent feature row.

`SpeechGate` marks non-speech frames (silero-vad, or an energy threshold) and `close_mouth` swaps their
feature rows for the training clip's own silent, closed-mouth rows (`silent_rows`), the mitigation for
"mouth ajar on silence" in ../shared/design/model.md §5 (TG #21, SyncTalk #64). The engine also
cross-fades silent frames' windows to the training window the model renders most closed
(avatar/engine/features.py `closed_mouth_window`).
"""

from __future__ import annotations

import math

import numpy as np

from avatar.core.audio import SAMPLE_RATE
from avatar.engine.config import VadKind
from avatar.errors import AvatarError


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

            # `import silero_vad` calls torch.set_num_threads(1) for the whole process (silero_vad/model.py),
            # which silently halved rendering speed on 2 cores: keep the caller's thread count.
            threads = torch.get_num_threads()
            from silero_vad import load_silero_vad

            self._torch = torch
            self._model = load_silero_vad()
            torch.set_num_threads(threads)
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
