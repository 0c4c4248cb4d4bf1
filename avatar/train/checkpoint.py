"""Atomic checkpoints in RUN/checkpoints/step_XXXXXXX.pt (keep the last K).

Each checkpoint is written to a temporary name and renamed (`avatar.core.io.atomic_path`), and older
ones are deleted only after the new one is complete: a failed write (disk full, kill -9) leaves the
previous good checkpoint in place and never a truncated file under a final name.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from avatar.errors import AvatarError
from avatar.core.io import atomic_path

_PATTERN = re.compile(r"step_(\d+)\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in d.iterdir() if (m := _PATTERN.search(p.name))]
    return sorted(out)


def save_checkpoint(run_dir: str | Path, step: int, payload: dict, keep: int = 2) -> Path | None:
    """Write payload atomically; on OSError warn and keep the previous checkpoints. Returns the path or None."""
    path = checkpoint_dir(run_dir) / f"step_{step:07d}.pt"
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as e:
        warnings.warn(f"checkpoint at step {step} failed ({e}); the last good checkpoint is kept", stacklevel=2)
        return None
    for _, old in list_checkpoints(run_dir)[:-max(1, keep)]:
        old.unlink(missing_ok=True)
    return path


def load_latest(run_dir: str | Path, map_location="cpu") -> dict | None:
    """Newest readable checkpoint (a corrupt newest one falls back to the one before), or None."""
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file: try the previous one
            warnings.warn(f"{path}: unreadable checkpoint ({e}); trying an older one", stacklevel=2)
    if list_checkpoints(run_dir):
        raise AvatarError(f"{checkpoint_dir(run_dir)}: no readable checkpoint; delete the folder to start over")
    return None
