"""Benchmark of `avatar view` on this machine: frame rate and resolution while the camera moves
and while audio plays, measured from a headless Chromium client.

    python bench/view.py [RUN] [--seconds 2] [--repeats 5]   (no RUN: the real-data fixture run, bench/_common.py)

Each phase (orbiting with mouse drags; audio playing) runs one warm-up window and then `--repeats` windows of
`--seconds`; the frame rate reported is the median over the windows. Prints figures and ends with one JSON
line (with the machine). No asserts (tests live in tests/test_viewer_*.py).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from avatar.core.audio import SAMPLE_RATE

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common.py, also when loaded by path
from _common import DEFAULT_OUT, emit, fixture_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default=None, help="trained run folder (default: the real-data fixture run)")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds of each measured window")
    ap.add_argument("--repeats", type=int, default=5, help="measured windows per phase after a warm-up window (median)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="bench output folder (fixture run cached there)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--res", type=int, default=None, help="resolution slider value (default: the viewer's)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    import soundfile as sf
    from avatar.viewer.clips import ClipLibrary
    from avatar.viewer.server import AvatarViewer
    from playwright.sync_api import sync_playwright

    from avatar.engine import Avatar

    tmp = Path(tempfile.mkdtemp(prefix="bench-view-"))
    run = args.run if args.run is not None else fixture_run(args.out)
    clips = tmp / "clips"
    clips.mkdir()
    sr = SAMPLE_RATE
    t = np.arange(int(((args.repeats + 1) * args.seconds + 3) * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sr, format="WAV")
    (clips / "tone.wav").write_bytes(buf.getvalue())

    av = Avatar.load(run, device=args.device)
    v = AvatarViewer(av, ClipLibrary(clips, max_upload_bytes=10_000_000), port=0)
    if args.res is not None:
        v._res.value = args.res
    res: dict = {"run": str(run), "train_size": [av.width, av.height], "res_slider": v._res.value}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=args.chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--autoplay-policy=no-user-gesture-required"])
        page = b.new_page(viewport={"width": 1000, "height": 600})
        page.goto(v.url)
        page.wait_for_selector("canvas", timeout=60_000)
        while not v._clients or next(iter(v._clients.values())).frames == 0:
            time.sleep(0.1)
        st = next(iter(v._clients.values()))
        time.sleep(2.0)
        full_ms = st.render_s_ema * 1000

        # Phase 1: continuous orbiting (mouse drags), a warm-up window then `repeats` windows.
        x = 300
        fps_windows, heights = [], []
        for k in range(1 + args.repeats):
            n0, t0 = st.frames, time.monotonic()
            while time.monotonic() - t0 < args.seconds:
                page.mouse.move(x, 300)
                page.mouse.down()
                page.mouse.move(x + 40, 310, steps=4)
                page.mouse.up()
                heights.append(st.last_size[1])
            if k > 0:
                fps_windows.append((st.frames - n0) / (time.monotonic() - t0))
        res.update(moving_fps=round(statistics.median(fps_windows), 2), moving_fps_min=round(min(fps_windows), 2),
                   moving_height_median=int(np.median(heights)), full_res_render_ms=round(full_ms, 1))

        # Phase 2: audio playback, a warm-up window then `repeats` windows.
        time.sleep(1.0)
        v.play("tone.wav")
        fps_windows, errs = [], []
        for k in range(1 + args.repeats):
            n0, t0 = st.frames, time.monotonic()
            while time.monotonic() - t0 < args.seconds:
                a = v.playback_time()
                ct = page.evaluate("() => { const e = document.getElementById('avatar-audio'); return e ? e.currentTime : null }")
                b_ = v.playback_time()
                if k > 0 and a is not None and b_ is not None and ct is not None:
                    errs.append(ct - (a + b_) / 2)  # > 0: the audio is ahead of the face
                time.sleep(0.1)
            if k > 0:
                fps_windows.append((st.frames - n0) / (time.monotonic() - t0))
        res.update(playing_fps=round(statistics.median(fps_windows), 2), playing_fps_min=round(min(fps_windows), 2),
                   playing_height=st.last_size[1], windows=args.repeats, window_s=args.seconds,
                   audio_minus_face_ms_median=round(1000 * float(np.median(errs)), 1) if errs else None,
                   audio_minus_face_ms_max_abs=round(1000 * float(np.max(np.abs(errs))), 1) if errs else None)
        b.close()
    v.stop()
    for k, val in res.items():
        print(f"{k:>24}: {val}")
    emit({"bench": "view", **res}, device=args.device)


if __name__ == "__main__":
    main()
