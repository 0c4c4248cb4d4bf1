"""`avatar view`: a viser web viewer that renders a trained avatar server-side for each browser.

How it works
- The viser 3D world is the avatar's head frame (viewer/camera.py). Each browser's orbit camera is
  converted to a head-frame view matrix and intrinsics, the avatar is rendered with
  `Avatar.render` on the server, and the frame is pushed to that browser as its scene background
  image (`client.scene.set_background_image`, the pattern nerfstudio's viewer uses). Scene objects
  viser draws itself (the Gaussian centres point cloud) are then exactly registered with it.
- The initial viser camera is the training camera (the training view closest to the mean pose),
  and "Reset camera" returns to it.
- Audio: the chosen clip is decoded to 16 kHz, featurised with the extractor the model was trained
  with (`FeatureExtractor.from_meta(avatar.feature_meta)`) and windowed (`Avatar.feature_windows`).
  Play sends the clip to every browser as a WAV `<audio autoplay>` element and starts the
  server's playback clock; each rendered frame shows the audio frame at
  `clock + expected render latency`, so the frame that arrives matches what is being heard.
- Interactivity on CPU: while the camera moves or audio plays, the render height is scaled by
  a factor adapted every frame towards a target frame time; when the view is still, one full
  resolution frame is rendered.
- One render thread serves all browsers in turn (CPU renders do not gain from running in
  parallel on a few cores).

Security (issue 6): binds 127.0.0.1 unless told otherwise; the browser chooses clips by labels the
server made (viewer/clips.py) and never sends a path; uploads are size-checked as soon as the
transfer is announced (viser itself has no limit), then type-checked by decoding.
"""

from __future__ import annotations

import dataclasses
import html
import math
import threading
import time
from typing import Any

import numpy as np
from avatar.viewer.camera import (
    HomeCamera,
    head_offset_matrix,
    home_camera,
    intrinsics_from_fov,
    representative_view,
    viewmat_from_viser,
)
from avatar.viewer.clips import Clip, ClipLibrary, format_bytes
from avatar.viewer.clips import _safe_display_name as _display

from avatar.core.audio import SAMPLE_RATE
from avatar.errors import AvatarError

TARGET_FPS_PLAYING = 12.0
"""Frame rate the adaptive resolution aims for while audio plays (CPU)."""
TARGET_FPS_MOVING = 10.0
"""Frame rate the adaptive resolution aims for while the camera or a slider moves."""
SETTLE_S = 0.3
"""After this long without a change, one full-resolution frame replaces the reduced one."""
MIN_SCALE = 0.2
"""Lowest adaptive resolution factor."""
MAX_RENDER_WIDTH = 2048
AUDIO_REPORT_LATENCY_S = 0.01
"""Typical delay between a sync click in the browser and the server seeing it (loopback)."""
SYNC_MARK_S = 0.3
"""Audio time of the browser's first audio-clock mark (see `play`)."""
SYNC_PERIOD_S = 0.5
"""Audio time between the following marks."""
MAX_LATENCY_COMP_S = 0.25
"""Cap on the render-latency look-ahead (the first, warm-up render can take a second)."""
SYNC_TIMEOUT_S = 3.0
"""Start the clock anyway when no browser reports that the audio started (autoplay blocked)."""


@dataclasses.dataclass
class _Playback:
    clip: Clip
    windows: Any
    """[N, W, D] feature windows on the avatar's device."""
    sent: float
    """time.monotonic() when the audio was sent to the browsers."""
    start: float | None = None
    """time.monotonic() at which audio time 0 played in the browser; None until a browser reports
    (through the hidden sync button) that playback started."""
    sync_client: int | None = None
    """The browser whose audio clock drives this playback (the first to report)."""
    sync_clicks: int = 0

    def clock_start(self, now: float) -> float:
        """Audio time 0 on the server clock; falls back to the send time when no browser reports."""
        if self.start is None and now - self.sent > SYNC_TIMEOUT_S:
            self.start = self.sent + 0.05
        return self.start if self.start is not None else now

    @property
    def num_frames(self) -> int:
        return int(self.windows.shape[0])


