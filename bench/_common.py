"""Shared pieces of the benches: the machine a figure came from, one timer, one real-data fixture run.

* `machine()`: CPU model, cores (online and usable by this process), torch threads, device, Python
  and torch versions, load average. Every bench's final JSON line carries it under "machine", so
  a figure is never separated from what it was measured on.
* `time_median(fn, ...)`: warm-up calls, then the MEDIAN of `repeats` (>= 5 by default) timed calls;
  `setup()` runs before each call OUTSIDE the timed region (clones, fresh inputs), and `sync()` (e.g.
  torch.cuda.synchronize) runs inside it so asynchronous device work is counted. Process CPU time is
  reported next to wall time: on a shared machine wall time includes waiting for a core.
* `fixture_run(out_root)`: a small avatar trained once on a real clip (../shared/data/video/may_5s.mp4)
  and cached under `out_root/fixture_run` with the recipe it was made from; later calls reuse it. Benches
  time a model trained on real footage, not the synthetic test cartoon (whose Gaussians, feature
  dimension and image size are unlike a real run's).
* `emit(result)`: prints the one JSON line a bench ends with (machine included).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AVATAR_SHARED_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_OUT = ROOT / "runs" / "bench"
"""Default output folder of the benches (runs/ is git-ignored); the fixture run is cached inside."""

FIXTURE_VIDEO = "video/may_5s.mp4"
FIXTURE_RECIPE = {
    "video": FIXTURE_VIDEO,
    "preset": "cpu",
    # ~2 minutes on 2 cores: enough steps for a face that looks like the clip (held-out PSNR > 25 dB)
    # with real densification, at the cpu preset's own training resolution.
    "overrides": {"iters": "400", "eval_every": "0", "ckpt_every": "0", "final_eval": "false", "seed": "0",
                  "optim.warmup": "100", "strategy.refine_start": "100", "strategy.refine_every": "100",
                  "strategy.refine_stop": "350"},
    "version": 2,  # 2: the cpu preset renders the torso layer at 256 px
}
"""How the fixture run is made; a cached run whose recipe differs is rebuilt."""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict:
    """Where a figure was measured: {"cpu", "cores", "cores_usable", "torch_threads", "device", "python",
    "torch", "load_avg_1min"} (+ "gpu" with the device name when `device` is CUDA)."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    out = {"cpu": _cpu_model(), "cores": os.cpu_count(), "cores_usable": usable, "torch_threads": torch.get_num_threads(),
           "device": device, "python": platform.python_version(), "torch": torch.__version__,
           "load_avg_1min": round(os.getloadavg()[0], 2)}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def time_median(fn: Callable[..., Any], *, repeats: int = 5, warmup: int = 1, setup: Callable[[], tuple] | None = None,
                sync: Callable[[], None] | None = None) -> dict:
    """Time `fn(*setup())`: `warmup` untimed calls, then `repeats` timed ones; returns
    {"median_ms", "min_ms", "max_ms", "cpu_median_ms", "repeats", "warmup"}.

    `setup()` (optional) returns the call's arguments and is NOT timed; `sync()` (optional) is called
    before the clock starts and before it stops (device work finished)."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")

    def call() -> tuple[float, float]:
        args = setup() if setup is not None else ()
        if sync is not None:
            sync()
        c0, t0 = time.process_time(), time.perf_counter()
        fn(*args)
        if sync is not None:
            sync()
        return time.perf_counter() - t0, time.process_time() - c0

    for _ in range(warmup):
        call()
    walls, cpus = zip(*(call() for _ in range(repeats)))
    return {"median_ms": round(1000 * statistics.median(walls), 3), "min_ms": round(1000 * min(walls), 3),
            "max_ms": round(1000 * max(walls), 3), "cpu_median_ms": round(1000 * statistics.median(cpus), 3),
            "repeats": repeats, "warmup": warmup}


def fixture_run(out_root: str | os.PathLike = DEFAULT_OUT, *, log: Callable[[str], None] = print) -> Path:
    """The real-data fixture run (see `FIXTURE_RECIPE`), trained once and cached under out_root/fixture_run
    (its dataset under out_root/fixture_data).

    Preprocesses may_5s.mp4 and trains the `cpu` preset for a few hundred steps (a few minutes on
    2 cores) the first time; afterwards returns the cached folder at once. Built in a temporary folder
    beside it and renamed when complete, so an interrupted build is never mistaken for a run."""
    root = Path(out_root) / "fixture_run"
    recipe_file = root / "bench_recipe.json"
    if (root / "model.pt").is_file() and recipe_file.is_file():
        try:
            if json.loads(recipe_file.read_text()) == FIXTURE_RECIPE:
                return root
        except (OSError, ValueError):
            pass
    video = SHARED_DATA / FIXTURE_VIDEO
    if not video.is_file():
        raise SystemExit(f"bench: the fixture clip {video} is missing (set AVATAR_SHARED_DATA or place ../shared/data)")
    from avatar.core.config import apply_overrides
    from avatar.preprocess.pipeline import run_preprocess
    from avatar.train.presets import get_preset
    from avatar.train.trainer import fit

    data = Path(out_root) / "fixture_data"  # the run records this absolute path: it stays where it is built
    tmp = root.with_name(root.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    log(f"bench: training the fixture run on {video.name} (once; cached in {root}) ...")
    run_preprocess(video, data, progress=False)  # resumes from its own per-stage cache
    cfg = apply_overrides(get_preset(FIXTURE_RECIPE["preset"]), dict(FIXTURE_RECIPE["overrides"]))
    fit(cfg, data, tmp, progress=False)
    (tmp / "bench_recipe.json").write_text(json.dumps(FIXTURE_RECIPE, indent=2) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    log(f"bench: fixture run ready in {time.perf_counter() - t0:.0f} s")
    return root


def emit(result: dict, device: str = "cpu") -> None:
    """Print the bench's one final JSON line, with the machine it ran on."""
    result = dict(result)
    result.setdefault("machine", machine(device))
    print(json.dumps(result), flush=True)
    sys.stdout.flush()
