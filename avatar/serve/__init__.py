"""`avatar serve`: a live talking avatar in the browser — audio in, lip-synced video and audio out over WebRTC.

Layer 6: it imports the engine (avatar.engine), avatar.core and avatar.features, never the CLI, training or the
test fixtures. Every frame comes from the one engine `avatar speak` uses (avatar/engine: `Speaker`,
`FrameEngine`); this package only decides where audio comes from (HTTP uploads, the browser's microphone) and
where frames go (WebRTC tracks), and keeps many sessions apart and real time.

    config.py    ServeConfig (its field docstrings are `avatar serve --help`)
    audio.py     uploads / PCM16 chunks / microphone frames -> the 48 kHz timeline; 48 -> 16 kHz for the engine
    session.py   Session: the one clock (timeline sample count), queues, interrupt, metrics
    worker.py    AvatarWorker: an engine and a render thread per loaded avatar, shared by its sessions
    tracks.py    the WebRTC audio and video tracks (aiortc), timed by the session clock
    server.py    AvatarServer: HTTP API (aiohttp), admission control, token, signalling; ServerThread
    static/      the bundled page (index.html, app.js, style.css)

    from avatar.serve import AvatarServer, ServeConfig, ServerThread
    srv = ServerThread(AvatarServer(["runs/me"], ServeConfig(port=0))); print(srv.start())
"""

from __future__ import annotations

_EXPORTS = {"AvatarServer": "avatar.serve.server", "ServerThread": "avatar.serve.server",
            "ServeConfig": "avatar.serve.config", "Session": "avatar.serve.session"}


def __getattr__(name: str):
    """Lazy re-exports, so `import avatar.serve.config` (the CLI parser) loads neither torch nor aiortc."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'avatar.serve' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
