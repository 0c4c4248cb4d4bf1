"""`avatar speak RUN --audio X -o out.mp4`: render the trained person saying any audio.

    avatar speak runs/NAME --audio speech.mp3 -o out.mp4             H.264 + AAC, frame exact
    avatar speak runs/NAME --audio a.wav -o out.mp4 --pose audio --orbit 30
    avatar speak runs/NAME --audio a.wav -o out.mp4 --size x720       720 p high, the clip's aspect
    avatar speak runs/NAME --audio a.wav -o out.mp4 --size 1080x1920 --fit pad   another aspect: pad|crop|stretch
    avatar speak runs/NAME --audio a.wav -o frames/ --background transparent   RGBA PNGs + audio.wav
    avatar speak runs/NAME --audio a.wav -o out.webm --background transparent  VP9 video with alpha + Opus
    avatar speak runs/NAME --audio a.wav --stream -o - | ffplay -f rawvideo -pixel_format rgb24 \\
        -video_size WxH -framerate 25 -                                 real-time raw RGB frames
    ffmpeg -i mic.wav -f s16le -ac 1 -ar 16000 - | avatar speak runs/NAME --audio - --stream -o pipe.rgb

Input: wav (8/16/24/32-bit int, float), mp3, flac, ogg, m4a, 8-48 kHz, mono/stereo, or a video file (its
audio track). Output frame k shows the mouth for the audio at time k/fps; the output has
round(duration x fps) frames, at the source clip's size unless --size/--scale say otherwise (a bad size, or
another aspect without --fit, stops before anything is written: one line, exit code 2). With --stream, audio is read in real time (a file is paced at its own
speed; `--audio -` reads raw 16 kHz mono s16le from stdin) and raw RGB24 frames (RGBA with
--background transparent) are written to stdout (`-o -`) or to a file/named pipe as soon as they are ready.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from avatar.errors import AvatarError

DESCRIPTION = __doc__.split("\n", 2)[2]
DEFAULT_MAX_DURATION = 600.0

SPEAK_GROUPS = {
    "head pose and camera": ("pose", "loop", "yaw", "pitch", "roll", "orbit", "orbit_period", "camera_path"),
    "face": ("blink", "lip_scale", "vad", "vad_threshold", "energy_db"),
    "output": ("size", "scale", "fit", "background", "torso", "fps", "seed", "batch", "feature_model_dir"),
    "streaming": ("stream_segment_frames", "stream_past_s", "stream_future_frames", "window_lookahead"),
}
"""Help sections of the generated SpeakConfig options; fields not listed go to "engine"."""
SPEAK_FLAGS = {"stream_segment_frames": ("--stream-segment", "--stream-segment-frames"),
               "feature_model_dir": ("--feature-model", "--feature-model-dir")}
"""Flags kept from before the options were generated (a user contract); the field's own name is an alias."""
SPEAK_METAVARS = {"pose": "MODE", "orbit": "DEGREES", "orbit_period": "S", "camera_path": "FILE", "blink": "MODE",
                  "background": "BG", "size": "WxH", "scale": "F", "stream_segment_frames": "FRAMES", "feature_model_dir": "DIR"}


def add_parser(subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=summary, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="trained run folder (output of `avatar fit`)")
    p.add_argument("--audio", required=True, metavar="FILE",
                   help="audio or video file to speak (wav/mp3/flac/ogg/m4a/mp4...); with --stream, '-' reads raw "
                        "16 kHz mono s16le PCM from stdin")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output .mp4 (H.264 + AAC) or .webm (VP9 + Opus); with --background transparent a folder (RGBA PNGs + "
                        "audio.wav) or a .webm (VP9 with alpha); "
                        "with --stream: '-' (stdout) or a file / named pipe receiving raw frames")
    from avatar.core.config import add_flat_dataclass_args
    from avatar.engine.config import SpeakConfig

    # every SpeakConfig field becomes an option, its docstring the help line (avatar/engine/config.py)
    g = add_flat_dataclass_args(p, SpeakConfig, groups=SPEAK_GROUPS, flags=SPEAK_FLAGS, metavars=SPEAK_METAVARS,
                                other_group="engine")
    out = g["output"]
    out.add_argument("--export-motion", default=None, metavar="FILE.npz",
                     help="also write the per-frame motion (head poses, camera, viewmats, blink, speech, features) as .npz, "
                          "reusable with --pose/--blink/--camera-path")
    out.add_argument("--allow-long", action="store_true",
                     help=f"render audio longer than --max-duration (default limit {DEFAULT_MAX_DURATION:.0f} s)")
    out.add_argument("--max-duration", type=float, default=DEFAULT_MAX_DURATION, metavar="S",
                     help=f"longest audio rendered without --allow-long, seconds (default {DEFAULT_MAX_DURATION:.0f})")
    out.add_argument("--device", default="auto", help="render device: auto, cpu, cuda, cuda:N (default auto)")
    out.add_argument("--json", action="store_true", help="print a JSON summary on stdout at the end (not with --stream -o -)")
    st = g["streaming"]
    st.add_argument("--stream", action="store_true",
                    help="real-time mode: read audio as it arrives, write raw frames as soon as they are ready")
    st.add_argument("--chunk-ms", type=float, default=40.0, help="--stream: audio chunk size read at a time (default 40 ms)")
    st.add_argument("--no-realtime", action="store_true", help="--stream from a file: do not pace reading at real time")
    p.set_defaults(func=run)
    return p


