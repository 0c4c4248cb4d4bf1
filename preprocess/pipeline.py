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
`AvatarError` naming the file and the fix when something is wrong. The stage functions live in
preprocess/stages.py and preprocess/masks_stage.py; this file holds the driver (plan, cache markers,
the masks stage run beside the single-threaded ones, dataset.json).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from avatar.core.config import save_yaml, to_dict
from avatar.core.dataset_format import DATASET_JSON, DATASET_VERSION, CameraPose, DatasetInfo, load_dataset, split_ranges
from avatar.core.io import write_json_atomic
from avatar.errors import AvatarError
from avatar.preprocess.config import PreprocessConfig
from avatar.preprocess.masks_stage import stage_masks
from avatar.preprocess.stages import (StageContext, _info, stage_blink, stage_decode, stage_features, stage_landmarks,
                                      stage_pose, stage_preview)

__all__ = ["MARKER_DIR", "STAGES", "STAGE_VERSIONS", "StageContext", "run_preprocess", "split_ranges", "stage_masks"]

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
MARKER_DIR = ".stages"


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
        w, h = ctx.source_size or (0, 0)
        if w != h:  # `resolution` used to mean the short side: a folder decoded that way is not reused
            extra["resolution_side"] = "long"
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

    probe = probe_video(video)  # one-line errors for a missing file / non-video before touching out_dir
    if out.exists() and not out.is_dir():
        raise AvatarError(f"{out}: exists and is not a folder; choose another -o")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_DIR).mkdir(exist_ok=True)
    sha = file_sha256(video)
    ctx = StageContext(video=video, out=out, cfg=cfg, source_sha256=sha, progress=progress, summaries={},
                       source_size=(probe.width, probe.height))
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
