"""The one inference engine: audio -> features -> motion -> Gaussians -> rendered, composited frames.

`avatar speak` (offline and `--stream`), the viewer, `avatar eval --audio` and every later server or
batch runner call this package; they differ only in where audio comes from and where frames go.

    from avatar.engine import Avatar, Speaker, SpeakConfig
    speaker = Speaker(Avatar.load("runs/me"), SpeakConfig())

    config.py      SpeakConfig (every engine control; its field docstrings are `avatar speak --help`)
    runtime.py     Avatar: a trained model ready to render (model.pt), plate re-projection
    speaker.py     Speaker: offline / streaming / per-frame rendering through the engine
    engine.py      FrameEngine: audio in, per-frame model inputs out (segments, gate, windows, motion)
    features.py    the run's feature extractor; training-clip silence statistics
    gate.py        SpeechGate, silent_rows, close_mouth (silence -> closed mouth)
    track.py       Motion / MotionTrack: head pose + offsets + camera + blink per frame
    pose.py        head pose generators (replay, static, audio-driven, file) and camera-path files
    blink.py       blink generators (learned, off, file)
    background.py  --background parsing and the final uint8 compositing

It imports the model, the kernels, the audio features and `avatar.core`; never training, evaluation,
the viewer or the CLI.
"""

from __future__ import annotations

_EXPORTS = {"Avatar": "avatar.engine.runtime", "Speaker": "avatar.engine.speaker",
            "SpeakConfig": "avatar.engine.config", "SpokenFrame": "avatar.engine.speaker",
            "FrameEngine": "avatar.engine.engine", "TrainingStats": "avatar.engine.features",
            "training_stats": "avatar.engine.features", "feature_fn_for": "avatar.engine.features"}


def __getattr__(name: str):
    """Lazy re-exports, so `import avatar.engine.pose` does not load torch."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'avatar.engine' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
