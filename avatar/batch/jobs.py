"""Speak jobs: where they come from (a manifest or an audio folder), their options, their identity.

A manifest is JSON Lines, one job a line:

    {"run": "runs/anna", "audio": "lessons/fr/01.wav", "output": "anna/fr_01.mp4", "pose": "audio", "lip_scale": 1.2}

`run` and `audio` are required (relative paths are read from the manifest's folder); `output` is a path
under OUTDIR (default: the audio's name with .mp4). Every other key is an `avatar speak` option: the
`SpeakConfig` field name (`lip_scale`) or the CLI spelling (`lip-scale`, `no-torso`, `feature-model`,
`stream-segment`); it is parsed and type-checked by `avatar.core.config.apply_overrides`, so an unknown
or malformed option fails that job alone with a one-line reason. `allow_long` / `max_duration` are the
speak command's duration limit. Options given on the command line apply to every job; a manifest
line's own keys win.

A job's key (`job_key`) hashes what its output depends on: the model file, the audio file (size and
mtime), the resolved `SpeakConfig` and the output name. A rerun skips a job only when the output's
sidecar carries the same key (avatar/batch/state.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from avatar.errors import AvatarError

DEFAULT_MAX_DURATION = 600.0  # the `avatar speak --max-duration` default
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus", ".mp4", ".mov", ".mkv", ".webm")
JOB_KEYS = ("run", "audio", "output", "allow_long", "max_duration")
# `avatar speak` option spellings that are not a SpeakConfig field name with '-' for '_'
CLI_ALIASES = {"feature_model": "feature_model_dir", "stream_segment": "stream_segment_frames"}


@dataclasses.dataclass
class SpeakJob:
    """One clip to render: which avatar says which audio into which output, with which speak options."""

    name: str
    """Unique job name (the output path relative to OUTDIR)."""
    run: str
    """Trained run folder."""
    audio: str
    """Audio (or video) file to speak."""
    output: str
    """Absolute output path (.mp4, .webm, or a folder for transparent PNGs)."""
    options: dict[str, Any]
    """Speak options as given (CLI defaults merged with the manifest line)."""
    max_duration: float | None = DEFAULT_MAX_DURATION
    """Longest audio rendered (None: no limit, `allow_long`)."""
    line: int = 0
    """Manifest line number (0 for --audio-dir jobs)."""
    error: str | None = None
    """Set when the job is invalid before it runs (its one-line reason)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def speak_config(options: dict[str, Any]):
    """The `SpeakConfig` for a job's options (one-line AvatarError for an unknown or malformed option).

    Values are handed to `apply_overrides` as text so that each is parsed by its field's type, exactly as
    a command-line value would be."""
    from avatar.core.config import apply_overrides
    from avatar.engine import SpeakConfig

    text: dict[str, str] = {}
    for key, value in options.items():
        k = key.replace("-", "_")
        if k == "no_torso":  # `avatar speak --no-torso`
            k, value = "torso", not _truthy(value, key)
        k = CLI_ALIASES.get(k, k)
        text[k] = _as_text(value)
    try:
        cfg = apply_overrides(SpeakConfig(), text)
    except AvatarError as e:
        raise AvatarError(str(e).replace("config has no field", "unknown speak option")) from None
    cfg.validate()  # the engine's range checks, as `avatar speak` gets them
    return cfg


