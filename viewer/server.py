"""`avatar view`: a viser web viewer that renders a trained avatar server-side for each browser.

How it works
- The viser 3D world is the avatar's head frame (viewer/camera.py). Each browser's orbit camera is
  converted to a head-frame view matrix and intrinsics, the avatar is rendered with
  `Avatar.render` on the server, and the frame is pushed to that browser as its scene background
  image (`client.scene.set_background_image`, the pattern nerfstudio's viewer uses). Scene objects
  viser draws itself (the Gaussian centres point cloud) are then exactly registered with it.
- The initial viser camera is the training camera (the training view closest to the mean pose),
  and "Reset camera" returns to it.
- Audio goes through the one inference engine: the chosen clip is decoded to 16 kHz and turned into
  the per-frame feature windows `avatar speak` renders (`Speaker.windows`: the run's extractor, the
  silence gate that closes the mouth in pauses, the closed-mouth training window), and frames are
  rendered and composited by `Speaker.render`. The idle face is the engine's silence window.
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
    matrix_to_quat,
    representative_view,
    viewmat_from_viser,
)
from avatar.viewer.clips import ClipLibrary, format_bytes
from avatar.viewer.clips import _safe_display_name as _display
from avatar.viewer.config import ViewerConfig
from avatar.viewer.state import (
    AUDIO_REPORT_LATENCY_S,
    MAX_LATENCY_COMP_S,
    MAX_RENDER_WIDTH,
    MIN_SCALE,
    SETTLE_S,
    SYNC_MARK_S,
    SYNC_PERIOD_S,
    TARGET_FPS_MOVING,
    TARGET_FPS_PLAYING,
    ClientState,
    Playback,
    adapt_scale,
    avatar_device,
    gaussian_centres,
    head_pivot,
    to_numpy,
)
from avatar.viewer.static import audio_element
from avatar.viewer.viser_compat import dom_id, install_upload_limit

from avatar.core.audio import SAMPLE_RATE
from avatar.errors import AvatarError

__all__ = ["MIN_SCALE", "AvatarViewer", "adapt_scale"]

class AvatarViewer:
    """The viewer: a viser server, its GUI, and the render thread.

    `avatar` is an `avatar.engine.Avatar`; every frame is made by the engine (`avatar.engine.Speaker`).
    `host`/`port` override `config`'s.
    """

    def __init__(self, avatar, clips: ClipLibrary, host: str | None = None, port: int | None = None,
                 label: str = "avatar", config: ViewerConfig | None = None):
        import torch

        cfg = self.config = config or ViewerConfig()
        host = cfg.host if host is None else host
        port = cfg.port if port is None else port
        self.avatar = avatar
        self.clips = clips
        self._torch = torch
        self._device = avatar_device(avatar)
        self._lock = threading.RLock()
        self._clients: dict[int, ClientState] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._play: Playback | None = None
        self._play_nonce = 0
        self._prepared: dict[str, Any] = {}
        self.last_error: str | None = None
        self.feature_warning: str | None = None
        self.speaker = self._make_speaker(cfg)
        # the size rule of `avatar speak` (issue 12): the source clip's height unless --size / --scale
        self.output_height = (int(avatar.output_frame(cfg.size, cfg.scale, "stretch").height)
                              if hasattr(avatar, "output_frame") else int(avatar.height))

        V = np.asarray(to_numpy(avatar.train_viewmats), np.float64)  # [N, 4, 4]
        self._home_index = representative_view(V)
        self._home_viewmat = V[self._home_index]
        self._K = np.asarray(to_numpy(avatar.K), np.float64)  # [3, 3]
        self.home: HomeCamera = home_camera(self._home_viewmat, self._K, int(avatar.height))
        self._pivot = head_pivot(avatar, self.home.look_at)  # [3] head frame
        blink = np.asarray(to_numpy(avatar.train_blink), np.float64)
        self._default_blink = float(np.clip(np.median(blink), 0.0, 1.0)) if blink.size else 0.0
        self._idle_window = self.speaker.silence_window()[None]  # [1, W, D] what speak renders for silence
        self._centres = gaussian_centres(avatar)  # [G, 3] or None

        import viser

        self.server = viser.ViserServer(host=host, port=port, label=label, verbose=False)
        self.host = host
        self.port = int(self.server.get_port())
        try:
            install_upload_limit(self.server, self.clips.max_upload_bytes, self._client_handle, self._refuse_upload)
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
        windows = self.prepare(label)
        clip = self.clips.get(label)
        self._play_nonce += 1
        audio = audio_element(clip.data_url(), self._play_nonce, dom_id(self._sync_button), SYNC_MARK_S, SYNC_PERIOD_S)
        self._play = Playback(clip=clip, windows=windows, sent=time.monotonic())
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

    def _make_speaker(self, cfg: ViewerConfig):
        """The engine for this avatar: speak's features, silence gate and compositing. A model trained on
        features that cannot be computed for new audio (imported ones) still plays clips, with the silent
        face, and says so in the status line."""
        from avatar.engine import SpeakConfig, Speaker
        from avatar.engine.features import feature_fn_for

        scfg = SpeakConfig(vad=cfg.vad, background="plate")
        try:
            fn = feature_fn_for(dict(self.avatar.feature_meta))
            self._can_featurise = True
        except AvatarError as err:
            self.feature_warning = f"no lip sync for new audio: {err}"
            self._can_featurise = False
            D = int(self.avatar.feature_dim)
            fn = (lambda wav, n, fps: np.zeros((n, D), np.float32))  # never used for clips (see prepare)
        return Speaker(self.avatar, scfg, feature_fn=fn)

    def prepare(self, label: str) -> np.ndarray:
        """[N, W, D] feature windows of clip `label` from the engine (computed once per clip)."""
        if label in self._prepared:
            return self._prepared[label]
        clip = self.clips.get(label)
        if self._can_featurise:
            windows = self.speaker.windows(clip.wav)
        else:
            n = max(1, int(round(clip.wav.shape[0] / SAMPLE_RATE * float(self.speaker.fps))))
            windows = np.repeat(self._idle_window, n, axis=0)
        self._prepared[label] = windows
        return windows

    def _client_handle(self, client_id: int):
        with self._lock:
            st = self._clients.get(client_id)
        return None if st is None else st.client

    def _refuse_upload(self, client_id: int, filename: str, size: int) -> None:
        self._notify(client_id, "Upload refused", f"{_display(filename)} is {format_bytes(size)}, over the "
                     f"{format_bytes(self.clips.max_upload_bytes)} limit (--max-upload-mb)")

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
        from avatar.viewer.gui import build_gui

        build_gui(self)

    # ------------------------------------------------------------------ clients

    def _on_connect(self, client) -> None:
        st = ClientState(client=client, last_change=time.monotonic())
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

    def _play_frame(self, play: Playback, st: ClientState, now: float) -> int:
        """Audio frame to render now: the one heard when this render reaches the browser."""
        t_audio = max(0.0, now - play.clock_start(now) + min(st.render_s_ema, MAX_LATENCY_COMP_S))
        return int(np.clip(math.floor(t_audio * float(self.avatar.fps)), 0, play.num_frames - 1))

    def _render_client(self, st: ClientState, play: Playback | None) -> None:
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
        bg: Any = "plate" if self._background.value else np.ones(3, np.float32)
        t0 = time.perf_counter()
        with torch.inference_mode():  # the engine's renderer and compositing, the viewer's camera
            rgb = self.speaker.render(feats, H[None], np.array([float(self._blink.value)], np.float32), C[None],
                                      K=K, width=width, height=height, background=bg,
                                      lip_scale=float(self._lip.value), torso=bool(self._torso.value))[0]  # [H, W, 3]
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
