"""Lip sync of a trained avatar over every audio file in a folder.

    python bench/lipsync.py runs/NAME                                   (default: ../shared/data/audio)
    python bench/lipsync.py runs/NAME --audio-dir clips/ --device cpu

For each audio file this computes exactly what `avatar eval RUN --audio FILE --json` reports: the avatar
speaks the file (`avatar.evaluation.lipsync.render_sync`: default `SpeakConfig`, mouth opening from MediaPipe face
mesh on the rendered frames, or the model's lip Gaussians when face mesh cannot read the render,
`mouth_measure`), then AV-offset (frames, > 0 = video late) and AV-corr against the audio envelope.
The training clip's reference figures (`avatar.evaluation.lipsync.clip_sync`: gt_av_offset_frames, gt_av_corr)
are computed once. Prints a table and ends with one JSON line: the reference, per-file figures, and their
mean |offset| and mean corr (files whose corr is undefined, e.g. silence, are left out of the mean), and the
machine. The figures are deterministic (one render per file, no repeats needed); `wall_s` per file is
informative only, bench/speak.py is the timing bench.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common.py, also when loaded by path
from _common import emit  # noqa: E402

AUDIO_EXTS = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus")
MAX_DURATION_S = 600.0  # the limit `avatar eval --audio` applies (avatar.evaluation.lipsync.eval_audio)


def _num(x):
    """JSON-safe float (NaN -> None)."""
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def audio_files(folder: Path) -> list[Path]:
    from avatar.errors import AvatarError

    if not folder.is_dir():
        raise AvatarError(f"{folder}: no such audio folder (pass --audio-dir)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTS)
    if not files:
        raise AvatarError(f"{folder}: no audio files ({', '.join(AUDIO_EXTS)})")
    return files


def run(run_dir: Path, folder: Path, device: str) -> dict:
    from avatar.core.audio import probe_duration
    from avatar.errors import AvatarError
    from avatar.evaluation.lipsync import clip_sync, render_sync
    from avatar.engine import Avatar

    files = audio_files(folder)
    if not run_dir.is_dir():
        raise AvatarError(f"{run_dir}: no such run folder (train one with `avatar fit VIDEO -o {run_dir}`)")
    avatar = Avatar.load(run_dir, device=device)
    t_all = time.perf_counter()
    gt = clip_sync(avatar)
    print(f"{run_dir}: {len(files)} audio files in {folder}")
    print(f"training clip: gt_av_offset_frames {gt['gt_av_offset_frames']}, gt_av_corr "
          f"{'n/a' if gt['gt_av_corr'] is None else format(gt['gt_av_corr'], '.3f')} ({gt['gt_source']})")
    print(f"{'file':<34} {'seconds':>8} {'av_offset_frames':>17} {'av_corr':>8}  measure")
    rows = []
    for f in files:
        row: dict = {"file": f.name}
        try:
            dur = probe_duration(f)
            row["seconds"] = round(float(dur), 3)
            if dur > MAX_DURATION_S:
                raise AvatarError(f"{f}: longer than {MAX_DURATION_S:.0f} s; lip-sync evaluation is meant for clips")
            t0 = time.perf_counter()
            r = render_sync(avatar, f)
            row.update(av_offset_frames=r["av_offset_frames"], av_corr=_num(r["av_corr"]), frames=r["frames"],
                       mouth_measure=r["mouth_measure"], face_found_ratio=round(r["face_found_ratio"], 4),
                       wall_s=round(time.perf_counter() - t0, 2))
            corr = "n/a" if row["av_corr"] is None else f"{row['av_corr']:.3f}"
            print(f"{f.name:<34} {row['seconds']:>8.2f} {row['av_offset_frames']:>17d} {corr:>8}  {row['mouth_measure']}")
        except AvatarError as e:
            row["error"] = str(e)
            print(f"{f.name:<34} error: {e}")
        rows.append(row)
        sys.stdout.flush()
    ok = [r for r in rows if "error" not in r]
    corrs = [r["av_corr"] for r in ok if r["av_corr"] is not None]
    summary = {
        "bench": "lipsync", "run": str(run_dir), "audio_dir": str(folder),
        "gt_av_offset_frames": gt["gt_av_offset_frames"], "gt_av_corr": _num(gt["gt_av_corr"]), "gt_source": gt["gt_source"],
        "files": rows, "evaluated": len(ok), "failed": len(rows) - len(ok),
        "mean_abs_offset_frames": (sum(abs(r["av_offset_frames"]) for r in ok) / len(ok)) if ok else None,
        "mean_av_corr": (sum(corrs) / len(corrs)) if corrs else None,
        "seconds": round(time.perf_counter() - t_all, 2),
    }
    m_off = summary["mean_abs_offset_frames"]
    m_corr = summary["mean_av_corr"]
    print(f"mean |av_offset_frames| {'n/a' if m_off is None else format(m_off, '.2f')}, mean av_corr "
          f"{'n/a' if m_corr is None else format(m_corr, '.3f')} over {len(ok)} files"
          + (f" ({summary['failed']} failed)" if summary["failed"] else ""))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("run", metavar="RUN", help="a finished run folder (with model.pt)")
    ap.add_argument("--audio-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "audio"),
                    help="folder of audio files (default: ../shared/data/audio)")
    ap.add_argument("--device", default="auto", help="torch device (default: auto, like `avatar eval`)")
    args = ap.parse_args(argv)
    from avatar.errors import AvatarError

    try:
        summary = run(Path(args.run), Path(args.audio_dir), args.device)
    except AvatarError as e:
        print(f"bench/lipsync.py: error: {e}", file=sys.stderr)
        return 2
    emit(summary, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
