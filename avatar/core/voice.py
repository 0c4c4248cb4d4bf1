"""Voice transforms that change who seems to speak but not what is said or when: pitch shift, time stretch.

Used to make lip sync hold for voices the avatar never heard (issue 17): training sees the clip's audio
also pitch-shifted (`avatar.preprocess` stores features of shifted copies, `avatar.train` draws among them),
and the tests check that the motion of a shifted copy follows the original's.

`pitch_shift` moves pitch *and* formants by the same factor, like a tape played faster or slower but with
the duration kept: the spectral envelope of a speaker with a shorter or longer vocal tract, which is the
main difference between voices (Lee, Potamianos & Narayanan 1999, "Acoustics of children's speech";
vocal-tract-length perturbation for ASR: Jaitly & Hinton 2013). It is a phase-vocoder time stretch
(Flanagan & Golden 1966; Laroche & Dolson 1999 "Improved phase vocoder time-scale modification of audio")
followed by resampling back to the original length, the scheme of librosa.effects.pitch_shift, written here
in numpy (librosa's numba start-up costs ~15 s, ../shared/DEPENDENCIES.md).
Frame-accurate: the output has exactly the input's length and events stay at their times (within a hop).
"""

from __future__ import annotations

import math

import numpy as np

N_FFT = 1024
HOP = 256
VOICE_SHIFTS = (-4.0, -2.0, 2.0, 4.0)
"""Semitone shifts of the training audio for voice augmentation (`DataConfig.voice_aug`): about the spread between
a low male and a high female voice's formants is +-20 % (Peterson & Barney 1952), 4 semitones = 26 %."""


def _stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """[n_fft//2+1, T] complex STFT of `x` with a periodic Hann window, frames centred on t*hop."""
    win = np.hanning(n_fft + 1)[:-1]
    pad = np.pad(x, (n_fft // 2, n_fft // 2 + hop))
    n = 1 + (len(pad) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]  # [T, n_fft]
    return np.fft.rfft(pad[idx] * win, axis=1).T


def _istft(X: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    """Weighted overlap-add inverse of `_stft` (window-square normalised), cut to `length` samples."""
    win = np.hanning(n_fft + 1)[:-1]
    frames = np.fft.irfft(X.T, n=n_fft, axis=1) * win  # [T, n_fft]
    T = frames.shape[0]
    total = n_fft + hop * (T - 1)
    out = np.zeros(total)
    norm = np.zeros(total)
    for t in range(T):  # T ~ 60 per second of audio: a Python loop is cheap here
        out[t * hop:t * hop + n_fft] += frames[t]
        norm[t * hop:t * hop + n_fft] += win ** 2
    out /= np.maximum(norm, 1e-8)
    out = out[n_fft // 2:]
    if len(out) < length:
        out = np.pad(out, (0, length - len(out)))
    return out[:length]


def time_stretch(x: np.ndarray, rate: float, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """Play `x` `rate` times faster without changing its pitch (phase vocoder): ~len(x)/rate samples."""
    x = np.asarray(x, np.float64)
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be positive, got {rate}")
    if len(x) == 0:
        return x.astype(np.float32)
    X = _stft(x, n_fft, hop)  # [B, T]
    B, T = X.shape
    steps = np.arange(0.0, T - 1, rate)  # fractional input frames, one per output frame
    i = steps.astype(np.int64)
    a = (steps - i)[None, :]
    Xp = np.concatenate([X, np.zeros((B, 1), X.dtype)], axis=1)
    mag = (1 - a) * np.abs(Xp[:, i]) + a * np.abs(Xp[:, i + 1])
    expected = 2 * np.pi * hop * np.arange(B) / n_fft  # [B] phase advance of each bin's centre frequency
    dphi = np.angle(Xp[:, i + 1]) - np.angle(Xp[:, i]) - expected[:, None]
    dphi -= 2 * np.pi * np.round(dphi / (2 * np.pi))  # principal value: the bin's frequency deviation
    phase = np.angle(X[:, :1]) + np.concatenate(
        [np.zeros((B, 1)), np.cumsum(expected[:, None] + dphi, axis=1)[:, :-1]], axis=1)
    out_len = int(round(len(x) / rate))
    return _istft(mag * np.exp(1j * phase), n_fft, hop, out_len).astype(np.float32)


def _resample_to(x: np.ndarray, length: int) -> np.ndarray:
    """`x` resampled to exactly `length` samples (band-limited, polyphase when the ratio is simple)."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    if len(x) == length:
        return x
    frac = Fraction(length, len(x)).limit_denominator(1000)
    y = resample_poly(x, frac.numerator, frac.denominator)
    if len(y) < length:
        y = np.pad(y, (0, length - len(y)))
    return y[:length]


def pitch_shift(x: np.ndarray, semitones: float, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """`x` [T] with pitch and formants moved by `semitones` (+ = higher voice), same length and timing.

    A time stretch by 2^(s/12) (the pitch is kept, the audio gets longer for s > 0) resampled back to T
    samples (every frequency scaled by 2^(s/12), the duration back to T). Works at any sample rate."""
    x = np.asarray(x, np.float32)
    if semitones == 0 or len(x) == 0:
        return x.copy()
    ratio = 2.0 ** (semitones / 12.0)
    y = time_stretch(x, 1.0 / ratio, n_fft, hop)
    y = _resample_to(y.astype(np.float64), len(x))
    peak_in, peak_out = float(np.abs(x).max()), float(np.abs(y).max())
    if peak_out > 1.0 and peak_out > peak_in:  # keep it in [-1, 1] when the input was
        y *= max(peak_in, 1e-9) / peak_out
    return y.astype(np.float32)
