"""Audio in and out of a live session: uploads and microphone frames -> one 48 kHz mono timeline -> 16 kHz.

A session's timeline is 48 kHz mono float (`OUT_RATE`, WebRTC's Opus rate): what the browser hears is the
timeline itself, and the engine is fed the same samples decimated by exactly 3 (`Decimator`), so engine
sample j is timeline sample 3j and video frame k covers timeline samples [k * 48000 / fps, (k + 1) * 48000 / fps).
That sample count is the one clock both WebRTC tracks take their timestamps from.

Inputs: raw PCM16 (`audio/L16` or `audio/pcm`, any rate/channels, any chunk size: an odd trailing byte
waits for the next chunk, `PcmStream`), or any file ffmpeg reads (WAV, MP3, OGG, FLAC, M4A, a video's audio
track), decoded in memory with PyAV (`decode_file`).
"""

from __future__ import annotations

import io

import numpy as np

from avatar.core.audio import SAMPLE_RATE
from avatar.errors import AvatarError

OUT_RATE = 48000
"""The timeline's sample rate (Opus / WebRTC audio)."""
DECIMATION = OUT_RATE // SAMPLE_RATE
assert DECIMATION * SAMPLE_RATE == OUT_RATE


def _resample(frames, rate_hint: int) -> np.ndarray:
    """PyAV audio frames -> float32 mono at OUT_RATE (libswresample; one resampler for the whole stream)."""
    import av

    rs = av.AudioResampler(format="flt", layout="mono", rate=OUT_RATE)
    out = []
    for fr in frames:
        for o in rs.resample(fr):
            out.append(o.to_ndarray().reshape(-1))
    for o in rs.resample(None):
        out.append(o.to_ndarray().reshape(-1))
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def decode_file(data: bytes) -> np.ndarray:
    """Any file ffmpeg reads (WAV, MP3, OGG, FLAC, M4A, a video) -> float32 mono 48 kHz.
    Raises AvatarError for bytes that hold no audio stream or cannot be decoded."""
    import av

    if not data:
        raise AvatarError("the audio is empty (0 bytes)")
    try:
        with av.open(io.BytesIO(data), mode="r") as c:
            if not c.streams.audio:
                raise AvatarError("the upload holds no audio stream")
            st = c.streams.audio[0]
            wav = _resample(c.decode(st), st.rate or OUT_RATE)
    except AvatarError:
        raise
    except (av.FFmpegError, ValueError, EOFError) as e:
        raise AvatarError(f"not readable audio ({type(e).__name__}); send WAV/MP3/OGG/FLAC/M4A or raw PCM16 "
                          f"with Content-Type audio/L16;rate=R") from None
    if wav.size == 0:
        raise AvatarError("the audio decodes to 0 samples")
    if not np.isfinite(wav).all():
        raise AvatarError("the audio holds NaN or infinite samples")
    return wav


class PcmStream:
    """Raw little-endian PCM16 chunks of any size at `rate` Hz, `channels` interleaved -> float32 mono 48 kHz.
    Keeps an odd trailing byte / partial sample frame and the resampler state between chunks."""

    def __init__(self, rate: int, channels: int = 1):
        import av

        if not (1000 <= rate <= 384000):
            raise AvatarError(f"PCM sample rate {rate} Hz is out of range (1000..384000)")
        if not (1 <= channels <= 8):
            raise AvatarError(f"PCM channels {channels} out of range (1..8)")
        self.rate, self.channels = int(rate), int(channels)
        self._carry = b""
        self._rs = None if self.rate == OUT_RATE else av.AudioResampler(format="flt", layout="mono", rate=OUT_RATE)

    def push(self, data: bytes) -> np.ndarray:
        import av

        data = self._carry + data
        step = 2 * self.channels
        n = len(data) // step * step
        self._carry = data[n:]
        if n == 0:
            return np.zeros(0, np.float32)
        x = np.frombuffer(data[:n], dtype="<i2").reshape(-1, self.channels).astype(np.float32).mean(1) / 32768.0
        if self._rs is None:
            return x.astype(np.float32)
        fr = av.AudioFrame.from_ndarray(x[None].astype(np.float32), format="flt", layout="mono")
        fr.sample_rate = self.rate
        out = [o.to_ndarray().reshape(-1) for o in self._rs.resample(fr)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


class MicStream:
    """WebRTC audio frames (Opus decoded by aiortc: s16, 48 kHz, mono or stereo) -> float32 mono 48 kHz."""

    def __init__(self):
        import av

        self._rs = av.AudioResampler(format="flt", layout="mono", rate=OUT_RATE)

    def push(self, frame) -> np.ndarray:
        out = [o.to_ndarray().reshape(-1) for o in self._rs.resample(frame)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def _lowpass_taps(n: int = 48) -> np.ndarray:
    """FIR low-pass for 3:1 decimation: cut-off 7.2 kHz (0.9 x the 16 kHz Nyquist), Hamming window."""
    from scipy.signal import firwin

    return firwin(n, 0.9 / DECIMATION).astype(np.float64)


class Decimator:
    """Timeline (48 kHz) -> engine (16 kHz), exactly 3:1 and stateful: output sample j is the filtered
    timeline sample 3j, however the timeline is cut into pieces (scipy lfilter with carried state)."""

    def __init__(self):
        self.taps = _lowpass_taps()
        self._zi = np.zeros(len(self.taps) - 1)
        self._phase = 0  # index within the next piece of the first sample to keep

    def push(self, x48: np.ndarray) -> np.ndarray:
        from scipy.signal import lfilter

        x = np.asarray(x48, np.float64).ravel()
        if x.size == 0:
            return np.zeros(0, np.float32)
        y, self._zi = lfilter(self.taps, 1.0, x, zi=self._zi)
        out = y[self._phase::DECIMATION]
        self._phase = (self._phase - x.size) % DECIMATION
        return out.astype(np.float32)


def pcm_params(content_type: str, query: dict) -> tuple[int, int] | None:
    """(rate, channels) when the request body is raw PCM16 (`Content-Type: audio/L16;rate=R;channels=C`,
    `audio/pcm`, or `?format=pcm16&rate=R`), None when it is a file to decode."""
    ct = (content_type or "").lower()
    mime, _, params = ct.partition(";")
    mime = mime.strip()
    if mime not in ("audio/l16", "audio/pcm", "audio/x-pcm") and query.get("format", "").lower() not in ("pcm16", "s16le"):
        return None
    vals = {}
    for p in params.split(";"):
        k, _, v = p.partition("=")
        if k.strip():
            vals[k.strip()] = v.strip()
    try:
        rate = int(query.get("rate") or vals.get("rate") or SAMPLE_RATE)
        channels = int(query.get("channels") or vals.get("channels") or 1)
    except ValueError:
        raise AvatarError("PCM rate/channels must be integers") from None
    return rate, channels
