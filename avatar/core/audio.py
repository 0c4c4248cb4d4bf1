"""Load any audio a user hands `avatar speak`: a float32 mono signal at a target rate.

Accepted: wav (8/16/24/32-bit int or 32/64-bit float), mp3, flac, ogg/opus, m4a/aac, anything else
FFmpeg decodes, at any sample rate, mono or multi-channel, and video files (their first audio track).
Decoding goes through PyAV (FFmpeg's libavformat/libavcodec/libswresample) so every container is
handled the same way; channels are averaged (an equal-weight downmix, not swresample's -3 dB matrix)
and the rate is converted with swresample's streaming resampler, so an hour-long file is read in
blocks (`iter_audio`) and never held in memory more than once.

Lengths are exact: a file with `n` samples at rate `r` yields `round(n * sr / r)` samples at `sr`
(lossless inputs). Lossy codecs (mp3, aac, vorbis) rely on the container's encoder-delay metadata,
which FFmpeg honours, so their decoded length matches the encoded signal to within one codec frame.

Every user mistake (missing file, a folder, an empty or corrupt file, a video without sound, an audio
with zero samples) is a one-line `AvatarError` naming the file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from avatar.errors import AvatarError

SAMPLE_RATE = 16000
"""The one audio rate of this project: every feature extractor (DeepSpeech/HuBERT/wav2vec2 all take 16 kHz),
the dataset's audio.wav, and the raw PCM read by `avatar speak --stream --audio -` (s16le mono)."""


@dataclasses.dataclass
class AudioInfo:
    """What `probe_audio` learns about a file without decoding it all."""

    path: Path
    sample_rate: int
    """Native sample rate of the audio stream."""
    channels: int
    codec: str
    container: str
    duration: float
    """Seconds; exact for PCM/FLAC (sample count / rate), from container metadata otherwise."""
    num_samples: int | None
    """Native-rate sample count when the container states it exactly, else None."""


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise AvatarError(f"{p}: no such audio file (check the path given to --audio)")
    if p.is_dir():
        raise AvatarError(f"{p}: is a folder, not an audio file (give a .wav/.mp3/.flac/.ogg/.m4a or a video file)")
    if p.stat().st_size == 0:
        raise AvatarError(f"{p}: empty file (0 bytes); give a file that contains audio")
    return p


def _open(p: Path):
    import av

    try:
        container = av.open(str(p), mode="r")
    except av.error.FFmpegError as e:
        raise AvatarError(f"{p}: not a readable audio or video file ({_short(e)}); convert it to wav/mp3/flac") from None
    if not container.streams.audio:
        container.close()
        raise AvatarError(f"{p}: has no audio track (a video without sound?); give a file with audio")
    return container


def _short(e: Exception) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return msg[:160]


def _soundfile_frames(p: Path) -> tuple[int, int] | None:
    """(frames, rate) from libsndfile for formats whose length it knows exactly (wav/flac/ogg...)."""
    try:
        import soundfile as sf

        info = sf.info(str(p))
        if info.frames > 0 and info.format in ("WAV", "WAVEX", "FLAC", "AIFF", "W64", "RF64", "CAF", "AU"):
            return int(info.frames), int(info.samplerate)
    except Exception:  # noqa: BLE001 - any libsndfile failure just means "ask FFmpeg"
        return None
    return None


def probe_audio(path: str | os.PathLike) -> AudioInfo:
    """Describe the audio of `path` (sample rate, channels, duration) without decoding it all.

    Duration is exact for PCM/FLAC. For other codecs it comes from the stream/container header;
    when a file has no usable header (a raw ADTS stream, a truncated file) the file is decoded
    once to count samples, so the answer is never a guess.
    """
    p = _check_path(path)
    container = _open(p)
    try:
        s = container.streams.audio[0]
        rate = int(s.codec_context.sample_rate or s.rate or 0)
        channels = int(s.codec_context.channels or 0) if hasattr(s.codec_context, "channels") else 0
        if not channels:
            channels = len(s.codec_context.layout.channels) if s.codec_context.layout else 1
        codec = s.codec_context.name
        fmt = container.format.name
        exact = _soundfile_frames(p)
        num = None
        if exact is not None:
            num = exact[0]
            dur = exact[0] / exact[1]
        elif s.duration is not None and s.time_base is not None and s.duration > 0:
            dur = float(s.duration * s.time_base)
        elif container.duration is not None and container.duration > 0:
            dur = container.duration / 1e6
        else:
            dur = None
    finally:
        container.close()
    if dur is None:  # no header: count by decoding (bounded memory)
        n = sum(len(b) for b in iter_audio(p, sr=rate or SAMPLE_RATE, block_s=30.0))
        dur = n / float(rate or SAMPLE_RATE)
    if rate <= 0:
        raise AvatarError(f"{p}: audio stream has no sample rate; the file is corrupt")
    if dur <= 0:
        raise AvatarError(f"{p}: audio is zero seconds long; give a file with sound in it")
    return AudioInfo(path=p, sample_rate=rate, channels=channels, codec=codec, container=fmt, duration=float(dur), num_samples=num)