def _truthy(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise AvatarError(f"option '{key}': expected true/false, got {value!r}")


def _as_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return str(value)


def _split(entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    job = {k: v for k, v in entry.items() if k.replace("-", "_") in JOB_KEYS}
    job = {k.replace("-", "_"): v for k, v in job.items()}
    return job, {k: v for k, v in entry.items() if k.replace("-", "_") not in JOB_KEYS}


def _resolve(path: str, base: Path) -> str:
    p = Path(os.path.expanduser(str(path)))
    return str(p if p.is_absolute() else (base / p))


def make_job(entry: dict[str, Any], outdir: Path, base: Path, defaults: dict[str, Any], line: int = 0,
             max_duration: float | None = DEFAULT_MAX_DURATION) -> SpeakJob:
    """A `SpeakJob` from one manifest entry (an invalid entry still becomes a job, with `error` set)."""
    job, opts = _split(entry)
    missing = [k for k in ("run", "audio") if not job.get(k)]
    audio = str(job.get("audio") or "")
    output = str(job.get("output") or (Path(audio).stem + ".mp4" if audio else f"line{line}.mp4"))
    out = Path(output)
    error = None
    if out.is_absolute() or ".." in out.parts:
        error = f"output '{output}' must be a relative path inside OUTDIR"
    if missing:
        error = f"missing {' and '.join(repr(k) for k in missing)}"
    try:
        if job.get("allow_long") and _truthy(job["allow_long"], "allow_long"):
            max_duration = None
        elif job.get("max_duration") is not None:
            max_duration = float(job["max_duration"])
    except (AvatarError, TypeError, ValueError) as e:
        error = f"allow_long/max_duration: {e}"
    return SpeakJob(name=out.as_posix(), run=_resolve(job.get("run", ""), base) if job.get("run") else "",
                    audio=_resolve(audio, base) if audio else "", output=str(outdir / out),
                    options={**defaults, **opts}, max_duration=max_duration, line=line, error=error)


def read_manifest(path: str | os.PathLike, outdir: Path, defaults: dict[str, Any],
                  max_duration: float | None = DEFAULT_MAX_DURATION) -> list[SpeakJob]:
    """Jobs from a JSON Lines manifest; blank lines and lines starting with # are ignored.

    A line that is not a JSON object becomes a failed job (reason: the line number and the parse error);
    two jobs writing the same output is a command-line error (both would overwrite each other)."""
    path = Path(path)
    if not path.is_file():
        raise AvatarError(f"{path}: no such manifest file")
    jobs = []
    for i, raw in enumerate(path.read_text().splitlines(), 1):
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        try:
            entry = json.loads(raw)
            if not isinstance(entry, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            jobs.append(SpeakJob(name=f"line{i}", run="", audio="", output=str(outdir / f"line{i}.mp4"), options={},
                                 line=i, error=f"manifest line {i}: not a JSON object ({str(e).splitlines()[0]})"))
            continue
        jobs.append(make_job(entry, outdir, path.parent, defaults, i, max_duration))
    _check_unique(jobs, path)
    return jobs


def audio_dir_jobs(run: str, audio_dir: str | os.PathLike, outdir: Path, defaults: dict[str, Any],
                   max_duration: float | None = DEFAULT_MAX_DURATION) -> list[SpeakJob]:
    """One job per audio file in `audio_dir` (sorted, not recursive), output NAME.mp4."""
    d = Path(audio_dir)
    if not d.is_dir():
        raise AvatarError(f"{d}: no such audio folder")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise AvatarError(f"{d}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    jobs = [make_job({"run": run, "audio": str(p.resolve()), "output": p.stem + ".mp4"}, outdir, Path.cwd(), defaults,
                     0, max_duration) for p in files]
    _check_unique(jobs, d)
    return jobs


def _check_unique(jobs: list[SpeakJob], source: Path) -> None:
    seen: dict[str, SpeakJob] = {}
    for j in jobs:
        if j.name in seen:
            raise AvatarError(f"{source}: two jobs write {j.name} (lines {seen[j.name].line} and {j.line}); "
                              f"give each an 'output'")
        seen[j.name] = j


def _stat(path: str | os.PathLike) -> list[int]:
    st = os.stat(path)
    return [int(st.st_size), int(st.st_mtime_ns)]


def job_key(job: SpeakJob, cfg) -> str:
    """Hash of everything the output depends on (model file, audio file, resolved config, output name)."""
    from avatar.core.config import to_dict

    run = Path(job.run)
    model = run / "model.pt" if run.is_dir() else run
    blob = {"model": [str(model.resolve()), *_stat(model)], "audio": [str(Path(job.audio).resolve()), *_stat(job.audio)],
            "config": to_dict(cfg), "output": job.name, "max_duration": job.max_duration}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:20]