@dataclasses.dataclass
class _ClientState:
    """Per-browser render state."""

    client: Any
    stats: Any = None
    dirty: bool = True
    last_change: float = 0.0
    scale: float = 1.0
    last_scaled: bool = False
    frame_interval_ema: float = 0.0
    render_s_ema: float = 0.0
    last_push: float = 0.0
    frames: int = 0
    last_size: tuple[int, int] = (0, 0)
    last_stats: float = 0.0
    last_rgb: np.ndarray | None = None
    last_k: int = -1
    """Audio frame shown last (-1: idle face)."""


class AvatarViewer:
    """The viewer: a viser server, its GUI, and the render thread.

    `avatar` follows the `avatar.engine.runtime.Avatar` API (render, feature_windows, K, width, height,
    fps, feature_meta, train_viewmats, train_blink, background, feature_window).
    """

    def __init__(self, avatar, clips: ClipLibrary, host: str = "127.0.0.1", port: int = 0,
                 label: str = "avatar"):
        import torch

        self.avatar = avatar
        self.clips = clips
        self._torch = torch
        self._device = _avatar_device(avatar)
        self._lock = threading.RLock()
        self._clients: dict[int, _ClientState] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._play: _Playback | None = None
        self._play_nonce = 0
        self._prepared: dict[str, Any] = {}
        self._extractor = None
        self.last_error: str | None = None
        self.feature_warning: str | None = None

        V = np.asarray(_to_numpy(avatar.train_viewmats), np.float64)  # [N, 4, 4]
        self._home_index = representative_view(V)
        self._home_viewmat = V[self._home_index]
        self._K = np.asarray(_to_numpy(avatar.K), np.float64)  # [3, 3]
        self.home: HomeCamera = home_camera(self._home_viewmat, self._K, int(avatar.height))
        self._pivot = _head_pivot(avatar, self.home.look_at)  # [3] head frame
        blink = np.asarray(_to_numpy(avatar.train_blink), np.float64)
        self._default_blink = float(np.clip(np.median(blink), 0.0, 1.0)) if blink.size else 0.0
        self._idle_window = self._silence_window()  # [1, W, D]
        self._centres = _gaussian_centres(avatar)  # [G, 3] or None

        import viser

        self.server = viser.ViserServer(host=host, port=port, label=label, verbose=False)
        self.host = host
        self.port = int(self.server.get_port())
        try:
            self._install_upload_limit()
            self._setup_scene()
            self._build_gui()
        except BaseException:
            self.server.stop()
            raise
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)
        self._thread = threading.Thread(target=self._render_loop, name="avatar-view-render", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop rendering, close the server, delete uploads. Safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10.0)
        self.server.stop()
        self.clips.close()

    def playback_time(self) -> float | None:
        """Seconds of audio played so far by the server clock (None when not playing)."""
        p = self._play
        if p is None:
            return None
        now = time.monotonic()
        return now - p.clock_start(now)

    def play(self, label: str) -> None:
        """Start speaking clip `label` (also what the Play button does).

        Sync: every browser gets the clip as `<audio autoplay>`. Its `playing` event clicks the
        hidden "audio sync" button (provisional clock start); after that the browser clicks again
        each time the element's own clock `currentTime` passes a mark (SYNC_MARK_S, then every
        SYNC_PERIOD_S). A click reaches the server late by a positive, variable delay (websocket,
        a busy event loop), so the start estimate is the minimum of (arrival - mark) over the
        marks, as NTP keeps its least-delayed sample. The first browser to report drives the clock.
        Decoding a data: URL can take half a second in a busy browser, so starting the clock when
        the element is SENT would put the face ahead of the voice by that much.
        """
        windows = self._prepare(label)
        clip = self.clips.get(label)
        self._play_nonce += 1
        sync_id = self._sync_button._impl.uuid
        audio = (f'<audio id="avatar-audio" autoplay preload="auto" data-nonce="{self._play_nonce}" '
                 f'onplaying="{_SYNC_JS.format(sync_id=sync_id, mark=SYNC_MARK_S, period=SYNC_PERIOD_S)}" '
                 f'src="{clip.data_url()}"></audio>')
        self._play = _Playback(clip=clip, windows=windows, sent=time.monotonic())
        self._audio_html.content = f"{self._hide_sync_css}{audio}"
        self._set_status(f"playing {label} ({clip.duration:.1f} s)"
                         + (f" — {self.feature_warning}" if self.feature_warning else ""))
        self._mark_all_dirty()

    def _on_audio_started(self, client_id: int | None) -> None:
        """Sync click from a browser: click 1 = `playing` fired (audio time ~0); click k >= 2 =
        audio time SYNC_MARK_S + (k - 2) * SYNC_PERIOD_S."""
        p = self._play
        if p is None:
            return
        if p.sync_client is None:
            p.sync_client = client_id
        elif client_id != p.sync_client:
            return  # another browser's clock
        now = time.monotonic() - AUDIO_REPORT_LATENCY_S
        p.sync_clicks += 1
        if p.sync_clicks == 1:
            if p.start is None:
                p.start = now
            return
        estimate = now - (SYNC_MARK_S + (p.sync_clicks - 2) * SYNC_PERIOD_S)
        p.start = estimate if p.sync_clicks == 2 else min(p.start, estimate)

    def stop_playback(self) -> None:
        self._play = None
        self._audio_html.content = ""
        self._mark_all_dirty()

    def add_upload(self, name: str, content: bytes) -> str:
        """Validate + store an upload, add it to the clip list, select it; returns its label."""
        clip = self.clips.add_upload(name, content)
        self._clip_dropdown.options = tuple(self.clips.labels)
        self._clip_dropdown.value = clip.label
        return clip.label

    # ------------------------------------------------------------------ setup

    def _silence_window(self):
        """[1, W, D] feature window shown when nothing plays: the closed-mouth face.

        Preferred: the training clip's silent closed-mouth row (`avatar.engine.speak.training_stats`, the
        row `avatar speak` uses for pauses); else the extractor's features of digital silence;
        else zeros.
        """
        torch = self._torch
        fps = float(self.avatar.fps)
        W, D = int(self.avatar.feature_window), int(self.avatar.feature_dim if hasattr(self.avatar, "feature_dim")
                                                     else self.avatar.feature_meta.get("dim", 0))
        try:
            fn = self._feature_fn()
        except AvatarError:
            fn = None
        try:
            from avatar.engine.speak import training_stats

            row = training_stats(self.avatar, fn).silent_row  # [D] or None
            if row is not None:
                return torch.as_tensor(np.asarray(row, np.float32), device=self._device).view(1, 1, -1).expand(1, W, -1)
        except (ImportError, AvatarError):
            pass
        if fn is not None:
            try:
                n = int(2 * fps)
                feats = fn(np.zeros(SAMPLE_RATE * 2, np.float32), n, fps)  # [N, D]
                win = self.avatar.feature_windows(torch.as_tensor(feats, device=self._device))  # [N, W, D]
                return win[n // 2: n // 2 + 1]
            except AvatarError:
                pass
        return torch.zeros(1, W, D, device=self._device)

    def _feature_fn(self):
        """(wav16k [T], num_frames, fps) -> [num_frames, D]: the extractor the model was trained with.

        Uses `avatar speak`'s choice (`avatar.engine.speak.feature_fn_for`, which also knows the tiny test
        model's synthetic feature) and falls back to the preprocess extractor.
        """
        if self._extractor is None:
            meta = dict(self.avatar.feature_meta)
            try:
                from avatar.engine.speak import feature_fn_for
            except ImportError:
                from avatar.features.extract import FeatureExtractor

                ex = FeatureExtractor.from_meta(meta)
                self._extractor = lambda wav, n, fps: ex(wav, n, fps)[0]
            else:
                self._extractor = feature_fn_for(meta)
        return self._extractor

    def _prepare(self, label: str):
        """[N, W, D] feature windows for clip `label` (computed once).

        A model trained on features that cannot be computed for new audio (imported ones) still
        plays the clip, with the silent face, and says so in the status line.
        """
        if label in self._prepared:
            return self._prepared[label]
        from avatar.features.extract import frames_for_duration

        clip = self.clips.get(label)
        fps = float(self.avatar.fps)
        n = max(1, frames_for_duration(clip.wav.shape[0], fps))
        try:
            fn = self._feature_fn()
        except AvatarError as err:
            self.feature_warning = f"no lip sync for new audio: {err}"
            windows = self._idle_window.expand(n, -1, -1)  # [N, W, D]
        else:
            feats = fn(clip.wav, n, fps)  # [N, D]
            windows = self.avatar.feature_windows(self._torch.as_tensor(np.asarray(feats, np.float32), device=self._device))
        self._prepared[label] = windows
        return windows

    def _install_upload_limit(self) -> None:
        """Refuse oversized uploads when the transfer is announced, before its bytes are buffered.

        viser 1.1.1 buffers any upload in memory whole; its handlers for the announce / part
        messages are registered first, so ours run right after and drop the transfer state
        (later parts are then ignored by viser).
        """
        from viser import _messages as vm

        gui = self.server.gui
        limit = self.clips.max_upload_bytes
        ws = self.server._websock_server

        def on_start(client_id, msg) -> None:
            if msg.size_bytes > limit:
                gui._current_file_upload_states.pop(msg.transfer_uuid, None)
                # End the browser's upload spinner (it waits for acks of every byte); the red
                # notification below says why the file was refused.
                with self._lock:
                    st = self._clients.get(client_id)
                if st is not None:
                    st.client._websock_connection.queue_message(vm.FileTransferPartAck(
                        source_component_uuid=msg.source_component_uuid, transfer_uuid=msg.transfer_uuid,
                        transferred_bytes=msg.size_bytes, total_bytes=msg.size_bytes))
                self._notify(client_id, "Upload refused",
                             f"{_display(msg.filename)} is {format_bytes(msg.size_bytes)}, over the "
                             f"{format_bytes(limit)} limit (--max-upload-mb)")

        def on_part(client_id, msg) -> None:
            st = gui._current_file_upload_states.get(msg.transfer_uuid)
            if st is not None and st["transferred_bytes"] > limit:
                gui._current_file_upload_states.pop(msg.transfer_uuid, None)

        ws.register_handler(vm.FileTransferStartUpload, on_start)
        ws.register_handler(vm.FileTransferPart, on_part)

    def _setup_scene(self) -> None:
        h = self.home
        self.server.scene.set_up_direction(h.up)
        ic = self.server.initial_camera
        ic.up = h.up
        ic.position = h.position
        ic.look_at = h.look_at
        ic.fov = h.fov
        self._points = None
        if self._centres is not None:
            pts = self._centres.astype(np.float32)  # [G, 3]
            extent = float(np.linalg.norm(pts.max(0) - pts.min(0))) if len(pts) else 1.0
            self._points = self.server.scene.add_point_cloud(
                "/gaussian_centres", points=pts, colors=(255, 80, 40), point_size=extent * 0.0025,
                point_shape="circle", visible=False)

    def _build_gui(self) -> None:
        gui = self.server.gui
        with gui.add_folder("Audio"):
            labels = self.clips.labels
            self._clip_dropdown = gui.add_dropdown("Clip", tuple(labels) or ("(none)",),
                                                   hint="clips from --audio-dir and uploads")
            self._upload = gui.add_upload_button(
                "Upload audio", icon=None, mime_type="audio/*",
                hint=f"wav/mp3/flac/ogg/m4a, up to {format_bytes(self.clips.max_upload_bytes)}")
            self._play_button = gui.add_button("Play")
            self._stop_button = gui.add_button("Stop")
            self._status = gui.add_markdown("")
            self._audio_html = gui.add_html("")
            # Not for people: clicked by the <audio> element's `playing` handler (see play()).
            self._sync_button = gui.add_button("audio sync")
            self._hide_sync_css = f"<style>div:has(> [id=\"{self._sync_button._impl.uuid}\"]) {{display: none}}</style>"
            self._hide_sync = gui.add_html(self._hide_sync_css)
        with gui.add_folder("Head"):
            self._yaw = gui.add_slider("Yaw (deg)", -60.0, 60.0, 1.0, 0.0)
            self._pitch = gui.add_slider("Pitch (deg)", -45.0, 45.0, 1.0, 0.0)
            self._roll = gui.add_slider("Roll (deg)", -45.0, 45.0, 1.0, 0.0)
            self._blink = gui.add_slider("Blink", 0.0, 1.0, 0.01, round(self._default_blink, 2))
            self._lip = gui.add_slider("Lip scale", 0.0, 2.0, 0.05, 1.0)
        with gui.add_folder("View"):
            full = int(self.avatar.height)
            hi = max(64, min(1024, full * 2))
            self._res = gui.add_slider("Resolution (px)", 64, hi, 16, int(min(full, 512) // 16 * 16),
                                       hint="render height; the adaptive factor lowers it while moving")
            self._adaptive = gui.add_checkbox("Adaptive resolution", True)
            self._torso = gui.add_checkbox("Torso", True)
            self._background = gui.add_checkbox("Background plate", True)
            self._show_centres = gui.add_checkbox("Gaussian centres", False, disabled=self._points is None)
            self._reset = gui.add_button("Reset camera")

        for h in (self._blink, self._lip, self._res, self._adaptive, self._torso, self._background):
            h.on_update(lambda _e: self._mark_all_dirty())
        for h in (self._yaw, self._pitch, self._roll):
            h.on_update(lambda _e: self._on_head_offset())

        @self._show_centres.on_update
        def _(_e) -> None:
            if self._points is not None:
                self._points.visible = bool(self._show_centres.value)

        @self._reset.on_click
        def _(e) -> None:
            if e.client is not None:
                self._reset_camera(e.client)

        @self._play_button.on_click
        def _(e) -> None:
            label = self._clip_dropdown.value
            if label not in self.clips.labels:
                self._notify_client(e.client, "No clip", "choose a clip or upload one first")
                return
            self._set_status(f"preparing {label} ...")
            try:
                self.play(label)
            except AvatarError as err:
                self._set_status("")
                self._notify_client(e.client, "Cannot play", str(err))

        @self._sync_button.on_click
        def _(e) -> None:
            self._on_audio_started(e.client_id)

        @self._stop_button.on_click
        def _(_e) -> None:
            self.stop_playback()
            self._set_status("stopped")

        @self._clip_dropdown.on_update
        def _(e) -> None:
            label = self._clip_dropdown.value
            if label in self.clips.labels and label not in self._prepared:
                self._set_status(f"preparing {label} ...")
                try:
                    self._prepare(label)
                    self._set_status(f"ready: {label} ({self.clips.get(label).duration:.1f} s)"
                                     + (f" — {self.feature_warning}" if self.feature_warning else ""))
                except AvatarError as err:
                    self._set_status("")
                    self._notify_client(e.client, "Cannot use clip", str(err))

        @self._upload.on_upload
        def _(e) -> None:
            f = self._upload.value
            try:
                label = self.add_upload(f.name, f.content)
                self._set_status(f"uploaded: {label}")
            except AvatarError as err:
                self._notify_client(e.client, "Upload refused", str(err))

    # ------------------------------------------------------------------ clients

    def _on_connect(self, client) -> None:
        st = _ClientState(client=client, last_change=time.monotonic())
        st.stats = client.gui.add_markdown("*connecting ...*", order=-100.0)

        @client.camera.on_update
        def _(_cam) -> None:
            st.dirty = True
            st.last_change = time.monotonic()
            self._wake.set()

        # Start every browser at the training camera. viser's `initial_camera` normally does this,
        # but a browser's first camera report can still carry the client's default pose.
        self._reset_camera(client)
        with self._lock:
            self._clients[client.client_id] = st
        self._wake.set()

    def _on_disconnect(self, client) -> None:
        with self._lock:
            self._clients.pop(client.client_id, None)

    def _reset_camera(self, client) -> None:
        h = self.home
        cam = client.camera
        with client.atomic():
            cam.fov = h.fov
            cam.up_direction = h.up
            cam.position = h.position
            cam.look_at = h.look_at

    def _head_offset(self) -> np.ndarray:
        """[4, 4] head motion (head frame) of the yaw/pitch/roll sliders; views render `viewmat @ M`."""
        return head_offset_matrix(self._yaw.value, self._pitch.value, self._roll.value,
                                  self._home_viewmat[:3, :3], self._pivot)

    def _on_head_offset(self) -> None:
        if self._points is not None:  # the centres turn with the rendered head
            from avatar.viewer.camera import matrix_to_quat

            M = self._head_offset()
            with self.server.atomic():
                self._points.wxyz = matrix_to_quat(M[:3, :3])
                self._points.position = M[:3, 3]
        self._mark_all_dirty()

    def _mark_all_dirty(self) -> None:
        now = time.monotonic()
        with self._lock:
            for st in self._clients.values():
                st.dirty = True
                st.last_change = now
        self._wake.set()

    def _set_status(self, text: str) -> None:
        self._status.content = html.escape(text) if text else ""

    def _notify_client(self, client, title: str, body: str) -> None:
        self.last_error = body
        self._set_status(f"{title}: {body}")
        if client is not None:
            client.add_notification(title, body, color="red", auto_close_seconds=8.0)

    def _notify(self, client_id: int, title: str, body: str) -> None:
        with self._lock:
            st = self._clients.get(client_id)
        self._notify_client(None if st is None else st.client, title, body)

    # ------------------------------------------------------------------ rendering

    def _render_loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            p = self._play
            if p is not None and now - p.clock_start(now) > p.clip.duration:
                self.stop_playback()
                self._set_status(f"finished {p.clip.label}")
                p = None
            with self._lock:
                todo = [st for st in self._clients.values()
                        if st.dirty or (st.last_scaled and now - st.last_change > SETTLE_S)
                        or (p is not None and self._play_frame(p, st, now) != st.last_k)
                        or (p is None and st.last_k != -1)]
            for st in todo:
                if self._stop.is_set():
                    return
                try:
                    self._render_client(st, p)
                except Exception as err:  # noqa: BLE001 - keep serving the other browsers
                    self.last_error = f"{type(err).__name__}: {err}"
                    st.dirty = False
                    try:
                        st.stats.content = f"**render error:** {html.escape(self.last_error)}"
                    except Exception:  # noqa: BLE001
                        pass
            if not todo:
                self._wake.wait(0.005 if p is not None else 0.05)
                self._wake.clear()

    def _play_frame(self, play: _Playback, st: _ClientState, now: float) -> int:
        """Audio frame to render now: the one heard when this render reaches the browser."""
        t_audio = max(0.0, now - play.clock_start(now) + min(st.render_s_ema, MAX_LATENCY_COMP_S))
        return int(np.clip(math.floor(t_audio * float(self.avatar.fps)), 0, play.num_frames - 1))

    def _render_client(self, st: _ClientState, play: _Playback | None) -> None:
        torch = self._torch
        cam = st.client.camera
        try:
            wxyz, pos, fov = np.array(cam.wxyz), np.array(cam.position), float(cam.fov)
            aspect = float(cam.aspect)
        except (AssertionError, ZeroDivisionError):
            return  # no camera message from this browser yet
        if not (math.isfinite(aspect) and aspect > 0):
            return
        st.dirty = False
        now = time.monotonic()
        moving = play is not None or now - st.last_change < SETTLE_S
        scale = st.scale if (moving and self._adaptive.value) else 1.0
        height = max(32, int(round(self._res.value * scale / 2)) * 2)
        width = min(MAX_RENDER_WIDTH, max(32, int(round(height * aspect / 2)) * 2))

        # Head pose (training pose moved by the sliders) and the free-view camera given apart, so the
        # torso and the background plate follow the camera as one body (Avatar.render(camera=...)).
        H = self._home_viewmat @ self._head_offset()
        C = viewmat_from_viser(wxyz, pos) @ np.linalg.inv(self._home_viewmat)
        K = intrinsics_from_fov(fov, width, height)
        if play is not None:
            k = self._play_frame(play, st, now)
            feats = play.windows[k: k + 1]  # [1, W, D]
        else:
            k = -1
            feats = self._idle_window  # [1, W, D]
        st.last_k = k
        dev = self._device
        bg: Any = "plate" if self._background.value else torch.ones(3, device=dev)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.avatar.render(
                feats, torch.as_tensor(H, dtype=torch.float32, device=dev)[None],
                torch.tensor([float(self._blink.value)], device=dev),
                camera=torch.as_tensor(C, dtype=torch.float32, device=dev)[None],
                K=torch.as_tensor(K, dtype=torch.float32, device=dev), width=width, height=height,
                background=bg, lip_scale=float(self._lip.value), torso=bool(self._torso.value))
            rgb = (out["rgb"][0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()  # [H, W, 3]
        dt = time.perf_counter() - t0
        if self._stop.is_set() or st.client.client_id not in self._clients:
            return  # the browser left while we rendered
        st.client.scene.set_background_image(rgb, format="jpeg", jpeg_quality=88)
        st.last_rgb = rgb

        # Adaptive resolution towards the target frame time.
        if moving and self._adaptive.value:
            target = 1.0 / (TARGET_FPS_PLAYING if play is not None else TARGET_FPS_MOVING)
            st.scale = adapt_scale(st.scale, dt, target)
        st.last_scaled = scale < 0.999
        st.render_s_ema = dt if st.render_s_ema == 0 else 0.8 * st.render_s_ema + 0.2 * dt
        t = time.monotonic()
        if st.last_push:
            interval = t - st.last_push
            st.frame_interval_ema = interval if st.frame_interval_ema == 0 else 0.8 * st.frame_interval_ema + 0.2 * interval
        st.last_push = t
        st.frames += 1
        st.last_size = (width, height)
        if t - st.last_stats > 0.5:
            st.last_stats = t
            fps = 1.0 / st.frame_interval_ema if st.frame_interval_ema > 0 and moving else 0.0
            fps_txt = f"{fps:.1f} fps" if fps > 0 else "idle"
            st.stats.content = (f"**{fps_txt}** · {width}×{height} · render {st.render_s_ema * 1000:.0f} ms"
                                + (f" · frame {k + 1}/{play.num_frames}" if play is not None else ""))


# ---------------------------------------------------------------------- helpers


def adapt_scale(scale: float, render_s: float, target_s: float, gain: float = 0.7) -> float:
    """Next resolution factor (of the height) after a frame that took `render_s` at `scale`.

    Render cost grows with the pixel count, i.e. with scale^2, so the scale that meets the target
    is scale * sqrt(target / measured); `gain` < 1 damps the step so timing noise does not make
    the resolution flicker. Clamped to [MIN_SCALE, 1].
    """
    step = math.sqrt(target_s / max(render_s, 1e-4)) ** gain
    return float(np.clip(scale * step, MIN_SCALE, 1.0))

# Inline `onplaying` handler of the <audio> element (an HTML attribute, so no <script> is needed):
# click the sync button now, and again once the element's clock reaches the mark.
_SYNC_JS = ("var a=this, b=document.getElementById('{sync_id}'); if (!b) return; b.click(); var next={mark}; "
            "(function f() {{ if (a.paused || a.ended) return; "
            "if (a.currentTime >= next) {{ b.click(); next += {period}; }} setTimeout(f, 4); }})();")


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _avatar_device(avatar):
    import torch

    dev = getattr(avatar, "device", None)
    if dev is not None:
        return torch.device(dev)
    bg = getattr(avatar, "background", None)
    return bg.device if hasattr(bg, "device") else torch.device("cpu")


def _gaussian_centres(avatar) -> np.ndarray | None:
    """[G, 3] Gaussian centres in the head frame (canonical, undeformed), or None if unavailable.

    Reads `avatar.model`'s head/mouth sets (head frame) and its torso set, which lives in the
    camera frame of `ref_viewmat` (avatar/model/avatar_model.py) and is mapped back to the head frame.
    """
    model = getattr(avatar, "model", None)
    try:
        import torch

        with torch.no_grad():
            parts = [model.head.means, model.mouth.means]
            if len(model.torso) > 0:
                inv = torch.linalg.inv(model.ref_viewmat)  # [4, 4] reference camera -> head
                parts.append(model.torso.means @ inv[:3, :3].T + inv[:3, 3])
            return torch.cat(parts).float().cpu().numpy()  # [G, 3]
    except Exception:  # noqa: BLE001 - the overlay is optional; other Avatar implementations may lack it
        return None


def _head_pivot(avatar, fallback: np.ndarray) -> np.ndarray:
    """[3] point the head offset sliders turn about: the centre of the model's motion box."""
    c = getattr(getattr(avatar, "model", None), "center", None)
    if c is None:
        return fallback
    return np.asarray(_to_numpy(c), np.float64).reshape(3)
