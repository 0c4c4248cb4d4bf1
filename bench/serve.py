"""Benchmark `avatar serve` on loopback: real time, latency, first frame, A/V offset, concurrency, memory.

    python bench/serve.py                          the real-data fixture run (bench/_common.py), defaults below
    python bench/serve.py --run runs/NAME --minutes 5 --max-sessions 4
    python bench/serve.py --server-process         the server as its own `avatar serve` process (as in use)

Bounded in count and time; stops by itself. A Python aiortc client (avatar/serve/client.py) plays the browser:

* sustained: one session fed real speech (../shared/data/audio, looped) as 40 ms PCM16 chunks paced at real time for
  `--minutes`; reports the delivered frame rate (frames received / s, from the 10 s idle start on), real-time factor
  = frames sent / frames due while the speech plays (1.0: every frame of the timeline went out), dropped frames, and
  the added latency chunk -> frame p50/p95 (frame sent - commit of the speech chunk that completed it: excludes the
  model's look-ahead, which is `delay_ms`), all as the server measured them; the received stream's A/V offset at the
  start (first 10 s) and at the end (last 10 s), from the client side: frames carry their timeline index (session
  `stamp`), the audio is the timeline, so arrival(video frame k) - arrival(audio sample k * 48000 / fps) is the
  offset as received (aiortc's receiver holds audio back by its 4-packet prefetch (`rx_audio_prefetch_ms`, not
  subtracted: `av_offset_rx_*_ms` are raw) and the server's send-side offset (`av_offset_tx_*_ms`); and where the CPU
  goes while it talks: `cpu_cores_process` (CPU s per s of the server process and its phone-decoder helper; without
  --server-process that is this whole process, client included) and `cpu_cores_by_thread` (Python threads by name:
  the worker's render thread `avatar-serve-RUN`, its engine thread `...-engine`, the event loop `avatar-serve-http`;
  OpenMP and codec threads count only in the process figure).
* interrupt: barge-in while talking -> the first closed-mouth frame sent (median of `--repeats`).
* first frame: session create -> first video frame received (median of `--repeats`, after a warm-up).
* concurrency: 1, 2, 3 ... sessions talking at once (admission control off) for 20 s each; the largest count whose
  every session receives >= 25 frames/s, and the rate where it breaks.
* memory: RSS of the server process before and after `--cycles` create/connect/talk/close cycles.
Ends with one JSON line (with the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_OUT, SHARED_DATA, emit, fixture_run

AUDIO = SHARED_DATA / "audio" / "dreamtalk_french1.wav"
RX_AUDIO_PREFETCH_MS = 80.0  # aiortc JitterBuffer(capacity=16, prefetch=4) x 20 ms packets


def _rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _proc_cpu_s(pid: int | str) -> float:
    """CPU seconds (user + system) of process `pid` and of the processes it started that still run (the
    phone decoder's helper process), from /proc."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(_proc_cpu_s(k) for k in kids)
    return total


def _thread_cpu_s() -> dict[str, float]:
    """CPU seconds of this process's Python threads, by name (the render and engine threads of a worker, the
    event loops); OpenMP worker threads are not Python threads and are counted only in the process total."""
    out = {}
    for t in threading.enumerate():
        try:
            out[t.name] = out.get(t.name, 0.0) + time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except (OSError, TypeError, OverflowError):
            continue
    return out


def _speech16() -> np.ndarray:
    from avatar.core.audio import load_audio

    return (np.clip(load_audio(AUDIO, sr=16000), -1, 1) * 32767).astype("<i2")


async def _feed(c, sid: str, pcm: np.ndarray, seconds: float, chunk_s: float = 0.04) -> None:
    """Send `seconds` of speech (looped) in real-time-paced PCM16 chunks."""
    n = int(chunk_s * 16000)
    t0 = time.monotonic()
    sent = 0
    while sent < seconds * 16000:
        i = sent % (len(pcm) - n)
        await c.send_pcm(sid, pcm[i:i + n], 16000)
        sent += n
        wait = t0 + sent / 16000 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)


