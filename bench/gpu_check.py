"""One prepared GPU check (issue 14): kernels, gsplat peer, gpu-preset fit and real-time speak.

    python3 bench/gpu_check.py --data gpu_carry/macron_data          # on the GPU machine (bench/GPU.md)
    python3 bench/gpu_check.py --smoke                               # CPU, tiny sizes (tests/test_gpu_check.py)
    python3 bench/gpu_check.py --steps c --budget c=400              # one step again, with a larger time box

Steps, in order; each runs in its own subprocess with a deadline (`--budget STEP=SECONDS`) and prints
exactly ONE JSON line `{"step": ..., "status": "ok" | "error" | "timeout" | "skipped", ...}`; a failing
step never stops the next one. Logs of every step go to OUT/step_NAME.log.

  a  build    build the extension (CUDA driver included) against the torch that is here; build seconds
  b  kernels  forward image/alpha/depth and every gradient of the CUDA rasterizer vs the PyTorch twin and
              vs the C++ CPU kernel on 3 scenes (1k @ 256^2, 50k @ 512^2, 300k @ 1920x1080): max abs/rel error
  c  gsplat   ours vs gsplat (cuda_ext/_gsplat.py adapter) on the same scenes, forward and forward+backward,
              median of >= 20 runs after warm-up (CUDA events); speed ratio ours/gsplat = t_gsplat / t_ours;
              gsplat's JIT compile is time-boxed and reported if it does not fit
  d  fit      gpu preset on a dataset preprocessed beforehand (--data), fixed training budget (--fit-minutes,
              default 4): held-out head PSNR every minute (bench/fit.py run_preset) and iterations/s
  e  speak    the run from (d): audio file -> mp4 with audio, frames/s, streaming latency p50/p95 chunk->frame
              (bench/speak.py bench_device)

--smoke: CPU device and tiny sizes: (a) loads the already built C++ extension instead of building, (b) compares
the CPU kernel with the float64 twin, (c) is skipped with its reason, (d) fits the `tiny` preset for a few
seconds on a synthetic dataset (avatar.testing.make_tiny_dataset), (e) speaks with that run.
Default budgets (GPU) sum to 480 s = 8 minutes: a 100, b 45, c 25, d 270, e 40.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "GPU_CHECK_RESULT "
PHASE = "GPU_CHECK_PHASE "
STEPS = {"a": "build", "b": "kernels", "c": "gsplat", "d": "fit", "e": "speak"}
BUDGET = {"a": 100.0, "b": 45.0, "c": 25.0, "d": 270.0, "e": 40.0}
SMOKE_BUDGET = {"a": 60.0, "b": 60.0, "c": 10.0, "d": 90.0, "e": 60.0}
GPU_SCENES = [(1_000, 256, 256), (50_000, 512, 512), (300_000, 1920, 1080)]
SMOKE_SCENES = [(50, 32, 32), (200, 48, 48), (1_000, 64, 40)]
# steps d/e import what bench/fit.py / bench/speak.py import (read from those files, so a module rename there
# needs no edit here) plus these; none may need mediapipe/viser at import time (reported if one does)
FIT_MODULES = ["avatar.testing"]
SPEAK_MODULES = []
OPTIONAL = ["mediapipe", "viser", "gsplat", "av", "soundfile", "cv2", "pocketsphinx", "imageio_ffmpeg"]


def phase(name: str) -> None:
    """Progress marker: the parent names the last phase reached when a step runs out of time."""
    print(PHASE + name, flush=True)


def _load_bench(name: str):
    """bench/NAME.py as a module (bench/ is not a package): its functions are reused, not copied."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bench_imports(name: str) -> list[str]:
    """The avatar.* modules that bench/NAME.py imports (top level or inside functions)."""
    import re

    text = (ROOT / "bench" / f"{name}.py").read_text()
    mods = set(re.findall(r"^\s*from (avatar[\w.]*) import", text, re.M) + re.findall(r"^\s*import (avatar[\w.]*)", text, re.M))
    # preprocessing (mediapipe) runs on the CPU machine beforehand; the viewer is not used here
    return sorted(m for m in mods if not m.startswith(("avatar.preprocess", "avatar.viewer")))


def _import_report(modules: list[str]) -> dict:
    """{module: "ok" | "ExcType: message"} for each module (first failure tells what blocks a step)."""
    out = {}
    for m in modules:
        try:
            importlib.import_module(m)
            out[m] = "ok"
        except Exception as e:  # noqa: BLE001 - a report, whatever the failure
            out[m] = f"{type(e).__name__}: {e}"
    return out


