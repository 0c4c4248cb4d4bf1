"""The preprocessing driver: typed stages, each cached, checked and resumable.

    run_preprocess(video, out_dir, cfg, force) -> DatasetInfo

Stages run in `STAGES` order. Each one reads the files of earlier stages and writes its own
outputs, then a marker `DATA_DIR/.stages/NAME.json` with the stage version, a key hashing its
inputs (source file hash, the config fields it uses, the keys of the stages before it) and a
summary (figures, timing). A stage is skipped when its marker exists with the same version and key
and its outputs are present; otherwise it, and every stage after it, runs again. `force` names
stages to redo (with everything after them). A stage's marker is deleted before it starts, and
`dataset.json` is deleted before any stage runs and written last (atomically), so an interrupted or
failed run never leaves a folder that looks complete (avatar/dataset.py).

Every stage validates what it wrote (counts, shapes, finite values, ranges) and raises a one-line
`AvatarError` naming the file and the fix when something is wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from avatar.config import save_yaml, to_dict
from avatar.dataset import DATASET_JSON, DATASET_VERSION, MASK_LABELS, CameraPose, DatasetInfo, load_dataset
from avatar.errors import AvatarError
from avatar.io import save_npy_atomic, write_json_atomic
from avatar.preprocess.config import PreprocessConfig

log = logging.getLogger("avatar.preprocess")

STAGES: tuple[str, ...] = ("decode", "landmarks", "pose", "masks", "blink", "features", "preview")
STAGE_VERSIONS: dict[str, int] = {"decode": 1, "landmarks": 1, "pose": 1, "masks": 1, "blink": 1, "features": 1, "preview": 1}
# config fields each stage depends on (a change re-runs the stage and everything after it)
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "decode": ("resolution", "fps", "jpeg_quality", "min_duration", "no_audio"),
    "landmarks": ("max_missing_share", "max_gap_seconds", "min_face_confidence", "threads"),
    "pose": ("fov_deg", "focal_prior_weight", "pose_smooth_rot", "pose_smooth_trans", "pose_smooth_depth", "pose_iters"),
    "masks": (),
    "blink": (),
    "features": ("features", "model_dir", "import_features", "no_audio"),
    "preview": ("preview", "preview_seconds"),
}
FEATURE_FILE_NAMES = {"phonetic+spectral": "phonetic_spectral", "wav2vec2": "wav2vec2", "hubert": "hubert"}
IMPORTED_FEATURE = "imported"
MARKER_DIR = ".stages"


@dataclasses.dataclass
class StageContext:
    """What a stage gets: the source, the folder, the config and the summaries of earlier stages."""

    video: Path
    out: Path
    cfg: PreprocessConfig
    source_sha256: str
    progress: bool
    summaries: dict[str, dict[str, Any]]

    def frame_paths(self) -> list[Path]:
        n = int(self.summaries["decode"]["num_frames"])
        return [self.out / "frames" / f"{k:06d}.jpg" for k in range(n)]


# ---------------------------------------------------------------------------------------------
# helpers


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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

    from avatar.io import atomic_path
    from avatar.preprocess.decode import AUDIO_SR, decode_video, probe_video

    cfg = ctx.cfg
    frames = ctx.out / "frames"
    _clear_dir(frames, "*.jpg")
    probe = probe_video(ctx.video)
    res = decode_video(ctx.video, frames, resolution=cfg.resolution, fps=cfg.fps, with_audio=not cfg.no_audio,
                       min_duration=cfg.min_duration, jpeg_quality=cfg.jpeg_quality, progress=ctx.progress)
    wav_path = ctx.out / "audio.wav"
    if res.audio is not None:
        with atomic_path(wav_path) as tmp:
            sf.write(str(tmp), res.audio, AUDIO_SR, subtype="PCM_16", format="WAV")
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
        if info.samplerate != AUDIO_SR or info.channels != 1 or abs(info.frames / AUDIO_SR - n / cfg.fps) > 1.0 / cfg.fps:
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


def stage_masks(ctx: StageContext) -> dict[str, Any]:
    """Label maps per frame (masks/%06d.png) and the static background plate (background.png).

    Frames are segmented by `cfg.threads` worker threads, each with its own MaskSegmenter (MediaPipe
    and OpenCV release the GIL); results are consumed in frame order by this thread, which feeds the
    background accumulator, so the plate does not depend on thread timing.
    """
    import collections
    import concurrent.futures as cf
    import threading

    import cv2
    from tqdm import tqdm

    from avatar.io import atomic_path
    from avatar.preprocess.background import BackgroundAccumulator
    from avatar.preprocess.masks import MaskSegmenter

    d = ctx.summaries["decode"]
    h, w = d["height"], d["width"]
    n = d["num_frames"]
    masks = ctx.out / "masks"
    _clear_dir(masks, "*.png")
    masks.mkdir(parents=True, exist_ok=True)
    lm = np.load(ctx.out / "landmarks.npy")
    paths = ctx.frame_paths()
    nlab = len(MASK_LABELS)
    counts = np.zeros(nlab, np.int64)  # frames in which each label is present
    bg = BackgroundAccumulator(h, w)
    local = threading.local()
    segmenters: list[MaskSegmenter] = []
    lock = threading.Lock()

    def work(k: int) -> tuple[np.ndarray, np.ndarray]:
        seg = getattr(local, "seg", None)
        if seg is None:
            seg = local.seg = MaskSegmenter()
            with lock:
                segmenters.append(seg)
        rgb = _read_rgb(paths[k])
        labels = seg(rgb, lm[k])
        if labels.shape != (h, w) or labels.dtype != np.uint8 or int(labels.max()) >= nlab:
            raise AvatarError(f"{masks}: mask of frame {k} is {labels.dtype} {labels.shape} with labels up to "
                              f"{labels.max()} (MASK_LABELS has {nlab}); re-run with --force masks")
        if not cv2.imwrite(str(masks / f"{k:06d}.png"), labels, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise AvatarError(f"{masks}: could not write a mask (disk full or folder not writable?)")
        return rgb, labels

    threads = max(1, int(ctx.cfg.threads))
    try:
        with cf.ThreadPoolExecutor(threads) as pool, \
                tqdm(total=n, desc="masks", unit="frame", disable=not ctx.progress, leave=False) as bar:
            window: collections.deque = collections.deque()
            nxt = 0
            for k in range(n):
                while nxt < n and len(window) < 2 * threads + 2:  # bounded look-ahead: O(threads) frames in RAM
                    window.append(pool.submit(work, nxt))
                    nxt += 1
                rgb, labels = window.popleft().result()
                counts += np.bincount(labels.reshape(-1), minlength=nlab)[:nlab] > 0
                bg.add(rgb, labels)
                bar.update(1)
    finally:
        for seg in segmenters:
            seg.close()
    plate = bg.finish()
    if plate.shape != (h, w, 3):
        raise AvatarError(f"{ctx.out / 'background.png'}: plate has shape {plate.shape}; re-run with --force masks")
    with atomic_path(ctx.out / "background.png") as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(plate, cv2.COLOR_RGB2BGR))
    share = {name: float(counts[i] / n) for name, i in MASK_LABELS.items()}
    if share["face"] < 1.0 - ctx.cfg.max_missing_share:
        raise AvatarError(f"{masks}: face region empty in {100 * (1 - share['face']):.0f}% of frames; "
                          f"check the video (--preview) and re-run with --force masks")
    return {"label_frame_share": share, "background": {k: float(v) for k, v in getattr(bg, "stats", {}).items()}}


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

    from avatar.preprocess import audio_features as af
    from avatar.preprocess.sync import av_offset, mouth_opening

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
        feats, meta = af.extract_features(wav, n, fps, kind=cfg.features, model_dir=cfg.model_dir)
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
        feats, meta = af.import_npy(cfg.import_features, n, fps)
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


STAGE_FUNCS: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "decode": stage_decode, "landmarks": stage_landmarks, "pose": stage_pose, "masks": stage_masks,
    "blink": stage_blink, "features": stage_features, "preview": stage_preview,
}
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "decode": ("frames",), "landmarks": ("landmarks.npy", "landmarks_z.npy", "face_found.npy"), "pose": ("pose.npz",),
    "masks": ("masks", "background.png"), "blink": ("blink.npy",), "features": ("features",), "preview": (),
}


# ---------------------------------------------------------------------------------------------
# driver


def _stage_key(name: str, ctx: StageContext, upstream: str) -> str:
    fields = {f: getattr(ctx.cfg, f) for f in STAGE_FIELDS[name]}
    extra: dict[str, Any] = {}
    if name == "decode":
        extra["source"] = ctx.source_sha256
    if name == "features" and ctx.cfg.import_features is not None and Path(ctx.cfg.import_features).is_file():
        st = Path(ctx.cfg.import_features).stat()
        extra["import"] = [st.st_size, st.st_mtime_ns]
    return _key({"stage": name, "version": STAGE_VERSIONS[name], "fields": fields, "extra": extra, "upstream": upstream})


def _load_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_preprocess(video: str | Path, out_dir: str | Path, cfg: PreprocessConfig | None = None,
                   force: Sequence[str] = (), progress: bool | None = None) -> DatasetInfo:
    """Turn `video` into the dataset folder `out_dir` (layout: avatar/dataset.py) and return it loaded.

    Finished stages are reused; `force` lists stages to redo together with all later stages.
    `progress`: show progress bars and stage lines on stderr (default: when stderr is a terminal).
    """
    cfg = cfg or PreprocessConfig()
    video, out = Path(video), Path(out_dir)
    progress = sys.stderr.isatty() if progress is None else progress
    unknown = [s for s in force if s not in STAGES]
    if unknown:
        raise AvatarError(f"--force {unknown[0]}: unknown stage (choose from {', '.join(STAGES)})")
    _check_config(cfg)
    from avatar.preprocess.decode import probe_video

    probe_video(video)  # one-line errors for a missing file / non-video before touching out_dir
    if out.exists() and not out.is_dir():
        raise AvatarError(f"{out}: exists and is not a folder; choose another -o")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_DIR).mkdir(exist_ok=True)
    sha = file_sha256(video)
    ctx = StageContext(video=video, out=out, cfg=cfg, source_sha256=sha, progress=progress, summaries={})
    first_forced = min((STAGES.index(s) for s in force), default=len(STAGES))
    # plan: which stages are reusable (the first stage that must run makes every later one run too)
    plan: dict[str, tuple[str, bool]] = {}  # name -> (key, run?)
    dirty = False
    upstream = ""
    timings: dict[str, float] = {}
    cpu_timings: dict[str, float] = {}  # CPU seconds per stage (all threads working for it)
    for i, name in enumerate(STAGES):
        key = _stage_key(name, ctx, upstream)
        marker = _load_marker(out / MARKER_DIR / f"{name}.json")
        outputs_ok = all((out / o).exists() for o in STAGE_OUTPUTS[name])
        cached = (not dirty and i < first_forced and marker is not None and marker.get("key") == key
                  and marker.get("version") == STAGE_VERSIONS[name] and outputs_ok)
        if cached:
            ctx.summaries[name] = marker["summary"]
            timings[name] = float(marker.get("seconds", 0.0))
            cpu_timings[name] = float(marker.get("cpu_seconds", 0.0))
            _info(f"{name}: up to date (cached)", progress)
        dirty = dirty or not cached
        plan[name] = (key, not cached)
        upstream = key
    if dirty:  # nothing may look complete while stages are being redone
        (out / DATASET_JSON).unlink(missing_ok=True)
        for name, (_, run) in plan.items():
            if run:
                (out / MARKER_DIR / f"{name}.json").unlink(missing_ok=True)
        save_yaml(cfg, out / "preprocess.yaml")

    def execute(name: str, cpu_clock: Callable[[], float] = time.process_time) -> None:
        key, run = plan[name]
        if not run:
            return
        t, c = time.perf_counter(), cpu_clock()
        summary = STAGE_FUNCS[name](ctx)
        dt, dc = time.perf_counter() - t, cpu_clock() - c
        ctx.summaries[name] = summary
        timings[name] = dt
        cpu_timings[name] = dc
        write_json_atomic(out / MARKER_DIR / f"{name}.json", {"stage": name, "version": STAGE_VERSIONS[name], "key": key,
                                                              "seconds": dt, "cpu_seconds": dc, "summary": summary})
        _info(f"{name}: done in {dt:.1f} s", progress)

    execute("decode")
    execute("landmarks")
    _run_concurrently(execute, plan)
    execute("preview")
    save_yaml(cfg, out / "preprocess.yaml")
    write_json_atomic(out / DATASET_JSON, _dataset_json(ctx, timings, cpu_timings))
    return load_dataset(out)


# Stages that only need decode + landmarks and are single-threaded: they run in a second thread while
# `masks` runs (its workers are busy with MediaPipe), so a 2-core machine is not left half idle.
SIDE_STAGES: tuple[str, ...] = ("pose", "blink", "features")


def _run_concurrently(execute: Callable[..., None], plan: dict[str, tuple[str, bool]]) -> None:
    """Run `masks` in this thread and SIDE_STAGES (in order) in a helper thread; re-raise the first error.

    CPU seconds: the side stages are timed with their own thread's clock, masks with the process clock
    minus the side thread's (so its worker threads count, the side stages do not).
    """
    import threading

    errors: list[BaseException] = []
    side_clock: dict[str, Any] = {"id": None, "final": None}
    started = threading.Event()

    def side_cpu() -> float:
        if side_clock["final"] is not None:
            return side_clock["final"]
        try:
            return time.clock_gettime(side_clock["id"])
        except (OSError, TypeError):  # thread just finished: its final value is (about to be) set
            return side_clock["final"] or 0.0

    def side() -> None:
        side_clock["id"] = time.pthread_getcpuclockid(threading.get_ident())
        started.set()
        try:
            for name in SIDE_STAGES:
                execute(name, time.thread_time)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)
        finally:
            side_clock["final"] = time.thread_time()

    th = threading.Thread(target=side, name="preprocess-side-stages", daemon=True)
    th.start()
    started.wait()
    try:
        execute("masks", lambda: time.process_time() - side_cpu())
    finally:
        th.join()
    if errors:
        raise errors[0]


def _check_config(cfg: PreprocessConfig) -> None:
    if cfg.resolution < 64:
        raise AvatarError(f"--resolution {cfg.resolution}: too small (use >= 64, default 512)")
    if not (1.0 <= cfg.fps <= 120.0):
        raise AvatarError(f"--fps {cfg.fps}: out of range (use 1..120, default 25)")
    if not (0.0 <= cfg.max_missing_share < 1.0):
        raise AvatarError(f"--max_missing_share {cfg.max_missing_share}: must be in [0, 1)")
    if not (0.0 < cfg.val_share < 1.0):
        raise AvatarError(f"--val_share {cfg.val_share}: must be in (0, 1)")
    if cfg.features in ("wav2vec2", "hubert") and cfg.model_dir is None and not cfg.no_audio:
        raise AvatarError(f"--features {cfg.features} needs --model-dir DIR (a local transformers model folder; nothing is downloaded)")
    if cfg.import_features is not None and not Path(cfg.import_features).is_file():
        raise AvatarError(f"{cfg.import_features}: no such feature file (--import-features expects an .npy array)")


def split_ranges(n: int, val_share: float) -> dict[str, list[int]]:
    """Last `val_share` of the frames held out: train [0, a), val [a, n) (ER-NeRF: a = floor(10n/11))."""
    a = int(math.floor(n * (1.0 - val_share) + 1e-9))
    a = min(max(a, 1), n - 1)
    return {"train": [0, a], "val": [a, n]}


def _dataset_json(ctx: StageContext, timings: dict[str, float], cpu_timings: dict[str, float]) -> dict[str, Any]:
    s = ctx.summaries
    d = s["decode"]
    cam = CameraPose.load(ctx.out / "pose.npz")
    n = d["num_frames"]
    pose = s["pose"]
    files = {"frames": "frames/%06d.jpg", "masks": "masks/%06d.png", "background": "background.png",
             "landmarks": "landmarks.npy", "landmarks_z": "landmarks_z.npy", "face_found": "face_found.npy",
             "pose": "pose.npz", "blink": "blink.npy", "config": "preprocess.yaml"}
    if d["has_audio"]:
        files["audio"] = "audio.wav"
    if s["preview"].get("written"):
        files["preview"] = s["preview"]["files"]
    quality = {
        "faces_found": s["landmarks"]["faces_found"],
        "faces_found_share": s["landmarks"]["faces_found_share"],
        "frames_interpolated": s["landmarks"]["frames_interpolated"],
        "multi_face_frames": s["landmarks"]["multi_face_frames"],
        "reproj_px": pose["reproj_px"],
        "reproj_px_p95": pose["reproj_px_p95"],
        "rot_jitter_deg": pose["rot_jitter_deg"],
        "trans_jitter_rel": pose["trans_jitter_rel"],
        "hf_jitter_px": pose["hf_jitter_px"],
        "pose_ok": pose["ok"],
        "pose_thresholds": pose["thresholds"],
        "blink": {k: v for k, v in s["blink"].items()},
        "masks": s["masks"]["label_frame_share"],
        "background": s["masks"].get("background", {}),
    }
    if "av_sync" in s["features"]:
        quality["av_sync"] = s["features"]["av_sync"]
    return {
        "version": DATASET_VERSION,
        "source": d["source"],
        "fps": ctx.cfg.fps,
        "num_frames": n,
        "width": d["width"],
        "height": d["height"],
        "time_origin": d["t0"],
        "camera": {"focal": cam.focal, "cx": cam.cx, "cy": cam.cy},
        "stages": dict(STAGE_VERSIONS),
        "files": files,
        "features": s["features"]["features"],
        "default_feature": s["features"]["default_feature"],
        "split": split_ranges(n, ctx.cfg.val_share),
        "quality": quality,
        "has_audio": d["has_audio"],
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "cpu_timings": {k: round(v, 3) for k, v in cpu_timings.items()},
        "config": to_dict(ctx.cfg),
    }
