"""`ViewerConfig`: the settings of `avatar view`, one docstring per field.

avatar/commands/view.py generates its options from these fields (avatar/core/config.py
`add_flat_dataclass_args`): a new field gets its flag and `--help` line by being written here.
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass
class ViewerConfig:
    """Settings of the interactive web viewer."""

    host: str = "127.0.0.1"
    """address to bind (127.0.0.1: this machine only; 0.0.0.0 exposes it to the network, without authentication)"""
    port: int = 0
    """port (0: a free port is chosen and printed)"""
    audio_dir: str | None = None
    """folder of audio clips (wav/mp3/flac/ogg/m4a) offered in the page's clip list"""
    device: str = "auto"
    """render device: auto, cpu, cuda, cuda:N"""
    max_upload_mb: float = 20.0
    """largest audio upload accepted from the browser, in MB"""
    size: str | None = None
    """render size WIDTHxHEIGHT or xHEIGHT in pixels (default: the source clip's size, as `avatar speak`); the
    browser window sets the aspect, so the height is what counts; the adaptive factor lowers it while moving"""
    scale: float | None = None
    """render size as a factor of the source clip's size, instead of --size"""
    vad: Literal["silero", "energy", "off"] = "silero"
    """voice activity used to close the mouth in silence while a clip plays (as `avatar speak --vad`)"""
