"""`ServeClient`: a Python client of `avatar serve` (a TTS pipeline's side; also what the tests and bench/serve.py use).

    async with ServeClient("http://127.0.0.1:8000/") as c:
        sid = (await c.create())["id"]
        await c.connect(sid)                      # WebRTC: receive the avatar's audio and video
        await c.send_audio(sid, wav_bytes)        # or c.send_pcm(sid, int16_array, rate) in chunks
        ...; print(await c.state(sid)); await c.close(sid)

Received media are kept (bounded) with their arrival times (`Received`), so A/V alignment and frame rates can be
measured from what actually came out of the connection.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time

import numpy as np


@dataclasses.dataclass
class Received:
    """What one session's WebRTC connection delivered (arrival = time.monotonic() when the frame came out of
    the receiver)."""

    video: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=20000))
    """(arrival, pts, rgb [H, W, 3] uint8 or None when not kept)"""
    audio: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=200000))
    """(arrival, pts, float32 mono samples at 48 kHz)"""
    first_video: float | None = None


class ServeError(RuntimeError):
    def __init__(self, status: int, body: dict):
        super().__init__(f"HTTP {status}: {body.get('error', body)}")
        self.status, self.body = status, body


class ServeClient:
    """HTTP API + WebRTC receiver of one server (see avatar/serve/server.py for the API)."""

    def __init__(self, url: str, token: str | None = None, keep_frames: bool = True):
        self.base = url.split("?")[0].rstrip("/")
        self.token = token
        self.keep_frames = keep_frames
        self.http = None
        self.pcs: dict[str, object] = {}
        self.received: dict[str, Received] = {}
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self):
        import aiohttp

        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc):
        for t in self._tasks:
            t.cancel()
        for pc in self.pcs.values():
            await pc.close()
        await self.http.close()

    def _headers(self, extra: dict | None = None) -> dict:
        h = dict(extra or {})
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    async def request(self, method: str, path: str, *, json=None, data=None, headers=None) -> tuple[int, dict]:
        async with self.http.request(method, self.base + path, json=json, data=data,
                                     headers=self._headers(headers)) as r:
            try:
                body = await r.json(content_type=None)
            except ValueError:
                body = {"error": (await r.text())[:200]}
            return r.status, body

    async def _ok(self, method, path, **kw) -> dict:
        st, body = await self.request(method, path, **kw)
        if st >= 400:
            raise ServeError(st, body)
        return body

    async def create(self, avatar: str | None = None, stamp: bool = False) -> dict:
        return await self._ok("POST", "/api/sessions", json={"avatar": avatar, "stamp": stamp})

    async def state(self, sid: str) -> dict:
        return await self._ok("GET", f"/api/sessions/{sid}")

    async def status(self) -> dict:
        return await self._ok("GET", "/api/status")

    async def send_audio(self, sid: str, data: bytes, content_type: str = "application/octet-stream") -> dict:
        return await self._ok("POST", f"/api/sessions/{sid}/audio", data=data, headers={"Content-Type": content_type})

    async def send_pcm(self, sid: str, pcm16: np.ndarray, rate: int) -> dict:
        return await self.send_audio(sid, np.asarray(pcm16, "<i2").tobytes(), f"audio/L16;rate={int(rate)};channels=1")

    async def interrupt(self, sid: str) -> dict:
        return await self._ok("POST", f"/api/sessions/{sid}/interrupt")

    async def close(self, sid: str) -> dict:
        """Close the session on the server, then this side's connection. In that order: a connection closed
        first makes the server close the session by itself (DTLS close_notify), and the DELETE then raced it
        to a 404 (seen in bench/serve.py's interrupt phase)."""
        try:
            return await self._ok("DELETE", f"/api/sessions/{sid}")
        finally:
            pc = self.pcs.pop(sid, None)
            if pc is not None:
                await pc.close()

    async def connect(self, sid: str) -> Received:
        """Offer a receive-only audio + video connection and start collecting what arrives."""
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection()
        self.pcs[sid] = pc
        rec = self.received[sid] = Received()
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")

        @pc.on("track")
        def on_track(track):
            self._tasks.append(asyncio.ensure_future(self._collect(track, rec)))

        await pc.setLocalDescription(await pc.createOffer())
        ans = await self._ok("POST", f"/api/sessions/{sid}/offer",
                             json={"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})
        await pc.setRemoteDescription(RTCSessionDescription(sdp=ans["sdp"], type=ans["type"]))
        return rec

    async def _collect(self, track, rec: Received) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                fr = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if track.kind == "video":
                if rec.first_video is None:
                    rec.first_video = now
                rec.video.append((now, fr.pts, fr.to_ndarray(format="rgb24") if self.keep_frames else None))
            else:
                x = fr.to_ndarray().astype(np.float32)  # s16 [1, n * channels] packed
                ch = len(fr.layout.channels)
                x = x.reshape(-1, ch).mean(1) / 32768.0
                rec.audio.append((now, fr.pts, x))
