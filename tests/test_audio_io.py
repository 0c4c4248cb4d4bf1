"""avatar.core.audio: every common format, bit depth, rate and channel count decodes to the exact length.

Synthetic files are written here with soundfile (PCM/float wav, flac, ogg) and PyAV (mp3, m4a, a video
with an AAC track), so the test knows the true sample count; real files in ../shared/data/audio are
checked against their headers when present.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from avatar.core.audio import iter_audio, load_audio, probe_audio, probe_duration, rms_envelope
from avatar.errors import AvatarError

SR = 16000


def tone(rate: int, seconds: float, channels: int, freq: float = 440.0) -> np.ndarray:
    """[T, C] float32 test signal: a tone with a different phase per channel, amplitude 0.5."""
    t = np.arange(int(round(rate * seconds))) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * freq * t + c) for c in range(channels)], axis=1).astype(np.float32)


def write_av(path: Path, x: np.ndarray, rate: int, codec: str, video: bool = False) -> None:
    """Encode `x` [T, C] with PyAV into `path` (mp3 / m4a / mp4 with a tiny video track)."""
    import av

    layout = "mono" if x.shape[1] == 1 else "stereo"
    with av.open(str(path), "w") as c:
        if video:
            vs = c.add_stream("libx264", rate=25)
            vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        a = c.add_stream(codec, rate=rate, layout=layout)
        if video:
            nframes = int(round(x.shape[0] / rate * 25))
            for k in range(nframes):
                f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), k % 255, np.uint8), format="rgb24")
                for pkt in vs.encode(f):
                    c.mux(pkt)
            for pkt in vs.encode():
                c.mux(pkt)
        step = 1024
        for i in range(0, x.shape[0], step):
            chunk = x[i:i + step]
            # PyAV converts planar float frames to the encoder's sample format itself.
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk.T), format="fltp", layout=layout)
            f.sample_rate = rate
            f.pts = i
            f.time_base = Fraction(1, rate)
            for pkt in a.encode(f):
                c.mux(pkt)
        for pkt in a.encode():
            c.mux(pkt)


LOSSLESS = [
    ("PCM_U8", 8000, 1), ("PCM_16", 16000, 2), ("PCM_24", 22050, 1), ("PCM_32", 44100, 2),
    ("FLOAT", 48000, 1), ("DOUBLE", 24000, 2), ("PCM_16", 11025, 1), ("PCM_24", 32000, 2),
]


@pytest.mark.parametrize("subtype,rate,channels", LOSSLESS)
def test_wav_every_depth_and_rate_exact_length(tmp_path, subtype, rate, channels):
    import soundfile as sf

    x = tone(rate, 1.37, channels)
    p = tmp_path / f"a_{subtype}_{rate}.wav"
    sf.write(p, x, rate, subtype=subtype)
    y = load_audio(p, sr=SR)
    assert y.dtype == np.float32 and y.ndim == 1
    assert y.shape[0] == round(x.shape[0] * SR / rate)
    assert probe_duration(p) == pytest.approx(x.shape[0] / rate, abs=1e-9)
    # The decoded tone has the same level (equal-weight downmix of the per-channel phases).
    mono = x.mean(axis=1)
    assert np.sqrt(np.mean(y[200:-200] ** 2)) == pytest.approx(np.sqrt(np.mean(mono ** 2)), rel=0.05)


@pytest.mark.parametrize("fmt,rate,channels", [("FLAC", 44100, 2), ("OGG", 22050, 1), ("FLAC", 8000, 1)])
def test_flac_ogg(tmp_path, fmt, rate, channels):
    import soundfile as sf

    x = tone(rate, 2.0, channels)
    p = tmp_path / f"a.{fmt.lower()}"
    sf.write(p, x, rate, format=fmt)
    y = load_audio(p, sr=SR)
    tol = 0 if fmt == "FLAC" else int(0.03 * SR)
    assert abs(y.shape[0] - 2.0 * SR) <= tol
    assert abs(probe_duration(p) - 2.0) <= 0.03


@pytest.mark.parametrize("ext,codec,rate,channels,video", [
    ("mp3", "libmp3lame", 44100, 2, False), ("mp3", "libmp3lame", 16000, 1, False),
    ("m4a", "aac", 48000, 2, False), ("m4a", "aac", 24000, 1, False), ("mp4", "aac", 44100, 2, True),
])
def test_lossy_and_video_tracks(tmp_path, ext, codec, rate, channels, video):
    x = tone(rate, 2.5, channels)
    p = tmp_path / f"a.{ext}"
    write_av(p, x, rate, codec, video=video)
    y = load_audio(p, sr=SR)
    # Encoder delay is removed by FFmpeg via the container metadata: within one codec frame (<= 1152 samples).
    assert abs(y.shape[0] - 2.5 * SR) <= 1152 * SR / rate + 1
    assert abs(probe_duration(p) - 2.5) <= 0.08
    assert 0.2 < np.sqrt(np.mean(y[SR // 2: -SR // 2] ** 2)) < 0.45  # ~0.35 for a 0.5 tone, not silence
    assert probe_audio(p).sample_rate == rate


def test_resampling_keeps_timing(tmp_path):
    """A click at t = 0.7 s lands at sample 0.7 * 16000 after 44.1 kHz -> 16 kHz."""
    import soundfile as sf

    x = np.zeros((44100, 1), np.float32)
    x[int(0.7 * 44100)] = 1.0
    p = tmp_path / "click.wav"
    sf.write(p, x, 44100, subtype="FLOAT")
    y = load_audio(p, sr=SR)
    assert abs(int(np.argmax(y)) - int(0.7 * SR)) <= 1


def test_blocks_bounded_and_equal_to_whole(tmp_path):
    import soundfile as sf

    x = tone(48000, 7.3, 2)
    p = tmp_path / "long.wav"
    sf.write(p, x, 48000, subtype="PCM_16")
    blocks = list(iter_audio(p, sr=SR, block_s=2.0))
    assert all(b.shape[0] == 2 * SR for b in blocks[:-1]) and 0 < blocks[-1].shape[0] <= 2 * SR
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(p, sr=SR))


def test_bad_inputs_are_one_line_errors(tmp_path):
    import soundfile as sf

    cases = {}
    cases["missing"] = tmp_path / "nope.wav"
    (tmp_path / "empty.wav").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.wav"
    (tmp_path / "junk.mp3").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    cases["corrupt"] = tmp_path / "junk.mp3"
    sf.write(tmp_path / "zero.wav", np.zeros((0, 1), np.float32), 16000)
    cases["zero-length"] = tmp_path / "zero.wav"
    cases["folder"] = tmp_path
    for name, p in cases.items():
        with pytest.raises(AvatarError) as ei:
            load_audio(p)
        msg = str(ei.value)
        assert "\n" not in msg and str(p.name) in msg, (name, msg)


def test_video_without_audio_is_an_error(tmp_path):
    import av

    p = tmp_path / "silent.mp4"
    with av.open(str(p), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        for k in range(5):
            for pkt in vs.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
    with pytest.raises(AvatarError, match="no audio track"):
        load_audio(p)


def test_too_long_is_refused(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "a.wav", np.zeros((16000 * 3, 1), np.float32), 16000)
    with pytest.raises(AvatarError, match="allow-long"):
        load_audio(tmp_path / "a.wav", max_duration=2.0)


def test_rms_envelope_tracks_loudness():
    wav = np.zeros(SR * 2, np.float32)
    wav[SR:] = tone(SR, 1.0, 1)[:, 0]
    env = rms_envelope(wav, SR, 25.0)
    assert env.shape == (50,)
    assert env[:20].max() < -60 and env[30:].min() > -15


@pytest.mark.slow
def test_real_audio_files(shared_data):
    import soundfile as sf

    files = sorted((shared_data / "audio").glob("*.wav"))
    assert files
    for p in files:
        info = sf.info(str(p))
        y = load_audio(p, sr=SR)
        assert y.shape[0] == round(info.frames * SR / info.samplerate), p.name
        assert probe_duration(p) == pytest.approx(info.frames / info.samplerate), p.name
        assert np.abs(y).max() > 0.01, p.name
