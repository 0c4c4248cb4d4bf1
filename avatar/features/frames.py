"""The time convention every extractor shares: video frame k at t_k = k/fps, feature row k summarising
the audio in the window centred on t_k, [t_k - 0.5/fps, t_k + 0.5/fps) (ER-NeRF's DeepSpeech windows,
design/preprocess.md §7.1), and the chunking that keeps memory bounded for long audio.

Audio before 0 or after the end counts as silence. The model applies its own temporal window over
rows (model.md §3), so rows carry only the frame's own 1/fps of audio.
"""

from __future__ import annotations

import math

import numpy as np

from avatar.core.audio import SAMPLE_RATE
from avatar.errors import AvatarError

DEFAULT_CHUNK_S = 30.0
"""Audio longer than this is processed in chunks (bounded memory; pocketsphinx CMN is per chunk)."""
CONTEXT_S = 3.0
"""Audio context decoded on each side of a chunk and then discarded (hides chunk edges)."""


def frames_for_duration(num_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of video frames for an audio of `num_samples`: frames at k/fps for k/fps < duration."""
    if num_samples <= 0:
        return 0
    return int(math.ceil(num_samples / sample_rate * fps - 1e-6))


def _as_mono_float(wav: np.ndarray) -> np.ndarray:
    """[T] float32 in [-1, 1]: integer PCM is rescaled, [T, C] is down-mixed, NaN/inf become 0."""
    wav = np.asarray(wav)
    if wav.ndim == 2 and min(wav.shape) <= 8:
        wav = wav.mean(axis=1 if wav.shape[1] <= 8 else 0)
    if wav.ndim != 1:
        raise AvatarError(f"audio must be mono [T] samples, got shape {tuple(wav.shape)}")
    if np.issubdtype(wav.dtype, np.integer):
        wav = wav.astype(np.float32) / float(np.iinfo(wav.dtype).max + 1)
    wav = np.nan_to_num(wav.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    return wav


def _check_frames(num_frames: int, fps: float) -> tuple[int, float]:
    if int(num_frames) != num_frames or num_frames < 0:
        raise AvatarError(f"num_frames must be a non-negative integer, got {num_frames}")
    if not (fps > 0 and math.isfinite(fps)):
        raise AvatarError(f"fps must be positive, got {fps}")
    return int(num_frames), float(fps)



def _pool_to_frames(values: np.ndarray, times: np.ndarray, num_frames: int, fps: float, fill: np.ndarray,
                    n_sub: int = 1) -> np.ndarray:
    """Average rows of `values` ([F, D], row f at time `times[f]`, increasing) over the frame windows.

    Output row k, sub-step s (of `n_sub`) averages the rows whose times lie in
    [t_k - 0.5/fps + s/(n_sub fps), t_k - 0.5/fps + (s+1)/(n_sub fps)), t_k = k/fps. A window that holds
    no row takes the nearest row when that row is within the audio, else `fill` ([D], e.g. silence).
    Returns [num_frames, n_sub * D].
    """
    F, D = values.shape
    out = np.empty((num_frames, n_sub, D), np.float32)
    if num_frames == 0:
        return out.reshape(0, n_sub * D)
    if F == 0:
        out[:] = fill
        return out.reshape(num_frames, n_sub * D)
    edges = (np.arange(num_frames * n_sub + 1, dtype=np.float64) / n_sub - 0.5) / fps  # [K*S+1]
    lo = np.searchsorted(times, edges[:-1], side="left")  # [K*S]
    hi = np.searchsorted(times, edges[1:], side="left")
    csum = np.concatenate([np.zeros((1, D)), np.cumsum(values, axis=0, dtype=np.float64)])  # [F+1, D]
    cnt = (hi - lo)[:, None]
    mean = (csum[hi] - csum[lo]) / np.maximum(cnt, 1)  # [K*S, D]
    empty = cnt[:, 0] == 0
    if empty.any():
        centre = 0.5 * (edges[:-1] + edges[1:])
        nearest = np.clip(np.searchsorted(times, centre), 0, F - 1)
        prev = np.clip(nearest - 1, 0, F - 1)
        nearest = np.where(np.abs(times[prev] - centre) < np.abs(times[nearest] - centre), prev, nearest)
        step = (times[-1] - times[0]) / max(F - 1, 1) if F > 1 else 1.0 / fps
        inside = (centre >= times[0] - step) & (centre <= times[-1] + step)
        mean[empty] = np.where(inside[empty, None], values[nearest[empty]], fill[None, :])
    out[:] = mean.reshape(num_frames, n_sub, D)
    return out.reshape(num_frames, n_sub * D)


def _chunks(num_samples: int, chunk_s: float | None) -> list[tuple[int, int, int, int]]:
    """Split [0, T) into cores of `chunk_s` with CONTEXT_S of context: (ctx_a, core_a, core_b, ctx_b)."""
    if chunk_s is None or chunk_s <= 0 or num_samples <= chunk_s * SAMPLE_RATE:
        return [(0, 0, num_samples, num_samples)]
    c = int(round(chunk_s * SAMPLE_RATE))
    o = int(round(CONTEXT_S * SAMPLE_RATE))
    out = []
    for a in range(0, num_samples, c):
        b = min(a + c, num_samples)
        out.append((max(0, a - o), a, b, min(num_samples, b + o)))
    return out

