"""What `avatar fit` and `avatar batch fit` accept as input: a video (preprocessed into RUN/data) or a dataset folder."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from avatar.core.dataset_format import DATASET_JSON
from avatar.errors import AvatarError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


def run_name(src: str | Path) -> str:
    """The run name an input gives: a video's stem or a dataset folder's name."""
    p = Path(src)
    return p.stem if p.suffix.lower() in VIDEO_SUFFIXES else p.name


def dataset_for(src: str | Path, run_dir: str | Path, log: Callable[[str], None] | None = None) -> Path:
    """A dataset folder for `src`: itself if it is one, else RUN/data (preprocessed now unless complete).

    Resumable: a RUN/data folder whose dataset.json exists is complete (it is written last) and reused;
    an incomplete one resumes from its cached stages.
    """
    src, run_dir = Path(src), Path(run_dir)
    if src.is_dir():
        return src
    if not src.is_file():
        raise AvatarError(f"{src}: no such video or dataset folder")
    if src.suffix.lower() not in VIDEO_SUFFIXES:
        raise AvatarError(f"{src}: not a video ({', '.join(VIDEO_SUFFIXES)}) or a dataset folder")
    data_dir = run_dir / "data"
    if (data_dir / DATASET_JSON).is_file():
        return data_dir
    from avatar.preprocess.pipeline import run_preprocess

    if log is not None:
        log(f"preprocessing {src} -> {data_dir}")
    run_preprocess(src, data_dir)
    return data_dir
