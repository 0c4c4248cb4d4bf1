"""`avatar view` end to end: a tiny trained avatar served by viser, driven by headless Chromium.

One viewer and one page are shared by the steps of `test_viewer_in_browser` (starting Chromium and
the first render cost seconds on CPU). The page is driven like a user would: slider track clicks,
checkbox clicks, mouse drags on the canvas, the Play button, file uploads. Screenshots are compared
and the server-side state (camera, clock, clip table) is checked.

Set AVATAR_UPDATE_SCREENSHOT=1 to refresh docs/viewer.png (the README's picture) from this run.
Needs Debian's chromium (/usr/bin/chromium) and Python playwright: conftest `require('browser')` otherwise.
Browser downloads do not work here, so playwright drives that system Chromium.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import require

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("AVATAR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]
SCREENSHOT = ROOT / "docs" / "viewer.png"
VIEWPORT = {"width": 800, "height": 500}

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from avatar.testing import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("view") / "run", iters=10)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        require("browser", f"headless Chromium not found at {CHROMIUM} (apt-get install chromium, or set AVATAR_CHROMIUM)")
    try:
        import playwright.sync_api as sync_api
    except ImportError:
        require("browser", "python playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _wav(seconds: float, sr: int = 16000) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 200 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32),
             sr, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def _png(data: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32)  # [H, W, 3]


def _wait(cond, timeout: float = 30.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class _Page:
    """The page plus the viewer's per-browser state, with helpers to wait for settled frames."""

    def __init__(self, viewer, page):
        self.v, self.page = viewer, page
        _wait(lambda: len(viewer._clients) == 1, what="the browser to connect")
        self.st = next(iter(viewer._clients.values()))

    def settled(self, after: int = 0, timeout: float = 60.0) -> None:
        """Wait for a full-resolution frame rendered after frame number `after`."""
        st = self.st
        _wait(lambda: st.frames > after and not st.dirty and not st.last_scaled and st.last_k == -1,
              timeout, "a settled frame")
        time.sleep(0.4)  # let the browser draw it

    def centre(self) -> np.ndarray:
        """[h, w, 3] screenshot of the free centre of the canvas (left of the GUI panel)."""
        img = _png(self.page.locator("canvas").first.screenshot())
        h, w = img.shape[:2]
        return img[int(0.15 * h): int(0.85 * h), int(0.25 * w): int(0.55 * w)]

    def click_slider(self, handle, frac: float) -> None:
        box = self.page.locator(f'[id="{handle._impl.uuid}"]').bounding_box()
        self.page.mouse.click(box["x"] + frac * box["width"], box["y"] + box["height"] / 2)


