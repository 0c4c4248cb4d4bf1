"""The two WebRTC tracks of a session (aiortc), both timed by the session's one clock: the timeline sample count.

`TimelineAudioTrack` sends the timeline itself in 20 ms frames (pts = first sample's index, time base 1/48000);
`AvatarVideoTrack` sends the rendered frames (pts = k * 90000 / fps, time base 1/90000: frame k starts at
timeline sample k * 48000 / fps). Each frame leaves at its scheduled wall time (`Session.sample_time` /
`Session.play_time`), so the RTCP sender reports of both streams map RTP time to the same wall clock and the
browser's lip sync has nothing to correct. A video frame that arrives after its time is skipped rather than sent
late; stale frames (rendered before an interrupt for the stretch it cut) are discarded by `epoch`.

`consume_microphone` reads the browser's microphone track into the session's speech queue.
"""

from __future__ import annotations

import asyncio
import fractions
import time

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from avatar.serve.audio import OUT_RATE, MicStream
from avatar.serve.session import Session

AUDIO_PTIME = 0.020
AUDIO_SAMPLES = int(OUT_RATE * AUDIO_PTIME)
VIDEO_CLOCK = 90000


class TimelineAudioTrack(MediaStreamTrack):
    """The session's timeline audio, 20 ms per frame, sent at its play time."""

    kind = "audio"

    def __init__(self, session: Session):
        super().__init__()
        self.s = session
        self._next: int | None = None

    async def recv(self):
        import av

        s = self.s
        if self.readyState != "live" or s.closed:
            raise MediaStreamError
        if self._next is None:  # start at the sample playing now (aligned to 20 ms of the timeline)
            self._next = max(0, s.play_sample(time.monotonic()) // AUDIO_SAMPLES * AUDIO_SAMPLES)
            s.audio_start_sample = self._next
        a = self._next
        wait = s.sample_time(a) - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        x = s.read_audio(a, AUDIO_SAMPLES)
        s.on_audio_sent(a, time.monotonic())
        pcm = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)[None]  # [1, 960]
        fr = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        fr.sample_rate = OUT_RATE
        fr.pts = a
        fr.time_base = fractions.Fraction(1, OUT_RATE)
        self._next = a + AUDIO_SAMPLES
        return fr


class AvatarVideoTrack(MediaStreamTrack):
    """The session's rendered frames, each sent at its play time."""

    kind = "video"

    def __init__(self, session: Session):
        super().__init__()
        self.s = session
        self._last_k = -1

    async def recv(self):
        import av

        s = self.s
        s.consumer = True  # from now on the worker renders this session's frames
        while True:
            if self.readyState != "live" or s.closed:
                raise MediaStreamError
            try:
                k, rgb, epoch, speech, arrival = await asyncio.wait_for(s.video_q.get(), timeout=1.0)
            except TimeoutError:
                continue
            if k <= self._last_k or (epoch < s.epoch and k >= s.mute_from):
                continue  # stale (re-rendered after an interrupt) or out of order
            wait = s.play_time(k) - time.monotonic()
            if wait < -0.5 / s.fps:
                s.frames_dropped += 1  # late: skip rather than send it behind its audio
                continue
            if wait > 0:
                await asyncio.sleep(wait)
            if epoch < s.epoch and k >= s.mute_from:
                continue  # an interrupt came while it waited
            break
        self._last_k = k
        s.on_video_sent(k, time.monotonic(), speech, arrival)
        fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[..., :3]), format="rgb24")
        fr.pts = int(round(k * VIDEO_CLOCK / s.fps))
        fr.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return fr


async def consume_microphone(track, session: Session) -> None:
    """Feed a remote (browser microphone) audio track into the session until it ends."""
    mic = MicStream()
    while not session.closed:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        x = mic.push(frame)
        if x.size:
            session.push_audio(x, time.monotonic())
