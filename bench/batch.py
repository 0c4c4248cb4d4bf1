"""Benchmark `avatar batch speak` against a shell loop of `avatar speak` (issue 16's targets).

    python bench/batch.py                     20 clips of 5-15 s speech, the real-data fixture avatar (cpu preset)
    python bench/batch.py --clips 4           a quick check
    python bench/batch.py --run runs/NAME     another trained run

Figures, all from one invocation on the same clips:
  * loop_s: wall time of `for f in clips/*.wav; do avatar speak RUN --audio $f -o loop/NAME.mp4; done` (bash);
  * batch_s: wall time of `avatar batch speak RUN --audio-dir clips -o batch/` (embedded Ray started and stopped
    by the command, default workers = one per core); speedup = loop_s / batch_s (goal >= 1.5);
  * identical output: every batch mp4 decoded and compared with the loop's (bit-exact count, min PSNR; goal
    bit-exact or >= 50 dB);
  * scheduling overhead per job (goal <= 50 ms): `--tiny-jobs` near-empty jobs (0.12 s of audio, 3 frames) through
    `run_speak_batch` with 2 workers; per job, the time from dispatch to result on the driver minus the time the
    worker spent inside the job (Ray's task submission, the result's trip back, the driver's bookkeeping), median
    over jobs, then median over `--repeats` batches; plus the skip check per job of a rerun (all complete);
  * per-clip cost of the batch (batch_s minus start-up, per audio second), the figure docs/scaling.md builds on.
The fixture avatar is bench/_common.py's `fixture_run` (may_5s.mp4, cpu preset). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_OUT, SHARED_DATA, emit, fixture_run  # noqa: E402

SR = 16000


def make_clips(folder: Path, n: int, min_s: float, max_s: float) -> list[float]:
    """`n` clips of speech cut from ../shared/data/audio, lengths spread over [min_s, max_s]; returns the lengths."""
    import soundfile as sf

    from avatar.core.audio import load_audio

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sources = [load_audio(p, sr=SR) for p in sorted((SHARED_DATA / "audio").glob("*.wav"))]
    sources = [w for w in sources if w.shape[0] >= min_s * SR]
    lengths = []
    offsets = [0] * len(sources)
    for i in range(n):
        want = min_s + (max_s - min_s) * ((i * 7) % max(n, 1)) / max(n - 1, 1)
        for k in range(len(sources)):  # next source with enough audio left (wrap round)
            j = (i + k) % len(sources)
            if offsets[j] + want * SR > sources[j].shape[0]:
                offsets[j] = 0
            if want * SR <= sources[j].shape[0]:
                break
        seg = sources[j][offsets[j]: offsets[j] + int(round(want * SR))]
        offsets[j] += seg.shape[0]
        sf.write(str(folder / f"clip{i:02d}.wav"), seg, SR)
        lengths.append(seg.shape[0] / SR)
    return lengths


def frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])  # [N, H, W, 3]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def avatar_cmd() -> str:
    exe = shutil.which("avatar")
    return exe if exe else f"{sys.executable} -m avatar.cli"


def timed(cmd: list[str] | str, shell: bool = False) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, shell=shell, capture_output=True, text=True, executable="/bin/bash" if shell else None)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"bench: command failed ({p.returncode}): {cmd}\n{p.stderr[-2000:]}")
    return dt, p.stdout


def overhead(run: Path, out: Path, jobs: int, repeats: int) -> dict:
    """Near-empty jobs through the library with 2 workers: per-job scheduling overhead and skip-check cost."""
    import soundfile as sf

    from avatar.batch import audio_dir_jobs, run_speak_batch

    clips = out / "tiny_clips"
    shutil.rmtree(clips, ignore_errors=True)
    clips.mkdir(parents=True)
    t = np.arange(int(0.12 * SR)) / SR
    for i in range(jobs):
        sf.write(str(clips / f"t{i:03d}.wav"), (0.1 * np.sin(2 * np.pi * (150 + i) * t)).astype(np.float32), SR)
    per_rep, skip = [], []
    for r in range(repeats):
        dest = out / f"tiny_out{r}"
        shutil.rmtree(dest, ignore_errors=True)
        rep = run_speak_batch(audio_dir_jobs(str(run), clips, dest, {}), dest, workers=2, progress=False)
        assert rep["counts"] == {"done": jobs}, rep["counts"]
        ov = [j["overhead_s"] for j in rep["jobs"][2:]]  # the first job of each worker also waits for its start-up
        per_rep.append(statistics.median(ov))
        t0 = time.perf_counter()
        rep2 = run_speak_batch(audio_dir_jobs(str(run), clips, dest, {}), dest, workers=2, progress=False)
        skip.append((time.perf_counter() - t0) / jobs)
        assert rep2["counts"] == {"skipped": jobs}, rep2["counts"]
    return {"overhead_ms_per_job": round(1000 * statistics.median(per_rep), 2),
            "overhead_ms_per_job_repeats": [round(1000 * x, 2) for x in per_rep],
            "skip_check_ms_per_job": round(1000 * statistics.median(skip), 2), "tiny_jobs": jobs, "repeats": repeats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="trained run (default: the cached real-data fixture run)")
    ap.add_argument("--out", default=str(DEFAULT_OUT / "batch"), help="bench output folder")
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--min-s", type=float, default=5.0)
    ap.add_argument("--max-s", type=float, default=15.0)
    ap.add_argument("--tiny-jobs", type=int, default=20, help="near-empty jobs for the overhead figure")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the overhead measurement")
    ap.add_argument("--workers", type=int, default=None, help="batch workers (default: the command's default)")
    args = ap.parse_args()

    out = Path(args.out)
    run = Path(args.run) if args.run else fixture_run(DEFAULT_OUT, log=lambda m: print(m, file=sys.stderr))
    lengths = make_clips(out / "clips", args.clips, args.min_s, args.max_s)
    audio_s = sum(lengths)
    print(f"bench: {len(lengths)} clips, {audio_s:.0f} s of audio ({min(lengths):.1f}-{max(lengths):.1f} s)", file=sys.stderr)
    av = avatar_cmd()
    for d in ("loop", "batch_out"):
        shutil.rmtree(out / d, ignore_errors=True)
    (out / "loop").mkdir(parents=True)
    loop_cmd = (f'for f in "{out}/clips"/*.wav; do n=$(basename "$f" .wav); '
                f'{av} speak "{run}" --audio "$f" -o "{out}/loop/$n.mp4" 2>/dev/null || exit 1; done')
    load_loop = round(os.getloadavg()[0], 2)  # the machine may be shared: each phase's load is reported
    loop_s, _ = timed(loop_cmd, shell=True)
    print(f"bench: shell loop of avatar speak: {loop_s:.1f} s", file=sys.stderr)
    batch = av.split() + ["batch", "speak", str(run), "--audio-dir", str(out / "clips"), "-o", str(out / "batch_out"),
                          "--no-progress", "--json"]
    if args.workers:
        batch += ["--workers", str(args.workers)]
    load_batch = round(os.getloadavg()[0], 2)
    batch_s, stdout = timed(batch)
    report = json.loads(stdout.strip().splitlines()[-1])
    print(f"bench: avatar batch speak: {batch_s:.1f} s ({report['counts']})", file=sys.stderr)

    exact, psnrs, nframes = 0, [], 0
    for clip in sorted((out / "clips").glob("*.wav")):
        a, b = frames(out / "loop" / f"{clip.stem}.mp4"), frames(out / "batch_out" / f"{clip.stem}.mp4")
        assert a.shape == b.shape, (clip.name, a.shape, b.shape)
        exact += int(np.array_equal(a, b))
        psnrs.append(psnr(a, b))
        nframes += a.shape[0]
    rows = report["jobs"]
    worker_s = sum(r["seconds"] for r in rows)
    first_start = batch_s - report["wall_s"]  # process start + imports before the batch began
    ov = overhead(run, out, args.tiny_jobs, args.repeats)
    result = {
        "bench": "batch", "clips": len(lengths), "audio_s": round(audio_s, 1), "frames": nframes,
        "loop_s": round(loop_s, 1), "batch_s": round(batch_s, 1), "speedup": round(loop_s / batch_s, 2),
        "speedup_goal": 1.5, "workers": report["workers"],
        "identical_bit_exact": f"{exact}/{len(lengths)}", "min_psnr_db": ("inf" if min(psnrs) == float("inf") else round(min(psnrs), 2)) if psnrs else None,
        "batch_frames_per_s": round(nframes / batch_s, 2), "loop_frames_per_s": round(nframes / loop_s, 2),
        "batch_worker_s_per_audio_s": round(worker_s / audio_s, 3),
        "batch_cli_import_s": round(first_start, 1),
        # the command's wall minus its workers' busy time per worker: Ray + worker start-up and the tail imbalance
        "batch_start_and_tail_s": round(report["wall_s"] - worker_s / report["workers"], 1),
        "load_avg_1min_at_start": {"loop": load_loop, "batch": load_batch},
        "batch_first_job_load_s": round(max(r.get("load_s") or 0 for r in rows), 2),
        **ov, "overhead_goal_ms": 50,
    }
    emit(result)


if __name__ == "__main__":
    main()
