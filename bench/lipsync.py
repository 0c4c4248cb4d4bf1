"""Lip sync of trained avatars over every audio file in a folder, plus synthetic voices (issue 17).

    python bench/lipsync.py runs/NAME                                   (default: ../shared/data/audio + TTS)
    python bench/lipsync.py runs/A runs/B --audio-dir clips/ --device cpu --no-tts

For each audio file this computes exactly what `avatar eval RUN --audio FILE --json` reports: the avatar
speaks the file (`avatar.evaluation.lipsync.render_sync`: default `SpeakConfig`, mouth opening from MediaPipe face
mesh on the rendered frames, or the model's lip Gaussians when face mesh cannot read the render,
`mouth_measure`), then AV-offset (frames, > 0 = video late) and AV-corr against the audio envelope.
The training clip's reference figures (`avatar.evaluation.lipsync.clip_sync`: gt_av_offset_frames, gt_av_corr)
are computed once. Each file is then judged against the clip's own figures (issue 17's targets):
d_offset = AV-offset - the clip's offset, |d_offset| <= 1 frame on every speech file; corr_ratio = AV-corr / the
clip's AV-corr, >= 0.8 on average and >= 0.6 on every speech file (singing, a file named *singer*, is reported,
not required). With espeak-ng installed (scripts/install.sh), one synthetic sentence per language of
`avatar.testing.TTS_SAMPLES` is generated into a temporary folder and measured too (--no-tts: not).
Prints a table per run and ends with one JSON line: per run the reference, per-file figures, their means
(files whose corr is undefined, e.g. silence, are left out), the targets met, and the machine. The figures are deterministic (one render per file, no repeats needed); `wall_s` per file is
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


def is_singing(name: str) -> bool:
    return "singer" in name.lower() or "singing" in name.lower()


def judge(rows: list[dict], gt_offset: int | None, gt_corr: float | None) -> dict:
    """Issue 17's targets over the speech files of `rows` (adds d_offset / corr_ratio to each row)."""
    speech = []
    for r in rows:
        if "error" in r or gt_offset is None or not gt_corr:
            continue
        r["d_offset"] = int(r["av_offset_frames"] - gt_offset)
        r["corr_ratio"] = None if r["av_corr"] is None else round(r["av_corr"] / gt_corr, 3)
        r["singing"] = is_singing(r["file"])
        if not r["singing"] and r["corr_ratio"] is not None:
            speech.append(r)
    if not speech:
        return {"speech_files": 0}
    ratios = [r["corr_ratio"] for r in speech]
    return {"speech_files": len(speech),
            "files_offset_within_1": sum(abs(r["d_offset"]) <= 1 for r in speech),
            "mean_abs_d_offset": round(sum(abs(r["d_offset"]) for r in speech) / len(speech), 3),
            "mean_corr_ratio": round(sum(ratios) / len(ratios), 3), "min_corr_ratio": min(ratios),
            "target_offset_every_file": all(abs(r["d_offset"]) <= 1 for r in speech),
            "target_mean_corr_ratio_0.8": sum(ratios) / len(ratios) >= 0.8,
            "target_min_corr_ratio_0.6": min(ratios) >= 0.6}


def run(run_dir: Path, folder: Path, device: str, extra: list[Path] = ()) -> dict:
    from avatar.core.audio import probe_duration
    from avatar.engine import Avatar
    from avatar.errors import AvatarError
    from avatar.evaluation.lipsync import clip_sync, render_sync

    files = audio_files(folder) + list(extra)
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
    summary["targets"] = judge(rows, gt["gt_av_offset_frames"], gt["gt_av_corr"])
    m_off = summary["mean_abs_offset_frames"]
    m_corr = summary["mean_av_corr"]
    print(f"mean |av_offset_frames| {'n/a' if m_off is None else format(m_off, '.2f')}, mean av_corr "
          f"{'n/a' if m_corr is None else format(m_corr, '.3f')} over {len(ok)} files"
          + (f" ({summary['failed']} failed)" if summary["failed"] else ""))
    t = summary["targets"]
    if t.get("speech_files"):
        print(f"vs the clip: offset within 1 frame on {t['files_offset_within_1']}/{t['speech_files']} speech files "
              f"(mean |d| {t['mean_abs_d_offset']:.2f}), corr x{t['mean_corr_ratio']:.2f} mean, x{t['min_corr_ratio']:.2f} min "
              f"(targets: every file, x0.8, x0.6)")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("runs", metavar="RUN", nargs="+", help="finished run folders (with model.pt)")
    ap.add_argument("--audio-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "audio"),
                    help="folder of audio files (default: ../shared/data/audio)")
    ap.add_argument("--device", default="auto", help="torch device (default: auto, like `avatar eval`)")
    ap.add_argument("--no-tts", action="store_true", help="do not add espeak-ng voices (default: add them when installed)")
    args = ap.parse_args(argv)
    import tempfile

    from avatar.errors import AvatarError
    from avatar.testing import espeak_available, tts_samples

    with tempfile.TemporaryDirectory(prefix="lipsync_tts_") as tmp:
        extra = []
        if not args.no_tts:
            if espeak_available():
                extra = tts_samples(tmp)
            else:
                print("espeak-ng not installed: no synthetic voices (scripts/install.sh installs it)", file=sys.stderr)
        try:
            summaries = [run(Path(r), Path(args.audio_dir), args.device, extra) for r in args.runs]
        except AvatarError as e:
            print(f"bench/lipsync.py: error: {e}", file=sys.stderr)
            return 2
    out = summaries[0] if len(summaries) == 1 else {"bench": "lipsync", "runs": summaries}
    if len(summaries) > 1:
        out["all_targets"] = {k: all(s["targets"].get(k, False) for s in summaries)
                              for k in ("target_offset_every_file", "target_mean_corr_ratio_0.8", "target_min_corr_ratio_0.6")}
    emit(out, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