def _present(mods: list[str]) -> dict:
    return {m: importlib.util.find_spec(m) is not None for m in mods}


# ---- a: build ---------------------------------------------------------------------------------------------
def step_build(args) -> dict:
    import torch

    if args.smoke:  # the CPU build takes minutes on 2 cores: load what `pip install -e .` built
        t0 = time.perf_counter()
        from cuda_ext import _backend

        ext = _backend.load_ext()
        if ext is None:
            return {"status": "error", "error": _backend._ext_error}
        return {"status": "ok", "built": False, "load_s": round(time.perf_counter() - t0, 2),
                "with_cuda": bool(getattr(ext, "WITH_CUDA", False)), "torch": torch.__version__,
                "note": "smoke: loaded the installed C++ extension (no CUDA build on CPU)"}
    env = dict(os.environ)
    if torch.cuda.is_available() and "TORCH_CUDA_ARCH_LIST" not in env:
        major, minor = torch.cuda.get_device_capability(0)
        env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"  # one architecture: a fraction of the build time
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-e", str(ROOT)]
    phase("pip install -e . (nvcc)")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    build_s = time.perf_counter() - t0
    print(p.stdout[-4000:], p.stderr[-8000:], sep="\n")
    if p.returncode != 0:
        return {"status": "error", "build_s": round(build_s, 1), "error": p.stderr.strip().splitlines()[-5:]}
    probe = subprocess.run([sys.executable, "-c", "import cuda_ext._C as c, torch; print(int(c.WITH_CUDA))"],
                           cwd=ROOT, capture_output=True, text=True)
    with_cuda = probe.stdout.strip() == "1"
    return {"status": "ok" if with_cuda else "error", "built": True, "build_s": round(build_s, 1),
            "with_cuda": with_cuda, "torch": torch.__version__, "cuda": torch.version.cuda,
            "arch": env.get("TORCH_CUDA_ARCH_LIST"), "probe_err": probe.stderr[-500:] or None}


# ---- scenes ----------------------------------------------------------------------------------------------
def make_scene(n: int, W: int, H: int, seed: int = 0) -> tuple[dict, "torch.Tensor", "torch.Tensor"]:
    """n Gaussians filling the view of a W x H pinhole camera at the origin (deterministic, float32, CPU)."""
    import torch

    g = torch.Generator().manual_seed(seed + n)
    f = 0.9 * W
    z = 2.0 + 4.0 * torch.rand(n, generator=g)
    x = (torch.rand(n, generator=g) - 0.5) * 1.1 * W / f * z
    y = (torch.rand(n, generator=g) - 0.5) * 1.1 * H / f * z
    # sizes so that the scene covers the image a few times over whatever n is
    s_mean = 0.8 * math.sqrt(W * H / n) / f * 4.0
    scales = s_mean * torch.exp(torch.randn(n, 3, generator=g) * 0.6)
    scene = dict(
        means=torch.stack([x, y, z], -1), quats=torch.randn(n, 4, generator=g), scales=scales,
        opacities=0.05 + 0.9 * torch.rand(n, generator=g), colors=torch.rand(n, 3, generator=g),
    )
    K = torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]])[None]
    return scene, torch.eye(4)[None], K


def render(scene, vm, K, W, H, backend: str, device: str, dtype, seed: int = 1, backward: bool = True) -> dict:
    """Forward (+ backward with fixed random cotangents) of cuda_ext.rasterize -> outputs and gradients on CPU."""
    import torch

    import cuda_ext

    p = {k: v.to(device=device, dtype=dtype).clone().requires_grad_() for k, v in scene.items()}
    out = cuda_ext.rasterize(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"], vm.to(device, dtype),
                             K.to(device, dtype), W, H, render_depth=True, backend=backend)
    res = {"image": out.image, "alpha": out.alpha, "depth": out.depth}
    if backward:
        out.means2d.retain_grad()
        gen = torch.Generator().manual_seed(seed)
        loss = 0
        for t in (out.image, out.alpha, out.depth):
            loss = loss + (t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(device, dtype)).sum()
        loss.backward()
        res["v_means2d"] = out.means2d.grad
        res.update({"v_" + k: v.grad for k, v in p.items()})
    return {k: v.detach().double().cpu() for k, v in res.items()}


