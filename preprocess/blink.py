"""Stage 5: blink signal (an AU45 stand-in) from landmarks, normalised per person.

Eye aspect ratio (Soukupová & Čech, "Real-Time Eye Blink Detection using Facial Landmarks", CVWW 2016,
http://cmp.felk.cvut.cz/pub/cmp/articles/cech/Soukupova-CVWW-2016.pdf):
    EAR = (|p2 - p6| + |p3 - p5|) / (2 |p1 - p4|), averaged over both eyes,
with MediaPipe's six points per eye (design note preprocess.md §2c). EAR is a ratio, so it does not
depend on the face's size or in-plane rotation. Per-person normalisation (§6): the open level o_k is
the rolling 90th percentile of EAR over ±2 s (follows slow changes such as head pitch), the closed
level is the clip's 1st percentile but at most 40 % of the median EAR (so a clip with few or shallow
blinks does not stretch small lid movements into full blinks), and blink_k = clip((o_k - EAR_k) / (o_k - closed), 0, 1),
so 0 = as open as usual, 1 = closed.
"""

from __future__ import annotations

import numpy as np

from avatar.core.landmarks import EAR_POINTS  # p1..p6 per eye (subject's right, subject's left), §2c
from avatar.errors import AvatarError


def eye_aspect_ratio(lm: np.ndarray) -> np.ndarray:
    """Landmarks [N, 478, 2] -> EAR [N] (mean of both eyes)."""
    ears = []
    for p1, p2, p3, p4, p5, p6 in EAR_POINTS:
        v = np.linalg.norm(lm[:, p2] - lm[:, p6], axis=-1) + np.linalg.norm(lm[:, p3] - lm[:, p5], axis=-1)
        h = 2 * np.linalg.norm(lm[:, p1] - lm[:, p4], axis=-1)
        ears.append(v / np.maximum(h, 1e-6))
    return np.mean(ears, 0).astype(np.float32)


def rolling_percentile(x: np.ndarray, half: int, q: float) -> np.ndarray:
    """Percentile q of x over the centred window [k - half, k + half] (clipped at the ends)."""
    from numpy.lib.stride_tricks import sliding_window_view

    pad = np.pad(x, half, mode="edge")
    return np.percentile(sliding_window_view(pad, 2 * half + 1), q, axis=-1).astype(np.float32)


def blink_signal(lm: np.ndarray, fps: float, window_s: float = 2.0) -> tuple[np.ndarray, dict]:
    """Landmarks [N, 478, 2] -> (blink [N] float32 in [0, 1], stats dict)."""
    ear = eye_aspect_ratio(lm)  # [N]
    if not np.all(np.isfinite(ear)):
        raise AvatarError("blink: eye aspect ratio is not finite (bad landmarks); re-run with --force landmarks")
    half = max(1, int(round(window_s * fps)))
    open_level = rolling_percentile(ear, half, 90)  # [N]
    closed = float(min(np.percentile(ear, 1), 0.4 * np.median(ear)))
    span = np.maximum(open_level - closed, 1e-3)
    blink = np.clip((open_level - ear) / span, 0.0, 1.0).astype(np.float32)
    # blink events: runs with blink > 0.5 lasting <= 0.5 s (longer runs are squints or looking down)
    closed_mask = blink > 0.5
    runs, start = [], None
    for k, c in enumerate(closed_mask.tolist() + [False]):
        if c and start is None:
            start = k
        elif not c and start is not None:
            runs.append(k - start)
            start = None
    events = sum(1 for r in runs if r <= 0.5 * fps)
    minutes = len(lm) / fps / 60
    stats = {"ear_median": float(np.median(ear)), "ear_p1": closed, "blinks": events,
             "blinks_per_min": float(events / minutes) if minutes > 0 else 0.0}
    return blink, stats
