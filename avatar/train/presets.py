"""Named, complete fit configurations (`avatar fit --preset NAME`): the YAML files in configs/.

configs/NAME.yaml is the one source of truth of preset NAME: every field of `FitConfig` written out
(tests/test_fit.py checks that none is missing, so a preset never silently takes a changed default).
This module only finds, loads and validates them; each file's header comment says what it is for:

* `cpu`  — 2 CPU cores in about half an hour: 128 px training resolution, fewer Gaussians, SH degree 1.
* `gpu`  — one GPU, full dataset resolution, TalkingGaussian-like sizes and SH degree 2.
* `tiny` — seconds on CPU for tests and `avatar.testing.make_tiny_run`.

configs/ sits next to the `avatar/` folder (an editable install or a source checkout); the
AVATAR_CONFIG_DIR environment variable points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from avatar.errors import AvatarError
from avatar.train.config import FitConfig

CONFIG_DIR = Path(os.environ.get("AVATAR_CONFIG_DIR") or Path(__file__).resolve().parents[2] / "configs")
"""Folder of the preset YAML files."""


def preset_names(directory: Path = CONFIG_DIR) -> tuple[str, ...]:
    """Names of the presets in `directory` (the stems of its *.yaml files), sorted."""
    return tuple(sorted(p.stem for p in Path(directory).glob("*.yaml")))


PRESETS: tuple[str, ...] = preset_names()
"""The named presets, e.g. ("cpu", "gpu", "tiny")."""


def preset_path(name: str) -> Path:
    """configs/NAME.yaml of a named preset (AvatarError for an unknown name)."""
    if name not in PRESETS:
        raise AvatarError(f"unknown preset '{name}' (choose {', '.join(PRESETS) or f'one in {CONFIG_DIR}'} or give a .yaml file)")
    return CONFIG_DIR / f"{name}.yaml"


def get_preset(name: str) -> FitConfig:
    """A preset by name, or a YAML file path (e.g. configs/cpu.yaml or a run's config.yaml).

    Unknown fields are an error (`avatar.core.config.from_dict`, strict); fields a file leaves out
    take the `FitConfig` defaults (a run's config.yaml from an older avatar still loads)."""
    from avatar.core.config import load_yaml

    if Path(name).suffix in (".yaml", ".yml") and name not in PRESETS:
        return load_yaml(FitConfig, Path(name))
    return load_yaml(FitConfig, preset_path(name))


__all__ = ["CONFIG_DIR", "PRESETS", "get_preset", "preset_names", "preset_path"]
