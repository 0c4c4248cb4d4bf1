"""Benchmark of the cuda_ext rasterizer: forward + backward of `cuda_ext.rasterize`.

CPU: our C++ driver vs the PyTorch twin at 256x256 on (a) head-like synthetic scenes of 10k / 50k
Gaussians (issue 3 target: >= 20x faster than the twin, 50k fwd+bwd <= 150 ms on 2 cores) and (b) the
Gaussians of a model trained on a real clip (bench/_common.py `fixture_run`, posed at its first training
camera, at its training resolution). Every figure is the median of `--repeats` (>= 5) timed calls after a
warm-up, for the twin too; the inputs are cloned before each call, outside the timed region. Wall times on
a shared machine include waiting for a core, so process CPU time (and the 1-thread CPU time, the pure
work) are reported too. GPU (only when CUDA is available): ours vs gsplat at 512x512 with 50k / 200k
Gaussians. Prints figures and ends with one JSON line (with the machine).

    python bench/raster.py [--repeats 5] [--sizes 10000,50000] [--skip-twin] [--out runs/bench]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared machine spinning threads burn the cores
# the other thread needs (set OMP_WAIT_POLICY yourself to override). Must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import cuda_ext  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common.py, also when loaded by path
from _common import DEFAULT_OUT, emit, fixture_run, time_median  # noqa: E402


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


def fwd_bwd(params: dict, width: int, height: int, backend: str) -> None:
    """One forward + backward; `params` are fresh leaf tensors (made by `fresh_params`, outside the timing)."""
    out = cuda_ext.rasterize(
        params["means"], params["quats"], params["scales"], params["opacities"], params["colors"],
        params["viewmats"], params["Ks"], width, height, background=torch.ones(3, device=params["means"].device),
        backend=backend,
    )  # fmt: skip
    (out.image.sum() + out.depth.mean()).backward()


def fresh_params(scene: dict) -> tuple[dict]:
    """Leaf copies of a scene's tensors that take gradients (the `setup` of `time_median`)."""
    return ({k: v.detach().clone().requires_grad_(k not in ("viewmats", "Ks")) for k, v in scene.items()},)


def trained_scene(run: Path, device: str = "cpu") -> tuple[dict, int, int]:
    """The Gaussians of a trained run, posed at its first training camera (static, no audio motion),
    as rasterizer inputs in that camera's frame -> (scene, width, height)."""
    from avatar.engine import Avatar
    from avatar.model.geometry import matrix_to_quat, quat_multiply

    av = Avatar.load(run, device=device)
    m = av.model
    with torch.no_grad():
        d = m.deform(None, torch.zeros(1, device=device))
        V = av.train_viewmats[0].to(device)  # [4, 4] head -> camera
        R, t = V[:3, :3], V[:3, 3]
        x = d["means"][0] @ R.T + t  # [N, 3]
        q = quat_multiply(matrix_to_quat(R)[None], d["quats"][0])  # [N, 4]
        s = torch.exp(d["log_scales"][0])  # [N, 3]
        op = torch.cat([m.head.opacities, m.mouth.opacities])  # [N]
        cols = (torch.cat([m.head.sh, m.mouth.sh])[:, 0] + 0.5).clamp_min(0.0)  # [N, 3] view-independent part
        if m.cfg.torso and len(m.torso) > 0:
            tx, tq = m.torso_gaussians(V, deform=False)
            x, q = torch.cat([x, tx]), torch.cat([q, tq])
            s, op = torch.cat([s, m.torso.scales]), torch.cat([op, m.torso.opacities])
            cols = torch.cat([cols, (m.torso.sh[:, 0] + 0.5).clamp_min(0.0)])
    scene = dict(means=x, quats=q, scales=s, opacities=op, colors=cols, viewmats=torch.eye(4, device=device)[None],
                 Ks=av.K.to(device)[None].float())
    return {k: v.detach().contiguous() for k, v in scene.items()}, int(av.width), int(av.height)


