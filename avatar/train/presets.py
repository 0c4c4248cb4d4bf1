"""Named, complete fit configurations (`avatar fit --preset NAME`), mirrored as YAML in configs/.

* `cpu`  — 2 CPU cores in about half an hour: 128 px training resolution, fewer Gaussians, SH degree 1,
           a short static warm-up, time limit 28 min.
* `gpu`  — one GPU, full dataset resolution, TalkingGaussian-like sizes and SH degree 2.
* `tiny` — seconds on CPU for tests and `avatar.testing.make_tiny_run`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from avatar.errors import AvatarError
from avatar.model.config import ModelConfig
from avatar.train.config import DataConfig, FitConfig, LossConfig, OptimConfig, StrategyConfig


def cpu() -> FitConfig:
    return FitConfig(
        iters=6000, device="cpu", threads=2, time_limit_min=28.0, log_every=25, eval_every=500, ckpt_every=250,
        data=DataConfig(resolution=128, cache_frames=3000, val_frames=6),
        model=ModelConfig(face_points=4000, shell_points=2000, mouth_points=800, torso_points=1500, sh_degree=1,
                          grid_levels=8, grid_max_res=48, grid_log2_table=14, motion_hidden=64),
        loss=LossConfig(),
        strategy=StrategyConfig(refine_start=300, refine_stop=4000, refine_every=100, grad_threshold=2e-4, max_gaussians=20000),
        # 4x TalkingGaussian's network rate: ~10x fewer steps than its 50k (lieu, step 809: +0.07 dB, LMD -0.03 px)
        optim=OptimConfig(warmup=300, sh_degree_every=1000, net_lr=2e-3),
    )


def gpu() -> FitConfig:
    return FitConfig(
        iters=20000, device="auto", log_every=100, eval_every=2000, ckpt_every=2000, time_limit_min=0.0,
        data=DataConfig(resolution=0, cache_frames=1500, val_frames=8),
        model=ModelConfig(face_points=10000, shell_points=5000, mouth_points=3000, torso_points=5000, sh_degree=2,
                          grid_levels=12, grid_max_res=64, grid_log2_table=17, motion_hidden=64),
        loss=LossConfig(),
        strategy=StrategyConfig(refine_start=500, refine_stop=15000, refine_every=100, grad_threshold=2e-4, max_gaussians=80000),
        optim=OptimConfig(warmup=1000, sh_degree_every=1000),
    )


def tiny() -> FitConfig:
    return FitConfig(
        iters=30, device="cpu", log_every=5, eval_every=0, ckpt_every=10, final_eval=True,
        data=DataConfig(resolution=0, cache_frames=64, val_frames=2),
        model=ModelConfig(face_points=300, shell_points=150, mouth_points=80, torso_points=120, sh_degree=1,
                          grid_levels=4, grid_base_res=4, grid_max_res=16, grid_log2_table=10, motion_hidden=16,
                          audio_window=3, att_window=3),
        strategy=StrategyConfig(refine_start=10, refine_stop=25, refine_every=10, max_gaussians=2000),
        optim=OptimConfig(warmup=5, sh_degree_every=10),
    )


PRESETS: dict[str, Callable[[], FitConfig]] = {"cpu": cpu, "gpu": gpu, "tiny": tiny}
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def get_preset(name: str) -> FitConfig:
    """A preset by name, or a YAML file path (e.g. configs/cpu.yaml or a run's config.yaml)."""
    if name in PRESETS:
        return PRESETS[name]()
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        from avatar.core.config import load_yaml

        return load_yaml(FitConfig, path)
    raise AvatarError(f"unknown preset '{name}' (choose {', '.join(PRESETS)} or give a .yaml file)")


def write_preset_yamls(directory: Path = CONFIG_DIR) -> list[Path]:
    """Regenerate configs/NAME.yaml from the Python presets (the source of truth)."""
    from avatar.core.config import save_yaml

    out = []
    for name, make in PRESETS.items():
        p = Path(directory) / f"{name}.yaml"
        save_yaml(make(), p)
        out.append(p)
    return out


__all__ = ["PRESETS", "get_preset", "cpu", "gpu", "tiny", "write_preset_yamls", "dataclasses"]
