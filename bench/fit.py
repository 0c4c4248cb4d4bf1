"""Benchmark `avatar fit`: held-out head PSNR and LMD against wall-clock training minutes, peak RAM.

Each evaluation also renders the held-out frames at the SOURCE clip's size (what `avatar speak` writes) and
reports psnr_native_head (landmark box + 10 %) / psnr_native_full against the source frames, next to the
training-resolution figure psnr_train_res (avatar/evaluation/evaluate.py). Issue 12 targets on
macron_50s_30fps.mp4 / german_anchor_20s.mp4, cpu preset, 2 cores, <= 30 min: native head >= 29 dB,
native full >= 28 dB.

    python bench/fit.py                                   # CPU preset, lieu_60s_256px.mp4, 30 min
    python bench/fit.py --minutes 5 --every 1             # shortened run
    python bench/fit.py --data DATA_DIR                   # reuse a preprocessed dataset

Trains with the `cpu` preset (and, when CUDA is available, the `gpu` preset) and evaluates the
held-out frames every `--every` minutes of training time (evaluation time is not counted). The data is
a real clip (lieu_60s_256px.mp4); s/it is the median of 25 single steps after 5 warm-up steps.
Issue targets: CPU head PSNR >= 28 dB within 30 min on 2 cores; GPU >= 33 dB within 10 min.
Ends with ONE JSON line of figures (with the machine). No asserts: this is a measurement, not a test.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see avatar/commands/fit.py: busy-waiting threads on shared cores

import argparse
import json
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common.py, also when loaded by path
from _common import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROBE_WARMUP, PROBE_STEPS = 5, 25
"""s/it is the median of PROBE_STEPS single training steps after PROBE_WARMUP warm-up steps."""
DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "video" / "lieu_60s_256px.mp4"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_preset(preset: str, data_dir: Path, out: Path, minutes: float, every: float, device: str, eval_frames: int,
               overrides: dict[str, str], lmd: bool = True) -> dict:
    from avatar.core.config import apply_overrides
    from avatar.evaluation.evaluate import evaluate_run
    from avatar.train.presets import get_preset
    from avatar.train.trainer import Trainer

    # time_limit_min = the bench budget: the LR schedule then follows training time (see Trainer._set_learning_rates).
    cfg = apply_overrides(get_preset(preset), {"device": device, "time_limit_min": str(minutes), "eval_every": "0",
                                               "final_eval": "false", **overrides})
    # The schedule length: as many steps as fit in `minutes` (estimated after a short probe) so the LR decays properly.
    tr = Trainer(cfg, data_dir, out, progress=False)
    curve = []
    mark = every
    # s/it: median of the probe's single steps after a warm-up (the probe steps are training, and count)
    t_probe = time.perf_counter()
    step_s = []
    while tr.step < min(PROBE_WARMUP + PROBE_STEPS, cfg.iters):
        t0 = time.perf_counter()
        tr.train_step()
        if tr.step > PROBE_WARMUP:
            step_s.append(time.perf_counter() - t0)
    sec_per_it = statistics.median(step_s) if step_s else float("nan")
    print(f"[{preset}] {sec_per_it:.3f} s/it (median of {len(step_s)} steps after {PROBE_WARMUP}) at "
          f"{tr.data.width}x{tr.data.height}, {sum(len(s) for s in tr.model.sets().values())} Gaussians", flush=True)
    tr.elapsed = time.perf_counter() - t_probe
    last = time.perf_counter()
    while tr.step < cfg.iters and tr.elapsed < minutes * 60:
        tr.train_step()
        now = time.perf_counter()
        tr.elapsed += now - last
        last = now
        if tr.elapsed >= mark * 60 or tr.step >= cfg.iters or tr.elapsed >= minutes * 60:
            tr.finish(evaluate=False)
            m = evaluate_run(out, device=str(tr.device), write=False, max_frames=eval_frames, lmd=lmd)
            row = {"minutes": round(tr.elapsed / 60, 2), "step": tr.step, "head_psnr": round(m["head_psnr"], 3),
                   "full_psnr": round(m["full_psnr"], 3), "head_ssim": round(m["head_ssim"], 4),
                   "lmd": round(m["lmd"], 3), "lmd_no_audio": round(m["lmd_no_audio"], 3),
                   "mouth_corr": round(m["mouth_corr"], 3), "gaussians": sum(len(s) for s in tr.model.sets().values()),
                   "psnr_native_head": round(m["psnr_native_head"], 3), "psnr_native_full": round(m["psnr_native_full"], 3),
                   "psnr_train_res": round(m["psnr_train_res"], 3), "native_resolution": m["native_resolution"],
                   "psnr_labels": {k: round(v, 2) for k, v in m["psnr_labels"].items()}}
            curve.append(row)
            print(f"[{preset}] {json.dumps(row)}", flush=True)
            mark += every
            last = time.perf_counter()
    final = curve[-1] if curve else {}
    return {"preset": preset, "sec_per_it": round(sec_per_it, 4), "sec_per_it_repeats": len(step_s), "resolution": [tr.data.width, tr.data.height],
            "curve": curve, "final": final, "peak_rss_mb": round(peak_rss_mb(), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--data", type=Path, default=None, help="preprocessed dataset folder (skips preprocessing)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_fit")
    ap.add_argument("--minutes", type=float, default=30.0, help="CPU training minutes")
    ap.add_argument("--gpu-minutes", type=float, default=10.0)
    ap.add_argument("--every", type=float, default=5.0, help="evaluate every N training minutes")
    ap.add_argument("--eval-frames", type=int, default=60, help="held-out frames per evaluation (0 = all)")
    ap.add_argument("--iters", type=int, default=0, help="schedule length (0 = the preset's)")
    ap.add_argument("--resolution", type=int, default=0, help="override data.resolution of the presets (0 = keep)")
    ap.add_argument("--no-gpu", action="store_true")
    ap.add_argument("--no-lmd", action="store_true", help="skip the MediaPipe lip distance (faster evaluations)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*backend.*")
    import torch

    result: dict = {"bench": "fit", "video": None if args.data else str(args.video), "data": str(args.data) if args.data else None}
    data_dir = args.data
    if data_dir is None:
        from avatar.preprocess.pipeline import run_preprocess

        data_dir = args.out / "data"
        t0 = time.perf_counter()
        run_preprocess(args.video, data_dir, progress=False)
        result["preprocess_s"] = round(time.perf_counter() - t0, 1)
    over = {"iters": str(args.iters)} if args.iters else {}
    if args.resolution:
        over["data.resolution"] = str(args.resolution)
    torch.set_num_threads(2)
    result["cpu"] = run_preset("cpu", data_dir, args.out / "cpu", args.minutes, args.every, "cpu", args.eval_frames, over,
                               lmd=not args.no_lmd)
    fin = result["cpu"]["final"]
    result["targets"] = {"psnr_native_head": [fin.get("psnr_native_head"), ">= 29"],
                         "psnr_native_full": [fin.get("psnr_native_full"), ">= 28"], "cpu_minutes": [args.minutes, "<= 30"]}
    if torch.cuda.is_available() and not args.no_gpu:
        result["gpu"] = run_preset("gpu", data_dir, args.out / "gpu", args.gpu_minutes, max(1.0, args.gpu_minutes / 5),
                                   "cuda", args.eval_frames, over, lmd=not args.no_lmd)
        result["gpu"]["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    else:
        result["gpu"] = None
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    emit(result, device="cuda" if result["gpu"] else "cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
