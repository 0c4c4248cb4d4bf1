"""`avatar serve RUN [RUN ...]`: a live talking avatar in the browser (WebRTC), with an HTTP API for programs.

    avatar serve runs/NAME                         open http://127.0.0.1:8000/, press Start, talk or drop a file
    avatar serve runs/A runs/B --port 9000         several avatars, picked on the page
    AVATAR_SERVE_TOKEN=secret avatar serve runs/NAME --host 0.0.0.0      reachable from the LAN, token required

The page shows the avatar idle (breathing head motion, blinks, mouth closed) until speech arrives from the
microphone or a dropped audio file. Programs (a TTS pipeline) use the HTTP API: create a session, POST audio
(WAV/MP3/... or raw PCM16, any rate, any chunk size), interrupt, close; see avatar/serve/server.py or the
README's "Live avatar" section. The engine options are those of `avatar speak` (pose, blink, background, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys

DESCRIPTION = __doc__.split("\n", 2)[2]


def add_parser(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    from avatar.commands.speak import SPEAK_FLAGS, SPEAK_GROUPS, SPEAK_METAVARS
    from avatar.core.config import add_flat_dataclass_args
    from avatar.engine.config import SpeakConfig
    from avatar.serve.config import ServeConfig

    p = subparsers.add_parser(name, help=summary, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="trained run folder(s) (output of `avatar fit`)")
    add_flat_dataclass_args(p, ServeConfig, groups={"server": tuple(f.name for f in dataclasses.fields(ServeConfig))},
                            metavars={"token": "TOKEN", "size": "PX", "buffer_ms": "MS", "speech_ahead_ms": "MS"})
    groups = {k: tuple(f for f in v if f not in ("batch", "segment_s", "context_s")) for k, v in SPEAK_GROUPS.items()}
    add_flat_dataclass_args(p, SpeakConfig, groups=groups, flags=SPEAK_FLAGS, metavars=SPEAK_METAVARS, other_group="engine")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from avatar.core.config import dataclass_from_args
    from avatar.engine.config import SpeakConfig
    from avatar.serve.config import ServeConfig
    from avatar.serve.server import AvatarServer

    cfg = dataclass_from_args(ServeConfig, args)
    server = AvatarServer(args.runs, cfg, dataclass_from_args(SpeakConfig, args),
                          log=lambda m: print(m, file=sys.stderr, flush=True))

    async def main() -> None:
        url = await server.start()
        print(f"avatar serve: open {url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    print("avatar serve: stopped", flush=True)
    return 0
