"""`avatar view RUN`: open the interactive 3D web viewer (viser) for a trained avatar.

    avatar view runs/NAME                         http://127.0.0.1:PORT, this machine only
    avatar view runs/NAME --audio-dir clips/      pick clips from a folder (or upload in the page)
    avatar view runs/NAME --host 0.0.0.0 --port 8080   reachable from the network (no authentication!)

The browser orbits/pans/zooms around the head (server-side renders of the avatar for the browser's
camera), plays audio clips in sync with the speaking avatar, and has sliders for head offset,
blink, lip scale and resolution. Ctrl-C stops the server and deletes uploads.
"""

from __future__ import annotations

import argparse
import sys
import time

from avatar.errors import AvatarError

DESCRIPTION = __doc__.split("\n", 2)[2]


def add_parser(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=summary, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="trained run folder (output of `avatar fit`)")
    from avatar.core.config import add_flat_dataclass_args
    from avatar.viewer.config import ViewerConfig

    # every ViewerConfig field becomes an option, its docstring the help line (viewer/config.py)
    add_flat_dataclass_args(p, ViewerConfig, other_group="viewer", metavars={"audio_dir": "DIR"})
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from avatar.core.config import dataclass_from_args
    from avatar.viewer.config import ViewerConfig

    cfg = dataclass_from_args(ViewerConfig, args)
    if not 0 <= args.port <= 65535:
        raise AvatarError(f"--port {args.port}: must be 0..65535")
    if args.max_upload_mb <= 0:
        raise AvatarError(f"--max-upload-mb {args.max_upload_mb}: must be positive")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"avatar view: warning: binding {args.host}: anyone who can reach this machine on the port can "
              f"use the viewer and upload audio (no authentication). Use the default 127.0.0.1 (or an SSH "
              f"tunnel) unless you mean it.", file=sys.stderr)

    if cfg.size is not None or cfg.scale is not None:  # a bad request: one line, exit 2, before anything starts
        from avatar.core.camera import parse_size

        try:
            if cfg.size is not None:
                parse_size(cfg.size)
        except ValueError as e:
            raise AvatarError(str(e)) from None
        if cfg.scale is not None and not (cfg.scale > 0 and cfg.scale < float("inf")):
            raise AvatarError(f"--scale {cfg.scale}: must be a positive number")
    from avatar.engine import Avatar
    from avatar.viewer.clips import ClipLibrary
    from avatar.viewer.server import AvatarViewer

    clips = ClipLibrary(args.audio_dir, max_upload_bytes=int(args.max_upload_mb * 1e6))
    try:
        avatar = Avatar.load(args.run, device=args.device)
        viewer = AvatarViewer(avatar, clips, label=f"avatar · {args.run}", config=cfg)
    except BaseException:
        clips.close()
        raise
    if args.port and viewer.port != args.port:
        print(f"avatar view: port {args.port} was busy; using {viewer.port}", file=sys.stderr)
    print(f"avatar view: open {viewer.url} in a browser (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
    print("avatar view: stopped", flush=True)
    return 0
