"""`AvatarWorker`: the threads of one loaded avatar that run every session of that avatar through the engine.

One model per avatar, shared by all its sessions: the worker owns the `Avatar` (avatar/engine/runtime.py) and
the only thread that renders with it. Each session has its own `Speaker` (same config, its own seed) and its
own streaming `FrameEngine` (`Speaker.new_engine(streaming=True)`: features, silence gate, windows, motion
track) — the same engine `avatar speak --stream` runs, so a served avatar moves and closes its mouth exactly
like a rendered file; nothing here maps audio to frames itself.

Two threads, so that features and rendering overlap (as `Speaker.run` streams): the engine thread commits every
session's due audio (`Session.pump`), pushes it into the session's engine and hands the frames that became final
to the render thread (`Session.add_frames`); the render thread renders them (`Session.next_pending`, one batch
per session per pass) if they can still be ready by their play time (`Session.play_time`) at the measured cost
of one frame; the others are dropped (counted). Frames of a session nobody watches yet are not rendered. After
an interrupt, the frames after the cut are rendered again with the silence window first
(`Session.take_rerender`).

The worker's phone decoding (the default extractor's pocketsphinx) runs in a helper process
(`avatar.features.phone_process.phones_in_helper_process`): pocketsphinx holds the GIL for a whole decode (~65 ms
per 5-frame segment on 2 cores), which stopped the event loop thread that encodes and sends every session's
frames and audio. The compiled raster kernels release the GIL themselves.

Admission control reads `demand_s`: the compute one talking session needs per second of real time (feature
extraction of one second of speech + fps x one frame's render), measured at start-up (`calibrate`) and kept
up to date from the live timings. Scaling out: the worker is the unit that would move to its own process
(one per GPU, sessions routed by avatar); sessions only exchange audio arrays and uint8 frames with it.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np

from avatar.core.audio import SAMPLE_RATE
from avatar.serve.session import Session

_EWMA = 0.1


def stamp_frame(rgb: np.ndarray, k: int, bits: int = 16) -> np.ndarray:
    """Write frame index k into the top eighth of the frame as `bits` black/white blocks (bench/test A/V
    alignment only; `read_stamp` inverts it)."""
    h, w = rgb.shape[:2]
    bw = w // bits
    out = rgb.copy()
    for b in range(bits):
        out[: max(2, h // 8), b * bw:(b + 1) * bw, :3] = 255 if (k >> b) & 1 else 0
    return out


def read_stamp(rgb: np.ndarray, bits: int = 16) -> int:
    """Inverse of `stamp_frame` on a decoded (compressed) frame."""
    h, w = rgb.shape[:2]
    bw = w / bits
    code = 0
    for b in range(bits):
        x0, x1 = int(b * bw + 0.3 * bw), int((b + 1) * bw - 0.3 * bw)
        if rgb[: max(1, h // 16), x0:max(x1, x0 + 1), :3].mean() > 128:
            code |= 1 << b
    return code


class AvatarWorker(threading.Thread):
    """The render thread of one avatar (see the module docstring)."""

    def __init__(self, name: str, avatar, speak_cfg):
        super().__init__(name=f"avatar-serve-{name}", daemon=True)
        from avatar.engine import Speaker

        self.avatar_name = name
        self.avatar = avatar
        self.cfg = speak_cfg
        self.base = Speaker(avatar, speak_cfg)
        self.fps = self.base.fps
        # what `avatar speak` would write with the same options (SpeakConfig size / scale / fit)
        self.width = int(getattr(self.base, "width", avatar.width))
        self.height = int(getattr(self.base, "height", avatar.height))
        st = self.base.stats
        sw = getattr(st, "silent_window", None)
        self.silent_window = np.asarray(sw if sw is not None else self.base.silence_window(), np.float32)  # [W, D]
        self.delay_s = self.base.delay_s(streaming=True)
        self.look_frames = self.base.window_look()
        self.render_s = 0.03  # one frame, seconds (EWMA)
        self.feature_s = 0.2  # per second of audio, seconds (EWMA)
        self.sessions: list[Session] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._seq = 0
        self._in_interrupts = False
        self._ready = threading.Event()  # the engine thread made frames ready
        self.busy_s = 0.0

    # -- sessions ------------------------------------------------------------------------------------
    def new_session(self, buffer_ms: float, ahead_ms: float, stamp: bool = False) -> Session:
        """A session on this avatar with its own Speaker (own seed: own blinks and head motion) and engine."""
        from avatar.engine import Speaker

        with self._lock:
            self._seq += 1
            seed = self.cfg.seed + self._seq
        sp = Speaker(self.avatar, dataclasses.replace(self.cfg, seed=seed), feature_fn=self.base.feature_fn,
                     stats=self.base.stats)
        s = Session(self.avatar_name, self.fps, self.delay_s + buffer_ms / 1000.0, self.look_frames,
                    ahead_ms / 1000.0, (self.width, self.height), stamp=stamp)
        s.speaker = sp
        s.engine = sp.new_engine(streaming=True)
        with self._lock:
            self.sessions.append(s)
        return s

    def remove(self, s: Session) -> None:
        s.closed = True
        with self._lock:
            if s in self.sessions:
                self.sessions.remove(s)
        s.engine = None
        s.speaker = None
        with s._lock:
            s.unsent.clear()
            s.pending.clear()

    @property
    def demand_s(self) -> float:
        """Compute seconds one talking session needs per second of real time."""
        return self.feature_s + self.fps * self.render_s

    # -- timing ---------------------------------------------------------------------------------------
    def calibrate(self, seconds: float = 1.0) -> dict:
        """Measure one frame's render and one second of speech-like audio through the features (warm-up
        first), to start admission control from real numbers."""
        eng = self.base.new_engine(streaming=True)
        rng = np.random.default_rng(0)
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        wav = (0.2 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
               + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
        eng.push(wav)
        eng.ready_count()  # warm-up (extractor, VAD)
        eng2 = self.base.new_engine(streaming=True)
        t0 = time.perf_counter()
        step = SAMPLE_RATE // 25
        frames = []
        for i in range(0, wav.size, step):
            eng2.push(wav[i:i + step])
            n = eng2.ready_count()
            if n:
                frames.append(eng2.take(n))
        self.feature_s = (time.perf_counter() - t0) / seconds
        b = frames[0] if frames else eng.take(max(1, eng.ready_count()))
        self._render(b.windows[:1], b.viewmats[:1], b.blinks[:1], None if b.cameras is None else b.cameras[:1])
        t0 = time.perf_counter()
        for _ in range(3):
            self._render(b.windows[:1], b.viewmats[:1], b.blinks[:1], None if b.cameras is None else b.cameras[:1])
        self.render_s = (time.perf_counter() - t0) / 3
        return {"render_ms": round(1000 * self.render_s, 1), "features_s_per_s": round(self.feature_s, 3),
                "demand_s_per_s": round(self.demand_s, 3)}

    def _render(self, windows, viewmats, blinks, cameras) -> np.ndarray:
        cams = cameras if self.base.motion.moving_camera else None
        rgb = self.base.render(windows, viewmats, blinks, cams)  # [B, H, W, 3|4] uint8
        if rgb.shape[1] % 2 or rgb.shape[2] % 2:  # the video encoders need even sizes
            rgb = rgb[:, : rgb.shape[1] // 2 * 2, : rgb.shape[2] // 2 * 2]
        return rgb

    # -- the loop -------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        """The render thread; it starts the engine thread (`_engine_loop`) and stops it on the way out."""
        feeder = threading.Thread(target=self._engine_loop, name=f"{self.name}-engine", daemon=True)
        feeder.start()
        try:
            self._render_loop()
        finally:
            self._halt.set()
            feeder.join(timeout=5.0)

    def _engine_loop(self) -> None:
        """Audio -> frame inputs for every session (`_feed`), in its own thread so that the next segment's
        features are computed while this worker renders (as `Speaker.run` streams)."""
        from avatar.features.phone_process import phones_in_helper_process

        # pocketsphinx holds the GIL while it decodes: out of process, the event loop and the render thread
        # keep going meanwhile
        with phones_in_helper_process(self.avatar.feature_meta):
            while not self._halt.is_set():
                with self._lock:
                    sessions = list(self.sessions)
                for s in sessions:
                    if s.closed or s.engine is None:
                        continue
                    try:
                        self._feed(s)
                    except Exception as e:  # noqa: BLE001 - one session's failure must not stop the others
                        s.error = f"{type(e).__name__}: {e}"
                        s.closed = True
                self._halt.wait(0.005)

    def _render_loop(self) -> None:
        """Render what the engine thread made ready: interrupts first, then one batch per session per pass."""
        while not self._halt.is_set():
            with self._lock:
                sessions = list(self.sessions)
            t0 = time.perf_counter()
            did = False
            self._interrupts()
            for s in sessions:
                if s.closed:
                    continue
                item = s.next_pending()
                if item is None:
                    continue
                did = True
                try:
                    self._render_frames(s, *item, silent=False)
                except Exception as e:  # noqa: BLE001
                    s.error = f"{type(e).__name__}: {e}"
                    s.closed = True
            self.busy_s += time.perf_counter() - t0
            if not did:
                self._ready.wait(0.005)
                self._ready.clear()

    def _interrupts(self) -> None:
        """Re-render the frames cut by an interrupt, in any session, before anything else (barge-in latency)."""
        if self._in_interrupts:
            return
        self._in_interrupts = True
        try:
            with self._lock:
                sessions = list(self.sessions)
            for s in sessions:
                redo = s.take_rerender() if not s.closed else []
                if redo:
                    self._render_frames(s, redo, s.epoch, silent=True)
        finally:
            self._in_interrupts = False

    def _feed(self, s: Session) -> None:
        """Commit the session's due audio into its engine and hand the frames that became final to the render
        thread (`Session.add_frames`)."""
        eng = s.engine
        for x16, arrival in s.pump(time.monotonic()):
            t0 = time.perf_counter()
            eng.push(x16)
            n = eng.ready_count()
            if arrival is not None:
                dt = time.perf_counter() - t0
                self.feature_s += _EWMA * (dt / max(x16.size / SAMPLE_RATE, 1e-3) - self.feature_s)
            if n <= 0:
                continue
            s.add_frames(eng.take(n), arrival, self.silent_window)
            self._ready.set()
        s.forget_before(int(np.floor((time.monotonic() - s.t0 - s.delay_s) * s.fps)))

    def _render_frames(self, s: Session, ks: list[int], epoch: int, silent: bool) -> None:
        for k in ks:
            item = s.unsent.get(k)
            if item is None:
                continue
            win, vm, blink, cam, arrival, speech = item
            if silent:
                win, speech = self.silent_window, 0.0
                s.set_silent(k, item, win)
            if not s.consumer:
                continue  # nobody watching yet
            if not silent:
                self._interrupts()
                if epoch < s.epoch and k >= s.mute_from:
                    continue  # an interrupt just cut it: its re-render sent it silent
            if time.monotonic() + self.render_s > s.play_time(k):
                s.frames_dropped += 1  # it could not be ready by its play time
                continue
            t0 = time.perf_counter()
            rgb = self._render(win[None], vm[None], np.asarray([blink], np.float32),
                               None if cam is None else cam[None])[0]
            self.render_s += _EWMA * (time.perf_counter() - t0 - self.render_s)
            if s.stamp:
                rgb = stamp_frame(rgb, k)
            s.frames_rendered += 1
            loop, q = s.loop, s.video_q
            if loop is not None and q is not None and not s.closed:
                try:
                    loop.call_soon_threadsafe(q.put_nowait, (k, rgb, epoch, speech, arrival))
                except RuntimeError:  # the loop has closed (server stopping)
                    return
