"""The preprocessing driver: typed stages, each cached, checked and resumable.

    run_preprocess(video, out_dir, cfg, force) -> DatasetInfo

Stages run in `STAGES` order. Each one reads the files of earlier stages and writes its own
outputs, then a marker `DATA_DIR/.stages/NAME.json` with the stage version, a key hashing its
inputs (source file hash, the config fields it uses, the keys of the stages before it) and a
summary (figures, timing). A stage is skipped when its marker exists with the same version and key
and its outputs are present; otherwise it, and every stage after it, runs again. `force` names
stages to redo (with everything after them). A stage's marker is deleted before it starts, and
`dataset.json` is deleted before any stage runs and written last (atomically), so an interrupted or
failed run never leaves a folder that looks complete (avatar/core/dataset_format.py).

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

from avatar.core.config import save_yaml, to_dict
from avatar.core.dataset_format import DATASET_JSON, DATASET_VERSION, MASK_LABELS, CameraPose, DatasetInfo, load_dataset
from avatar.errors import AvatarError
from avatar.core.io import save_npy_atomic, write_json_atomic
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


class _MaskWorker:
    """The masks stage's work on a run of consecutive frames (one worker per process or thread, each
    with its own MaskSegmenter): read each frame, label it, write masks/%06d.png, count the labels
    present and accumulate the frames' share of the background plate (a `BackgroundPart`, merged in
    frame order by the stage, so the plate is the same as a sequential pass)."""

    def __init__(self, out: Path, height: int, width: int, num_frames: int, seg: Any = None):
        import cv2

        from avatar.preprocess.background import BackgroundAccumulator
        from avatar.preprocess.masks import MaskSegmenter

        self.out, self.h, self.w = Path(out), int(height), int(width)
        self.lm = np.load(self.out / "landmarks.npy")
        self.bg = BackgroundAccumulator(self.h, self.w)  # same settings as the stage's accumulator
        self.plan = self.bg.reservoir_plan(num_frames)
        self.seg = MaskSegmenter() if seg is None else seg
        self.png = [cv2.IMWRITE_PNG_COMPRESSION, 1]
        if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10: no row filter, 4x faster to write (and read)
            self.png += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]

    def run(self, start: int, stop: int) -> tuple[np.ndarray, Any]:
        """Frames [start, stop) -> (frames in which each label is present [L] int64, BackgroundPart)."""
        import cv2

        nlab = len(MASK_LABELS)
        masks = self.out / "masks"
        counts = np.zeros(nlab, np.int64)
        part = self.bg.part(start, stop, self.plan)
        self.seg.reset()  # each run starts afresh (temporal smoothing, if on, never crosses runs)
        for k in range(start, stop):
            rgb = _read_rgb(self.out / "frames" / f"{k:06d}.jpg")
            labels = self.seg(rgb, self.lm[k])
            hist = cv2.calcHist([labels], [0], None, [256], [0, 256]).ravel() if labels.dtype == np.uint8 else None
            if labels.shape != (self.h, self.w) or hist is None or hist[nlab:].any():
                raise AvatarError(f"{masks}: mask of frame {k} is {labels.dtype} {labels.shape} with labels up to "
                                  f"{labels.max()} (MASK_LABELS has {nlab}); re-run with --force masks")
            if not cv2.imwrite(str(masks / f"{k:06d}.png"), labels, self.png):
                raise AvatarError(f"{masks}: could not write a mask (disk full or folder not writable?)")
            counts += hist[:nlab] > 0
            if part.uses(k):
                part.add(rgb, labels)
            else:
                part.skip()
        return counts, part

    def close(self) -> None:
        self.seg.close()


_PROC: dict[str, Any] = {}  # state of a masks worker process: its MaskSegmenter, the shared counter, the queue


def _mask_proc_init(next_run: Any, results: Any) -> None:
    """Start of a masks worker process: the imports and the MediaPipe graph (~1 s of CPU)."""
    import cv2

    from avatar.preprocess.masks import MaskSegmenter

    cv2.setNumThreads(1)  # one worker per core already
    results.cancel_join_thread()  # never block exit on unread results (error paths; all are read otherwise)
    _PROC.update(seg=MaskSegmenter().open(), next_run=next_run, results=results)


def _mask_proc_ready() -> bool:
    return "seg" in _PROC


def _mask_proc_loop(out: str, height: int, width: int, runs: list[tuple[int, int]]) -> int:
    """Take runs off the shared counter until none is left, putting (run index, label counts,
    BackgroundPart) on the results queue for each; -> number of runs done.

    The workers pull work themselves and results go through a queue: handing out runs from the
    parent would need its GIL, which the side stages hold for long stretches (workers sat idle)."""
    next_run, results = _PROC["next_run"], _PROC["results"]
    wk = _MaskWorker(Path(out), height, width, runs[-1][1], seg=_PROC["seg"])
    done = 0
    try:
        while True:
            with next_run.get_lock():
                i = next_run.value
                next_run.value += 1
            if i >= len(runs):
                return done
            c, part = wk.run(*runs[i])
            results.put((i, c, part))
            done += 1
    except BaseException:
        with next_run.get_lock():  # make the other workers stop soon
            next_run.value = len(runs)
        raise


class MaskPool:
    """`workers` masks worker processes, started at once (spawned: a fresh interpreter each, as fork is
    unsafe with the threads MediaPipe and torch leave behind; starting them before decode, whose CPU
    is not saturated, was measured no faster end to end). `run` hands them one masks stage, `close`
    reaps them (so their CPU time counts in RUSAGE_CHILDREN)."""

    def __init__(self, workers: int):
        import concurrent.futures as cf
        import multiprocessing as mp

        mpc = mp.get_context("spawn")
        self.workers = int(workers)
        self.next_run = mpc.Value("i", 0)
        self.results = mpc.Queue()
        self.pool: Any = cf.ProcessPoolExecutor(self.workers, mp_context=mpc, initializer=_mask_proc_init,
                                                initargs=(self.next_run, self.results))
        self._warm = [self.pool.submit(_mask_proc_ready) for _ in range(self.workers)]  # spawns the processes now

    def run(self, out: Path, height: int, width: int, runs: list[tuple[int, int]],
            consume: Callable[[int, np.ndarray, Any], None]) -> None:
        """Label every run; `consume(run index, label counts, BackgroundPart)` is called here, in this
        thread, for each run as it arrives (in any order)."""
        import concurrent.futures as cf
        import queue

        if self.pool is None:
            raise AvatarError("masks worker pool is closed")
        try:
            for f in self._warm:
                f.result()  # a worker that failed to start fails here
            with self.next_run.get_lock():
                self.next_run.value = 0
            futures = [self.pool.submit(_mask_proc_loop, str(out), height, width, runs) for _ in range(self.workers)]
            got, idle = 0, 0.0
            while got < len(runs):
                try:
                    item = self.results.get(timeout=0.5)
                except queue.Empty:
                    for f in futures:
                        if f.done():
                            f.result()  # re-raise a worker's error here
                    idle = idle + 0.5 if all(f.done() for f in futures) else 0.0
                    if idle > 60.0:
                        raise AvatarError(f"{out / 'masks'}: mask workers finished but {len(runs) - got} of "
                                          f"{len(runs)} runs never arrived; re-run with --force masks") from None
                    continue
                consume(*item)
                got += 1
            for f in futures:
                f.result()
        except cf.process.BrokenProcessPool as e:
            raise AvatarError(f"{out / 'masks'}: a mask worker process died ({e}; out of memory?); re-run with "
                              f"--threads 1 or free some memory") from None
        finally:
            with self.next_run.get_lock():
                self.next_run.value = len(runs)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
            self.results.close()


def stage_masks(ctx: StageContext) -> dict[str, Any]:
    """Label maps per frame (masks/%06d.png) and the static background plate (background.png).

    With `cfg.threads` > 1 the frames are cut into runs of consecutive frames that `cfg.threads`
    worker processes take in turn (processes, not threads: labelling is partly Python, and the side
    stages running meanwhile hold the GIL for long stretches); each run yields its label counts and
    background share, merged here in frame order, so the outputs do not depend on the worker count
    or timing.
    """
    import cv2
    from tqdm import tqdm

    from avatar.core.io import atomic_path
    from avatar.preprocess.background import BackgroundAccumulator

    d = ctx.summaries["decode"]
    h, w = d["height"], d["width"]
    n = d["num_frames"]
    masks = ctx.out / "masks"
    _clear_dir(masks, "*.png")
    masks.mkdir(parents=True, exist_ok=True)
    nlab = len(MASK_LABELS)
    counts = np.zeros(nlab, np.int64)  # frames in which each label is present
    bg = BackgroundAccumulator(h, w)
    workers = max(1, int(ctx.cfg.threads))
    size = int(np.clip(n // (8 * workers), 8, 32))  # frames per run: small runs balance the workers' ends
    runs = [(a, min(n, a + size)) for a in range(0, n, size)]
    workers = min(workers, len(runs))
    with tqdm(total=n, desc="masks", unit="frame", disable=not ctx.progress, leave=False) as bar:
        if workers == 1:
            wk = _MaskWorker(ctx.out, h, w, n)
            try:
                for a, b in runs:
                    c, part = wk.run(a, b)
                    counts += c
                    bg.merge(part)
                    bar.update(b - a)
            finally:
                wk.close()
        else:
            held: dict[int, tuple[np.ndarray, Any]] = {}  # runs that arrived before an earlier one
            nxt = 0

            def consume(i: int, c: np.ndarray, part: Any) -> None:  # merge in frame order
                nonlocal nxt, counts
                held[i] = (c, part)
                while nxt in held:
                    c, part = held.pop(nxt)
                    counts += c
                    bg.merge(part)
                    bar.update(part.stop - part.start)
                    nxt += 1

            pool = MaskPool(workers)
            try:
                pool.run(ctx.out, h, w, runs, consume)
            finally:
                pool.close()  # reaped now, so the workers' CPU time counts for this stage
            if nxt != len(runs):
                raise AvatarError(f"{masks}: {nxt} of {len(runs)} runs of frames merged; re-run with --force masks")
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

    from avatar.features import extract as af
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
    """Turn `video` into the dataset folder `out_dir` (layout: avatar/core/dataset_format.py) and return it loaded.

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
    minus the side thread's plus the reaped child processes' (so its worker processes count, the side
    stages do not).
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

    def children_cpu() -> float:  # the masks worker processes, once reaped (the stage does that)
        import resource

        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

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

    import cv2

    # Every core is busy with the masks workers and the side stages here: OpenCV's internal thread pool
    # would only add hand-over cost (measured ~15 % more CPU per mask frame; the worker processes turn
    # it off themselves), so it is off until both sides are done.
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        th = threading.Thread(target=side, name="preprocess-side-stages", daemon=True)
        th.start()
        started.wait()
        try:
            execute("masks", lambda: time.process_time() - side_cpu() + children_cpu())
        finally:
            th.join()
    finally:
        cv2.setNumThreads(cv_threads)
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
