"""Benchmark of `avatar view` on this machine: frame rate and resolution while the camera moves
and while audio plays, measured from a headless Chromium client.

    python bench/view.py [RUN] [--seconds 6]     (no RUN: a tiny trained run is made in a temp dir)

Prints figures and ends with one JSON line. No asserts (tests live in tests/test_viewer_*.py).
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from avatar.core.audio import SAMPLE_RATE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default=None, help="trained run folder (default: make a tiny one)")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds of each phase")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--res", type=int, default=None, help="resolution slider value (default: the viewer's)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    import soundfile as sf
    from avatar.viewer.clips import ClipLibrary
    from avatar.viewer.server import AvatarViewer
    from playwright.sync_api import sync_playwright

    from avatar.engine.runtime import Avatar

    tmp = Path(tempfile.mkdtemp(prefix="bench-view-"))
    run = args.run
    if run is None:
        from avatar.testing import make_tiny_run

        run = make_tiny_run(tmp / "run", iters=10)
    clips = tmp / "clips"
    clips.mkdir()
    sr = SAMPLE_RATE
    t = np.arange(int((args.seconds + 1) * sr)) / sr
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

        # Phase 1: continuous orbiting (mouse drags).
        n0, t0, heights = st.frames, time.monotonic(), []
        x = 300
        while time.monotonic() - t0 < args.seconds:
            page.mouse.move(x, 300)
            page.mouse.down()
            page.mouse.move(x + 40, 310, steps=4)
            page.mouse.up()
            heights.append(st.last_size[1])
        moving_fps = (st.frames - n0) / (time.monotonic() - t0)
        res.update(moving_fps=round(moving_fps, 2), moving_height_median=int(np.median(heights)),
                   full_res_render_ms=round(full_ms, 1))

        # Phase 2: audio playback.
        time.sleep(1.0)
        v.play("tone.wav")
        time.sleep(1.0)
        n0, t0, errs = st.frames, time.monotonic(), []
        while time.monotonic() - t0 < args.seconds - 1.5:
            a = v.playback_time()
            ct = page.evaluate("() => { const e = document.getElementById('avatar-audio'); return e ? e.currentTime : null }")
            b_ = v.playback_time()
            if a is not None and b_ is not None and ct is not None:
                errs.append(ct - (a + b_) / 2)  # > 0: the audio is ahead of the face
            time.sleep(0.25)
        res.update(playing_fps=round((st.frames - n0) / (time.monotonic() - t0), 2),
                   playing_height=st.last_size[1],
                   audio_minus_face_ms_median=round(1000 * float(np.median(errs)), 1) if errs else None,
                   audio_minus_face_ms_max_abs=round(1000 * float(np.max(np.abs(errs))), 1) if errs else None)
        b.close()
    v.stop()
    for k, val in res.items():
        print(f"{k:>24}: {val}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
