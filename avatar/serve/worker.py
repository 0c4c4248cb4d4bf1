"""`AvatarWorker`: the threads of one loaded avatar that run every session of that avatar through the engine.

One model per avatar, shared by all its sessions: the worker owns the `Avatar` (avatar/engine/runtime.py) and
the only thread that renders with it. Each session has its own `Speaker` (same config, its own seed) and its
own streaming `FrameEngine` (`Speaker.new_engine(streaming=True)`: features, silence gate, windows, motion
track) — the same engine `avatar speak --stream` runs, so a served avatar moves and closes its mouth exactly
like a rendered file; nothing here maps audio to frames itself.

Threads, so that features and rendering overlap (as `Speaker.run` streams): the engine thread commits every
session's due audio (`Session.pump`), pushes it into the session's engine and hands the frames that became final
to the render threads (`Session.add_frames`). On the CPU there is one render thread per core torch uses, each
rendering whole frames with one torch thread (`render_threads`): frames are independent, and one frame split over
two cores waits at every operation for the slower core, which any other work on the box (the event loop, the
engine thread, the phone decoder) slows. Measured on 2 cores, the bench fixture at 128 px: one thread with two
torch threads 30.8 frames/s alone and 21.4 with a Python thread busy 20 % of the time beside it; two threads with
one torch thread each 45.7 and 39.3. The render threads take frames one at a time (`_next_job`: interrupts first,
then the frame due first) and render them if they can still be ready by their play time (`Session.play_time`) at
the measured cost of one frame; the others are dropped (counted). A session's frames leave in the order they were
handed out (`_Turnstile`, one per session: no session waits for another's render), so its track gets them in
order. Frames of a session nobody watches yet are not rendered. After an interrupt, the frames after the cut are
rendered again with the silence window first (`Session.take_rerender`).

The worker's phone decoding (the default extractor's pocketsphinx) runs in a helper process
(`avatar.features.phone_process.phones_in_helper_process`): pocketsphinx holds the GIL for a whole decode (~65 ms
per 5-frame segment on 2 cores), which stopped the event loop thread that encodes and sends every session's
frames and audio. The compiled raster kernels release the GIL themselves.

Admission control reads `demand_s`: the compute one talking session needs per second of real time (feature
extraction of one second of speech + fps x one frame's render / the render threads), measured at start-up
(`calibrate`) and kept up to date from the live timings. Scaling out: the worker is the unit that would move to
its own process (one per GPU, sessions routed by avatar); sessions only exchange audio arrays and uint8 frames
with it.
"""

from __future__ import annotations

import collections
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


class _Turnstile:
    """Tickets handed out in order; `wait(t)` returns once every ticket before t is `done` (or the worker stops)."""

    def __init__(self, halt: threading.Event):
        self._cv = threading.Condition()
        self._next = 0  # next ticket to hand out
        self._out = 0  # lowest ticket not done
        self._done: set[int] = set()
        self._halt = halt

    def take(self) -> int:
        with self._cv:
            t, self._next = self._next, self._next + 1
            return t

    def wait(self, t: int) -> None:
        with self._cv:
            while self._out < t and not self._halt.is_set():
                self._cv.wait(0.05)

    def done(self, t: int) -> None:
        with self._cv:
            self._done.add(t)
            while self._out in self._done:
                self._done.remove(self._out)
                self._out += 1
            self._cv.notify_all()


