"""Precomputed feature arrays imported from .npy files (ER-NeRF's aud_ds.npy / aud_hu.npy or [T, D])."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from avatar.errors import AvatarError
from avatar.features.frames import _check_frames


def import_npy(path: str | os.PathLike, num_frames: int, fps: float, src_fps: float = 25.0,
               mode: Literal["centre", "flatten"] = "centre") -> tuple[np.ndarray, dict[str, Any]]:
    """Import a precomputed ER-NeRF-style feature array as [num_frames, D] float32.

    Accepted shapes (one entry per `src_fps` frame, 25 fps in ER-NeRF, preprocess.md §7.1):
    - [T, W, C] windows: DeepSpeech [T, 16, 29] (50 Hz rows 2i-8 .. 2i+7 around frame i), HuBERT
      [T, 2, 1024] (50 Hz rows 2i, 2i+1). `mode="centre"` averages the two centre rows W//2-1, W//2
      (the audio at the frame's own time, dim C); `mode="flatten"` keeps the whole window (dim W*C).
    - [T, D]: used as is.
    Rows are re-timed from `src_fps` to `fps` (nearest source frame), and a length that is off by a
    few rows (edge padding) is fixed; a length far from `num_frames` is an error.
    """
    path = Path(path)
    num_frames, fps = _check_frames(num_frames, fps)
    if not path.is_file():
        raise AvatarError(f"{path}: no such feature file")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        raise AvatarError(f"{path}: not a readable .npy array ({type(e).__name__}); expected e.g. aud_ds.npy [T, 16, 29]") from None
    if not np.issubdtype(arr.dtype, np.number) or arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.size == 0:
        raise AvatarError(f"{path}: expected a numeric [T, D] or [T, W, D] array, got {arr.dtype} {tuple(arr.shape)}")
    shape = tuple(int(s) for s in arr.shape)
    x = arr.astype(np.float32)
    if not np.isfinite(x).all():
        raise AvatarError(f"{path}: contains NaN or inf values; recompute the features")
    if x.ndim == 3:
        W = x.shape[1]
        if mode == "centre":
            x = x[:, max(W // 2 - 1, 0):W // 2 + 1].mean(axis=1) if W > 1 else x[:, 0]
        else:
            x = x.reshape(x.shape[0], -1)
    T = x.shape[0]
    # re-time: target frame k at k/fps takes source frame round(k/fps * src_fps)
    expected = T * fps / src_fps
    tol = max(3.0, 0.02 * num_frames)
    if abs(expected - num_frames) > tol:
        raise AvatarError(f"{path}: {T} rows at {src_fps:g} fps cover {T / src_fps:.2f} s but the video has "
                          f"{num_frames} frames ({num_frames / fps:.2f} s); features belong to another clip?")
    idx = np.clip(np.round(np.arange(num_frames) * src_fps / fps).astype(np.int64), 0, T - 1)
    feats = np.ascontiguousarray(x[idx], dtype=np.float32)
    meta = {
        "extractor": f"import:{'x'.join(map(str, shape))}",
        "dim": int(feats.shape[1]),
        "fps": float(fps),
        "window": {"centre": "k/fps", "source_fps": float(src_fps), "mode": mode if len(shape) == 3 else "rows"},
        "source_file": str(path.resolve()),
        "source_shape": list(shape),
        "source_rows": T,
        "num_frames": num_frames,
    }
    return feats, meta
