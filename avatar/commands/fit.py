"""`avatar fit VIDEO_OR_DATA_DIR -o runs/NAME`: preprocess if needed, then train (resumable)."""

from __future__ import annotations

import os

# libgomp's default busy-wait makes 2 torch threads ~50x slower when other processes share the cores
# (measured: 10 s/step -> 0.18 s/step on 2 shared cores). Must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
from pathlib import Path


def add_parser(subparsers, name: str, summary: str) -> None:
    from avatar.core.config import add_dataclass_args
    from avatar.train.config import FitConfig
    from avatar.train.presets import PRESETS

    p = subparsers.add_parser(
        name, help=summary, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a person-specific audio-driven Gaussian avatar.\n\n"
        "  avatar fit video.mp4 -o runs/NAME              preprocess into runs/NAME/data, then train\n"
        "  avatar fit data/NAME -o runs/NAME --preset gpu  train on a preprocessed dataset folder\n\n"
        "Re-running the same command resumes from the last checkpoint. TensorBoard: tensorboard --logdir runs/NAME/tb",
    )
    p.add_argument("input", metavar="VIDEO_OR_DATA_DIR", help="a talking-head video, or a dataset folder from `avatar preprocess`")
    p.add_argument("-o", "--output", required=True, metavar="RUN", help="run folder (config.yaml, checkpoints/, tb/, model.pt, metrics.json)")
    p.add_argument("--preset", default="cpu", metavar="NAME",
                   help=f"named complete config: {', '.join(PRESETS)} (or a .yaml file); fields below override it (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_args(p, FitConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avatar.core.config import apply_overrides, overrides_from_args
    from avatar.train.presets import get_preset
    from avatar.train.trainer import fit

    cfg = apply_overrides(get_preset(args.preset), overrides_from_args(args))
    run_dir = Path(args.output)
    from avatar.preprocess.inputs import dataset_for

    data_dir = dataset_for(args.input, run_dir, log=print)
    metrics = fit(cfg, data_dir, run_dir, progress=not args.no_progress)
    from avatar.commands.eval import print_table

    print_table(metrics)
    print(f"run folder: {run_dir} (model.pt, metrics.json, tb/)")
    return 0
