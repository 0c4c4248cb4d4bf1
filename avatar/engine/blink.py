"""Blink generators of the engine (`SpeakConfig.blink`): learned from the training clip, off, or a file.

Like every motion generator here they are deterministic for a seed and can be asked for any frame, so
offline and streaming renders blink identically.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from avatar.errors import AvatarError


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
    def fit(cls, blink: np.ndarray, fps: float) -> BlinkModel:
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

    def generator(self, seed: int = 0) -> BlinkTrack:
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


