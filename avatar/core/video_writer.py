"""Streamed video output: H.264 (yuv420p) + AAC mp4; for transparent renders VP9 + alpha .webm (Opus
audio) or an RGBA PNG sequence.

Frames and audio are encoded as they arrive (memory O(one frame)), so an hour of output costs no more
RAM than a second. The file is written under a hidden temporary name beside the destination and
renamed only by `close()` after the muxer has written its trailer: a crash, Ctrl-C or a full disk
never leaves a complete-looking `out.mp4` (the `avatar.core.io.atomic_path` contract, applied to a writer
that lives across many calls).

Frame exactness is the caller's contract (`num_frames = round(duration * fps)`); pass `num_frames`
and `close()` refuses to publish a file with a different count. Frame k gets pts k in time base 1/fps,
audio sample i gets pts i in 1/rate, so the mouth in frame k sits at audio time k/fps in any player.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from fractions import Fraction
from pathlib import Path
import numpy as np

from avatar.core.io import make_temp_dir, make_temp_file
from avatar.errors import AvatarError

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, C] from uint8 or float-in-[0, 1] input of shape [H, W, C] or [B, H, W, C]."""
    a = np.asarray(frames)
    if a.ndim == 3:
        a = a[None]
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return a


class VideoWriter:
    """H.264 + AAC mp4 writer (VP9 + Opus for .webm, with an alpha plane when `alpha=True`).
    Use as a context manager; an exception inside discards the output.

    `write(frames)` takes uint8 or [0, 1] float RGB, [H, W, 3] or [B, H, W, 3].
    `write_audio(samples)` takes float32 mono [T] at `audio_rate`; call it as audio becomes available
    (the muxer interleaves by timestamp, so feeding audio in step with frames keeps its buffer small).
    Odd widths/heights are padded by one replicated pixel (yuv420p needs even sizes).
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: float, *, audio_rate: int | None = None,
                 num_frames: int | None = None, crf: int = 18, preset: str = "veryfast", audio_bitrate: int = 128_000,
                 threads: int = 0, alpha: bool = False):
        import av

        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".mp4", ".m4v", ".mov", ".mkv", ".webm"):
            raise AvatarError(f"{self.path}: output must end in .mp4 (or .mov/.mkv; .webm for video with alpha)")
        if alpha and suffix != ".webm":
            raise AvatarError(f"{self.path}: video with transparency is written as VP9 .webm (or give a folder for a PNG sequence)")
        self.webm = suffix == ".webm"
        self.alpha = bool(alpha)
        if self.webm and audio_rate is not None and int(audio_rate) not in OPUS_RATES:
            raise AvatarError(f"{self.path}: Opus audio in .webm needs a rate in {OPUS_RATES}, got {audio_rate}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.enc_w, self.enc_h = self.width + self.width % 2, self.height + self.height % 2
        self.num_frames = num_frames
        self.audio_rate = audio_rate
        self.tmp = make_temp_file(self.path.parent, f".{self.path.name}.", ".tmp" + self.path.suffix)  # umask mode, not 0600
        self.frames_written = 0
        self.samples_written = 0
        self._closed = False
        try:
            self._c = av.open(str(self.tmp), mode="w")
            if self.webm:  # VP9 (+ alpha plane, which browsers and libvpx honour) and Opus
                vs = self._c.add_stream("libvpx-vp9", rate=_fps_fraction(self.fps))
                vs.pix_fmt = "yuva420p" if self.alpha else "yuv420p"
                vs.codec_context.options = {"crf": str(min(63, crf + 12)), "b": "0", "deadline": "realtime", "cpu-used": "8",
                                            "auto-alt-ref": "0"}
            else:
                vs = self._c.add_stream("libx264", rate=_fps_fraction(self.fps))
                vs.pix_fmt = "yuv420p"
                vs.codec_context.options = {"crf": str(crf), "preset": preset}
            vs.width, vs.height = self.enc_w, self.enc_h
            vs.time_base = Fraction(1) / _fps_fraction(self.fps)
            vs.codec_context.thread_count = threads
            self._vs = vs
            self._as = None
            if audio_rate is not None:
                a = self._c.add_stream("libopus" if self.webm else "aac", rate=int(audio_rate), layout="mono")
                a.bit_rate = audio_bitrate
                a.time_base = Fraction(1, int(audio_rate))
                self._as = a
        except Exception:
            self._cleanup()
            raise

    # -- writing -------------------------------------------------------------------------------
    def write(self, frames: np.ndarray) -> None:
        """Encode RGB (RGBA with alpha=True, straight alpha) frames: [H, W, C] or [B, H, W, C], uint8 or float in [0, 1]."""
        import av

        a = _to_uint8(frames)
        ch = 4 if self.alpha else 3
        if a.shape[1:3] != (self.height, self.width) or a.shape[3] < ch:
            raise AvatarError(f"frame of shape {tuple(a.shape[1:])} does not match the video size {self.height}x{self.width}x{ch}")
        for f in a:
            f = f[..., :ch]
            if (self.enc_h, self.enc_w) != (self.height, self.width):
                f = np.pad(f, ((0, self.enc_h - self.height), (0, self.enc_w - self.width), (0, 0)), mode="edge")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgba" if self.alpha else "rgb24")
            vf.pts = self.frames_written
            self.frames_written += 1
            for pkt in self._vs.encode(vf):
                self._c.mux(pkt)

    def write_audio(self, samples: np.ndarray) -> None:
        """Encode float32 mono samples [T] at `audio_rate` (appended after what was written before)."""
        import av

        if self._as is None:
            raise AvatarError("this writer was opened without audio (audio_rate=None)")
        x = np.ascontiguousarray(np.asarray(samples, np.float32).reshape(1, -1))
        step = 8192
        for i in range(0, x.shape[1], step):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i:i + step]), format="fltp", layout="mono")
            af.sample_rate = self.audio_rate
            af.pts = self.samples_written
            af.time_base = Fraction(1, self.audio_rate)
            self.samples_written += af.samples
            for pkt in self._as.encode(af):
                self._c.mux(pkt)

    # -- finishing -----------------------------------------------------------------------------
    def close(self) -> Path:
        """Flush the encoders, write the trailer, check the frame count and rename into place."""
        if self._closed:
            return self.path
        try:
            if self.num_frames is not None and self.frames_written != self.num_frames:
                raise AvatarError(f"{self.path}: {self.frames_written} frames were rendered, expected {self.num_frames}; output discarded")
            if self.frames_written == 0:
                raise AvatarError(f"{self.path}: no frames were rendered; output discarded")
            for pkt in self._vs.encode():
                self._c.mux(pkt)
            if self._as is not None:
                for pkt in self._as.encode():
                    self._c.mux(pkt)
            self._c.close()
            with open(self.tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.path)
            self._closed = True
            return self.path
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard the output: close the container and delete the temporary file."""
        if self._closed:
            return
        self._closed = True
        self._cleanup()

    def _cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self._c.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class PngSequenceWriter:
    """RGBA PNG sequence (`DIR/000000.png`, ...) plus `DIR/audio.wav`, for transparent backgrounds.

    Written into a hidden temporary folder beside DIR and renamed at `close()`, so a crash leaves no
    complete-looking DIR. Frames are [H, W, 4] (or [B, H, W, 4]) uint8 or float in [0, 1], straight
    (not premultiplied) alpha, which is what PNG and every compositor expect.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: float, *, audio_rate: int | None = None,
                 num_frames: int | None = None, compression: int = 1):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise AvatarError(f"{self.path}: exists and is not a folder; a transparent render writes a PNG-sequence folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.num_frames = num_frames
        self.audio_rate = audio_rate
        self.compression = int(compression)
        self.tmp = make_temp_dir(self.path.parent, f".{self.path.name}.", ".tmp")  # umask mode, not 0700
        self.frames_written = 0
        self._audio = None
        self._closed = False
        if audio_rate is not None:
            import soundfile as sf

            self._audio = sf.SoundFile(str(self.tmp / "audio.wav"), "w", samplerate=int(audio_rate), channels=1, subtype="PCM_16")

    def write(self, frames: np.ndarray) -> None:
        import cv2

        a = _to_uint8(frames)
        if a.shape[1:] != (self.height, self.width, 4):
            raise AvatarError(f"RGBA frame of shape {tuple(a.shape[1:])} does not match {self.height}x{self.width}x4")
        for f in a:
            bgra = cv2.cvtColor(f, cv2.COLOR_RGBA2BGRA)
            cv2.imwrite(str(self.tmp / f"{self.frames_written:06d}.png"), bgra, [cv2.IMWRITE_PNG_COMPRESSION, self.compression])
            self.frames_written += 1

    def write_audio(self, samples: np.ndarray) -> None:
        if self._audio is None:
            raise AvatarError("this writer was opened without audio (audio_rate=None)")
        self._audio.write(np.clip(np.asarray(samples, np.float32), -1, 1))

    def close(self) -> Path:
        if self._closed:
            return self.path
        try:
            if self.num_frames is not None and self.frames_written != self.num_frames:
                raise AvatarError(f"{self.path}: {self.frames_written} frames were rendered, expected {self.num_frames}; output discarded")
            if self._audio is not None:
                self._audio.close()
            (self.tmp / "sequence.json").write_text(
                f'{{"fps": {self.fps}, "num_frames": {self.frames_written}, "width": {self.width}, "height": {self.height}, '
                f'"audio": {"true" if self._audio is not None else "false"}}}\n')
            if self.path.exists():  # replace an older render of the same name
                old = self.path.with_name(f".{self.path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(self.path, old)
                os.replace(self.tmp, self.path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.tmp, self.path)
            self._closed = True
            return self.path
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._audio is not None:
            with contextlib.suppress(Exception):
                self._audio.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "PngSequenceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def probe_video(path: str | os.PathLike) -> dict:
    """Count what an mp4 really holds (decodes it): frames, fps, size, audio duration and rate.

    Used by tests and `avatar eval` to check frame exactness rather than trusting header fields.
    """
    import av

    out: dict = {"frames": 0, "audio_samples": 0, "audio_rate": None, "fps": None, "width": None, "height": None,
                 "video_codec": None, "audio_codec": None, "pix_fmt": None}
    with av.open(str(path)) as c:
        if c.streams.video:
            vs = c.streams.video[0]
            out.update(fps=float(vs.average_rate) if vs.average_rate else None, width=vs.width, height=vs.height,
                       video_codec=vs.codec_context.name, pix_fmt=vs.codec_context.pix_fmt)
            out["frames"] = sum(1 for _ in c.decode(vs))
    with av.open(str(path)) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            out["audio_rate"] = a.codec_context.sample_rate
            out["audio_codec"] = a.codec_context.name
            out["audio_samples"] = sum(f.samples for f in c.decode(a))
    out["audio_duration"] = out["audio_samples"] / out["audio_rate"] if out["audio_rate"] else 0.0
    out["video_duration"] = out["frames"] / out["fps"] if out["fps"] else 0.0
    return out