def _config(args: argparse.Namespace):
    from avatar.core.config import dataclass_from_args
    from avatar.engine.config import SpeakConfig

    return dataclass_from_args(SpeakConfig, args)


def _check_inputs(args: argparse.Namespace) -> None:
    run = Path(args.run)
    if not run.is_dir():
        raise AvatarError(f"{run}: no such run folder (train one with `avatar fit VIDEO -o {run}`)")
    if args.audio != "-":
        from avatar.core.audio import probe_audio

        info = probe_audio(args.audio)  # one-line errors for missing/corrupt/empty audio
        if not args.allow_long and info.duration > args.max_duration:
            raise AvatarError(f"{args.audio}: audio is {info.duration:.1f} s, longer than the limit of {args.max_duration:.0f} s; "
                              f"pass --allow-long to render it anyway")
    elif not args.stream:
        raise AvatarError("--audio - (stdin) needs --stream")
    if args.size is not None or args.scale is not None or args.fit is not None:
        from avatar.core.camera import parse_size

        # the request alone, before loading the run (Speaker checks it against the source size)
        try:
            if args.size is not None:
                parse_size(args.size)
        except ValueError as e:
            raise AvatarError(str(e)) from None
        if args.scale is not None and not (np.isfinite(args.scale) and args.scale > 0):
            raise AvatarError(f"--scale {args.scale}: must be a positive number")
        if args.size is not None and args.scale is not None:
            raise AvatarError("--size and --scale both given: choose one")


def run(args: argparse.Namespace) -> int:
    _check_inputs(args)
    from avatar.engine import Avatar, Speaker

    avatar = Avatar.load(args.run, device=args.device)
    speaker = Speaker(avatar, _config(args))  # a bad --size/--scale/--fit stops here: one line, exit 2, no file
    if args.stream:
        return _run_stream(args, speaker)
    summary = speaker.render_file(args.audio, args.output, max_duration=None if args.allow_long else args.max_duration,
                                  export_motion=args.export_motion, progress=True)
    print(f"avatar speak: wrote {summary['output']} ({summary['frames']} frames, {summary['duration_s']:.2f} s, "
          f"{summary['render_fps']:.1f} frames/s)", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    return 0


def _stdin_chunks(chunk_samples: int):
    """Raw s16le mono 16 kHz from stdin, as float32 chunks (as soon as bytes arrive)."""
    fd = sys.stdin.buffer
    pending = b""
    while True:
        data = fd.read1(chunk_samples * 2) if hasattr(fd, "read1") else fd.read(chunk_samples * 2)
        if not data:
            break
        pending += data
        n = len(pending) // 2 * 2
        if n:
            yield np.frombuffer(pending[:n], dtype="<i2").astype(np.float32) / 32768.0
            pending = pending[n:]


def _file_chunks(path: str, chunk_samples: int, realtime: bool):
    """A file's 16 kHz audio in chunks, released at real-time pace (as a live source would)."""
    from avatar.core.audio import SAMPLE_RATE, iter_audio

    t0 = time.perf_counter()
    sent = 0
    for block in iter_audio(path, sr=SAMPLE_RATE, block_s=chunk_samples / SAMPLE_RATE):
        if realtime:
            wait = t0 + sent / SAMPLE_RATE - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        sent += block.shape[0]
        yield block


def _run_stream(args: argparse.Namespace, speaker) -> int:
    from avatar.core.audio import SAMPLE_RATE

    chunk = max(1, int(round(args.chunk_ms / 1000.0 * SAMPLE_RATE)))
    chunks = _stdin_chunks(chunk) if args.audio == "-" else _file_chunks(args.audio, chunk, not args.no_realtime)
    ch = 4 if speaker.transparent else 3
    print(f"avatar speak --stream: raw {'rgba' if ch == 4 else 'rgb24'} frames {speaker.width}x{speaker.height} at {speaker.fps:g} fps; "
          f"algorithmic delay {speaker.delay_s() * 1000:.0f} ms", file=sys.stderr)
    out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # a named pipe blocks until read
    n = 0
    try:
        for fr in speaker.stream(chunks, record=args.export_motion is not None):
            out.write(np.ascontiguousarray(fr.rgb).tobytes())
            out.flush()
            n += 1
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    st = speaker.last_stats
    p50 = st.get("latency_p50_s")
    p95 = st.get("latency_p95_s")
    print(f"avatar speak --stream: {n} frames; latency chunk->frame p50 {1000 * (p50 or 0):.1f} ms, p95 {1000 * (p95 or 0):.1f} ms "
          f"(+ {speaker.delay_s() * 1000:.0f} ms audio look-ahead)", file=sys.stderr)
    if args.export_motion:
        speaker.export_motion(args.export_motion, source=args.audio)
    if args.json and args.output != "-":
        print(json.dumps({"frames": n, **st}))
    return 0
