"""`ServeConfig`: the server's own controls, one docstring per field (its `avatar serve --help` line).

The engine's controls (pose, blink, background, output size, lip scale, VAD, streaming segments) are `SpeakConfig`
(avatar/engine/config.py): `avatar serve` takes the same options as `avatar speak`, so a served avatar looks
and moves like a spoken file. Light on purpose (no numpy, no torch): the CLI imports it to build its parser.
"""

from __future__ import annotations

import dataclasses

TOKEN_ENV = "AVATAR_SERVE_TOKEN"
"""Environment variable holding the access token (instead of --token, which other users can see in `ps`)."""


@dataclasses.dataclass
class ServeConfig:
    """Controls of `avatar serve`."""

    host: str = "127.0.0.1"
    """address to bind (loopback by default; any other address needs --token or $AVATAR_SERVE_TOKEN)"""
    port: int = 8000
    """TCP port (0: any free port)"""
    token: str | None = None
    """access token every request must carry (header `Authorization: Bearer TOKEN`, or `?token=` in the page URL)"""
    buffer_ms: float = 120.0
    """play-out margin on top of the engine's look-ahead: the time a frame has to be computed (more = fewer
    dropped frames on a busy machine, less = lower latency)"""
    speech_ahead_ms: float = 240.0
    """how far ahead of real time queued speech is fed to the engine (bounds the frames an interrupt must redo)"""
    max_sessions: int = 8
    """hard limit on concurrent sessions (all avatars together)"""
    max_load: float = 1.0
    """admission control: refuse a new session (HTTP 503) when the measured compute of all sessions talking at
    once would exceed this many seconds per second of real time (1.0: one machine's worth)"""
    max_upload_mb: float = 50.0
    """largest audio upload, MB (refused from its Content-Length before reading)"""
    max_queue_s: float = 600.0
    """most speech a session may hold queued, seconds (more is refused with HTTP 429)"""
    connect_timeout_s: float = 30.0
    """a session whose browser/program has not connected (WebRTC) within this time, or lost its connection, is
    closed"""
    device: str = "auto"
    """render device: auto, cpu, cuda, cuda:N"""
