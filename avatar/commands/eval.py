"""`avatar eval RUN`: held-out PSNR / SSIM (head and full frame) and LMD, or lip sync on new audio."""

from __future__ import annotations

import os

# libgomp's default busy-wait makes 2 torch threads ~50x slower when other processes share the cores
# (measured: 10 s/step -> 0.18 s/step on 2 shared cores). Must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import sys


def add_parser(subparsers, name: str, summary: str) -> None:
    p = subparsers.add_parser(name, help=summary, description=
                              "Render the held-out frames of a trained run with their real audio, pose and blink; "
                              "print PSNR/SSIM on the head mask and the full frame and the lip landmark distance (LMD); "
                              "write RUN/metrics.json and RUN/eval/side_by_side.jpg.")
    p.add_argument("run_dir", metavar="RUN", help="a finished run folder (with model.pt)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--audio", metavar="WAV", default=None, help="lip-sync evaluation on new audio: render it with the avatar and measure the audio-video offset")
    p.add_argument("--device", default="auto", help="torch device (default: auto)")
    p.add_argument("--max-frames", type=int, default=0, help="evaluate at most this many held-out frames (0 = all)")
    p.add_argument("--no-lmd", action="store_true", help="skip the MediaPipe landmark distance")
    p.set_defaults(func=run)


def print_table(metrics: dict, file=None) -> None:
    file = file if file is not None else sys.stdout  # resolved at call time (stdout may be swapped)
    rows = [("native head PSNR", "psnr_native_head"), ("native full PSNR", "psnr_native_full"),
            ("train-res PSNR", "psnr_train_res"), ("native head SSIM", "ssim_native_head"),
            ("native full SSIM", "ssim_native_full"), ("train-res SSIM", "ssim_train_res"),
            ("native size", "native_resolution"),
            ("head PSNR (dB)", "head_psnr"), ("full PSNR (dB)", "full_psnr"), ("head SSIM", "head_ssim"),
            ("full SSIM", "full_ssim"), ("LMD (px)", "lmd"), ("LMD, audio off", "lmd_no_audio"),
            ("mouth corr", "mouth_corr"), ("fit time (s)", "fit_time_s"), ("iterations", "iters"),
            ("Gaussians", "num_gaussians"), ("eval frames", "eval_frames"),
            ("AV offset (fr)", "av_offset_frames"), ("AV corr", "av_corr"), ("real AV offset", "gt_av_offset_frames"),
            ("real AV corr", "gt_av_corr"), ("frames", "frames"), ("mouth measure", "mouth_measure")]
    for label, key in rows:
        if key in metrics:
            v = metrics[key]
            text = f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else str(v)
            print(f"  {label:<16} {text}", file=file)
    labels = metrics.get("psnr_labels") or {}
    if labels:
        share = metrics.get("error_share_labels") or {}
        print("  PSNR by label at native size (dB, share of the squared error):", file=file)
        for name, v in labels.items():
            print(f"    {name:<12} {v:7.2f}  {100 * share.get(name, 0.0):5.1f} %", file=file)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from avatar.evaluation.evaluate import evaluate_run
    from avatar.evaluation.lipsync import eval_audio

    if args.audio is not None:
        metrics = eval_audio(args.run_dir, args.audio, device=args.device)
    else:
        metrics = evaluate_run(args.run_dir, device=args.device, write=True, max_frames=args.max_frames,
                               lmd=not args.no_lmd, progress=not args.json)
        path = Path(args.run_dir) / "metrics.json"
        if path.is_file():  # include fit time etc. written by `avatar fit`
            metrics = {**json.loads(path.read_text()), **metrics}
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}))
    else:
        print_table(metrics)
        if "side_by_side" in metrics:
            print(f"  side by side: {metrics['side_by_side']}")
    return 0