def errors(a: dict, ref: dict) -> dict:
    """Per key: max abs error, max rel error (to max |ref|), 99.9th percentile abs error, non-finite count."""
    import torch

    out = {}
    for k, e in ref.items():
        x = a[k]
        err = (x - e).abs()
        scale = float(e.abs().max()) if e.numel() else 0.0
        q = float(torch.quantile(err.flatten()[:: max(1, err.numel() // 1_000_000)], 0.999)) if err.numel() else 0.0
        out[k] = {"max_abs": float(err.max()) if err.numel() else 0.0, "max_rel": float(err.max()) / scale if scale else 0.0,
                  "p999_abs": q, "nonfinite": int((~torch.isfinite(x)).sum())}
    return out


# ---- b: kernels vs twin ----------------------------------------------------------------------------------
def step_kernels(args) -> dict:
    import torch

    deadline = time.monotonic() + args.step_budget - 5.0
    smoke = args.smoke
    scenes = SMOKE_SCENES if smoke else GPU_SCENES
    if not smoke and not torch.cuda.is_available():
        return {"status": "error", "error": "CUDA is not available"}
    dev = "cpu" if smoke else "cuda"
    results, worst = [], 0.0
    for n, W, H in scenes:
        scene, vm, K = make_scene(n, W, H)
        row = {"n": n, "size": [W, H]}
        phase(f"scene {n} kernel")
        t0 = time.perf_counter()
        ours = render(scene, vm, K, W, H, "cpu" if smoke else "cuda", dev, torch.float32)
        row["kernel_s"] = round(time.perf_counter() - t0, 3)
        if not smoke:  # CUDA vs the C++ CPU kernel (float32 both)
            phase(f"scene {n} cpu kernel")
            t0 = time.perf_counter()
            cpu = render(scene, vm, K, W, H, "cpu", "cpu", torch.float32)
            row["cpu_kernel_s"] = round(time.perf_counter() - t0, 3)
            row["vs_cpu_kernel"] = errors(ours, cpu)
        # vs the float64 twin (on the GPU when there is one); skipped when the deadline is near
        est = row["kernel_s"] * (60 if smoke else 400)
        if time.monotonic() + min(est, 1.0) < deadline:
            phase(f"scene {n} twin")
            t0 = time.perf_counter()
            ref = render(scene, vm, K, W, H, "torch", dev, torch.float64)
            row["twin_s"] = round(time.perf_counter() - t0, 3)
            row["vs_twin_f64"] = errors(ours, ref)
            worst = max(worst, max(v["max_rel"] for k, v in row["vs_twin_f64"].items() if k in ("image", "alpha")))
        else:
            row["vs_twin_f64"] = "skipped: step deadline"
        results.append(row)
        print(json.dumps(row), flush=True)
        if time.monotonic() > deadline:
            break
    bad = [r["n"] for r in results for cmp in ("vs_twin_f64", "vs_cpu_kernel") if isinstance(r.get(cmp), dict)
           and any(v["nonfinite"] for v in r[cmp].values())]
    status = "ok" if results and not bad and worst < 1e-3 else "error"
    return {"status": status, "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
            "worst_forward_rel_vs_twin": worst, "nonfinite_scenes": bad, "scenes": results}


# ---- c: ours vs gsplat -----------------------------------------------------------------------------------
def _time_ms(fn, warmup: int = 3, reps: int = 20) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def step_gsplat(args) -> dict:
    if args.smoke:
        return {"status": "skipped", "reason": "smoke: no GPU, gsplat needs CUDA"}
    import torch

    if not torch.cuda.is_available():
        return {"status": "skipped", "reason": "CUDA is not available"}
    try:
        import gsplat  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return {"status": "skipped", "reason": f"gsplat not importable ({type(e).__name__}: {e}); carry its wheel"}
    import cuda_ext

    phase("gsplat JIT compile")  # gsplat 1.5.3 compiles its CUDA sources on the first call
    t0 = time.perf_counter()
    scene, vm, K = make_scene(64, 64, 64)
    render(scene, vm, K, 64, 64, "gsplat", "cuda", torch.float32)
    torch.cuda.synchronize()
    jit_s = time.perf_counter() - t0
    rows = []
    for n, W, H in GPU_SCENES:
        scene, vm, K = make_scene(n, W, H)
        p = {k: v.cuda().requires_grad_() for k, v in scene.items()}
        vmc, Kc = vm.cuda(), K.cuda()
        row = {"n": n, "size": [W, H]}
        for be in ("cuda", "gsplat"):
            phase(f"scene {n} {be}")

            def fwd(be=be):
                with torch.no_grad():
                    return cuda_ext.rasterize(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"], vmc,
                                              Kc, W, H, render_depth=False, backend=be)

            def fwd_bwd(be=be):
                o = cuda_ext.rasterize(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"], vmc, Kc, W,
                                       H, render_depth=False, backend=be)
                (o.image.sum() + o.alpha.sum()).backward()

            row[f"{be}_fwd_ms"] = round(_time_ms(fwd), 4)
            row[f"{be}_fwd_bwd_ms"] = round(_time_ms(fwd_bwd), 4)
        row["speed_ratio_fwd"] = round(row["gsplat_fwd_ms"] / row["cuda_fwd_ms"], 3)
        row["speed_ratio_fwd_bwd"] = round(row["gsplat_fwd_bwd_ms"] / row["cuda_fwd_bwd_ms"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"status": "ok", "gsplat": getattr(gsplat, "__version__", "?"), "jit_s": round(jit_s, 1), "reps": 20,
            "ratio_is": "t_gsplat / t_ours (>1: ours faster)", "scenes": rows}


# ---- d: fit -----------------------------------------------------------------------------------------------
def step_fit(args) -> dict:
    imports = _import_report(_bench_imports("fit") + FIT_MODULES)
    if any(v != "ok" for v in imports.values()):
        return {"status": "error", "error": "avatar modules needed by the fit do not import here",
                "imports": imports, "present": _present(OPTIONAL)}
    import torch

    fitb = _load_bench("fit")
    out = Path(args.out)
    run = out / "fit_run"
    if args.smoke:
        from avatar.testing import make_tiny_dataset

        phase("tiny dataset")
        data = make_tiny_dataset(out / "tiny_data", num_frames=24, size=64)
        preset, device, minutes, every, frames = "tiny", "cpu", args.fit_minutes, args.fit_minutes / 2, 2
        over = {"iters": "100000"}
    else:
        if args.data is None or not Path(args.data).is_dir():
            return {"status": "error", "error": f"--data (a preprocessed dataset folder) not found: {args.data}"}
        if not torch.cuda.is_available():
            return {"status": "error", "error": "CUDA is not available"}
        data, preset, device, minutes, every, frames = Path(args.data), "gpu", "cuda", args.fit_minutes, 1.0, args.eval_frames
        over = {}
    phase(f"fit {preset}")
    t0 = time.perf_counter()
    res = fitb.run_preset(preset, Path(data), run, minutes, every, device, frames, over)
    wall = time.perf_counter() - t0
    curve = res["curve"]
    last = curve[-1] if curve else {}
    its = last.get("step", 0) / (last.get("minutes", 0) * 60) if last.get("minutes") else None
    (out / "fit_run_path.txt").write_text(str(run))
    return {"status": "ok" if curve and math.isfinite(last.get("head_psnr", float("nan"))) else "error",
            "preset": preset, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "data": str(data), "resolution": res["resolution"], "train_minutes": minutes,
            "head_psnr_by_minute": [[c["minutes"], c["head_psnr"]] for c in curve], "iters_per_s": its,
            "sec_per_it_probe": res["sec_per_it"], "gaussians": last.get("gaussians"), "wall_s": round(wall, 1),
            "curve": curve, "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
            if device == "cuda" else None, "run": str(run)}


# ---- e: speak ---------------------------------------------------------------------------------------------
def step_speak(args) -> dict:
    imports = _import_report(_bench_imports("speak") + SPEAK_MODULES)
    if any(v != "ok" for v in imports.values()):
        return {"status": "error", "error": "avatar modules needed by speak do not import here", "imports": imports,
                "present": _present(OPTIONAL)}
    import torch

    out = Path(args.out)
    path_file = out / "fit_run_path.txt"
    run = Path(args.run) if args.run else (Path(path_file.read_text()) if path_file.is_file() else None)
    if run is None or not (run / "config.yaml").is_file():
        return {"status": "error", "error": f"no trained run from step d (looked for {path_file}); pass --run"}
    speakb = _load_bench("speak")
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        return {"status": "error", "error": "CUDA is not available"}
    import inspect

    phase("audio")  # bench/speak.py's helpers are reused; their signatures are followed, not copied
    a_params = inspect.signature(speakb._audio).parameters
    a_args = (args.audio, args.speak_seconds) + ((out / "speak",) if len(a_params) >= 3 else ())
    audio, wav = speakb._audio(*a_args)
    phase("bench_device (render_file, stream, paced stream)")
    kw = {"repeats": 1 if args.smoke else 3, "out_dir": out / "speak"}
    kw = {k: v for k, v in kw.items() if k in inspect.signature(speakb.bench_device).parameters}
    res = speakb.bench_device(run, device, audio, wav, 8 if args.smoke else 32, **kw)
    keep = ("width", "height", "frames", "audio_s", "e2e_fps", "no_encode_fps", "features_s", "stream_fps",
            "stream_latency_p50_ms", "stream_latency_p95_ms", "stream_delay_ms", "stream_x_realtime",
            "stream_paced_latency_p50_ms", "stream_paced_latency_p95_ms", "extractor")
    return {"status": "ok" if res.get("frames") else "error",
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "run": str(run),
            "audio": args.audio or "bench/speak.py default",
            **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.items() if k in keep}}


STEP_FUNCS = {"a": step_build, "b": step_kernels, "c": step_gsplat, "d": step_fit, "e": step_speak}


# ---- driver ----------------------------------------------------------------------------------------------
def run_child(args) -> int:
    """Run one step in this process; its result is the last MARK line on stdout."""
    import warnings

    warnings.filterwarnings("ignore", message=".*backend.*")
    t0 = time.perf_counter()
    try:
        res = STEP_FUNCS[args.child](args)
    except Exception as e:  # noqa: BLE001 - reported as this step's failure, the next step still runs
        traceback.print_exc()
        res = {"status": "error", "error": f"{type(e).__name__}: {e}"}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(MARK + json.dumps(res, default=str), flush=True)
    return 0


def run_step(key: str, args, budget: float, passthrough: list[str]) -> dict:
    out = Path(args.out)
    log = out / f"step_{STEPS[key]}.log"
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--child", key, "--step-budget", str(budget)] + passthrough
    t0 = time.perf_counter()
    text, rc, timed_out = "", None, False
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget)
        text, rc = p.stdout + "\n" + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        timed_out = True
        so = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        se = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        text = so + "\n" + se
    log.write_text(text)
    wall = round(time.perf_counter() - t0, 1)
    lines = text.splitlines()
    results = [ln[len(MARK):] for ln in lines if ln.startswith(MARK)]
    if results:
        res = json.loads(results[-1])
    elif timed_out:
        phases = [ln[len(PHASE):] for ln in lines if ln.startswith(PHASE)]
        res = {"status": "timeout", "error": f"did not finish within {budget:.0f} s",
               "last_phase": phases[-1] if phases else None}
    else:
        tail = [ln for ln in lines if ln.strip()][-6:]
        res = {"status": "error", "error": f"step process exited with {rc} and no result", "tail": tail}
    return {"step": f"{key}_{STEPS[key]}", **res, "wall_s": wall, "log": str(log)}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (CI)")
    ap.add_argument("--data", default=None, help="preprocessed dataset folder for step d (avatar preprocess ...)")
    ap.add_argument("--run", default=None, help="trained run for step e (default: the run of step d)")
    ap.add_argument("--audio", default=None, help="audio file for step e (default: a synthetic speech-like signal)")
    ap.add_argument("--out", default=None, help="folder for logs and the fit run (default: a temp folder)")
    ap.add_argument("--fit-minutes", type=float, default=None, help="training minutes of step d (default 4; smoke 0.1)")
    ap.add_argument("--eval-frames", type=int, default=30, help="held-out frames per evaluation in step d")
    ap.add_argument("--speak-seconds", type=float, default=None, help="seconds of audio in step e (default 4; smoke 1.5)")
    ap.add_argument("--steps", default="abcde", help="which steps, in order (default abcde)")
    ap.add_argument("--budget", action="append", default=[], help="STEP=SECONDS time box of a step, e.g. c=400")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--step-budget", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fit_minutes is None:
        args.fit_minutes = 0.1 if args.smoke else 4.0
    if args.speak_seconds is None:
        args.speak_seconds = 1.5 if args.smoke else 4.0
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        if args.smoke:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return run_child(args)
    budgets = dict(SMOKE_BUDGET if args.smoke else BUDGET)
    for b in args.budget:
        k, v = b.split("=", 1)
        budgets[k.strip()] = float(v)
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="gpu_check_")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    passthrough = [a for a in argv if not a.startswith("--out")]
    # --out given as "--out X" or "--out=X": rebuild it so every child gets the same absolute folder
    drop = {i + 1 for i, a in enumerate(argv) if a == "--out"}
    passthrough = [a for i, a in enumerate(argv) if i not in drop and not a.startswith("--out")]
    passthrough += ["--out", str(Path(args.out).resolve())]
    t0 = time.perf_counter()
    print(json.dumps({"step": "start", "smoke": args.smoke, "steps": args.steps, "budgets_s": budgets,
                      "total_budget_s": sum(budgets[k] for k in args.steps), "out": str(args.out),
                      "python": sys.version.split()[0]}), flush=True)
    for key in args.steps:
        print(json.dumps(run_step(key, args, budgets[key], passthrough), default=str), flush=True)
    print(json.dumps({"step": "end", "wall_s": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