def _rx_offsets(rec, fps: float, window: tuple[float, float]) -> float | None:
    """Client-side A/V offset (ms) over frames received in [t_a, t_b): video frame k's arrival minus the arrival
    of the audio packet holding timeline sample k * 48000 / fps (minus aiortc's audio prefetch)."""
    from avatar.serve.worker import read_stamp

    audio = list(rec.audio)
    if not audio:
        return None
    v = [(t, p, read_stamp(img)) for t, p, img in rec.video if img is not None and window[0] <= t < window[1]]
    s0 = getattr(rec, "audio_s0", None)  # timeline sample of the first audio packet (session state)
    if not v or s0 is None:
        return None
    a_arr = np.array([a for a, _, _ in audio])
    a_pts = np.array([p for _, p, _ in audio], np.int64)
    offs = []
    for t, _, k in v:
        s = k * 48000 / fps
        idx = np.searchsorted(a_pts - a_pts[0] + s0, s, side="right") - 1
        if 0 <= idx < len(a_arr):
            within = (s - (a_pts[idx] - a_pts[0] + s0)) / 48000
            offs.append(1000 * (t - (a_arr[idx] + within)))
    return float(np.median(offs)) if offs else None


async def sustained(url: str, pcm: np.ndarray, minutes: float, pid: int | str = "self") -> dict:
    from avatar.serve.client import ServeClient

    async with ServeClient(url) as c:
        t_create = time.monotonic()
        st = await c.create(stamp=True)
        sid, fps = st["id"], st["fps"]
        rec = await c.connect(sid)
        while rec.first_video is None and time.monotonic() - t_create < 20:
            await asyncio.sleep(0.01)
        while not rec.audio:
            await asyncio.sleep(0.005)
        rec.audio_s0 = (await c.state(sid))["audio_start_sample"]  # the audio pts origin on the timeline
        t0 = time.monotonic()
        await asyncio.sleep(10.0)  # idle start, then speech
        sent0 = (await c.state(sid))["frames_sent"]
        t_speech = time.monotonic()
        tx_start = (await c.state(sid))["av_offset_ms"]
        cpu0, threads0 = _proc_cpu_s(pid), _thread_cpu_s()
        await _feed(c, sid, pcm, minutes * 60)
        dur = time.monotonic() - t0
        st = await c.state(sid)
        speech_s = time.monotonic() - t_speech
        cpu1, threads1 = _proc_cpu_s(pid), _thread_cpu_s()
        start_w = (t0 - 10, t0)
        end_w = (t0 + dur - 10, t0 + dur + 1)
        frames_rx = sum(1 for t, _, _ in rec.video if t >= t0)
        out = {
            "sustained_s": round(dur, 1),
            "fps_delivered": round(frames_rx / dur, 2),
            "real_time_factor": round((st["frames_sent"] - sent0) / (speech_s * fps), 3),  # over the speech
            "frames_dropped": st["frames_dropped"], "audio_underruns": st["audio_underruns"],
            "latency_p50_ms": st["latency_p50_ms"], "latency_p95_ms": st["latency_p95_ms"], "delay_ms": st["delay_ms"],
            "av_offset_tx_start_ms": tx_start, "av_offset_tx_end_ms": st["av_offset_ms"],
            "av_offset_rx_start_ms": _rx_offsets(rec, fps, start_w), "av_offset_rx_end_ms": _rx_offsets(rec, fps, end_w),
            # where the CPU goes while it talks: cores busy (CPU s per s) in the server process with its helper
            # process (with --server-process; else this whole process, the client too), and by Python thread
            "cpu_cores_process": round((cpu1 - cpu0) / speech_s, 2),
            "cpu_cores_by_thread": {k: round((v - threads0.get(k, 0.0)) / speech_s, 2) for k, v in threads1.items()
                                    if v - threads0.get(k, 0.0) > 0.01 * speech_s},
        }
        st_del, _ = await c.request("DELETE", f"/api/sessions/{sid}")
        out["closed_by_server_early"] = st_del == 404  # e.g. the WebRTC connection failed under load
    return out