class AvatarWorker(threading.Thread):
    """The threads of one avatar (see the module docstring); this thread renders, and starts the others."""

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
        self._ready = threading.Event()  # the engine thread made frames ready
        self.busy_s = 0.0
        from avatar.engine.speaker import torch_threads_each

        self.render_threads = self.base.render_threads  # SpeakConfig.render_threads (--render-threads)
        self._torch_threads = torch_threads_each(self.render_threads)
        self._turns: dict[Session, _Turnstile] = {}  # per session: its frames leave in the order handed out
        self._jobs_lock = threading.Lock()
        self._jobs: dict[Session, collections.deque] = {}  # session -> (k, epoch, silent) handed out next
        self._urgent: list[Session] = []  # sessions with an interrupt's re-render queued

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
        """Compute seconds one talking session needs per second of real time (the render threads share its frames)."""
        return self.feature_s + self.fps * self.render_s / self.render_threads

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
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self._torch_threads)  # as a render thread renders (this thread's setting only)
        try:
            self._render(b.windows[:1], b.viewmats[:1], b.blinks[:1], None if b.cameras is None else b.cameras[:1])
            t0 = time.perf_counter()
            for _ in range(3):
                self._render(b.windows[:1], b.viewmats[:1], b.blinks[:1], None if b.cameras is None else b.cameras[:1])
            self.render_s = (time.perf_counter() - t0) / 3
        finally:
            torch.set_num_threads(before)
        return {"render_ms": round(1000 * self.render_s, 1), "render_threads": self.render_threads,
                "features_s_per_s": round(self.feature_s, 3),
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
        """A render thread; it starts the engine thread (`_engine_loop`) and the other render threads, and stops
        them on the way out."""
        others = [threading.Thread(target=self._engine_loop, name=f"{self.name}-engine", daemon=True)]
        others += [threading.Thread(target=self._render_loop, name=f"{self.name}-render{i}", daemon=True)
                   for i in range(1, self.render_threads)]
        for t in others:
            t.start()
        try:
            self._render_loop()
        finally:
            self._halt.set()
            for t in others:
                t.join(timeout=5.0)

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
        """One render thread: frames one at a time from `_next_job`, each rendered, dropped or skipped."""
        import torch

        torch.set_num_threads(self._torch_threads)
        while not self._halt.is_set():
            job = self._next_job()
            if job is None:
                self._ready.wait(0.005)
                self._ready.clear()
                continue
            s, k, epoch, silent, turn, ticket = job
            t0 = time.perf_counter()
            try:
                self._render_one(s, k, epoch, silent, turn, ticket)
            except Exception as e:  # noqa: BLE001 - one session's failure must not stop the others
                s.error = f"{type(e).__name__}: {e}"
                s.closed = True
            finally:
                turn.done(ticket)
            self.busy_s += time.perf_counter() - t0

    def _next_job(self) -> tuple[Session, int, int, bool, _Turnstile, int] | None:
        """The next frame to render, with its session's turnstile and its ticket there: an interrupt's re-render
        (silent) before anything else, then the frame due first of all sessions (earliest deadline first: a session
        whose batch became final late is not kept waiting behind another's frames that have time), each session's
        frames in order."""
        with self._jobs_lock:
            with self._lock:
                sessions = [s for s in self.sessions if not s.closed]
            for gone in [x for x in self._jobs.keys() | self._turns.keys() if x not in sessions]:
                self._jobs.pop(gone, None)
                self._turns.pop(gone, None)
            self._urgent = [s for s in self._urgent if s in sessions]
            for s in sessions:
                redo = s.take_rerender()
                if redo:  # these frames again, silent, in frame order with what was queued
                    jobs = {k: (k, e, sil) for k, e, sil in self._jobs.get(s, ())}
                    jobs.update({k: (k, s.epoch, True) for k in redo})
                    self._jobs[s] = collections.deque(sorted(jobs.values(), key=lambda j: j[0]))
                    if s not in self._urgent:
                        self._urgent.append(s)
                q = self._jobs.get(s)
                if not q:
                    item = s.next_pending()
                    if item is not None:
                        ks, epoch = item
                        self._jobs[s] = collections.deque((k, epoch, False) for k in ks)
            while self._urgent and not self._jobs.get(self._urgent[0]):
                self._urgent.pop(0)
            if self._urgent:
                s = self._urgent[0]
            else:
                ready = [x for x in sessions if self._jobs.get(x)]
                if not ready:
                    return None
                s = min(ready, key=lambda x: x.play_time(self._jobs[x][0][0]))
            k, epoch, silent = self._jobs[s].popleft()
            turn = self._turns.get(s)
            if turn is None:
                turn = self._turns[s] = _Turnstile(self._halt)
            return s, k, epoch, silent, turn, turn.take()

    def _render_one(self, s: Session, k: int, epoch: int, silent: bool, turn: _Turnstile, ticket: int) -> None:
        item = s.unsent.get(k)
        if item is None:
            return
        win, vm, blink, cam, arrival, speech = item
        if silent:
            win, speech = self.silent_window, 0.0
            s.set_silent(k, item, win)
        if not s.consumer:
            return  # nobody watching yet
        if not silent and epoch < s.epoch and k >= s.mute_from:
            return  # an interrupt cut it: its re-render sends it silent
        if time.monotonic() + self.render_s > s.play_time(k):
            s.frames_dropped += 1  # it could not be ready by its play time
            return
        t0 = time.perf_counter()
        rgb = self._render(win[None], vm[None], np.asarray([blink], np.float32), None if cam is None else cam[None])[0]
        self.render_s += _EWMA * (time.perf_counter() - t0 - self.render_s)
        if s.stamp:
            rgb = stamp_frame(rgb, k)
        turn.wait(ticket)  # the session's frames handed out before this one leave first
        s.frames_rendered += 1
        loop, q = s.loop, s.video_q
        if loop is not None and q is not None and not s.closed:
            try:
                loop.call_soon_threadsafe(q.put_nowait, (k, rgb, epoch, speech, arrival))
            except RuntimeError:  # the loop has closed (server stopping)
                return

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
