"""The one inference engine: audio -> features -> motion -> Gaussians -> rendered, composited frames.

`avatar speak` (offline and `--stream`), the viewer, `avatar eval --audio` and every later server or
batch runner call this package; they differ only in where audio comes from and where frames go.

    from avatar.engine import Avatar, Speaker, SpeakConfig
    speaker = Speaker(Avatar.load("runs/me"), SpeakConfig())

It imports the model, the kernels, the audio features and `avatar.core`; never training, evaluation,
the viewer or the CLI.
"""

from __future__ import annotations

_EXPORTS = {"Avatar": "avatar.engine.runtime", "Speaker": "avatar.engine.speak",
            "SpeakConfig": "avatar.engine.speak", "SpokenFrame": "avatar.engine.speak"}


def __getattr__(name: str):
    """Lazy re-exports, so `import avatar.engine.motion` does not load torch."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'avatar.engine' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