def bench_cpu(name: str, scene: dict, W: int, H: int, repeats: int, twin: bool) -> tuple[dict, str]:
    """Median fwd+bwd of our C++ driver (all threads, then 1 thread) and of the twin on one scene."""
    ours = time_median(lambda p: fwd_bwd(p, W, H, "cpu"), repeats=repeats, setup=lambda: fresh_params(scene))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # pure work, insensitive to other processes on a shared machine
    try:
        one = time_median(lambda p: fwd_bwd(p, W, H, "cpu"), repeats=repeats, setup=lambda: fresh_params(scene))
    finally:
        torch.set_num_threads(threads)
    n = int(scene["means"].shape[0])
    res = {f"cpu_{name}_gaussians": n, f"cpu_{name}_size": [W, H], f"cpu_{name}_ms": ours["median_ms"],
           f"cpu_{name}_min_ms": ours["min_ms"], f"cpu_{name}_cputime_ms": ours["cpu_median_ms"],
           f"cpu_{name}_1thread_cputime_ms": one["cpu_median_ms"], f"cpu_{name}_repeats": repeats}
    line = (f"CPU {W}x{H} {name:>7} ({n} Gaussians)  ours fwd+bwd median {ours['median_ms']:7.1f} ms, "
            f"min {ours['min_ms']:7.1f} ms; CPU time {ours['cpu_median_ms']:7.1f} ms ({threads} threads), "
            f"{one['cpu_median_ms']:7.1f} ms (1 thread)")
    if twin:
        tw = time_median(lambda p: fwd_bwd(p, W, H, "torch"), repeats=repeats, setup=lambda: fresh_params(scene))
        res.update({f"twin_{name}_ms": tw["median_ms"], f"twin_{name}_cputime_ms": tw["cpu_median_ms"],
                    f"speedup_{name}_wall": round(tw["median_ms"] / ours["median_ms"], 1),
                    f"speedup_{name}_cputime": round(tw["cpu_median_ms"] / ours["cpu_median_ms"], 1)})
        line += (f"\n    twin median {tw['median_ms']:8.1f} ms, CPU time {tw['cpu_median_ms']:8.1f} ms -> speed-up "
                 f"{tw['median_ms'] / ours['median_ms']:.1f}x wall, {tw['cpu_median_ms'] / ours['cpu_median_ms']:.1f}x CPU time")
    return res, line


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per configuration after a warm-up (median reported)")
    ap.add_argument("--sizes", default="10000,50000", help="synthetic head-scene sizes (comma separated; '' = none)")
    ap.add_argument("--skip-twin", action="store_true", help="do not time the PyTorch twin")
    ap.add_argument("--no-trained", action="store_true", help="skip the real-data fixture run's Gaussians")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="bench output folder (the fixture run is cached there)")
    args = ap.parse_args(argv)

    res: dict = {"bench": "raster", "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                 "backends": cuda_ext.available_backends()}
    W = H = 256
    for n in [int(x) for x in args.sizes.split(",") if x.strip()]:
        r, line = bench_cpu(f"{n // 1000}k", head_scene(n, W, H), W, H, args.repeats, not args.skip_twin)
        res.update(r)
        print(line, flush=True)
    if not args.no_trained:
        run = fixture_run(args.out)
        scene, tw, th = trained_scene(run)
        res["trained_run"] = str(run)
        r, line = bench_cpu("trained", scene, tw, th, args.repeats, not args.skip_twin)
        res.update(r)
        print(line, flush=True)

    if torch.cuda.is_available():
        W = H = 512
        sync = torch.cuda.synchronize
        for n in (50_000, 200_000):
            scene = head_scene(n, W, H, device="cuda")
            ours = time_median(lambda p: fwd_bwd(p, W, H, "cuda"), repeats=max(args.repeats, 20), warmup=3, sync=sync,
                               setup=lambda: fresh_params(scene))["median_ms"]
            res[f"gpu_{n // 1000}k_ms"] = ours
            line = f"GPU 512x512 {n:>6} Gaussians  ours fwd+bwd {ours:8.3f} ms"
            if "gsplat" in cuda_ext.available_backends():
                theirs = time_median(lambda p: fwd_bwd(p, W, H, "gsplat"), repeats=max(args.repeats, 20), warmup=3,
                                     sync=sync, setup=lambda: fresh_params(scene))["median_ms"]
                res[f"gsplat_{n // 1000}k_ms"] = theirs
                res[f"ratio_vs_gsplat_{n // 1000}k"] = round(theirs / ours, 2)
                line += f"  gsplat {theirs:8.3f} ms  ratio {theirs / ours:5.2f}"
            print(line, flush=True)
        emit(res, device="cuda")
    else:
        print("GPU section skipped: CUDA is not available on this machine")
        res["gpu"] = "skipped (no CUDA)"
        emit(res, device="cpu")


if __name__ == "__main__":
    main()
