"""`AvatarServer`: the HTTP API, the bundled page and the WebRTC signalling of `avatar serve` (aiohttp + aiortc).

HTTP API (JSON in and out; every error is `{"error": "...", "status": N}` with a 4xx/5xx status; when the
server has a token every request carries `Authorization: Bearer TOKEN` or `?token=TOKEN`; the page, opened with
`?token=`, gets it as an HttpOnly cookie for its own requests):

    GET    /api/avatars                    the loaded avatars: name, width, height, fps, delay_ms
    GET    /api/status                     sessions, measured demand per session, capacity
    POST   /api/sessions                   {"avatar": NAME}  -> 201 session state (its "id"); 503 + "reason" when
                                           the machine cannot keep one more session real time
    POST   /api/sessions/ID/offer          {"sdp": ..., "type": "offer"} -> the WebRTC answer (one audio track
                                           with the avatar's voice, one video track; a microphone track in the
                                           offer is the session's live audio input)
    POST   /api/sessions/ID/audio          audio to speak: a file ffmpeg reads (WAV, MP3, OGG, FLAC, M4A, ...) or raw
                                           PCM16 (`Content-Type: audio/L16;rate=R;channels=C`), any rate, chunks of
                                           any size; queued after what is already queued -> {"accepted_s", ...}
    POST   /api/sessions/ID/interrupt      barge-in: drop queued audio and queued frames now
    GET    /api/sessions/ID                state + metrics (frames sent/dropped, fps, latency p50/p95, A/V offset)
    DELETE /api/sessions/ID                close the session

A session that has no WebRTC connection `connect_timeout_s` after creation, or whose connection fails, is
closed by the server (a client that vanished leaves nothing behind).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import threading
import time
from pathlib import Path

from aiohttp import web

from avatar.errors import AvatarError
from avatar.serve.audio import PcmStream, decode_file, pcm_params
from avatar.serve.config import TOKEN_ENV, ServeConfig
from avatar.serve.session import Session
from avatar.serve.worker import AvatarWorker

COOKIE = "avatar_serve_token"
STATIC = Path(__file__).resolve().parent / "static"


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_size(speak, avatar):
    """The engine config a served avatar renders with: as given, except that without --size/--scale it renders
    at the model's own (training) height rather than the source clip's, a size one CPU session can hold."""
    import dataclasses

    if getattr(speak, "size", 0) is None and getattr(speak, "scale", 0) is None:
        return dataclasses.replace(speak, size=f"x{avatar.height}")
    return speak


def _error(status: int, msg: str, **extra) -> web.Response:
    return web.json_response({"error": msg, "status": status, **extra}, status=status)


class AvatarServer:
    """Loads the avatars (one model and one render thread each) and serves sessions on them."""

    def __init__(self, runs: list[str | os.PathLike], cfg: ServeConfig | None = None, speak=None, log=print):
        from avatar.engine import Avatar, SpeakConfig

        self.cfg = cfg = cfg or ServeConfig()
        self.log = log
        self.token = cfg.token or os.environ.get(TOKEN_ENV) or None
        if not is_loopback(cfg.host) and not self.token:
            raise AvatarError(f"--host {cfg.host} is reachable from other machines: give --token TOKEN (or set "
                              f"${TOKEN_ENV}) so that every request must carry it")
        if not runs:
            raise AvatarError("give at least one trained run folder")
        speak = speak or SpeakConfig()
        self.workers: dict[str, AvatarWorker] = {}
        for run in runs:
            name = base = Path(run).resolve().name
            i = 2
            while name in self.workers:
                name, i = f"{base}-{i}", i + 1
            av = Avatar.load(run, device=cfg.device)
            w = AvatarWorker(name, av, serve_size(speak, av))
            cal = w.calibrate()
            log(f"avatar serve: {name}: {w.width}x{w.height} at {w.fps:g} fps, one frame {cal['render_ms']} ms "
                f"({w.render_threads} render thread{'s' if w.render_threads > 1 else ''}), "
                f"a talking session needs {cal['demand_s_per_s']:.2f} s of compute per second")
            w.start()
            self.workers[name] = w
        self.sessions: dict[str, Session] = {}
        self._pcs: dict[str, object] = {}
        self._tasks: dict[str, list[asyncio.Task]] = {}
        self._pcm: dict[str, PcmStream] = {}
        self.runner: web.AppRunner | None = None
        self.url: str | None = None
        self.port: int | None = None
        self._reaper: asyncio.Task | None = None

    # -- app ---------------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        max_bytes = int(self.cfg.max_upload_mb * 1e6)
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=max_bytes)
        r = app.router
        r.add_get("/", self._index)
        r.add_static("/static/", STATIC, show_index=False)
        r.add_get("/api/avatars", self._avatars)
        r.add_get("/api/status", self._status)
        r.add_get("/api/sessions", self._list)
        r.add_post("/api/sessions", self._create)
        r.add_get("/api/sessions/{id}", self._state)
        r.add_delete("/api/sessions/{id}", self._delete)
        r.add_post("/api/sessions/{id}/offer", self._offer)
        r.add_post("/api/sessions/{id}/audio", self._audio)
        r.add_post("/api/sessions/{id}/interrupt", self._interrupt)
        return app

    @web.middleware
    async def _errors(self, request, handler):
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _error(e.status, e.reason if e.text is None or e.text.startswith(str(e.status)) else e.text)
        except AvatarError as e:
            return _error(400, str(e))
        except Exception as e:  # noqa: BLE001 - a bug answers 500 JSON, the server keeps serving
            self.log(f"avatar serve: error in {request.method} {request.path}: {type(e).__name__}: {e}")
            return _error(500, f"internal error ({type(e).__name__})")

    @web.middleware
    async def _auth(self, request, handler):
        if self.token is None:
            return await handler(request)
        got = request.query.get("token") or request.cookies.get(COOKIE)
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            got = auth[7:].strip()
        got = request.headers.get("X-Avatar-Token", got)
        if not got:
            return _error(401, "missing token: send `Authorization: Bearer TOKEN` (or ?token=TOKEN)")
        if not hmac.compare_digest(got.encode(), self.token.encode()):
            return _error(403, "wrong token")
        resp = await handler(request)
        if request.path == "/" and request.query.get("token"):  # the page's own scripts then carry it
            resp.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict")
        return resp

    def _session(self, request) -> Session:
        s = self.sessions.get(request.match_info["id"])
        if s is None:
            raise web.HTTPNotFound(text=f"no session {request.match_info['id']!r} (closed, timed out or never created)")
        return s

    # -- handlers ----------------------------------------------------------------------------------------
    async def _index(self, request):
        return web.FileResponse(STATIC / "index.html")

    async def _avatars(self, request):
        return web.json_response({"avatars": [
            {"name": n, "width": w.width, "height": w.height, "fps": w.fps, "delay_ms": round(1000 * w.delay_s, 1)}
            for n, w in self.workers.items()]})

    def demand(self) -> float:
        return sum(self.workers[s.avatar_name].demand_s for s in self.sessions.values())

    async def _status(self, request):
        per = {n: round(w.demand_s, 3) for n, w in self.workers.items()}
        return web.json_response({"sessions": len(self.sessions), "max_sessions": self.cfg.max_sessions,
                                  "demand_s_per_s": round(self.demand(), 3), "max_load": self.cfg.max_load,
                                  "session_demand_s_per_s": per,
                                  "render_ms": {n: round(1000 * w.render_s, 1) for n, w in self.workers.items()}})

    async def _list(self, request):
        return web.json_response({"sessions": [s.state() for s in self.sessions.values()]})

    async def _json(self, request) -> dict:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise web.HTTPBadRequest(text="the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="the body must be a JSON object")
        return body

    async def _create(self, request):
        body = await self._json(request)
        name = body.get("avatar") or next(iter(self.workers))
        w = self.workers.get(name)
        if w is None:
            raise web.HTTPNotFound(text=f"no avatar {name!r}; loaded: {', '.join(self.workers)}")
        n = len(self.sessions)
        if n >= self.cfg.max_sessions:
            return _error(503, f"{n} sessions are open, the limit (--max-sessions) is {self.cfg.max_sessions}",
                          reason="max_sessions")
        need = self.demand() + w.demand_s
        if n >= 1 and need > self.cfg.max_load:
            return _error(503, f"this machine cannot keep {n + 1} sessions real time: a talking session needs "
                               f"{w.demand_s:.2f} s of compute per second, {n + 1} would need {need:.2f} "
                               f"(limit --max-load {self.cfg.max_load:g}); try again when a session closes",
                          reason="capacity")
        loop = asyncio.get_running_loop()
        s = await loop.run_in_executor(None, lambda: w.new_session(self.cfg.buffer_ms, self.cfg.speech_ahead_ms,
                                                                   bool(body.get("stamp", False))))
        s.loop, s.video_q = loop, asyncio.Queue()
        self.sessions[s.id] = s
        self._tasks[s.id] = []
        return web.json_response(s.state(), status=201)

    async def _state(self, request):
        return web.json_response(self._session(request).state())

    async def _delete(self, request):
        s = self._session(request)
        await self.close_session(s.id)
        return web.json_response({"closed": s.id, "frames_sent": s.frames_sent})

    async def _interrupt(self, request):
        s = self._session(request)
        return web.json_response(s.interrupt(time.monotonic()) | {"id": s.id})

    async def _audio(self, request):
        s = self._session(request)
        limit = int(self.cfg.max_upload_mb * 1e6)
        if request.content_length is not None and request.content_length > limit:
            return _error(413, f"the upload is {request.content_length / 1e6:.1f} MB, the limit (--max-upload-mb) is "
                               f"{self.cfg.max_upload_mb:g} MB; send long audio in chunks")
        try:
            data = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"the upload exceeds the limit (--max-upload-mb) of {self.cfg.max_upload_mb:g} MB")
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
            return _error(400, f"the upload was cut off ({type(e).__name__})")
        except Exception as e:
            if type(e).__name__ in ("ClientPayloadError", "ClientConnectionResetError", "EofStream"):
                return _error(400, f"the upload was cut off ({type(e).__name__})")
            raise
        arrival = time.monotonic()
        if not data:
            return _error(400, "the audio is empty (0 bytes)")
        pcm = pcm_params(request.content_type, request.query)
        loop = asyncio.get_running_loop()
        if pcm is not None:
            key = f"{s.id}:{pcm[0]}:{pcm[1]}"
            stream = self._pcm.get(key) or self._pcm.setdefault(key, PcmStream(*pcm))
            x = stream.push(data)
        else:
            x = await loop.run_in_executor(None, decode_file, data)
        if s.closed or s.id not in self.sessions:
            raise web.HTTPNotFound(text=f"no session {s.id!r} (closed)")
        accepted = x.size / 48000
        if s.queued_s + accepted > self.cfg.max_queue_s:
            return _error(429, f"the session already holds {s.queued_s:.1f} s of queued speech; the limit "
                               f"(--max-queue-s) is {self.cfg.max_queue_s:g} s")
        s.push_audio(x, arrival)
        return web.json_response({"id": s.id, "accepted_s": round(accepted, 4), "queued_speech_s": round(s.queued_s, 3)})

    async def _offer(self, request):
        from aiortc import RTCPeerConnection, RTCSessionDescription

        from avatar.serve.tracks import (
            AvatarVideoTrack,
            TimelineAudioTrack,
            consume_microphone,
        )

        s = self._session(request)
        body = await self._json(request)
        sdp, kind = body.get("sdp"), body.get("type")
        if kind != "offer" or not isinstance(sdp, str) or not sdp.lstrip().startswith("v=0"):
            raise web.HTTPBadRequest(text='send {"sdp": "<an SDP offer starting with v=0>", "type": "offer"}')
        if s.id in self._pcs:
            raise web.HTTPConflict(text="this session is already connected; create a new session")
        if "m=video" not in sdp:
            raise web.HTTPBadRequest(text="the offer has no video section: add a recvonly video transceiver")
        pc = RTCPeerConnection()
        self._pcs[s.id] = pc

        @pc.on("track")
        def on_track(track):
            if track.kind == "audio":
                self._tasks.setdefault(s.id, []).append(asyncio.ensure_future(consume_microphone(track, s)))

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState == "connected":
                s.connected_at = time.monotonic()
            elif pc.connectionState in ("failed", "closed") and self._pcs.get(s.id) is pc:
                self.log(f"avatar serve: session {s.id[:8]}: WebRTC connection {pc.connectionState}; closing it")
                await self.close_session(s.id)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            pc.addTrack(TimelineAudioTrack(s))
            pc.addTrack(AvatarVideoTrack(s))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:  # noqa: BLE001 - aiortc raises ValueError/KeyError/... on a malformed SDP
            self._pcs.pop(s.id, None)
            await pc.close()
            raise web.HTTPBadRequest(text=f"malformed or unsupported SDP offer ({type(e).__name__}: {e})") from None
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def close_session(self, sid: str) -> None:
        s = self.sessions.pop(sid, None)
        if s is None:
            return
        s.closed = True
        self.workers[s.avatar_name].remove(s)
        for t in self._tasks.pop(sid, []):
            t.cancel()
        for key in [k for k in self._pcm if k.startswith(sid + ":")]:
            del self._pcm[key]
        pc = self._pcs.pop(sid, None)
        if pc is not None:
            await pc.close()
        s.video_q = None

    async def _reap(self) -> None:
        """Close sessions that never connected, or whose worker failed (a vanished client)."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for sid, s in list(self.sessions.items()):
                never = sid not in self._pcs and now - s.created > self.cfg.connect_timeout_s
                pc = self._pcs.get(sid)
                stuck = pc is not None and s.connected_at is None and now - s.created > self.cfg.connect_timeout_s
                if never or stuck or s.error is not None:
                    if s.error:
                        self.log(f"avatar serve: session {sid[:8]} failed: {s.error}")
                    await self.close_session(sid)

    async def start(self) -> str:
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.host, self.cfg.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        host = self.cfg.host if ":" not in self.cfg.host else f"[{self.cfg.host}]"
        self.url = f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")
        self._reaper = asyncio.ensure_future(self._reap())
        return self.url

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for sid in list(self.sessions):
            await self.close_session(sid)
        if self.runner is not None:
            await self.runner.cleanup()
        for w in self.workers.values():
            w.stop()
        for w in self.workers.values():
            w.join(timeout=10)


class ServerThread:
    """Run an `AvatarServer` on its own event loop in a background thread (tests, benches, notebooks).

        srv = ServerThread(AvatarServer(["runs/me"], ServeConfig(port=0))); url = srv.start(); ...; srv.stop()"""

    def __init__(self, server: AvatarServer):
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="avatar-serve-http", daemon=True)

    def start(self) -> str:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(60)

    def call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            self.call(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
