"""Benchmark `avatar speak`: end-to-end frames/s and streaming latency.

    python bench/speak.py                       the real-data fixture run (bench/_common.py, cached under --out)
    python bench/speak.py --run runs/NAME       a trained run, at its source clip's size
    python bench/speak.py --run runs/NAME --audio speech.wav --seconds 20 --repeats 5
    python bench/speak.py --run runs/NAME --sizes source,1920x1080 --sizes-only --seconds 3   output sizes only

Output sizes (issue 12): `cpu_sizes` gives end-to-end frames/s at the source clip's size (what `avatar speak`
writes by default) and at 1920x1080 (letterboxed for a square clip), with the peak RSS (target: >= 25 frames/s
at 512² on 2 cores, <= 2 GB).

Default model: a small avatar trained once on the real clip may_5s.mp4 (`fixture_run`), so the figures are
those of a real run's Gaussians, feature extractor and resolution, not of the 64 px test cartoon. Default audio:
the first `--seconds` of a real speech file (../shared/data/audio/dreamtalk_french1.wav).

Every figure is the median of `--repeats` (>= 5) runs after a warm-up run; model loading, the Speaker and the
output folder are set up outside the timed region. End to end = audio decoding + features + silence gate +
motion + deformation + rasterization + compositing + H.264/AAC encoding (`Speaker.render_file`). The stage
split renders the same frames without the encoder and times the feature extractor alone. Streaming, in 40 ms
chunks: (1) pushed as fast as possible: the streaming real-time factor (`stream_x_realtime` = audio seconds /
wall seconds, >= 1 keeps up with a live source; `stream_cpu_x_realtime` per CPU second of this process) and the
compute latency chunk push -> frame ready (`stream_latency_p50_ms` / `_p95_ms`, of the median run); (2) paced at
real time like a live microphone, once (it takes real time): latency from each chunk's scheduled arrival to the
frames it completed being ready (`stream_paced_latency_p50_ms` / `_p95_ms`). Both exclude the algorithmic
look-ahead (`stream_delay_ms`, `Speaker.delay_s`). CPU always; a GPU section when CUDA is available (else
printed as skipped). Ends with one JSON line (with the machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from avatar.core.audio import SAMPLE_RATE

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common.py, also when loaded by path
from _common import DEFAULT_OUT, SHARED_DATA, emit, fixture_run, machine, time_median  # noqa: E402

SR = SAMPLE_RATE
DEFAULT_AUDIO = SHARED_DATA / "audio" / "dreamtalk_french1.wav"


def _audio(path: str | None, seconds: float, out: Path) -> tuple[Path, np.ndarray]:
    """The first `seconds` of `path` (default: a real speech file) at 16 kHz, also written to out/audio.wav."""
    import soundfile as sf

    from avatar.core.audio import load_audio

    wav = load_audio(path or DEFAULT_AUDIO, sr=SR)[: int(seconds * SR)]
    out.mkdir(parents=True, exist_ok=True)
    dst = out / "bench_speak_audio.wav"
    sf.write(str(dst), wav, SR)
    return dst, wav


def bench_device(run: Path, device: str, audio: Path, wav: np.ndarray, batch: int, repeats: int, out_dir: Path) -> dict:
    import torch

    from avatar.engine import Avatar, SpeakConfig, Speaker

    av = Avatar.load(run, device=device)
    cfg = SpeakConfig(batch=batch)
    sp = Speaker(av, cfg)
    out = out_dir / f"bench_speak_{device.replace(':', '_')}.mp4"
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    audio_s = len(wav) / SR
    e2e = time_median(lambda: sp.render_file(audio, out, progress=False), repeats=repeats, sync=sync)
    n = sp.render_file(audio, out, progress=False)["frames"]  # frame count (untimed)
    feat = time_median(lambda: sp.feature_fn(wav, n, sp.fps), repeats=repeats)
    render = time_median(lambda: [None for _ in sp.frames(wav)], repeats=repeats, sync=sync)
    # streaming: 40 ms chunks, as fast as they can be consumed; a fresh Speaker per run (setup, untimed)
    chunk = int(0.04 * SR)
    runs: list[tuple[float, float, dict, int, float]] = []

    def stream_once(sp_s) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        k = sum(1 for _ in sp_s.stream(wav[i:i + chunk] for i in range(0, len(wav), chunk)))
        runs.append((time.perf_counter() - t0, time.process_time() - c0, dict(sp_s.last_stats), k, sp_s.delay_s()))

    time_median(stream_once, repeats=repeats, setup=lambda: (Speaker(av, cfg),), sync=sync)
    runs = runs[1:]  # drop the warm-up
    wall, cpu, st, stream_frames, delay_s = sorted(runs, key=lambda r: r[0])[len(runs) // 2]  # the median run
    paced = stream_paced(Speaker(av, cfg), wav, chunk)
    e2e_s, render_s, feat_s = e2e["median_ms"] / 1000, render["median_ms"] / 1000, feat["median_ms"] / 1000
    res = {
        "device": device, "width": av.width, "height": av.height, "frames": n, "audio_s": audio_s, "repeats": repeats,
        "e2e_fps": n / e2e_s, "e2e_ms_min": e2e["min_ms"], "e2e_ms_max": e2e["max_ms"], "no_encode_fps": n / render_s,
        "features_s": feat_s, "features_x_realtime": audio_s / max(feat_s, 1e-9), "stream_frames": stream_frames,
        "stream_latency_p50_ms": 1000 * (st["latency_p50_s"] or 0), "stream_latency_p95_ms": 1000 * (st["latency_p95_s"] or 0),
        "stream_delay_ms": 1000 * delay_s, "window_future_rows": int(av.feature_future), "stream_fps": stream_frames / st["seconds"],
        "stream_x_realtime": audio_s / max(wall, 1e-9), "stream_cpu_x_realtime": audio_s / max(cpu, 1e-9),
        "stream_paced_latency_p50_ms": paced["p50_ms"], "stream_paced_latency_p95_ms": paced["p95_ms"],
        "stream_paced_frames": paced["frames"], "extractor": av.feature_meta.get("extractor"),
    }
    print(f"[{device}] {av.width}x{av.height}: end-to-end {res['e2e_fps']:.1f} frames/s (mp4 with audio; median of "
          f"{repeats}), without encoding {res['no_encode_fps']:.1f} frames/s; features {feat_s:.2f} s "
          f"({res['features_x_realtime']:.0f}x real time, {res['extractor']})")
    print(f"[{device}] streaming: {res['stream_fps']:.1f} frames/s = {res['stream_x_realtime']:.2f}x real time, latency "
          f"chunk->frame p50 {res['stream_latency_p50_ms']:.1f} ms p95 {res['stream_latency_p95_ms']:.1f} ms, "
          f"+ look-ahead {res['stream_delay_ms']:.0f} ms")
    print(f"[{device}] streaming paced at real time: latency arrival->frame p50 {res['stream_paced_latency_p50_ms']:.1f} ms "
          f"p95 {res['stream_paced_latency_p95_ms']:.1f} ms over {paced['frames']} frames")
    return res


def bench_sizes(run: Path, device: str, audio: Path, wav: np.ndarray, batch: int, repeats: int, out_dir: Path,
                sizes: list[str]) -> dict:
    """End-to-end frames/s (audio file -> mp4 with audio) at output sizes: "source" (the default of
    `avatar speak`: the source clip's size) and WxH (with --fit pad when the aspect differs from the source's).
    Issue 12 targets: >= 25 frames/s at native 512² on 2 CPU cores, the same asked at 1920x1080; peak RAM <= 2 GB."""
    import resource

    import torch

    from avatar.engine import Avatar, SpeakConfig, Speaker

    av = Avatar.load(run, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    res = {}
    for size in sizes:
        cfg = SpeakConfig(batch=batch) if size == "source" else SpeakConfig(batch=batch, size=size)
        try:
            sp = Speaker(av, cfg)
        except Exception:  # noqa: BLE001 - another aspect than the source's: letterbox it
            sp = Speaker(av, SpeakConfig(batch=batch, size=size, fit="pad"))
        out = out_dir / f"bench_speak_{device.replace(':', '_')}_{size}.mp4"
        t = time_median(lambda: sp.render_file(audio, out, progress=False), repeats=repeats, sync=sync)
        n = sp.render_file(audio, out, progress=False)["frames"]
        key = f"{sp.width}x{sp.height}"
        res[key] = {"requested": size, "e2e_fps": round(n / (t["median_ms"] / 1000), 2), "frames": n,
                    "fit": sp.cfg.fit, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        print(f"[{device}] native sizes: {key} ({size}): end-to-end {res[key]['e2e_fps']:.1f} frames/s, "
              f"peak RSS so far {res[key]['peak_rss_mb']:.0f} MB", flush=True)
    return res


def stream_paced(sp, wav: np.ndarray, chunk: int) -> dict:
    """Stream `wav` with chunks released at real time (a live source); per frame, the time from the
    scheduled arrival of the chunk that completed it to the frame being ready (queueing included)."""
    arrival = [0.0]

    def chunks():
        t0 = time.perf_counter()
        for i in range(0, len(wav), chunk):
            due = t0 + (i + chunk) / SR  # the chunk's last sample has been "recorded"
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            arrival[0] = due
            yield wav[i:i + chunk]

    lat = [time.perf_counter() - arrival[0] for _ in sp.stream(chunks())]
    lat = lat or [0.0]
    return {"p50_ms": 1000 * float(np.median(lat)), "p95_ms": 1000 * float(np.percentile(lat, 95)), "frames": len(lat)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--run", default=None, help="trained run folder (default: the real-data fixture run)")
    ap.add_argument("--audio", default=None, help=f"audio file (default: {DEFAULT_AUDIO.name})")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds of audio to render")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs after a warm-up (median reported)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="bench output folder (fixture run cached there)")
    ap.add_argument("--sizes", default="source,1920x1080",
                    help="output sizes timed end to end (comma separated: source = the clip's own size, or WxH)")
    ap.add_argument("--sizes-only", action="store_true", help="only the output-size figures (a short run on a busy machine)")
    args = ap.parse_args(argv)

    import torch

    run = Path(args.run) if args.run else fixture_run(args.out)
    audio, wav = _audio(args.audio, args.seconds, args.out)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(wav) / SR:.1f} s of audio; run {run}")
    out: dict = {"bench": "speak", "run": str(run), "audio": str(args.audio or DEFAULT_AUDIO),
                 "machine": machine("cuda" if torch.cuda.is_available() else "cpu")}  # before the engine changes threads
    sizes = [x.strip() for x in args.sizes.split(",") if x.strip()]
    out["cpu_sizes"] = bench_sizes(run, "cpu", audio, wav, args.batch, args.repeats, args.out, sizes)
    import resource

    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if args.sizes_only:
        emit(out, device="cpu")
        return
    out["cpu"] = bench_device(run, "cpu", audio, wav, args.batch, args.repeats, args.out)
    if torch.cuda.is_available():
        out["gpu"] = bench_device(run, "cuda", audio, wav, max(args.batch, 32), args.repeats, args.out)
        out["gpu"]["name"] = torch.cuda.get_device_name(0)
    else:
        print("[gpu] skipped: CUDA is not available")
        out["gpu"] = "skipped: no CUDA"
    emit(out, device="cuda" if torch.cuda.is_available() else "cpu")


if __name__ == "__main__":
    main()
