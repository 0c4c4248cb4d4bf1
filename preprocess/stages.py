"""The preprocessing stages except masks (preprocess/masks_stage.py): typed functions run by the driver.

Each stage gets a `StageContext` (source video, dataset folder, config, summaries of the stages before
it), writes its outputs atomically, validates them (counts, shapes, finite values, ranges) and returns
a JSON-able summary that the driver (preprocess/pipeline.py) stores in the stage's marker. A failed
check raises a one-line `AvatarError` naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from avatar.core.io import save_npy_atomic, write_json_atomic
from avatar.errors import AvatarError
from avatar.preprocess.config import PreprocessConfig

log = logging.getLogger("avatar.preprocess")

FEATURE_FILE_NAMES = {"phonetic+spectral": "phonetic_spectral", "wav2vec2": "wav2vec2", "hubert": "hubert"}
IMPORTED_FEATURE = "imported"


@dataclasses.dataclass
class StageContext:
    """What a stage gets: the source, the folder, the config and the summaries of earlier stages."""

    video: Path
    out: Path
    cfg: PreprocessConfig
    source_sha256: str
    progress: bool
    summaries: dict[str, dict[str, Any]]
    source_size: tuple[int, int] | None = None
    """(width, height) of the source video (upright), from the probe before any stage runs."""

    def frame_paths(self) -> list[Path]:
        n = int(self.summaries["decode"]["num_frames"])
        return [self.out / "frames" / f"{k:06d}.jpg" for k in range(n)]


def _clear_dir(d: Path, pattern: str) -> None:
    if d.is_dir():
        for p in d.glob(pattern):
            p.unlink()


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise AvatarError(f"{path}: missing or unreadable frame; re-run with --force decode")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _info(msg: str, progress: bool) -> None:
    if progress:
        print(f"avatar preprocess: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# stages: each returns a JSON-able summary; outputs are written atomically inside


def stage_decode(ctx: StageContext) -> dict[str, Any]:
    """Frames at cfg.fps/resolution from timestamps, plus audio.wav aligned to frame 0."""
    import soundfile as sf

    from avatar.core.io import atomic_path
    from avatar.core.audio import SAMPLE_RATE
    from avatar.preprocess.decode import decode_video, probe_video

    cfg = ctx.cfg
    frames = ctx.out / "frames"
    _clear_dir(frames, "*.jpg")
    probe = probe_video(ctx.video)
    res = decode_video(ctx.video, frames, resolution=cfg.resolution, fps=cfg.fps, with_audio=not cfg.no_audio,
                       min_duration=cfg.min_duration, jpeg_quality=cfg.jpeg_quality, progress=ctx.progress)
    wav_path = ctx.out / "audio.wav"
    if res.audio is not None:
        with atomic_path(wav_path) as tmp:
            sf.write(str(tmp), res.audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    elif wav_path.exists():
        wav_path.unlink()
    # check
    n = res.num_frames
    files = sorted(frames.glob("*.jpg"))
    if len(files) != n or files[-1].name != f"{n - 1:06d}.jpg":
        raise AvatarError(f"{frames}: expected {n} frames, found {len(files)}; re-run with --force decode")
    last = _read_rgb(files[-1])
    if last.shape[:2] != (res.height, res.width):
        raise AvatarError(f"{files[-1]}: size {last.shape[1]}x{last.shape[0]} != {res.width}x{res.height}; re-run with --force decode")
    if res.audio is not None:
        info = sf.info(str(wav_path))
        if info.samplerate != SAMPLE_RATE or info.channels != 1 or abs(info.frames / SAMPLE_RATE - n / cfg.fps) > 1.0 / cfg.fps:
            raise AvatarError(f"{wav_path}: audio does not match the frames ({info.frames / info.samplerate:.3f} s vs "
                              f"{n / cfg.fps:.3f} s); re-run with --force decode")
    if probe.width * probe.height > res.width * res.height:
        _info(f"downscaled {probe.width}x{probe.height} -> {res.width}x{res.height}", ctx.progress)
    if abs(probe.fps - cfg.fps) > 1e-3:
        _info(f"resampled {probe.fps:.3f} fps -> {cfg.fps:g} fps from timestamps "
              f"({res.dropped_frames} source frames dropped, {res.repeated_frames} repeated)", ctx.progress)
    return {"num_frames": n, "width": res.width, "height": res.height, "t0": res.t0, "has_audio": res.audio is not None,
            "source": {"path": str(ctx.video.resolve()), "sha256": ctx.source_sha256, "fps": probe.fps,
                       "duration": probe.duration, "width": probe.width, "height": probe.height,
                       "video_start": res.video_start, "audio_start": res.audio_start,
                       "frames_decoded": res.source_frames, "frames_dropped": res.dropped_frames,
                       "frames_repeated": res.repeated_frames}}


def stage_landmarks(ctx: StageContext) -> dict[str, Any]:
    from avatar.preprocess.landmarks import track_frames

    cfg = ctx.cfg
    fr = track_frames(ctx.frame_paths(), cfg.fps, max_missing_share=cfg.max_missing_share,
                      max_gap_seconds=cfg.max_gap_seconds, min_confidence=cfg.min_face_confidence,
                      source=str(ctx.video), progress=ctx.progress, threads=cfg.threads)
    if not np.isfinite(fr.landmarks).all():
        raise AvatarError(f"{ctx.out / 'landmarks.npy'}: non-finite landmarks; re-run with --force landmarks")
    save_npy_atomic(ctx.out / "landmarks.npy", fr.landmarks.astype(np.float32))
    save_npy_atomic(ctx.out / "landmarks_z.npy", fr.depth.astype(np.float32))
    save_npy_atomic(ctx.out / "face_found.npy", fr.found)
    n = len(fr.found)
    return {"faces_found": int(fr.found.sum()), "faces_found_share": float(fr.found.mean()),
            "frames_interpolated": int(n - fr.found.sum()), "multi_face_frames": int(fr.multi_face_frames)}


def stage_pose(ctx: StageContext) -> dict[str, Any]:
    from avatar.preprocess.pose import MAX_ROT_JITTER_DEG, MAX_TRANS_JITTER_REL, fit_pose

    cfg = ctx.cfg
    d = ctx.summaries["decode"]
    lm = np.load(ctx.out / "landmarks.npy")
    z = np.load(ctx.out / "landmarks_z.npy")
    cam, q = fit_pose(lm, z, d["width"], d["height"], fov_deg=cfg.fov_deg, smooth_rot=cfg.pose_smooth_rot,
                      smooth_trans=cfg.pose_smooth_trans, smooth_depth=cfg.pose_smooth_depth,
                      focal_prior_weight=cfg.focal_prior_weight, iters=cfg.pose_iters, progress=ctx.progress)
    pose_path = ctx.out / "pose.npz"
    ok = (np.isfinite(cam.R).all() and np.isfinite(cam.t).all() and np.isfinite(cam.shape3d).all()
          and math.isfinite(cam.focal) and cam.focal > 0 and (cam.t[:, 2] > 0).all())
    if not ok:
        raise AvatarError(f"{pose_path}: head-pose fit failed (non-finite values or head behind the camera); "
                          f"check landmarks (--preview) and re-run with --force pose")
    if not q.ok:
        log.warning("pose quality outside thresholds: reprojection %.2f px (max %.2f), rotation jitter %.3f deg/frame^2 "
                    "(max %.2f), translation jitter %.4f head widths/frame^2 (max %.3f)", q.reproj_px, q.max_reproj_px,
                    q.rot_jitter_deg, MAX_ROT_JITTER_DEG, q.trans_jitter_rel, MAX_TRANS_JITTER_REL)
    cam.save(pose_path)
    out = dataclasses.asdict(q)
    out["thresholds"] = {"reproj_px": q.max_reproj_px, "rot_jitter_deg": MAX_ROT_JITTER_DEG,
                         "trans_jitter_rel": MAX_TRANS_JITTER_REL}
    return out


def stage_blink(ctx: StageContext) -> dict[str, Any]:
    from avatar.preprocess.blink import blink_signal

    lm = np.load(ctx.out / "landmarks.npy")
    b, stats = blink_signal(lm, ctx.cfg.fps)
    if b.shape != (len(lm),) or not np.isfinite(b).all() or b.min() < 0 or b.max() > 1:
        raise AvatarError(f"{ctx.out / 'blink.npy'}: blink signal out of range; re-run with --force blink")
    save_npy_atomic(ctx.out / "blink.npy", b)
    return stats


def stage_features(ctx: StageContext) -> dict[str, Any]:
    """features/NAME.npy + NAME.json for the default extractor (and an imported array)."""
    import soundfile as sf

    from avatar.features import extract_features, import_npy
    from avatar.core.avsync import av_offset
    from avatar.core.landmarks import mouth_opening

    cfg = ctx.cfg
    d = ctx.summaries["decode"]
    n, fps = d["num_frames"], cfg.fps
    fdir = ctx.out / "features"
    fdir.mkdir(exist_ok=True)
    _clear_dir(fdir, "*.npy")
    _clear_dir(fdir, "*.json")
    entries: dict[str, dict[str, Any]] = {}
    out: dict[str, Any] = {"features": entries, "default_feature": None}

    def save(name: str, arr: np.ndarray, meta: dict[str, Any]) -> None:
        path = fdir / f"{name}.npy"
        if arr.ndim != 2 or arr.shape[0] != n or not np.isfinite(arr).all():
            raise AvatarError(f"{path}: features have shape {arr.shape} (need [{n}, D], finite); re-run with --force features")
        save_npy_atomic(path, arr.astype(np.float32))
        meta = dict(meta)
        meta.setdefault("dim", int(arr.shape[1]))
        meta.setdefault("fps", float(fps))
        write_json_atomic(fdir / f"{name}.json", meta)
        entries[name] = {"file": f"features/{name}.npy", **{k: v for k, v in meta.items() if k != "file"}}

    if d["has_audio"]:
        wav, sr = sf.read(str(ctx.out / "audio.wav"), dtype="float32")
        feats, meta = extract_features(wav, n, fps, kind=cfg.features, model_dir=cfg.model_dir)
        name = FEATURE_FILE_NAMES[cfg.features]
        save(name, feats, meta)
        out["default_feature"] = name
        lag, corr = av_offset(mouth_opening(np.load(ctx.out / "landmarks.npy")), wav, sr, fps)
        out["av_sync"] = {"lag_frames": int(lag), "corr": float(corr)}
        # only trusted on longer clips with a clear correlation peak (5 s clips can peak anywhere)
        if n >= 20 * fps and corr >= 0.2 and abs(lag) >= 2:
            log.warning("%s: lips and audio look out of sync by %d frames (%+.0f ms, corr %.2f); check the source "
                        "(a wrong audio delay in the file?)", ctx.video, lag, 1000 * lag / fps, corr)
    if cfg.import_features is not None:
        feats, meta = import_npy(cfg.import_features, n, fps)
        save(IMPORTED_FEATURE, feats, meta)
        out["default_feature"] = out["default_feature"] or IMPORTED_FEATURE
    return out


def stage_preview(ctx: StageContext) -> dict[str, Any]:
    if not ctx.cfg.preview:
        shutil.rmtree(ctx.out / "preview", ignore_errors=True)
        return {"written": False}
    from avatar.preprocess.preview import write_preview

    files = write_preview(ctx.out, ctx.summaries["decode"]["num_frames"], ctx.cfg.fps, ctx.cfg.preview_seconds,
                          has_audio=ctx.summaries["decode"]["has_audio"], progress=ctx.progress)
    return {"written": True, "files": files}
