"""What is done: output sidecars, the completeness check, and the batch report.

A job is *complete* when
  1. its output exists (mp4/webm written by `VideoWriter`, which renames a hidden temporary file into
     place only after the muxer's trailer, so a killed render never leaves a complete-looking file), and
  2. its sidecar `OUTDIR/.batch/<output>.json` exists, written atomically by the worker *after* that
     rename, and carries the job's key (avatar/batch/jobs.py: `job_key`), and
  3. the output still matches the sidecar: same byte size, and the frame count read back from the
     container equals the sidecar's, which equals round(audio duration x fps) (the frame-exactness
     contract of `Speaker.render_file`).
Anything else (no sidecar, another key, a truncated or replaced file) is redone. The sidecar is
removed before a job renders, so a crash between the output rename and the new sidecar leaves a file
that the next run redoes rather than trusts.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

SIDECAR_DIR = ".batch"
REPORT_NAME = "batch_report.json"


def sidecar_path(outdir: str | os.PathLike, name: str) -> Path:
    return Path(outdir) / SIDECAR_DIR / (name + ".json")


def count_frames(output: str | os.PathLike) -> int | None:
    """Frames in a rendered output read back from the file (None when unreadable): the video stream's frame
    count for a container, the PNG count for a transparent PNG-sequence folder."""
    p = Path(output)
    if p.is_dir():
        return sum(1 for f in p.iterdir() if f.suffix == ".png")
    try:
        import av

        with av.open(str(p)) as c:
            s = c.streams.video[0]
            if s.frames:
                return int(s.frames)
            return sum(1 for _ in c.demux(s) if _.size)  # webm has no frame count in its header
    except Exception:  # noqa: BLE001 - any unreadable file is simply not complete
        return None


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.iterdir() if f.is_file())
    return p.stat().st_size


def is_complete(outdir: str | os.PathLike, name: str, output: str | os.PathLike, key: str) -> dict | None:
    """The sidecar of a complete output for this key, else None (see the module docstring)."""
    side = sidecar_path(outdir, name)
    out = Path(output)
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("key") != key or not out.exists():
        return None
    try:
        if _size(out) != meta.get("bytes"):
            return None
    except OSError:
        return None
    expect = int(round(float(meta.get("duration_s", -1)) * float(meta.get("fps", 0))))
    frames = count_frames(out)
    if frames is None or frames != meta.get("frames") or frames != expect:
        return None
    return meta


def write_sidecar(outdir: str | os.PathLike, name: str, output: str | os.PathLike, key: str, summary: dict) -> None:
    from avatar.core.io import write_json_atomic

    meta = {"key": key, "bytes": _size(Path(output)), "frames": int(summary["frames"]),
            "duration_s": float(summary["duration_s"]), "fps": float(summary["fps"]),
            "seconds": float(summary.get("seconds", 0.0))}
    write_json_atomic(sidecar_path(outdir, name), meta)


def clear_sidecar(outdir: str | os.PathLike, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        sidecar_path(outdir, name).unlink()


def remove_partials(output: str | os.PathLike) -> int:
    """Delete the hidden temporary files/folders a killed writer left for `output` (`.NAME.<hex>.tmp*`,
    the names `avatar.core.io.make_temp_file/_dir` give). Returns how many were removed."""
    import shutil

    out = Path(output)
    n = 0
    if not out.parent.is_dir():
        return 0
    for p in out.parent.glob(f".{out.name}.*.tmp*"):
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            n += 1
    return n


# ---------------------------------------------------------------------------------------------
# report


def write_report(outdir: str | os.PathLike, report: dict[str, Any]) -> Path:
    from avatar.core.io import write_json_atomic

    path = Path(outdir) / REPORT_NAME
    write_json_atomic(path, report)
    return path


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


def format_table(rows: list[dict[str, Any]], width: int = 60) -> str:
    """The terminal table: one line per job (status, seconds, frames/s, reason)."""
    name_w = min(max([len(r["name"]) for r in rows] + [3]), 40)
    lines = [f"{'job':<{name_w}}  {'status':<11} {'seconds':>8} {'frames/s':>9}  reason"]
    for r in rows:
        secs = f"{r['seconds']:.2f}" if r.get("seconds") else "-"
        fps = f"{r['render_fps']:.1f}" if r.get("render_fps") else "-"
        reason = (r.get("reason") or "")[: max(width, 20)]
        name = r["name"] if len(r["name"]) <= name_w else "..." + r["name"][-(name_w - 3):]
        lines.append(f"{name:<{name_w}}  {r['status']:<11} {secs:>8} {fps:>9}  {reason}")
    c = counts(rows)
    lines.append(", ".join(f"{v} {k}" for k, v in sorted(c.items())) or "no jobs")
    return "\n".join(lines)