async def interrupts(url: str, pcm: np.ndarray, repeats: int) -> dict:
    """Interrupt -> first closed-mouth frame sent (server-side, ms), median of `repeats` barge-ins."""
    from avatar.serve.client import ServeClient

    out = []
    async with ServeClient(url, keep_frames=False) as c:
        sid = (await c.create())["id"]
        await c.connect(sid)
        for _ in range(repeats):
            feed = asyncio.ensure_future(_feed(c, sid, pcm, 4.0))
            t0 = time.monotonic()
            while not (await c.state(sid))["talking"] and time.monotonic() - t0 < 10:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            feed.cancel()
            n = (await c.state(sid))["interrupts_done"]
            await c.interrupt(sid)
            while time.monotonic() - t0 < 15:
                st = await c.state(sid)
                if st["interrupts_done"] > n:
                    break
                await asyncio.sleep(0.02)
            out.append(st["interrupt_ms"])
            await asyncio.sleep(1.0)
        await c.close(sid)
    vals = [v for v in out if v is not None]
    return {"interrupt_ms_p50": round(statistics.median(vals), 1) if vals else None,
            "interrupt_ms_max": round(max(vals), 1) if vals else None}


async def first_frame(url: str, repeats: int) -> dict:
    from avatar.serve.client import ServeClient

    times = []
    async with ServeClient(url, keep_frames=False) as c:
        for i in range(repeats + 1):
            t0 = time.monotonic()
            sid = (await c.create())["id"]
            rec = await c.connect(sid)
            while rec.first_video is None and time.monotonic() - t0 < 20:
                await asyncio.sleep(0.005)
            if i and rec.first_video is not None:  # the first is the warm-up
                times.append(rec.first_video - t0)
            await c.request("DELETE", f"/api/sessions/{sid}")  # 404 if the server closed it already
    if not times:
        return {"first_frame_s": None, "first_frame_max_s": None}
    return {"first_frame_s": round(statistics.median(times), 3), "first_frame_max_s": round(max(times), 3),
            "first_frame_missing": repeats - len(times)}


async def concurrency(url: str, pcm: np.ndarray, max_n: int, seconds: float) -> dict:
    from avatar.serve.client import ServeClient

    rates = {}
    ok = 0
    async with ServeClient(url, keep_frames=False) as c:
        for n in range(1, max_n + 1):
            sids = [(await c.create())["id"] for _ in range(n)]
            recs = [await c.connect(s) for s in sids]
            await asyncio.sleep(2.0)
            t0 = time.monotonic()
            await asyncio.gather(*[_feed(c, s, pcm, seconds) for s in sids])
            dur = time.monotonic() - t0
            fps = [sum(1 for t, _, _ in r.video if t >= t0) / dur for r in recs]
            rates[n] = round(min(fps), 2)
            for s in sids:
                await c.request("DELETE", f"/api/sessions/{s}")
            if min(fps) >= 25 * 0.98:  # 25 frames/s with 2 % slack for the window's edges
                ok = n
            else:
                break
            await asyncio.sleep(1.0)
    return {"sessions_real_time": ok, "min_fps_by_sessions": rates}


async def memory(url: str, pcm: np.ndarray, cycles: int, pid: int | str = "self") -> dict:
    import gc

    from avatar.serve.client import ServeClient

    async with ServeClient(url, keep_frames=False) as c:
        async def one():
            sid = (await c.create())["id"]
            await c.connect(sid)
            await c.send_pcm(sid, pcm[:16000], 16000)
            await asyncio.sleep(0.3)
            await c.request("DELETE", f"/api/sessions/{sid}")

        for _ in range(3):  # warm-up: allocator pools, codec contexts
            await one()
        gc.collect()
        before = _rss_mb(pid)
        for _ in range(cycles):
            await one()
        await asyncio.sleep(1.0)
        gc.collect()
        after = _rss_mb(pid)
        n = (await c.status())["sessions"]
    return {"rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1), "rss_growth_mb": round(after - before, 1),
            "cycles": cycles, "sessions_left": n}


async def _get(url: str, path: str) -> dict:
    from avatar.serve.client import ServeClient

    async with ServeClient(url) as c:
        return (await c.request("GET", path))[1]


