"""Benchmark of the cuda_ext rasterizer: forward + backward of `cuda_ext.rasterize`.

CPU: our C++ driver vs the PyTorch twin at 256x256 with 10k / 50k Gaussians of a head-like scene
(issue 3 target: >= 20x faster than the twin, 50k fwd+bwd <= 150 ms on 2 cores). Wall times on a
shared machine include waiting for a core, so process CPU time (and the 1-thread CPU time, the pure
work) are printed too; on a quiet 2-core machine the wall time is about the 1-thread CPU time / 2.
GPU (only when CUDA is available): ours vs gsplat at 512x512 with 50k / 200k Gaussians, median of
many repeats timed with CUDA events. Prints figures and ends with one JSON line.

    python bench/raster.py [--repeats 7] [--twin-repeats 1] [--skip-twin]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

# Idle OpenMP threads sleep instead of spinning: on a shared machine spinning threads burn the cores
# the other thread needs (set OMP_WAIT_POLICY yourself to override). Must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import cuda_ext  # noqa: E402


def head_scene(n: int, width: int, height: int, device: str = "cpu", seed: int = 0) -> dict:
    """Gaussians on an ellipsoid shell (a head, ~0.09 x 0.12 x 0.10 m) plus an interior, camera 0.45 m away.

    70% on the shell (the visible skin), 30% inside; scales log-uniform 1.5-8 mm; focal length so the
    head fills most of the crop, like a talking-head video.
    """
    g = torch.Generator().manual_seed(seed)
    n_shell = int(0.7 * n)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    r = torch.ones(n, 1)
    r[n_shell:] = torch.rand(n - n_shell, 1, generator=g) ** (1 / 3)
    radii3 = torch.tensor([0.09, 0.12, 0.10])
    means = d * r * radii3 + 0.003 * torch.randn(n, 3, generator=g)
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.0015), math.log(0.008), generator=g))
    opacities = torch.sigmoid(torch.randn(n, generator=g) * 2 + 1)
    colors = torch.rand(n, 3, generator=g)
    viewmat = torch.eye(4)
    viewmat[2, 3] = 0.45  # camera at z = -0.45 looking along +z
    f = 1.1 * width
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    out = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
               viewmats=viewmat[None], Ks=K[None])
    return {k: v.to(device) for k, v in out.items()}


def fwd_bwd(scene: dict, width: int, height: int, backend: str) -> None:
    params = {k: v.clone().requires_grad_(k not in ("viewmats", "Ks")) for k, v in scene.items()}
    out = cuda_ext.rasterize(
        params["means"], params["quats"], params["scales"], params["opacities"], params["colors"],
        params["viewmats"], params["Ks"], width, height, background=torch.ones(3, device=scene["means"].device),
        backend=backend,
    )  # fmt: skip
    (out.image.sum() + out.depth.mean()).backward()


def time_cpu(fn, repeats: int) -> tuple[float, float, float]:
    """-> (median wall ms, min wall ms, median process CPU ms summed over threads).

    The machine may be shared: wall time then includes waiting for a core; CPU time does not.
    """
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls) * 1000.0, min(walls) * 1000.0, statistics.median(cpus) * 1000.0


def time_cuda(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats per configuration (median reported)")
    ap.add_argument("--twin-repeats", type=int, default=1, help="timed repeats of the slow PyTorch twin")
    ap.add_argument("--skip-twin", action="store_true", help="do not time the PyTorch twin")
    args = ap.parse_args()

    res: dict = {"threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "backends": cuda_ext.available_backends(),
                 "load_avg_1min": round(os.getloadavg()[0], 2)}
    W = H = 256
    for n in (10_000, 50_000):
        scene = head_scene(n, W, H)
        k = f"{n // 1000}k"
        ours, ours_min, ours_cpu = time_cpu(lambda: fwd_bwd(scene, W, H, "cpu"), args.repeats)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # pure work, insensitive to other processes on a shared machine
        ours_1t_cpu = time_cpu(lambda: fwd_bwd(scene, W, H, "cpu"), args.repeats)[2]
        torch.set_num_threads(threads)
        res.update({f"cpu_{k}_ms": round(ours, 1), f"cpu_{k}_min_ms": round(ours_min, 1),
                    f"cpu_{k}_cputime_ms": round(ours_cpu, 1), f"cpu_{k}_1thread_cputime_ms": round(ours_1t_cpu, 1)})
        line = (f"CPU 256x256 {n:>6} Gaussians  ours fwd+bwd wall median {ours:6.1f} ms, min {ours_min:6.1f} ms; "
                f"CPU time {ours_cpu:6.1f} ms ({threads} threads), {ours_1t_cpu:6.1f} ms (1 thread)")
        if not args.skip_twin:
            twin, _, twin_cpu = time_cpu(lambda: fwd_bwd(scene, W, H, "torch"), args.twin_repeats)
            res.update({f"twin_{k}_ms": round(twin, 1), f"twin_{k}_cputime_ms": round(twin_cpu, 1),
                        f"speedup_{k}_wall": round(twin / ours, 1), f"speedup_{k}_cputime": round(twin_cpu / ours_cpu, 1)})
            line += f"\n    twin wall {twin:8.1f} ms, CPU time {twin_cpu:8.1f} ms -> speed-up {twin / ours:.1f}x wall, {twin_cpu / ours_cpu:.1f}x CPU time"
        print(line, flush=True)

    if torch.cuda.is_available():
        W = H = 512
        for n in (50_000, 200_000):
            scene = head_scene(n, W, H, device="cuda")
            ours = time_cuda(lambda: fwd_bwd(scene, W, H, "cuda"), 50)
            res[f"gpu_{n // 1000}k_ms"] = round(ours, 3)
            line = f"GPU 512x512 {n:>6} Gaussians  ours fwd+bwd {ours:8.3f} ms"
            if "gsplat" in cuda_ext.available_backends():
                theirs = time_cuda(lambda: fwd_bwd(scene, W, H, "gsplat"), 50)
                res[f"gsplat_{n // 1000}k_ms"] = round(theirs, 3)
                res[f"ratio_vs_gsplat_{n // 1000}k"] = round(theirs / ours, 2)
                line += f"  gsplat {theirs:8.3f} ms  ratio {theirs / ours:5.2f}"
            print(line, flush=True)
    else:
        print("GPU section skipped: CUDA is not available on this machine")
        res["gpu"] = "skipped (no CUDA)"
    print(json.dumps(res))


if __name__ == "__main__":
    main()
