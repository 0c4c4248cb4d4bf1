"""The A/V sync measure `av_offset` on synthetic mouth motion and speech-band audio with known lags."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.core.avsync import av_offset, band_envelope

from avatar.core.landmarks import mouth_opening


def synthetic_pair(lag: int, n: int = 400, fps: float = 25.0, sr: int = 16000, seed: int = 0):
    """(mouth [n], wav) where the mouth moves `lag` frames after (lag > 0) the band energy."""
    rng = np.random.default_rng(seed)
    env = np.convolve(rng.random(n + 40), np.ones(3) / 3, mode="same")[20:20 + n]  # [n] syllable-rate envelope
    mouth = np.roll(env, lag)  # mouth[k] = env[k - lag]
    t = np.arange(int(n / fps * sr)) / sr
    amp = np.interp(t, np.arange(n) / fps, env)
    noise = rng.standard_normal(len(t))
    spec = np.fft.rfft(noise)
    f = np.fft.rfftfreq(len(t), 1 / sr)
    spec[(f < 1000) | (f > 3000)] = 0
    band = np.fft.irfft(spec, len(t))
    wav = (amp * band / band.std() * 0.1 + 0.001 * rng.standard_normal(len(t))).astype(np.float32)
    return mouth.astype(np.float32), wav


@pytest.mark.parametrize("lag", [-3, -2, 0, 1, 2, 4])
def test_av_offset_recovers_lag(lag):
    mouth, wav = synthetic_pair(lag)
    got, corr = av_offset(mouth, wav, 16000, 25.0)
    assert got == lag
    assert corr > 0.5


def test_band_envelope_localises_energy():
    sr, fps = 16000, 25.0
    wav = np.zeros(sr * 2, np.float32)
    k = np.arange(int(0.04 * sr))
    wav[sr: sr + len(k)] = np.sin(2 * np.pi * 2000 * k / sr)  # 2 kHz burst at t = 1.0 s (frame 25)
    env = band_envelope(wav, sr, fps, 50)
    assert abs(int(np.argmax(env)) - 25) <= 1
    low = np.zeros_like(wav)
    low[sr: sr + len(k)] = np.sin(2 * np.pi * 300 * k / sr)  # outside the band: far weaker
    assert band_envelope(low, sr, fps, 50).max() < env.max() - 5


def test_mouth_opening_scale_invariant():
    lm = np.zeros((2, 478, 2), np.float32)
    lm[:, 33] = [100, 100]
    lm[:, 263] = [200, 100]
    lm[:, 13] = [150, 200]
    lm[:, 14] = [150, 220]
    np.testing.assert_allclose(mouth_opening(lm), 0.2, rtol=1e-6)
    np.testing.assert_allclose(mouth_opening(lm * 2.5), 0.2, rtol=1e-6)
