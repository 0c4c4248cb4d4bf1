"""Audio-visual sync measure: mouth opening vs the 1-3 kHz audio envelope, cross-correlated.

Speech energy in 1-3 kHz (formants F2/F3 of open vowels) rises when the mouth opens, so the
per-frame mouth opening and the band envelope correlate best when video and audio are aligned.
`av_offset` returns the lag (in video frames) at which they correlate best:

    lag > 0: the video LAGS the audio (the mouth moves `lag` frames after the sound);
    lag < 0: the video LEADS (e.g. a clip whose video starts 80 ms late, read by frame index and
             paired with audio from t = 0, shows each mouth shape 2 frames early at 25 fps).

Used by the preprocessing tests and reusable for lip-sync checks of rendered videos.
"""

from __future__ import annotations

import numpy as np

def band_envelope(wav: np.ndarray, sr: int, fps: float, num_frames: int, band: tuple[float, float] = (1000.0, 3000.0),
                  window_s: float | None = None) -> np.ndarray:
    """Log energy of `wav` in `band` (Hz) in a Hann window centred on each frame time k/fps -> [num_frames]."""
    win = int(round((window_s if window_s is not None else 2.0 / fps) * sr))
    win += win % 2
    half = win // 2
    pad = np.pad(np.asarray(wav, np.float32), (half, half + win))
    centres = np.round(np.arange(num_frames) * sr / fps).astype(np.int64) + half  # in padded coordinates
    idx = centres[:, None] + np.arange(-half, half)[None]  # [N, win]
    seg = pad[idx] * np.hanning(win).astype(np.float32)
    spec = np.abs(np.fft.rfft(seg, axis=1)) ** 2  # [N, win/2+1]
    freqs = np.fft.rfftfreq(win, 1.0 / sr)
    sel = (freqs >= band[0]) & (freqs < band[1])
    return np.log(spec[:, sel].sum(1) + 1e-8).astype(np.float32)


def _highpass(x: np.ndarray, width: int) -> np.ndarray:
    """x minus its centred moving average (removes slow trends), z-scored."""
    x = np.asarray(x, np.float64)
    if width > 1 and len(x) > width:
        ker = np.ones(width) / width
        x = x - np.convolve(np.pad(x, width // 2, mode="edge"), ker, mode="valid")[:len(x)]
    s = x.std()
    return (x - x.mean()) / (s if s > 0 else 1.0)


def av_offset(mouth_open: np.ndarray, wav: np.ndarray, sr: int, fps: float, max_lag: int = 8) -> tuple[int, float]:
    """Lag (video frames, sign as in the module docstring) maximising the correlation, and that correlation.

    mouth_open [N] per video frame (frame k at time k/fps), wav [T] mono at `sr` starting at frame 0's time.
    """
    n = len(mouth_open)
    env = band_envelope(wav, sr, fps, n)
    width = int(round(fps))  # 1 s trend removal
    m = _highpass(mouth_open, width)
    e = _highpass(env, width)
    best_lag, best_c = 0, -np.inf
    for lag in range(-max_lag, max_lag + 1):
        # correlate mouth[k + lag] with env[k]
        if lag >= 0:
            a, b = m[lag:], e[:n - lag]
        else:
            a, b = m[:n + lag], e[-lag:]
        if len(a) < 10:
            continue
        c = float(np.corrcoef(a, b)[0, 1])
        if c > best_c:
            best_lag, best_c = lag, c
    return best_lag, best_c