def probe_duration(path: str | os.PathLike) -> float:
    """Duration in seconds of the audio in `path` (see `probe_audio`)."""
    return probe_audio(path).duration


def iter_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE, block_s: float = 10.0) -> Iterator[np.ndarray]:
    """Yield the audio of `path` as float32 mono blocks at `sr` Hz, each `block_s` seconds (the last shorter).

    Memory stays O(block): packets are decoded, downmixed (channel mean) and resampled as they come.
    The total length is made exact: `round(n_in * sr / rate_in)` samples for `n_in` decoded input
    samples (swresample's last flush can be off by a sample or two).
    """
    import av

    p = _check_path(path)
    block = max(1, int(round(block_s * sr)))
    container = _open(p)
    stream = container.streams.audio[0]
    resampler = None
    in_rate = None
    n_in = 0
    n_out = 0
    buf: list[np.ndarray] = []
    buffered = 0

    def to_mono(frames) -> list[np.ndarray]:
        out = []
        for g in frames:
            a = g.to_ndarray()  # [C, T] planar float32
            out.append(a.mean(axis=0, dtype=np.float32) if a.ndim == 2 else a.astype(np.float32))
        return out

    try:
        try:
            for frame in container.decode(stream):
                if frame.samples == 0:
                    continue
                if resampler is None:
                    in_rate = int(frame.sample_rate)
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=sr)
                frame.pts = None  # let swresample count samples itself (robust to odd timestamps)
                n_in += frame.samples
                for a in to_mono(resampler.resample(frame)):
                    buf.append(a)
                    buffered += a.shape[0]
                while buffered >= block:
                    cat = np.concatenate(buf)
                    out, rest = cat[:block], cat[block:]
                    buf, buffered = [rest], rest.shape[0]
                    n_out += out.shape[0]
                    yield out
        except av.error.FFmpegError as e:
            if n_in == 0:
                raise AvatarError(f"{p}: cannot decode the audio ({_short(e)}); the file is corrupt or not audio") from None
            # A truncated tail: keep what decoded (like every media player) rather than fail an hour in.
        if resampler is None or n_in == 0:
            raise AvatarError(f"{p}: contains no audio samples (zero-length audio); give a file with sound in it")
        for a in to_mono(resampler.resample(None)):
            buf.append(a)
        tail = np.concatenate(buf) if buf else np.zeros(0, np.float32)
        want = int(round(n_in * sr / in_rate)) - n_out
        if tail.shape[0] >= want:
            tail = tail[:want]
        else:
            tail = np.concatenate([tail, np.zeros(want - tail.shape[0], np.float32)])
        while tail.shape[0] > 0:
            yield np.ascontiguousarray(tail[:block])
            tail = tail[block:]
    finally:
        container.close()


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE, max_duration: float | None = None) -> np.ndarray:
    """The whole audio of `path` as float32 mono [T] at `sr` Hz (see `iter_audio`).

    `max_duration` (seconds) refuses longer files before decoding them, with a one-line error.
    """
    if max_duration is not None:
        dur = probe_duration(path)
        if dur > max_duration:
            raise AvatarError(f"{path}: audio is {dur:.1f} s, longer than the limit of {max_duration:.0f} s (pass --allow-long)")
    blocks = list(iter_audio(path, sr=sr, block_s=60.0))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def rms_envelope(wav: np.ndarray, sr: int, fps: float, num_frames: int | None = None, win_s: float | None = None) -> np.ndarray:
    """[N] float32 RMS level (dB re full scale) of `wav` [T] around each video frame time k/fps.

    Frame k covers samples [k/fps - win/2, k/fps + win/2) (win = 2/fps by default); outside the
    signal counts as silence. Used for the energy VAD fallback, silent-frame picking and head motion.
    """
    n = int(num_frames if num_frames is not None else int(round(wav.shape[0] / sr * fps)))
    win = int(round((win_s if win_s is not None else 2.0 / fps) * sr))
    half = win // 2
    sq = np.concatenate([[0.0], np.cumsum(wav.astype(np.float64) ** 2)])
    centers = np.round(np.arange(n) / fps * sr).astype(np.int64)
    a = np.clip(centers - half, 0, wav.shape[0])
    b = np.clip(centers - half + win, 0, wav.shape[0])
    energy = (sq[b] - sq[a]) / max(win, 1)
    return (10.0 * np.log10(energy + 1e-10)).astype(np.float32)
