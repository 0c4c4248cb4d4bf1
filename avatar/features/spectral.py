"""Log-mel energies and frame loudness at 100 Hz (10 ms hop, 25 ms window), own implementation.

The spectral half of the default "phonetic+spectral" extractor (`avatar.features.phonetic`): frame j
is centred at sample j*HOP, computed from zero-padded audio so that a frame depends only on its own
samples and chunked computation equals whole-file computation exactly.
"""

from __future__ import annotations

import functools

import numpy as np

from avatar.core.audio import SAMPLE_RATE

HOP = 160  # 10 ms, the pocketsphinx frame rate (frate = 100)
WIN = 400  # 25 ms analysis window
N_FFT = 512
N_MELS = 40
FMIN, FMAX = 60.0, 7600.0
PREEMPH = 0.97
N_SUB = 2  # log-mel sub-steps per video frame: 20 ms resolution at 25 fps, like DeepSpeech/HuBERT's 50 Hz
POWER_FLOOR = 1e-10  # absolute floor of the power spectrum ([-1, 1] audio): -100 dB
SILENCE_DB = 40.0  # a 10 ms frame more than this below the utterance's loud level is silence
ABS_SILENCE_DBFS = -60.0  # ... and so is a frame below this absolute level
ENERGY_CLIP = (-3.0, 0.5)  # loudness channel: (dB - reference) / 20, clipped


@functools.lru_cache(maxsize=4)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """[n_mels, n_fft//2+1] triangular filters, equally spaced on the HTK mel scale, unit peak.

    mel(f) = 2595 log10(1 + f/700) (O'Shaughnessy 1987, as in HTK). Own implementation (no librosa).
    """
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)  # [B]
    pts = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # [M+2]
    lower, centre, upper = pts[:-2, None], pts[1:-1, None], pts[2:, None]  # [M, 1]
    up = (freqs[None] - lower) / (centre - lower)
    down = (upper - freqs[None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)  # [M, B]


@functools.lru_cache(maxsize=4)
def _filter_bands(n_fft: int = N_FFT) -> tuple[tuple[int, int, np.ndarray], ...]:
    """Per mel filter: (first bin, end bin, weights) of its non-zero band."""
    out = []
    for row in mel_filterbank(n_fft=n_fft):
        nz = np.flatnonzero(row)
        lo, hi = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0)
        out.append((lo, hi, row[lo:hi]))
    return tuple(out)


def mel_energies(power: np.ndarray) -> np.ndarray:
    """[F, n_fft//2+1] power spectra -> [F, N_MELS] mel energies (`mel_filterbank` applied).

    Not `power @ fb.T`: numpy's BLAS (OpenBLAS) sums in an order that depends on its thread count
    (OMP_NUM_THREADS, which Ray sets to 1 in every `avatar batch` worker), so the same audio gave features 1e-7
    apart, and frames 1 level apart, in a worker and in `avatar speak`. Each filter's band summed by numpy's own
    reduction is one fixed order everywhere, and touches only the ~2 % of the matrix that is non-zero."""
    bands = _filter_bands(2 * (power.shape[1] - 1))
    out = np.empty((power.shape[0], len(bands)), np.float32)
    for m, (lo, hi, w) in enumerate(bands):
        out[:, m] = (power[:, lo:hi] * w).sum(1)
    return out


def _power_mel(wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mel power [F, N_MELS] and frame power [F] at 100 Hz; frame j is centred at sample j*HOP.

    Frames are computed from zero-padded audio so a frame depends only on its own 25 ms of samples:
    chunks cut at multiples of HOP reproduce the whole-file frames exactly.
    """
    import torch

    n = len(wav)
    num = n // HOP + 1 if n > 0 else 0
    if num == 0:
        return np.zeros((0, N_MELS), np.float32), np.zeros((0,), np.float32)
    x = np.concatenate([[0.0], wav[1:] - PREEMPH * wav[:-1]]).astype(np.float32) if n > 1 else wav.copy()
    x[0] = wav[0]
    pad = N_FFT // 2
    xp = np.pad(x, (pad, pad + HOP))  # [T + N_FFT + HOP]
    t = torch.from_numpy(xp)
    window = torch.hann_window(WIN, periodic=True, dtype=torch.float32)
    spec = torch.stft(t, n_fft=N_FFT, hop_length=HOP, win_length=WIN, window=window, center=False,
                      return_complex=True)  # [B, F']
    power = (spec.real ** 2 + spec.imag ** 2).T[:num].numpy()  # [F, B]
    mel = mel_energies(power)  # [F, M]
    # frame loudness: mean square of the un-emphasised signal over the WIN samples centred on the frame
    # (a full-scale sine is -3 dB); pre-emphasis would under-weight voiced speech
    sq = np.pad(wav.astype(np.float64) ** 2, (WIN // 2, WIN // 2 + HOP))
    csum = np.concatenate([[0.0], np.cumsum(sq)])
    starts = np.arange(num) * HOP  # frame j covers wav[j*HOP - WIN/2, j*HOP + WIN/2)
    frame_pow = (csum[starts + WIN] - csum[starts]) / WIN  # [F]
    return mel.astype(np.float32), frame_pow.astype(np.float32)


def _power_mel_chunked(wav: np.ndarray, chunk_s: float | None) -> tuple[np.ndarray, np.ndarray]:
    """`_power_mel` over the whole file computed in chunks (bounded STFT memory), identical result."""
    n = len(wav)
    total = n // HOP + 1 if n > 0 else 0
    if chunk_s is None or n <= chunk_s * SAMPLE_RATE:
        return _power_mel(wav)
    step = int(chunk_s * SAMPLE_RATE) // HOP * HOP
    mels, pows = [], []
    margin = -(-N_FFT // HOP) * HOP  # context (a multiple of HOP) so boundary frames see their whole window
    for a in range(0, n, step):
        b = min(a + step, n)
        lo = max(0, a - margin)
        m, p = _power_mel(wav[lo:min(n, b + margin)])
        first = (a - lo) // HOP  # frame index in the chunk of global frame a//HOP
        count = (b - a + HOP - 1) // HOP if b < n else total - a // HOP
        mels.append(m[first:first + count])
        pows.append(p[first:first + count])
    return np.concatenate(mels)[:total], np.concatenate(pows)[:total]
