"""Benchmark `avatar speak`: end-to-end frames/s and streaming latency.

    python bench/speak.py                       builds the tiny test avatar (64 px) in a temp folder
    python bench/speak.py --run runs/NAME       a real trained run, at its training resolution
    python bench/speak.py --run runs/NAME --audio speech.wav --seconds 20

End to end = audio decoding + features + silence gate + motion + deformation + rasterization +
compositing + H.264/AAC encoding (`Speaker.render_file`), measured at the run's training resolution.
The stage split renders the same frames without the encoder and times the feature extractor alone.
Streaming, twice, in 40 ms chunks: (1) pushed as fast as possible: the streaming real-time factor
(`stream_x_realtime` = audio seconds / wall seconds, >= 1 keeps up with a live source;
`stream_cpu_x_realtime` the same per CPU second of this process, less sensitive to other load) and the compute
latency chunk push -> frame ready (`stream_latency_p50_ms` / `_p95_ms`); (2) paced at real time like a
live microphone: latency from each chunk's scheduled arrival to the frames it completed being ready
(`stream_paced_latency_p50_ms` / `_p95_ms`; grows without bound when the pipeline is slower than real
time). Both exclude the algorithmic look-ahead (`stream_delay_ms`, `Speaker.delay_s`). The tiny avatar
is trained on the real default extractor's features (phonetic+spectral; `--features synthetic` for the
8-d test feature), so the streaming figures include real feature extraction. CPU always; a GPU section
when CUDA is available (else printed as skipped). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from avatar.core.audio import SAMPLE_RATE

SR = SAMPLE_RATE


def _audio(path: str | None, seconds: float) -> tuple[Path, np.ndarray]:
    import soundfile as sf

    from avatar.core.audio import load_audio

    if path:
        wav = load_audio(path, sr=SR)[: int(seconds * SR)]
    else:  # speech-like test signal: syllable-rate modulated harmonics with pauses
        t = np.arange(int(seconds * SR)) / SR
        f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
        ph = 2 * np.pi * np.cumsum(f0) / SR
        wav = 0.2 * sum(np.sin(h * ph) / h for h in range(1, 15)) * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t))
        wav = (wav * ((t % 3.0) < 2.4)).astype(np.float32)
    tmp = Path(tempfile.mkdtemp(prefix="bench_speak_")) / "audio.wav"
    sf.write(str(tmp), wav, SR)
    return tmp, wav


def bench_device(run: Path, device: str, audio: Path, wav: np.ndarray, batch: int) -> dict:
    import torch

    from avatar.engine.runtime import Avatar
    from avatar.engine.speak import SpeakConfig, Speaker

    av = Avatar.load(run, device=device)
    cfg = SpeakConfig(batch=batch)
    sp = Speaker(av, cfg)
    out = Path(tempfile.mkdtemp(prefix="bench_speak_")) / "out.mp4"
    list(sp.frames(wav[: SR // 2]))  # warm-up (kernels, allocator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    summary = sp.render_file(audio, out, progress=False)
    e2e_s = time.perf_counter() - t0
    n = summary["frames"]
    # stage split: features alone, then everything but the encoder
    t0 = time.perf_counter()
    sp.feature_fn(wav, n, sp.fps)
    feat_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in sp.frames(wav):
        pass
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    render_s = time.perf_counter() - t0
    # streaming: 40 ms chunks, as fast as they can be consumed
    chunk = int(0.04 * SR)
    sp_s = Speaker(av, cfg)
    t0, c0 = time.perf_counter(), time.process_time()
    frames = list(sp_s.stream(wav[i:i + chunk] for i in range(0, len(wav), chunk)))
    stream_wall, stream_cpu = time.perf_counter() - t0, time.process_time() - c0
    st = sp_s.last_stats
    paced = stream_paced(Speaker(av, cfg), wav, chunk)
    res = {
        "device": device, "width": av.width, "height": av.height, "frames": n, "audio_s": len(wav) / SR,
        "e2e_fps": n / e2e_s, "no_encode_fps": n / render_s, "features_s": feat_s,
        "features_x_realtime": (len(wav) / SR) / max(feat_s, 1e-9), "stream_frames": len(frames),
        "stream_latency_p50_ms": 1000 * (st["latency_p50_s"] or 0), "stream_latency_p95_ms": 1000 * (st["latency_p95_s"] or 0),
        "stream_delay_ms": 1000 * sp_s.delay_s(), "window_future_rows": int(av.feature_future), "stream_fps": len(frames) / st["seconds"],
        "stream_x_realtime": (len(wav) / SR) / max(stream_wall, 1e-9),
        "stream_cpu_x_realtime": (len(wav) / SR) / max(stream_cpu, 1e-9),
        "stream_paced_latency_p50_ms": paced["p50_ms"], "stream_paced_latency_p95_ms": paced["p95_ms"],
        "stream_paced_frames": paced["frames"],
        "extractor": av.feature_meta.get("extractor"),
    }
    print(f"[{device}] {av.width}x{av.height}: end-to-end {res['e2e_fps']:.1f} frames/s (mp4 with audio), "
          f"without encoding {res['no_encode_fps']:.1f} frames/s; features {feat_s:.2f} s "
          f"({res['features_x_realtime']:.0f}x real time, {res['extractor']})")
    print(f"[{device}] streaming: {res['stream_fps']:.1f} frames/s = {res['stream_x_realtime']:.2f}x real time, latency "
          f"chunk->frame p50 {res['stream_latency_p50_ms']:.1f} ms p95 {res['stream_latency_p95_ms']:.1f} ms, "
          f"+ look-ahead {res['stream_delay_ms']:.0f} ms")
    print(f"[{device}] streaming paced at real time: latency arrival->frame p50 {res['stream_paced_latency_p50_ms']:.1f} ms "
          f"p95 {res['stream_paced_latency_p95_ms']:.1f} ms over {paced['frames']} frames")
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--run", default=None, help="trained run folder (default: build the tiny test avatar)")
    ap.add_argument("--size", type=int, default=64, help="image size of the tiny avatar when --run is not given")
    ap.add_argument("--features", choices=("phonetic+spectral", "synthetic"), default="phonetic+spectral",
                    help="audio features of the tiny avatar when --run is not given (default: the real extractor)")
    ap.add_argument("--audio", default=None, help="audio file (default: a synthetic speech-like signal)")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds of audio to render")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()

    import torch

    run = Path(args.run) if args.run else None
    if run is None:
        from avatar.testing import make_tiny_run

        run = Path(tempfile.mkdtemp(prefix="bench_speak_run_")) / "tiny"
        t0 = time.perf_counter()
        make_tiny_run(run, size=args.size, features=args.features)
        print(f"built the tiny avatar ({args.size} px, {args.features} features) in {time.perf_counter() - t0:.1f} s: {run}")
    audio, wav = _audio(args.audio, args.seconds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(wav) / SR:.1f} s of audio")
    out: dict = {"bench": "speak", "run": str(run)}
    out["cpu"] = bench_device(run, "cpu", audio, wav, args.batch)
    if torch.cuda.is_available():
        out["gpu"] = bench_device(run, "cuda", audio, wav, max(args.batch, 32))
        out["gpu"]["name"] = torch.cuda.get_device_name(0)
    else:
        print("[gpu] skipped: CUDA is not available")
        out["gpu"] = "skipped: no CUDA"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
