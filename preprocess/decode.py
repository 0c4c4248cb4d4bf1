"""Stage 1: decode a video, resample it to the dataset fps from timestamps, extract 16 kHz mono audio.

Time origin. Containers often start their tracks at different times (macron_50s_30fps.mp4: audio at
0 s, video at 0.080 s; design note preprocess.md §9.2). Reading frames by index would then shift the
lips by 2 frames against the audio. We work in presentation time instead: the dataset's time origin
T0 is the start of the interval where BOTH tracks have data, T0 = max(video start, audio start), and
its end is min(video end, audio end). When the video starts late we therefore TRIM THE AUDIO (drop
its first 80 ms) rather than repeat the first frame, so no frozen frames enter training; when the
audio starts late we drop the leading video frames. Output frame k shows time T0 + k/fps and is the
source frame whose pts is nearest to it (a variable-rate source is handled the same way), and
audio.wav holds exactly num_frames/fps seconds starting at T0.

Size. Frames are resized (aspect kept, area filter) so their LONGER side equals `resolution` (the one
meaning of "resolution" in avatar, `avatar.core.dataset_format.render_size`), never upscaled, and both
sides are rounded to even numbers (H.264 previews need them). No crop: the
dataset keeps the whole field of view, and `width`/`height` in dataset.json say what it is.

Memory. Frames are streamed from the decoder to JPEG files one at a time (a small thread pool
encodes them), so a 10-minute 1080p clip needs no more RAM than a 5-second one. The audio is held
in RAM as 16 kHz float32 (10 min = 38 MB).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from avatar.core.audio import SAMPLE_RATE
from avatar.errors import AvatarError


@dataclasses.dataclass
class VideoProbe:
    """What the container says about a source video (before decoding it)."""

    path: Path
    width: int
    height: int
    fps: float
    """Average frame rate of the video track (frames per second)."""
    duration: float
    """Container duration in seconds (0 when unknown)."""
    has_audio: bool
    video_start: float
    """Start time of the video track in seconds (from the stream's start_time)."""
    audio_start: float | None
    rotation: int = 0
    """Display rotation in degrees counterclockwise (phone videos); frames are rotated upright on decode.
    `width`/`height` are the upright (displayed) size."""


@dataclasses.dataclass
class DecodeResult:
    """Output of `decode_video`."""

    num_frames: int
    width: int
    height: int
    t0: float
    """Dataset time origin in source seconds (frame 0 and audio sample 0 are at this time)."""
    source_fps: float
    source_frames: int
    """How many frames the decoder produced."""
    repeated_frames: int
    """Output frames that reuse the previous output's source frame (upsampling / gaps)."""
    dropped_frames: int
    """Source frames inside the output interval that no output frame uses (downsampling)."""
    video_start: float
    audio_start: float | None
    audio: np.ndarray | None
    """[num_frames * SAMPLE_RATE / fps] float32 mono audio at 16 kHz starting at t0 (None without audio)."""


def _open(path: Path):
    import av

    if not path.exists():
        raise AvatarError(f"{path}: no such file (check the path of the input video)")
    if not path.is_file():
        raise AvatarError(f"{path}: not a file (pass a video file such as clip.mp4)")
    if path.stat().st_size == 0:
        raise AvatarError(f"{path}: empty file (re-export or re-download the video)")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as e:
        raise AvatarError(f"{path}: not a readable video ({_short(e)}); pass an mp4/mov/mkv/webm video, re-encoding it with ffmpeg if it is damaged") from None


def _short(e: Exception) -> str:
    s = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return s[:160]


def probe_video(path: str | os.PathLike) -> VideoProbe:
    """Read the container header (and the first frame's display rotation). One-line `AvatarError` for a
    missing file or a non-video."""
    import av

    path = Path(path)
    with _open(path) as c:
        vs = next((s for s in c.streams if s.type == "video"), None)
        if vs is None:
            raise AvatarError(f"{path}: has no video track (pass a video file, not audio or an image)")
        aus = next((s for s in c.streams if s.type == "audio"), None)
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        fps = float(rate) if rate else 0.0
        vstart = float(vs.start_time * vs.time_base) if vs.start_time is not None and vs.time_base else 0.0
        astart = None
        if aus is not None:
            astart = float(aus.start_time * aus.time_base) if aus.start_time is not None and aus.time_base else 0.0
        dur = float(c.duration / 1e6) if c.duration else 0.0
        w, h = vs.codec_context.width, vs.codec_context.height
        if not w or not h:
            raise AvatarError(f"{path}: video track has no frame size (file is damaged; re-encode it with ffmpeg)")
        rotation = 0
        try:  # the display matrix rides on the frames: look at the first one
            first = next(c.decode(vs), None)
            rotation = int(round(getattr(first, "rotation", 0) or 0)) if first is not None else 0
        except av.error.FFmpegError as e:
            raise AvatarError(f"{path}: video is corrupt ({_short(e)}); re-encode it with ffmpeg or re-download it") from None
        rotation = (rotation // 90 * 90) % 360
        if rotation in (90, 270):
            w, h = h, w
        return VideoProbe(path=path, width=w, height=h, fps=fps, duration=dur, has_audio=aus is not None,
                          video_start=vstart, audio_start=astart, rotation=rotation)


def target_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(w, h) with the longer side == resolution (never upscaled), aspect kept, both even.

    It used to be the short side; both agree for square videos, and a dataset folder of a non-square
    video made that way redoes its decode stage when resumed (preprocess/pipeline.py `_stage_key`)."""
    s = min(1.0, resolution / max(width, height))
    w = max(2, int(round(width * s / 2)) * 2)
    h = max(2, int(round(height * s / 2)) * 2)
    return w, h


def decode_audio(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode the first audio track to 16 kHz mono float32. Returns (samples [T], start time s)."""
    import av

    path = Path(path)
    chunks: list[np.ndarray] = []
    start: float | None = None
    with _open(path) as c:
        aus = next((s for s in c.streams if s.type == "audio"), None)
        if aus is None:
            raise AvatarError(f"{path}: has no audio track (use --no-audio for a silent dataset, or mux audio in with ffmpeg)")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        try:
            for frame in c.decode(aus):
                if start is None:
                    start = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as e:
            raise AvatarError(f"{path}: audio track is corrupt ({_short(e)}); re-encode the file with ffmpeg or use --no-audio") from None
    if not chunks:
        raise AvatarError(f"{path}: audio track has no samples (use --no-audio for a silent dataset)")
    wav = np.concatenate(chunks).astype(np.float32)  # [T]
    return wav, float(start or 0.0)


def iter_source_frames(path: Path, width: int, height: int, rotation: int = 0) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (pts seconds, BGR uint8 [height, width, 3]) for each decoded video frame, in order.

    `rotation` (degrees counterclockwise, from `probe_video`) turns the frames upright; width/height are
    the upright size.
    """
    import av

    k_rot = (rotation // 90) % 4
    dec_w, dec_h = (height, width) if k_rot % 2 else (width, height)
    with _open(path) as c:
        vs = next((s for s in c.streams if s.type == "video"), None)
        if vs is None:
            raise AvatarError(f"{path}: has no video track (pass a video file, not audio or an image)")
        vs.thread_type = "AUTO"
        rate = vs.average_rate or vs.guessed_rate or Fraction(25)
        last = None
        try:
            for frame in c.decode(vs):
                if frame.pts is not None:
                    t = float(frame.pts * frame.time_base)
                else:  # no timestamp: continue from the previous one at the nominal rate
                    t = (last if last is not None else 0.0) + 1.0 / float(rate)
                if last is not None and t <= last:  # out-of-order / duplicate pts: keep time monotonic
                    t = last + 1e-6
                last = t
                img = frame.reformat(width=dec_w, height=dec_h, format="bgr24", interpolation="AREA").to_ndarray()
                if k_rot:
                    img = np.ascontiguousarray(np.rot90(img, k_rot))  # counterclockwise, as players display it
                yield t, img
        except av.error.FFmpegError as e:
            raise AvatarError(f"{path}: video is corrupt or truncated ({_short(e)}); re-encode it with ffmpeg or re-download it") from None


def decode_video(video: str | os.PathLike, frames_dir: Path, resolution: int = 512, fps: float = 25.0,
                 with_audio: bool = True, min_duration: float = 3.0, jpeg_quality: int = 95,
                 progress: bool = True) -> DecodeResult:
    """Decode `video` into frames_dir/%06d.jpg at `fps` (from timestamps) and return the aligned audio.

    See the module docstring for the time origin, resizing and memory rules.
    """
    import cv2
    from tqdm import tqdm

    video = Path(video)
    info = probe_video(video)
    if with_audio and not info.has_audio:
        raise AvatarError(f"{video}: has no audio track (use --no-audio for a silent dataset, or mux audio in with ffmpeg)")
    wav, a_start = (decode_audio(video) if with_audio else (None, None))
    a_end = a_start + len(wav) / SAMPLE_RATE if wav is not None else math.inf
    w, h = target_size(info.width, info.height, resolution)
    frames_dir.mkdir(parents=True, exist_ok=True)

    dt = 1.0 / fps
    t0: float | None = None
    k = 0  # next output frame index
    n_src = 0
    used_src: set[int] = set()
    prev: tuple[float, np.ndarray, int] | None = None  # (time, image, source index)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    pool = cf.ThreadPoolExecutor(max_workers=2)
    pending: list[cf.Future] = []
    first_v: float | None = None
    last_v = 0.0
    est_total = int(info.duration * fps) if info.duration else None
    bar = tqdm(total=est_total, desc="decode", unit="frame", disable=not progress, leave=False)

    def emit(img: np.ndarray, src_idx: int) -> None:
        nonlocal k
        used_src.add(src_idx)
        pending.append(pool.submit(_write_jpg, frames_dir / f"{k:06d}.jpg", img, params))
        k += 1
        bar.update(1)
        if len(pending) > 16:
            for f in pending[:8]:
                f.result()
            del pending[:8]

    audio_over = False

    def fits(j: int) -> bool:  # output frame j lies inside the audio (frame interval fully covered)
        return t0 + (j + 1) * dt <= a_end + 1e-9

    try:
        for t, img in iter_source_frames(video, w, h, info.rotation):
            if first_v is None:
                first_v = t
                t0 = max(t, a_start) if a_start is not None else t
            last_v = t
            n_src += 1
            if prev is not None:
                # every output time closer to prev than to this frame shows prev (nearest pts)
                mid = 0.5 * (prev[0] + t)
                while t0 + k * dt < mid and fits(k):
                    emit(prev[1], prev[2])
                if not fits(k):
                    audio_over = True
                    break  # audio is over: the rest of the video is not used
            prev = (t, img, n_src - 1)
        if prev is None:
            raise AvatarError(f"{video}: no video frame could be decoded (file is corrupt or truncated; re-encode it with ffmpeg)")
        # the last source frame is nearest for output times up to half a source frame after it
        src_dt = 1.0 / (info.fps if info.fps > 0 else fps)
        while t0 + k * dt <= prev[0] + 0.5 * src_dt + 1e-9 and fits(k):
            emit(prev[1], prev[2])
        for f in pending:
            f.result()
    finally:
        pool.shutdown(wait=True)
        bar.close()

    num = k
    duration = num * dt
    if num == 0 or duration < min_duration:
        raise AvatarError(f"{video}: clip is too short ({duration:.2f} s of aligned video+audio, need >= {min_duration:g} s); use a longer clip")
    # a truncated file decodes to far less than the container claims
    if not audio_over and info.duration and (last_v - (first_v or 0.0)) < 0.8 * (info.duration - 0.5) - 1.0:
        raise AvatarError(f"{video}: video is truncated (decoded {last_v:.1f} s of {info.duration:.1f} s); re-download or re-encode the file")
    audio = None
    if wav is not None:
        s0 = int(round((t0 - a_start) * SAMPLE_RATE))
        n_samp = int(round(duration * SAMPLE_RATE))
        audio = wav[s0:s0 + n_samp]
        if len(audio) < n_samp:  # at most a fraction of a frame short (loop above stops at a_end)
            audio = np.pad(audio, (0, n_samp - len(audio)))
        audio = np.ascontiguousarray(audio, dtype=np.float32)
    dropped = sum(1 for i in range(min(used_src), max(used_src) + 1) if i not in used_src) if used_src else 0
    return DecodeResult(num_frames=num, width=w, height=h, t0=float(t0), source_fps=info.fps, source_frames=n_src,
                        repeated_frames=num - len(used_src), dropped_frames=dropped, video_start=float(first_v),
                        audio_start=a_start, audio=audio)


def _write_jpg(path: Path, img: np.ndarray, params: list[int]) -> None:
    import cv2

    if not cv2.imwrite(str(path), img, params):
        raise AvatarError(f"{path}: could not write frame (disk full or folder not writable?)")
