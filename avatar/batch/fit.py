"""`avatar batch fit`: preprocess + train many avatars, one Ray task per input.

Each input (a talking-head video, or a dataset folder from `avatar preprocess`) becomes the run
RUNSDIR/<name> (<name> = the video's stem or the folder's name) and is trained with the same functions
`avatar fit` calls (`avatar.preprocess.pipeline.run_preprocess`, `avatar.train.trainer.fit`) and the
same named presets. Both are resumable (preprocess caches each stage, training resumes from its last
atomic checkpoint), so a task that dies is retried by Ray (`max_retries`, on any worker) and continues
where it stopped; a finished run (model.pt and metrics.json present) is skipped on a rerun.
"""

from __future__ import annotations

import collections
import os
import sys
import time
from pathlib import Path
from typing import Any

from avatar.batch import state
from avatar.batch.cluster import ray_session
from avatar.errors import AvatarError
from avatar.preprocess.inputs import dataset_for, run_name


def fit_one(src: str, run_dir: str, cfg) -> dict[str, Any]:
    """Preprocess (if needed) and train one run; returns status/seconds/reason (never raises for bad input)."""
    from avatar.train.trainer import fit

    t0 = time.perf_counter()
    out: dict[str, Any] = {"status": "failed", "pid": os.getpid()}
    try:
        data_dir = dataset_for(src, run_dir)
        metrics = fit(cfg, data_dir, run_dir, progress=False)
        out.update(status="done", metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    except Exception as e:  # noqa: BLE001
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        out["reason"] = text if isinstance(e, AvatarError) else f"{type(e).__name__}: {text}"
    out["seconds"] = time.perf_counter() - t0
    return out


def run_names(inputs: list[str]) -> list[str]:
    names = [run_name(p) for p in inputs]
    dup = [n for n, c in collections.Counter(names).items() if c > 1]
    if dup:
        raise AvatarError(f"two inputs would train the same run RUNSDIR/{dup[0]}; rename one of them")
    return names


def run_fit_batch(inputs: list[str], runs_dir: str | os.PathLike, cfg, *, workers: int | None = None,
                  gpus_per_job: float = 0.0, address: str | None = None, max_retries: int = 2,
                  progress: bool = True) -> dict[str, Any]:
    """Fit every input into RUNSDIR/<name>; returns the report (also RUNSDIR/batch_report.json)."""
    import dataclasses

    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for src, name in zip(inputs, run_names(inputs)):
        run_dir = runs_dir / name
        row = {"name": name, "input": str(src), "output": str(run_dir), "status": "failed", "reason": None, "seconds": None}
        if not Path(src).exists():
            rows[name] = row | {"reason": f"{src}: no such video or dataset folder"}
        elif (run_dir / "model.pt").is_file() and (run_dir / "metrics.json").is_file():
            rows[name] = row | {"status": "skipped", "reason": "run complete (model.pt, metrics.json)"}
        else:
            rows[name] = row | {"status": "interrupted", "reason": "batch interrupted before it ran"}
            todo.append((name, str(Path(src).resolve()), str(run_dir.resolve())))
    info = None
    try:
        if todo:
            with ray_session(address) as info:
                import ray

                n = workers or (max(1, int(info.gpus // gpus_per_job)) if gpus_per_job > 0 else max(1, int(info.cpus)))
                n = max(1, min(n, len(todo)))
                threads = max(1, int(info.cpus // n)) if info.cpus else 1
                job_cfg = dataclasses.replace(cfg, threads=cfg.threads or threads)
                task = ray.remote(fit_one).options(num_cpus=threads if gpus_per_job <= 0 else 1, num_gpus=gpus_per_job,
                                                   max_retries=max_retries, retry_exceptions=False)
                pending = collections.deque(todo)
                inflight: dict[Any, str] = {}
                bar = None
                if progress:
                    from tqdm import tqdm

                    bar = tqdm(total=len(inputs), initial=len(inputs) - len(todo), unit="run", desc="batch fit", file=sys.stderr)
                try:
                    while pending or inflight:
                        while pending and len(inflight) < n:
                            name, src, run_dir = pending.popleft()
                            inflight[task.remote(src, run_dir, job_cfg)] = name
                        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
                        for ref in ready:
                            name = inflight.pop(ref)
                            try:
                                res = ray.get(ref)
                            except ray.exceptions.RayError as e:
                                res = {"status": "failed", "seconds": None,
                                       "reason": f"worker died {max_retries + 1} times (killed or out of memory): {type(e).__name__}"}
                            rows[name].update({k: v for k, v in res.items() if k in ("status", "reason", "seconds", "metrics")})
                            if bar is not None:
                                bar.update(1)
                finally:
                    if bar is not None:
                        bar.close()
    finally:
        report = {"command": "fit", "outdir": str(runs_dir), "wall_s": time.perf_counter() - t_start,
                  "ray": None if info is None else {"address": info.address, "embedded": info.local, "cpus": info.cpus,
                                                    "gpus": info.gpus},
                  "counts": state.counts(list(rows.values())), "jobs": list(rows.values())}
        state.write_report(runs_dir, report)
    return report
