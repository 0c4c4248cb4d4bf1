"""Lip-sync figures we can compute offline: AV-offset and AV-corr (`avatar eval RUN --audio X`).

No SyncNet weights exist offline, so sync is measured the way preprocessing checks its input clips
(avatar/core/avsync.py): the per-frame mouth opening is cross-correlated with the 1-3 kHz audio
envelope; AV-offset is the lag (frames, > 0 = video late) of the maximum, AV-corr the correlation
there. The same figures on the real training clip (its landmarks and audio) are the reference:
a good avatar has an offset near the clip's and a correlation of the same order.

Mouth opening on rendered frames comes from MediaPipe face mesh (`FaceMeshTracker`) when it finds
the face in most frames. For renders it cannot read (e.g. the cartoon test avatar), it falls back to
the model's own lips: the gap between the deformed Gaussians nearest to the canonical inner-lip
landmarks 13/14 (`gaussian_mouth_opening`), reported as `mouth_measure: "gaussians"`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from avatar.core.audio import SAMPLE_RATE
from avatar.errors import AvatarError

SR = SAMPLE_RATE


def _lip_gaussians(avatar, k: int = 6) -> tuple[np.ndarray, np.ndarray] | None:
    """Indices of the head Gaussians nearest the canonical upper (13) and lower (14) inner-lip points."""
    from avatar.core.dataset_format import load_dataset
    from avatar.core.landmarks import LOWER_INNER_LIP, UPPER_INNER_LIP

    try:
        shape3d = load_dataset(avatar.dataset["root"]).camera_pose().shape3d  # [478, 3]
    except (AvatarError, OSError, KeyError):
        return None
    means = avatar.model.head.params["means"].detach().cpu().numpy()  # [N, 3]
    up = np.argsort(np.linalg.norm(means - shape3d[UPPER_INNER_LIP], axis=1))[:k]
    lo = np.argsort(np.linalg.norm(means - shape3d[LOWER_INNER_LIP], axis=1))[:k]
    return up, lo


def gaussian_mouth_opening(avatar, windows, blink, lip_scale: float = 1.0, batch: int = 64) -> np.ndarray:
    """[B] inner-lip gap of the deformed model (head-frame distance / face size) for feature windows [B, W, D]."""
    import torch

    idx = _lip_gaussians(avatar)
    if idx is None:
        raise AvatarError("cannot locate the lips: the run's dataset folder (canonical landmarks) is missing")
    up, lo = idx
    m = avatar.model
    out = []
    with torch.no_grad():
        w_all = torch.as_tensor(windows, device=avatar.device).float()
        b_all = torch.as_tensor(blink, device=avatar.device).float().reshape(-1)
        for i in range(0, w_all.shape[0], batch):
            w, b = w_all[i:i + batch], b_all[i:i + batch]
            d = m.deform(m.audio(w), b, lip_scale)
            x = d["means"]  # [B, N, 3] head then mouth
            gap = (x[:, lo].mean(1) - x[:, up].mean(1)).norm(dim=-1) / m.unit
            out.append(gap.cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _interp_nan(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64).copy()
    ok = np.isfinite(x)
    if ok.sum() == 0:
        return np.zeros_like(x)
    x[~ok] = np.interp(np.nonzero(~ok)[0], np.nonzero(ok)[0], x[ok])
    return x


def render_sync(avatar, audio_path: str | os.PathLike, speak_config=None, *, min_face_ratio: float = 0.5) -> dict:
    """Render `audio_path` with a loaded `avatar` and measure its lip sync (no training-clip figures).

    Returns {"av_offset_frames", "av_corr", "frames", "fps", "mouth_measure" ("facemesh" | "gaussians"),
    "face_found_ratio", "audio"}. A fresh face-mesh tracker per file (video mode tracks across frames)."""
    from avatar.core.audio import load_audio
    from avatar.core.avsync import av_offset
    from avatar.core.landmarks import mouth_opening as mp_mouth_opening
    from avatar.engine import SpeakConfig, Speaker

    cfg = speak_config or SpeakConfig()
    sp = Speaker(avatar, cfg)
    wav = load_audio(audio_path, sr=SR)
    face_open: list[float] = []
    found = 0
    from avatar.preprocess.landmarks import FaceMeshTracker

    with FaceMeshTracker(video_mode=True) as tracker:
        for fr in sp.frames(wav, record=True):
            lm = tracker(np.ascontiguousarray(fr.rgb[..., :3]))
            if lm is None:
                face_open.append(np.nan)
            else:
                found += 1
                face_open.append(float(mp_mouth_opening(lm[None])[0]))
    n = len(face_open)
    ratio = found / max(n, 1)
    rec = sp.last_record
    if ratio >= min_face_ratio:
        mouth = _interp_nan(np.array(face_open))
        measure = "facemesh"
    else:
        wins = avatar.feature_windows(np.stack(rec["feats"]))
        mouth = gaussian_mouth_opening(avatar, wins, np.asarray(rec["blink"], np.float32), cfg.lip_scale)
        measure = "gaussians"
    lag, corr = av_offset(mouth, wav, SR, sp.fps)
    return {"av_offset_frames": int(lag), "av_corr": float(corr), "frames": n, "fps": sp.fps, "mouth_measure": measure,
            "face_found_ratio": ratio, "audio": str(Path(audio_path))}


def clip_sync(avatar) -> dict:
    """The reference figures: AV-offset / AV-corr of the training clip (its landmarks and audio).

    Returns {"gt_av_offset_frames", "gt_av_corr", "gt_source"} (None / "none" when the dataset is gone)."""
    from avatar.core.audio import load_audio
    from avatar.core.avsync import av_offset
    from avatar.core.landmarks import mouth_opening as mp_mouth_opening

    gt_lag, gt_corr, gt_src = None, None, "none"
    try:
        from avatar.core.dataset_format import load_dataset

        info = load_dataset(avatar.dataset["root"])
        if info.has_audio and info.path("audio.wav").is_file() and info.path("landmarks.npy").is_file():
            gt_wav = load_audio(info.path("audio.wav"), sr=SR)
            gt_mouth = mp_mouth_opening(np.asarray(info.landmarks()))
            gt_lag, gt_corr = av_offset(gt_mouth, gt_wav, SR, info.fps)
            gt_src = str(info.root)
    except (AvatarError, OSError, KeyError):
        pass
    return {"gt_av_offset_frames": None if gt_lag is None else int(gt_lag),
            "gt_av_corr": None if gt_corr is None else float(gt_corr), "gt_source": gt_src}


def eval_audio(run_dir: str | os.PathLike, audio_path: str | os.PathLike, *, device: str = "auto",
               speak_config=None, min_face_ratio: float = 0.5, max_duration: float | None = 600.0) -> dict:
    """Render `audio_path` with the avatar in `run_dir` and measure lip sync; same on the training clip.

    Returns {"av_offset_frames", "av_corr", "gt_av_offset_frames", "gt_av_corr", "frames", "fps",
    "mouth_measure" ("facemesh" | "gaussians"), "face_found_ratio", "gt_source"}
    (`render_sync` + `clip_sync`; bench/lipsync.py runs them over a folder of audio files).
    """
    from avatar.core.audio import probe_duration
    from avatar.engine import Avatar

    if max_duration is not None and probe_duration(audio_path) > max_duration:
        raise AvatarError(f"{audio_path}: longer than {max_duration:.0f} s; lip-sync evaluation is meant for clips")
    avatar = Avatar.load(run_dir, device=device)
    r = render_sync(avatar, audio_path, speak_config, min_face_ratio=min_face_ratio)
    g = clip_sync(avatar)
    return {"av_offset_frames": r["av_offset_frames"], "av_corr": r["av_corr"],
            "gt_av_offset_frames": g["gt_av_offset_frames"], "gt_av_corr": g["gt_av_corr"],
            "frames": r["frames"], "fps": r["fps"], "mouth_measure": r["mouth_measure"],
            "face_found_ratio": r["face_found_ratio"], "audio": r["audio"], "gt_source": g["gt_source"]}