def test_viewer_in_browser(tiny_run, browser, tmp_path):
    from avatar.engine.runtime import Avatar
    from avatar.viewer.camera import viewmat_from_viser
    from avatar.viewer.clips import ClipLibrary
    from avatar.viewer.server import AvatarViewer

    audio_dir = tmp_path / "clips"
    audio_dir.mkdir()
    # long enough that the sync samples below finish before the clip ends on a loaded machine
    (audio_dir / "hello.wav").write_bytes(_wav(6.0))
    viewer = AvatarViewer(Avatar.load(tiny_run, device="cpu"), ClipLibrary(audio_dir, max_upload_bytes=100_000),
                          host="127.0.0.1", port=0)
    assert viewer.url.startswith("http://127.0.0.1:")
    upload_dir = viewer.clips.upload_dir
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(viewer.url)
        page.wait_for_selector("canvas", timeout=30_000)
        p = _Page(viewer, page)
        p.settled()
        assert viewer.last_error is None, viewer.last_error

        # The browser starts at the training camera.
        cam = p.st.client.camera
        _wait(lambda: np.abs(viewmat_from_viser(cam.wxyz, cam.position) - viewer._home_viewmat).max() < 1e-3,
              timeout=10, what="the browser camera to be the training camera")
        assert abs(cam.fov - viewer.home.fov) < 1e-3

        # The head is there: with the plate replaced by white, the centre has many non-white pixels,
        # and they match the server's frame for this browser.
        n = p.st.frames
        page.locator(f'[id="{viewer._background._impl.uuid}"]').click()
        _wait(lambda: not viewer._background.value, what="the background toggle")
        p.settled(n)
        base = p.centre()
        non_white = (base.min(-1) < 200).mean()
        assert non_white > 0.15, f"only {non_white:.1%} of the centre is not background"
        rgb = p.st.last_rgb  # [h, w, 3] uint8 as rendered
        assert (rgb[rgb.shape[0] // 3: 2 * rgb.shape[0] // 3, rgb.shape[1] // 3: 2 * rgb.shape[1] // 3].min(-1) < 200).mean() > 0.3

        # A slider changes the image (click on the yaw track near its right end).
        n = p.st.frames
        p.click_slider(viewer._yaw, 0.9)
        _wait(lambda: viewer._yaw.value > 20, what="the yaw slider")
        p.settled(n)
        yawed = p.centre()
        assert np.abs(yawed - base).mean() > 3.0

        # The camera orbits with a mouse drag on the canvas, and the image follows.
        n = p.st.frames
        before = viewmat_from_viser(cam.wxyz, cam.position)
        page.mouse.move(200, 250)
        page.mouse.down()
        page.mouse.move(120, 200, steps=6)
        page.mouse.up()
        _wait(lambda: np.abs(viewmat_from_viser(cam.wxyz, cam.position) - before).max() > 1e-2, what="the camera")
        p.settled(n)
        orbited = p.centre()
        assert np.abs(orbited - yawed).mean() > 3.0

        # The Gaussian centres overlay (drawn by the browser, registered with the server render).
        assert viewer._points is not None
        page.locator(f'[id="{viewer._show_centres._impl.uuid}"]').click()
        _wait(lambda: viewer._points.visible, what="the centres toggle")
        page.wait_for_timeout(800)
        with_points = p.centre()
        changed = (np.abs(with_points - orbited).max(-1) > 60).mean()
        assert changed > 0.01, f"the centres changed only {changed:.2%} of the view"
        page.locator(f'[id="{viewer._show_centres._impl.uuid}"]').click()
        _wait(lambda: not viewer._points.visible, what="the centres toggle")

        # Reset camera returns to the training camera.
        p.click_slider(viewer._yaw, 0.5)
        page.get_by_role("button", name="Reset camera").click()
        _wait(lambda: np.abs(viewmat_from_viser(cam.wxyz, cam.position) - viewer._home_viewmat).max() < 1e-3,
              what="the camera reset")

        # Play: the browser plays the clip and the server clock follows the browser's audio.
        page.get_by_role("button", name="Play").click()
        _wait(lambda: page.evaluate("() => { const a = document.getElementById('avatar-audio');"
                                    " return !!a && !a.paused && a.currentTime > 0.2 }"),
              timeout=20, what="the audio to play in the browser")
        errors = []
        for _ in range(5):
            t0 = viewer.playback_time()
            t_audio = page.evaluate("() => { const a = document.getElementById('avatar-audio');"
                                    " return a ? a.currentTime : null }")
            t1 = viewer.playback_time()
            if t0 is None or t1 is None or t_audio is None:
                break
            errors.append(abs(t_audio - (t0 + t1) / 2) - (t1 - t0) / 2)
            time.sleep(0.2)
        # The median is what a viewer sees; a single sample can be late by one scheduler slice on a
        # loaded 2-core box, so the worst one gets a looser bound.
        assert errors and float(np.median(errors)) < 0.15 and max(errors) < 0.5, f"audio/face clock offsets {errors}"
        k_first = p.st.last_k
        _wait(lambda: p.st.last_k > k_first, timeout=10, what="frames to follow the audio")
        _wait(lambda: viewer.playback_time() is None, timeout=20, what="the clip to end")

        # Uploads: too large and wrong type are refused; a real audio file becomes a clip.
        upload = f'[id="file_upload_{viewer._upload._impl.uuid}"]'
        page.set_input_files(upload, files=[{"name": "big.wav", "mimeType": "audio/wav", "buffer": _wav(5.0)}])
        _wait(lambda: viewer.last_error is not None and "limit" in viewer.last_error, what="the size refusal")
        viewer.last_error = None
        page.set_input_files(upload, files=[{"name": "notes.wav", "mimeType": "audio/wav", "buffer": b"not audio" * 50}])
        _wait(lambda: viewer.last_error is not None and "not readable audio" in viewer.last_error,
              what="the type refusal")
        assert viewer.clips.labels == ["hello.wav"]
        page.set_input_files(upload, files=[{"name": "mine.wav", "mimeType": "audio/wav", "buffer": _wav(1.0)}])
        # the clip list grows first, then the dropdown selects the new clip: wait for both
        _wait(lambda: len(viewer.clips.labels) == 2 and viewer._clip_dropdown.value == viewer.clips.labels[1],
              what="the upload")
        label = viewer.clips.labels[1]
        assert label.startswith("upload ") and label.endswith(": mine.wav") and viewer._clip_dropdown.value == label
        assert len(list(upload_dir.iterdir())) == 1  # refused uploads left nothing on disk

        # Screenshot for the README: plate on, Gaussian centres off, notifications closed.
        n = p.st.frames
        viewer._res.value = viewer._res.max  # sharpest view of the tiny model
        page.locator(f'[id="{viewer._background._impl.uuid}"]').click()
        _wait(lambda: viewer._background.value, what="the background toggle")
        closes = page.locator("button.mantine-Notification-closeButton")
        for _ in range(10):  # notifications close one by one (animated); the list shrinks as we go
            if closes.count() == 0:
                break
            try:
                closes.first.click(timeout=2000)
            except Exception:  # noqa: BLE001 - it closed by itself meanwhile
                pass
            page.wait_for_timeout(400)
        page.get_by_role("button", name="Upload audio").scroll_into_view_if_needed()
        p.settled(n)
        shot = page.screenshot(type="png")
        assert len(shot) < 300_000
        (tmp_path / "viewer.png").write_bytes(shot)
        if os.environ.get("AVATAR_UPDATE_SCREENSHOT") == "1":  # refresh the README's picture
            SCREENSHOT.parent.mkdir(exist_ok=True)
            SCREENSHOT.write_bytes(shot)
    finally:
        page.close()
        viewer.stop()

    # Clean stop: render thread gone, port closed, uploads deleted (how fast it stops is not a test's business).
    assert not viewer._thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", viewer.port), timeout=2).close()
    assert not upload_dir.exists()


def test_cli_serves_and_stops_on_ctrl_c(tiny_run):
    """`avatar view RUN` prints its loopback URL, serves the page, and exits 0 on SIGINT."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # SIGINT as a terminal delivers it: a suite started in the background by a shell (`cmd &`) inherits SIGINT
    # ignored, and Python then installs no handler, so Ctrl-C could not reach the viewer (seen in a local run)
    proc = subprocess.Popen([sys.executable, "-m", "avatar.cli", "view", str(tiny_run), "--port", "0", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url, lines = None, []
        end = time.monotonic() + 90
        while url is None and time.monotonic() < end:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("avatar view: open "):
                url = line.split()[3]
        assert url is not None, "".join(lines)
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read(2000).lower()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "avatar view: stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_refuses_unfinished_run(tmp_path):
    r = subprocess.run([sys.executable, "-m", "avatar.cli", "view", str(tmp_path)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode != 0
    assert "not finished" in r.stderr and "Traceback" not in r.stderr
