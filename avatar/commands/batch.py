"""`avatar batch speak|fit`: many clips or many avatars at once, on this machine or a Ray cluster.

    avatar batch speak runs/anna --audio-dir lessons/ -o out/            every audio file in lessons/ -> out/NAME.mp4
    avatar batch speak --manifest jobs.jsonl -o out/ --workers 4         one job a line: run, audio, output, speak options
    avatar batch speak --manifest jobs.jsonl -o out/ --gpus-per-job 0.5 --address ray://head:10001
    avatar batch fit clips/*.mp4 -o runs/ --preset cpu                   preprocess + train each clip into runs/NAME

By default Ray runs embedded on this machine (started and stopped by the command, loopback only);
--address or RAY_ADDRESS sends the same jobs to an existing cluster (paths must be visible to every
node, e.g. a shared filesystem). Rerunning the same command skips complete outputs and redoes missing
or broken ones. OUTDIR/batch_report.json and the table printed at the end list every job.
Exit status: 0 every job done or skipped, 3 some jobs failed (the others finished), 2 bad command
line, 130 interrupted (Ctrl-C / SIGTERM; rerun to finish).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys

from avatar.errors import AvatarError

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as avatar/commands/fit.py, before torch is imported
DESCRIPTION = __doc__.split("\n", 2)[2]
EXIT_SOME_FAILED = 3  # avatar.batch.EXIT_SOME_FAILED (not imported here: `avatar --help` stays light)


def add_parser(subparsers, name: str, summary: str) -> None:
    p = subparsers.add_parser(name, help=summary, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="batch_command", metavar="{speak,fit}")
    sub.required = True
    _add_speak(sub.add_parser("speak", help="render many clips (an audio folder or a manifest)", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter))
    _add_fit(sub.add_parser("fit", help="preprocess + train many avatars", description=DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter))


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the jobs run")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes (default: one per CPU core, or GPUs / --gpus-per-job)")
    g.add_argument("--gpus-per-job", type=float, default=0.0, metavar="F",
                   help="GPUs reserved per worker, fractions allowed (0.5 = two workers share a GPU); default 0 (CPU)")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="an existing Ray cluster (ray://host:10001 or host:6379; default RAY_ADDRESS, else embedded local Ray)")
    g.add_argument("--max-retries", type=int, default=2, metavar="K",
                   help="times a job whose worker died (killed, out of memory) is retried on a fresh worker (default 2)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print the report as JSON on stdout instead of the table")


def _add_speak(p: argparse.ArgumentParser) -> None:
    from avatar.core.config import field_docs
    from avatar.engine import SpeakConfig

    p.add_argument("run", nargs="?", metavar="RUN", help="trained run folder (with --audio-dir)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio-dir", metavar="DIR", help="render RUN saying every audio file in DIR (OUTDIR/NAME.mp4)")
    src.add_argument("--manifest", metavar="FILE.jsonl",
                     help='one JSON job a line: {"run": ..., "audio": ..., "output": "name.mp4", <speak options>}')
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (outputs, batch_report.json)")
    p.add_argument("--device", default="auto", help="render device in each worker: auto, cpu, cuda (default auto)")
    p.add_argument("--allow-long", action="store_true", help="render audio longer than --max-duration")
    p.add_argument("--max-duration", type=float, default=600.0, metavar="S", help="longest audio rendered (default 600 s)")
    _add_common(p)
    g = p.add_argument_group("speak options for every job (as `avatar speak`; a manifest line's own keys win)")
    docs = field_docs(SpeakConfig)
    for f in dataclasses.fields(SpeakConfig):
        g.add_argument("--" + f.name.replace("_", "-"), dest="opt:" + f.name, default=argparse.SUPPRESS, metavar="V",
                       help=f"{docs.get(f.name, '')} (default: {f.default})".replace("%", "%%"))
    g.add_argument("--no-torso", dest="opt:torso", action="store_const", const="false", default=argparse.SUPPRESS,
                   help="render the head only (no torso Gaussians)")
    p.set_defaults(func=run_speak)


def _add_fit(p: argparse.ArgumentParser) -> None:
    from avatar.core.config import add_dataclass_args
    from avatar.train.config import FitConfig
    from avatar.train.presets import PRESETS

    p.add_argument("inputs", nargs="+", metavar="CLIP_OR_DATASET", help="talking-head videos or dataset folders")
    p.add_argument("-o", "--output", required=True, metavar="RUNSDIR", help="folder receiving one run per input (RUNSDIR/NAME)")
    p.add_argument("--preset", default="cpu", metavar="NAME", help=f"named fit config: {', '.join(PRESETS)} or a .yaml (default cpu)")
    _add_common(p)
    add_dataclass_args(p, FitConfig)
    p.set_defaults(func=run_fit)


def _sigterm_as_interrupt() -> None:
    """SIGTERM takes the Ctrl-C path (cleanup, report, exit 130), like a user's Ctrl-C."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _finish(report: dict, args: argparse.Namespace) -> int:
    from avatar.batch.state import REPORT_NAME, format_table

    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report["jobs"]))
        print(f"report: {os.path.join(report['outdir'], REPORT_NAME)} ({report['wall_s']:.1f} s)")
    return EXIT_SOME_FAILED if report["counts"].get("failed") else 0


def run_speak(args: argparse.Namespace) -> int:
    from pathlib import Path

    from avatar.batch import audio_dir_jobs, read_manifest, run_speak_batch

    if args.workers is not None and args.workers < 1:
        raise AvatarError(f"--workers {args.workers}: must be at least 1")
    if args.gpus_per_job < 0:
        raise AvatarError(f"--gpus-per-job {args.gpus_per_job}: must be >= 0")
    defaults = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt:")}
    outdir = Path(args.output)
    max_dur = None if args.allow_long else args.max_duration
    if args.audio_dir:
        if not args.run:
            raise AvatarError("--audio-dir needs the RUN folder: avatar batch speak RUN --audio-dir DIR -o OUTDIR")
        jobs = audio_dir_jobs(args.run, args.audio_dir, outdir, defaults, max_dur)
    else:
        if args.run:
            raise AvatarError("with --manifest each line names its run; drop the RUN argument")
        jobs = read_manifest(args.manifest, outdir, defaults, max_dur)
    if defaults:  # a bad command-line option is a command-line error (2), not one failure per job
        from avatar.batch import speak_config

        speak_config(defaults)
    _sigterm_as_interrupt()
    report = run_speak_batch(jobs, outdir, workers=args.workers, gpus_per_job=args.gpus_per_job, device=args.device,
                             address=args.address, max_retries=args.max_retries, progress=not args.no_progress)
    return _finish(report, args)


def run_fit(args: argparse.Namespace) -> int:
    from avatar.batch import run_fit_batch
    from avatar.core.config import apply_overrides, overrides_from_args
    from avatar.train.presets import get_preset

    cfg = apply_overrides(get_preset(args.preset), overrides_from_args(args))
    _sigterm_as_interrupt()
    report = run_fit_batch(args.inputs, args.output, cfg, workers=args.workers, gpus_per_job=args.gpus_per_job,
                           address=args.address, max_retries=args.max_retries, progress=not args.no_progress)
    return _finish(report, args)
