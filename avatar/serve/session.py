"""`Session`: one viewer's live avatar — its audio timeline, its engine, its queues, its metrics.

The one clock (issue 15, "Transport"): a session owns a 48 kHz timeline that starts at `t0` and advances with
real time. Timeline sample s is played at wall time t0 + delay + s / 48000, and video frame k (covering samples
[k S, (k + 1) S), S = 48000 / fps) at t0 + delay + k / fps. Both WebRTC tracks stamp their frames from this
sample count (audio pts = s at 1/48000, video pts = k * 90000 / fps at 1/90000), so audio and video cannot
drift apart however long the session runs: neither track has a clock of its own.

`delay` = the engine's look-ahead (`Speaker.delay_s`: the model's future feature rows + segment + gate) + a
play-out margin (`ServeConfig.buffer_ms`) in which a frame must be computed. A frame that cannot be ready by its
time is dropped (the video skips a frame; the audio never waits), so an overloaded machine lowers the frame
rate instead of letting audio and video slide apart.

Feeding the engine (`pump`, called by the avatar's worker thread): queued speech is committed to the timeline
up to `speech_ahead_ms` ahead of real time; when nothing is queued (and no chunk came for `HOLD_S`), digital
silence is committed up to real time, so the avatar idles (breathing head motion from the pose track, blinks, mouth closed by the engine's
silence gate, exactly as `avatar speak` renders silence). Speech arriving during silence therefore starts
at once, `delay` after it arrived.

Interrupt (barge-in): queued speech is dropped, the not-yet-played timeline audio is zeroed, frames from the
next one on whose inputs held the dropped speech are given the engine's silence window (mouth closed), and
frames already rendered for that stretch are rendered again (the video track discards the stale ones by
`epoch`). Head motion stays continuous: the session's motion track is never restarted.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid

import numpy as np

from avatar.serve.audio import OUT_RATE, Decimator

HOLD_S = 0.04
"""How long the timeline waits for the next chunk of a live stream (microphone, paced TTS) before it idles on
silence; the play-out margin (`ServeConfig.buffer_ms`) must cover it."""


class Session:
    """State shared by the HTTP handlers (asyncio thread), the worker (engine and render threads) and the WebRTC
    tracks."""

    def __init__(self, avatar_name: str, fps: float, delay_s: float, look_frames: int, ahead_s: float,
                 size: tuple[int, int], stamp: bool = False, now: float | None = None):
        self.id = uuid.uuid4().hex
        self.avatar_name = avatar_name
        self.fps = float(fps)
        self.spf = OUT_RATE / self.fps  # timeline samples per frame
        self.delay_s = float(delay_s)
        self.look_frames = int(look_frames)
        self.ahead = int(round(ahead_s * OUT_RATE))
        self.width, self.height = size
        self.stamp = bool(stamp)
        self.created = time.monotonic() if now is None else now
        self.t0 = self.created
        self._lock = threading.Lock()
        self._last_arrival = -1e9
        self._speech: collections.deque[tuple[np.ndarray, float]] = collections.deque()  # (48 kHz audio, arrival)
        self.queued = 0  # samples of queued (not committed) speech
        self.head = 0  # timeline samples committed
        self._ring = np.zeros(0, np.float32)  # committed timeline audio from _ring_start
        self._ring_start = 0
        self._dec = Decimator()
        self.epoch = 0
        self.mute_from = 0
        self.mute_until = 0
        self._rerender = False
        self.unsent: dict[int, tuple] = {}  # k -> (window, viewmat, blink, camera, arrival, speech), under _lock
        self.pending: collections.deque[tuple[list[int], int]] = collections.deque()  # (frames, epoch) to render
        self.consumer = False  # a video track is attached (frames are rendered only then)
        self.connected_at: float | None = None
        self.closed = False
        self.error: str | None = None
        self.engine = None  # FrameEngine, owned by the worker thread
        self.speaker = None
        self.loop = None  # asyncio loop of the tracks
        self.video_q = None  # asyncio.Queue of (k, rgb, epoch, speech, arrival)
        # metrics
        self.speech_in_s = 0.0
        self.frames_rendered = self.frames_dropped = self.frames_sent = 0
        self.audio_underruns = 0
        self.interrupts = 0
        self.interrupted_at: float | None = None
        self.interrupt_ms = collections.deque(maxlen=1000)  # interrupt -> first closed-mouth frame sent, ms
        self.first_frame_s: float | None = None
        self.last_speech_weight = 0.0
        self.latency = collections.deque(maxlen=20000)  # s: frame sent - commit of the speech chunk completing it
        self.sent_times = collections.deque(maxlen=400)  # wall times of sent video frames (fps)
        self.video_late = collections.deque(maxlen=20000)  # (timeline s, sent - scheduled) per video frame
        self.audio_late = collections.deque(maxlen=20000)  # (timeline s, sent - scheduled) per audio frame
        self.audio_start_sample: int | None = None  # timeline sample of the audio track's first frame

    # -- the clock ---------------------------------------------------------------------------------
    def play_time(self, k: int) -> float:
        """Wall time (time.monotonic) at which video frame k is sent."""
        return self.t0 + self.delay_s + k / self.fps

    def sample_time(self, s: int) -> float:
        """Wall time at which timeline sample s is sent."""
        return self.t0 + self.delay_s + s / OUT_RATE

    def play_sample(self, now: float) -> int:
        """Timeline sample being played at `now` (negative before the first)."""
        return int(np.floor((now - self.t0 - self.delay_s) * OUT_RATE))

    # -- audio in (HTTP / microphone, asyncio thread) --------------------------------------------------
    def push_audio(self, x48: np.ndarray, arrival: float) -> None:
        """Queue speech (float32 mono 48 kHz) that arrived at wall time `arrival`."""
        x48 = np.asarray(x48, np.float32).ravel()
        if x48.size == 0:
            return
        with self._lock:
            self._speech.append((x48, float(arrival)))
            self._last_arrival = max(self._last_arrival, float(arrival))
            self.queued += x48.size
            self.speech_in_s += x48.size / OUT_RATE

    @property
    def queued_s(self) -> float:
        return self.queued / OUT_RATE

    def interrupt(self, now: float) -> dict:
        """Barge-in: drop queued speech and queued frames at once (see the module docstring)."""
        with self._lock:
            dropped = self.queued
            self._speech.clear()
            self.queued = 0
            p = max(self.play_sample(now), 0)
            cut = max(p, self._ring_start)
            played_ahead = max(0, self._ring_start + self._ring.shape[0] - cut)
            if played_ahead:
                self._ring[cut - self._ring_start:] = 0.0
            self.mute_from = int(p // self.spf) + 1
            self.mute_until = int(np.ceil(self.head / self.spf)) + self.look_frames + 4
            self.epoch += 1
            self._rerender = True
            self.interrupts += 1
            self.interrupted_at = now
        return {"dropped_queued_s": round(dropped / OUT_RATE, 3), "dropped_committed_s": round(played_ahead / OUT_RATE, 3),
                "mute_from_frame": self.mute_from}

    # -- timeline (worker thread) ------------------------------------------------------------------------
    def pump(self, now: float) -> list[tuple[np.ndarray, float | None]]:
        """Commit audio to the timeline up to now (silence) or now + ahead (speech); returns the engine's
        16 kHz pieces with the arrival time of the speech they hold (None for silence)."""
        out = []
        R = int(round((now - self.t0) * OUT_RATE))
        with self._lock:
            limit = R + self.ahead
            while self._speech and self.head < limit:
                arr, arrival = self._speech[0]
                n = min(arr.shape[0], limit - self.head)
                if n == arr.shape[0]:
                    self._speech.popleft()
                else:
                    self._speech[0] = (arr[n:], arrival)
                self.queued -= n
                # latency counts from when the speech is both here and due (its commit), not from the
                # arrival of a whole file that waited in the queue
                out.append((self._commit(arr[:n]), max(arrival, now)))
            # silence: up to real time once no speech came for HOLD_S (a live stream's next chunk may be in
            # flight: filling its slot with silence would cut gaps into the speech), never behind by more
            fill_to = R if now - self._last_arrival > HOLD_S else R - int(HOLD_S * OUT_RATE)
            if not self._speech and self.head < fill_to:
                out.append((self._commit(np.zeros(fill_to - self.head, np.float32)), None))
        return out

    def _commit(self, x48: np.ndarray) -> np.ndarray:
        self._ring = np.concatenate([self._ring, x48])
        self.head += x48.shape[0]
        return self._dec.push(x48)

    def add_frames(self, b, arrival: float | None, silent_window: np.ndarray) -> None:
        """Frame inputs the engine made final (`FrameBatch` b; the worker's engine thread) for the render thread.
        Muted frames get the silence window. Decided under the lock that `interrupt` takes, with the epoch read
        there: a batch stored before an interrupt is in `unsent` for its re-render, one stored after is muted."""
        with self._lock:
            epoch = self.epoch
            for i, k in enumerate(b.index):
                if self.muted(k):
                    b.windows[i] = silent_window
                    b.speech[i] = 0.0
                cam = None if b.cameras is None else b.cameras[i]
                self.unsent[k] = (b.windows[i], b.viewmats[i], b.blinks[i], cam, arrival, float(b.speech[i]))
            self.pending.append((list(b.index), epoch))

    def next_pending(self) -> tuple[list[int], int] | None:
        """(frames, epoch) of the oldest batch not rendered yet (render thread), less the frames that an
        interrupt since then cut (its re-render renders those, silent)."""
        with self._lock:
            while self.pending:
                ks, epoch = self.pending.popleft()
                if epoch < self.epoch:
                    ks = [k for k in ks if k < self.mute_from]
                if ks:
                    return ks, epoch
        return None

    def set_silent(self, k: int, item: tuple, window: np.ndarray) -> None:
        """Frame k's inputs with the silence window (an interrupt's re-render)."""
        with self._lock:
            if k in self.unsent:
                self.unsent[k] = (window,) + tuple(item[1:5]) + (0.0,)

    def take_rerender(self) -> list[int]:
        """Frames to render again after an interrupt (worker thread)."""
        with self._lock:
            if not self._rerender:
                return []
            self._rerender = False
            return sorted(k for k in self.unsent if k >= self.mute_from)

    def muted(self, k: int) -> bool:
        return self.mute_from <= k < self.mute_until

    def forget_before(self, k: int) -> None:
        """Drop the inputs of frames whose play time has passed."""
        with self._lock:
            for j in [j for j in self.unsent if j < k]:
                del self.unsent[j]

    # -- audio out (the WebRTC audio track, asyncio thread) ---------------------------------------------
    def read_audio(self, s: int, n: int) -> np.ndarray:
        """Timeline samples [s, s + n) (zeros where not committed: an underrun, counted)."""
        out = np.zeros(n, np.float32)
        with self._lock:
            lo, hi = max(s, self._ring_start), min(s + n, self._ring_start + self._ring.shape[0])
            if hi > lo:
                out[lo - s:hi - s] = self._ring[lo - self._ring_start:hi - self._ring_start]
            if hi < s + n and s >= 0:
                self.audio_underruns += 1
            drop = s - self._ring_start
            if drop > 0:  # played: no longer needed
                self._ring = self._ring[drop:]
                self._ring_start += drop
        return out

    # -- metrics ---------------------------------------------------------------------------------------
    def on_video_sent(self, k: int, now: float, speech: float, arrival: float | None) -> None:
        self.frames_sent += 1
        self.sent_times.append(now)
        self.last_speech_weight = float(speech)
        if self.interrupted_at is not None and speech < 0.5 and k >= self.mute_from:
            self.interrupt_ms.append(1000 * (now - self.interrupted_at))
            self.interrupted_at = None
        if self.first_frame_s is None:
            self.first_frame_s = now - self.created
        self.video_late.append((k * self.spf, now - self.play_time(k)))
        if arrival is not None:
            self.latency.append(now - arrival)

    def on_audio_sent(self, s: int, now: float) -> None:
        self.audio_late.append((s, now - self.sample_time(s)))

    def av_offset_ms(self, last_s: float | None = None) -> float | None:
        """Video minus audio send lateness (ms; + = video late), over the last `last_s` seconds of the
        timeline (None: all kept), as measured where the stream leaves the server."""
        if not self.video_late or not self.audio_late:
            return None
        v = np.asarray(self.video_late)
        a = np.asarray(self.audio_late)
        if last_s is not None:
            t_end = min(v[-1, 0], a[-1, 0])
            v = v[v[:, 0] > t_end - last_s * OUT_RATE]
            a = a[a[:, 0] > t_end - last_s * OUT_RATE]
        if len(v) == 0 or len(a) == 0:
            return None
        return float(1000 * (np.median(v[:, 1]) - np.median(a[:, 1])))

    def fps_sent(self, now: float, window: float = 2.0) -> float:
        n = sum(1 for t in self.sent_times if t > now - window)
        span = min(window, max(now - (self.connected_at or now), 1e-3))
        return n / span

    def state(self, now: float | None = None) -> dict:
        now = time.monotonic() if now is None else now
        lat = np.asarray(self.latency) * 1000 if self.latency else None
        return {
            "id": self.id, "avatar": self.avatar_name, "fps": self.fps, "width": self.width, "height": self.height,
            "connected": self.consumer, "closed": self.closed, "error": self.error,
            "talking": self.last_speech_weight > 0.5, "age_s": round(now - self.created, 3),
            "delay_ms": round(self.delay_s * 1000, 1), "queued_speech_s": round(self.queued_s, 3),
            "speech_in_s": round(self.speech_in_s, 3), "timeline_s": round(self.head / OUT_RATE, 3),
            "frames_rendered": self.frames_rendered, "frames_dropped": self.frames_dropped,
            "frames_sent": self.frames_sent, "fps_sent": round(self.fps_sent(now), 2),
            "audio_underruns": self.audio_underruns, "interrupts": self.interrupts,
            "first_frame_s": None if self.first_frame_s is None else round(self.first_frame_s, 3),
            "latency_p50_ms": None if lat is None else round(float(np.median(lat)), 1),
            "latency_p95_ms": None if lat is None else round(float(np.percentile(lat, 95)), 1),
            "interrupt_ms": None if not self.interrupt_ms else round(self.interrupt_ms[-1], 1),
            "interrupts_done": len(self.interrupt_ms),
            "av_offset_ms": self.av_offset_ms(5.0), "audio_start_sample": self.audio_start_sample,
        }
