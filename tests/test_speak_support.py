"""Shared helpers of the speak/lipsync tests (no tests here): one tiny trained run per session, test audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SR = 16000


def get_tiny_run(tmp_path_factory) -> Path:
    """The tiny trained run (avatar.testing.make_tiny_run), built once per session and shared by files."""
    from avatar.testing import make_tiny_run

    root = tmp_path_factory.getbasetemp() / "speak_tiny_run"
    if not (root / "model.pt").is_file():
        make_tiny_run(root)
    return root


def talking_wav(seconds: float = 2.0, silence: tuple[float, float] | None = None, sr: int = SR) -> np.ndarray:
    """Audio in the tiny dataset's style (0.3 * opening(t) * sin(220 Hz)), opening cycling at 25/12 Hz,
    optionally with a silent stretch [a, b) seconds."""
    t = np.arange(int(round(seconds * sr))) / sr
    opening = 0.5 + 0.5 * np.sin(2 * np.pi * t * 25 / 12)
    wav = (0.3 * opening * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    if silence is not None:
        wav[int(silence[0] * sr):int(silence[1] * sr)] = 0.0
    return wav


def voice_like(seconds: float, sr: int = SR) -> np.ndarray:
    """A harmonic, syllable-modulated signal that silero-vad tends to accept as voice."""
    t = np.arange(int(round(seconds * sr))) / sr
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    ph = 2 * np.pi * np.cumsum(f0) / sr
    return (0.2 * sum(np.sin(h * ph) / h for h in range(1, 15)) * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