def _start_server_process(run: Path, a):
    """`avatar serve RUN` on a free loopback port in its own process -> (process, url)."""
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "avatar.cli", "serve", str(run), "--host", "127.0.0.1", "--port", str(port),
           "--max-load", "1e9", "--max-sessions", "64", "--device", a.device]
    if a.size:
        cmd += ["--size", a.size]
    if a.buffer_ms is not None:
        cmd += ["--buffer-ms", str(a.buffer_ms)]
    if a.render_threads is not None:
        cmd += ["--render-threads", str(a.render_threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    for line in proc.stdout:
        if "open http" in line:
            return proc, line.split("open ", 1)[1].strip()
        if time.monotonic() - t0 > 300:
            break
    proc.kill()
    raise SystemExit(f"bench: `avatar serve` did not start (exit {proc.wait()})")


def _stop_server_process(proc) -> None:
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except Exception:  # noqa: BLE001
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None, help="trained run (default: the cached real-data fixture run)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--minutes", type=float, default=2.0, help="sustained session length (issue: 5; default 2 on a shared box)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-sessions", type=int, default=4)
    ap.add_argument("--concurrency-s", type=float, default=20.0)
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", default=None, help="output size as `avatar serve --size` (default: the server's default)")
    ap.add_argument("--buffer-ms", type=float, default=None, help="`avatar serve --buffer-ms` (default: the server's)")
    ap.add_argument("--render-threads", type=int, default=None,
                    help="`avatar serve --render-threads` (default: the server's)")
    ap.add_argument("--server-process", action="store_true",
                    help="run the server as its own `avatar serve` process, as in use (a browser is another process, "
                         "usually another machine); default: a thread of this process, which also decodes what the "
                         "client receives, under the same GIL")
    a = ap.parse_args()

    from avatar.engine import SpeakConfig
    from avatar.serve.config import ServeConfig
    from avatar.serve.server import AvatarServer, ServerThread

    run = Path(a.run) if a.run else fixture_run(a.out)
    pcm = _speech16()
    res = {"bench": "serve", "rx_audio_prefetch_ms": RX_AUDIO_PREFETCH_MS, "run": str(run),
           "server": "process" if a.server_process else "thread"}
    if a.server_process:
        proc, url = _start_server_process(run, a)
        pid, stop = proc.pid, lambda: _stop_server_process(proc)
        av = asyncio.run(_get(url, "/api/avatars"))["avatars"][0]
        st = asyncio.run(_get(url, "/api/status"))
        res.update({"width": av["width"], "height": av["height"], "fps": av["fps"],
                    "render_ms": next(iter(st["render_ms"].values()))})
    else:
        extra = {} if a.buffer_ms is None else {"buffer_ms": a.buffer_ms}
        speak_extra = {} if a.render_threads is None else {"render_threads": a.render_threads}
        srv = ServerThread(AvatarServer([run], ServeConfig(port=0, max_load=1e9, max_sessions=64, device=a.device, **extra),
                                        SpeakConfig(size=a.size, **speak_extra),
                                        log=lambda m: print(m, file=sys.stderr)))
        url = srv.start()
        pid, stop = "self", srv.stop
        w = next(iter(srv.server.workers.values()))
        res.update({"width": w.width, "height": w.height, "fps": w.fps, "render_ms": round(1000 * w.render_s, 1),
                    "render_threads": w.render_threads,
                    "features_s_per_s": round(w.feature_s, 3)})
    try:
        t = time.monotonic()
        res.update(asyncio.run(first_frame(url, a.repeats)))
        print(f"bench serve: first frame {res['first_frame_s']} s ({time.monotonic() - t:.0f} s)", file=sys.stderr)
        res.update(asyncio.run(sustained(url, pcm, a.minutes, pid)))
        print(f"bench serve: sustained {res}", file=sys.stderr)
        res.update(asyncio.run(interrupts(url, pcm, a.repeats)))
        res.update(asyncio.run(concurrency(url, pcm, a.max_sessions, a.concurrency_s)))
        res.update(asyncio.run(memory(url, pcm, a.cycles, pid)))
        res["pid_threads"] = len(os.listdir(f"/proc/{pid}/task"))  # the server's
    finally:
        stop()
    emit(res, a.device)


if __name__ == "__main__":
    main()
