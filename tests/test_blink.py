"""Stage 5 (blink): eye aspect ratio and per-person normalisation on synthetic eyelid motion."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.core.landmarks import EAR_POINTS
from avatar.preprocess.blink import blink_signal, eye_aspect_ratio


def eyes_track(openness: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Landmarks [N, 478, 2] whose two eyes open by `openness` [N] (1 = fully open, EAR 0.3)."""
    n = len(openness)
    lm = np.zeros((n, 478, 2), np.float32)
    for e, (p1, p2, p3, p4, p5, p6) in enumerate(EAR_POINTS):
        x0 = 100.0 + 60 * e
        lm[:, p1] = [x0, 100]
        lm[:, p4] = [x0 + 30, 100]
        half = 0.3 * 30 / 2 * openness  # EAR = (2 * 2 * half) / (2 * 30)
        for p, x in ((p2, x0 + 10), (p3, x0 + 20)):
            lm[:, p, 0] = x
            lm[:, p, 1] = 100 - half
        for p, x in ((p6, x0 + 10), (p5, x0 + 20)):
            lm[:, p, 0] = x
            lm[:, p, 1] = 100 + half
    return lm * scale


def test_ear_value_and_scale_invariance():
    lm = eyes_track(np.ones(3))
    np.testing.assert_allclose(eye_aspect_ratio(lm), 0.3, rtol=1e-5)
    np.testing.assert_allclose(eye_aspect_ratio(eyes_track(np.ones(3), scale=3.7)), 0.3, rtol=1e-5)
    np.testing.assert_allclose(eye_aspect_ratio(eyes_track(np.zeros(3))), 0.0, atol=1e-6)


def test_blinks_detected_and_normalised():
    fps = 25.0
    rng = np.random.default_rng(0)
    n = 500
    open_ = 1.0 + 0.03 * rng.standard_normal(n)
    blinks = [60, 180, 300, 420]
    for b in blinks:
        open_[b:b + 3] = [0.4, 0.05, 0.4]
    b, stats = blink_signal(eyes_track(open_), fps)
    assert b.dtype == np.float32 and b.shape == (n,)
    assert b.min() >= 0 and b.max() <= 1
    for k in blinks:
        assert b[k + 1] > 0.9  # closed frame ~1
    mask = np.ones(n, bool)
    for k in blinks:
        mask[k - 2:k + 5] = False
    assert np.median(b[mask]) < 0.1  # open frames ~0 (3 % EAR noise around the 90th-percentile open level)
    assert stats["blinks"] == len(blinks)
    assert stats["blinks_per_min"] == pytest.approx(len(blinks) / (n / fps / 60))


def test_open_level_follows_slow_drift():
    """A slow EAR drift (e.g. head pitching down) is not a blink: the open level is a rolling percentile."""
    fps = 25.0
    n = 750
    open_ = np.linspace(1.0, 0.6, n)
    open_[400:403] = 0.05
    b, _ = blink_signal(eyes_track(open_), fps)
    assert b[401] > 0.8
    assert b[700] < 0.1 and b[100] < 0.1
