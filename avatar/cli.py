"""The `avatar` console script: a thin dispatcher over the library.

Each subcommand lives in its own module under `avatar.commands` and exposes
`add_parser(subparsers)` (registering its options) and `run(args) -> int`. Modules are imported
only for the subcommand being run, so `avatar --help` stays fast and a missing optional
dependency only affects the command that needs it.

User errors (`AvatarError`) print one line `avatar: error: ...` and exit non-zero, never a
traceback; Ctrl-C exits 130 after the command has had its chance to checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from avatar.errors import AvatarError

# name -> (module, one-line summary). The order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "preprocess": ("avatar.commands.preprocess", "turn a talking-head video into a training dataset folder"),
    "fit": ("avatar.commands.fit", "preprocess (if needed) and train a Gaussian avatar"),
    "eval": ("avatar.commands.eval", "evaluate a trained run on its held-out frames or on new audio"),
    "speak": ("avatar.commands.speak", "render a trained avatar saying an audio file (mp4 with audio)"),
    "view": ("avatar.commands.view", "open the interactive 3D web viewer for a trained avatar"),
    "export": ("avatar.commands.export", "export a trained avatar (Gaussian .ply, motion files)"),
    "serve": ("avatar.commands.serve", "serve a live talking avatar to the browser (WebRTC) with an HTTP API"),
    "batch": ("avatar.commands.batch", "render many clips / fit many avatars on this machine or a Ray cluster"),
}


def _available_commands() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (mod, summary) in COMMANDS.items():
        if importlib.util.find_spec(mod) is not None:
            out[name] = (mod, summary)
    return out


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the parser. With `only`, import just that subcommand's module (fast path)."""
    parser = argparse.ArgumentParser(
        prog="avatar",
        description="Person-specific audio-driven 3D Gaussian talking heads.\n\n"
        "  avatar preprocess video.mp4 -o data/NAME   video -> dataset folder\n"
        "  avatar fit video.mp4 -o runs/NAME           dataset -> trained avatar\n"
        "  avatar speak runs/NAME --audio a.wav -o out.mp4\n"
        "  avatar view runs/NAME\n\n"
        "Run `avatar COMMAND --help` for every option of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from avatar import __version__

    parser.add_argument("--version", action="version", version=f"avatar {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, summary) in _available_commands().items():
        if only is not None and name != only:
            sub.add_parser(name, help=summary)
            continue
        module = importlib.import_module(mod)
        module.add_parser(sub, name, summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    only = first if first in COMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if not hasattr(args, "func"):
        parser.error(f"command '{args.command}' is not available in this installation")
    try:
        return int(args.func(args) or 0)
    except AvatarError as e:
        print(f"avatar: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("avatar: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `avatar speak --stream | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def console() -> int:
    """The `avatar` console script: MediaPipe/TFLite's native log lines muted (avatar/logs.py), then `main`."""
    from avatar.core.logs import mute_native_stderr

    mute_native_stderr()
    return main()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console())
