"""avatar.core.video_writer: frame-exact H.264 + AAC mp4, atomic publish, RGBA PNG sequences."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from avatar.errors import AvatarError
from avatar.core.video_writer import PngSequenceWriter, VideoWriter, probe_video


def frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """[n, h, w, 3] uint8 frames with a moving bar, so the encoder has something to do."""
    out = np.zeros((n, h, w, 3), np.uint8)
    for k in range(n):
        out[k, :, (3 * k) % w] = 255
        out[k, ..., 1] = 40
    return out


@pytest.mark.parametrize("duration,fps,rate", [(2.3, 25.0, 16000), (1.01, 30.0, 44100), (0.5, 29.97, 48000)])
def test_frame_exact_with_audio(tmp_path, duration, fps, rate):
    n = int(round(duration * fps))
    out = tmp_path / "out.mp4"
    audio = (0.3 * np.sin(2 * np.pi * 300 * np.arange(int(round(duration * rate))) / rate)).astype(np.float32)
    with VideoWriter(out, 64, 48, fps, audio_rate=rate, num_frames=n) as w:
        for k in range(n):  # interleave audio and frames the way the speak pipeline does
            w.write(frames(1)[0])
            a, b = int(round(k / fps * rate)), int(round((k + 1) / fps * rate))
            w.write_audio(audio[a:b])
        w.write_audio(audio[int(round(n / fps * rate)):])
    info = probe_video(out)
    assert info["frames"] == n
    assert info["video_codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["audio_codec"] == "aac" and info["audio_rate"] == rate
    assert info["audio_duration"] == pytest.approx(duration, abs=1.5 * 1024 / rate)
    assert info["fps"] == pytest.approx(fps, rel=1e-3)
    assert not [p for p in tmp_path.iterdir() if p.name != "out.mp4"], "temporary file left behind"


def test_content_round_trip_and_odd_size(tmp_path):
    import av

    f = np.zeros((5, 31, 45, 3), np.float32)
    f[..., 0] = 1.0  # red, float input
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, 45, 31, 25.0) as w:
        w.write(f)
    with av.open(str(out)) as c:
        dec = [fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]
    assert len(dec) == 5 and dec[0].shape == (32, 46, 3)
    assert dec[2][:31, :45, 0].mean() > 230 and dec[2][:31, :45, 1:].mean() < 25


def test_exception_mid_write_leaves_nothing(tmp_path):
    out = tmp_path / "crash.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(out, 64, 48, 25.0, audio_rate=16000) as w:
            w.write(frames(10))
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_wrong_frame_count_is_not_published(tmp_path):
    out = tmp_path / "short.mp4"
    w = VideoWriter(out, 64, 48, 25.0, num_frames=10)
    w.write(frames(9))
    with pytest.raises(AvatarError, match="expected 10"):
        w.close()
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_killed_process_leaves_no_final_file(tmp_path):
    """SIGKILL mid-encode (no chance to clean up): the final name never appears."""
    out = tmp_path / "killed.mp4"
    code = textwrap.dedent(f"""
        import os, signal, numpy as np
        from avatar.core.video_writer import VideoWriter
        w = VideoWriter({str(out)!r}, 64, 48, 25.0, audio_rate=16000)
        w.write(np.zeros((20, 48, 64, 3), np.uint8))
        w.write_audio(np.zeros(16000, np.float32))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode != 0
    assert not out.exists()
    assert all(p.name.startswith(".") for p in tmp_path.iterdir())  # only a hidden temp at most


def test_png_sequence_rgba(tmp_path):
    import cv2
    import soundfile as sf

    rgba = np.zeros((3, 20, 30, 4), np.uint8)
    rgba[..., 2] = 200
    rgba[:, 5:15, 10:20, 3] = 255
    out = tmp_path / "seq"
    with PngSequenceWriter(out, 30, 20, 25.0, audio_rate=16000, num_frames=3) as w:
        w.write(rgba)
        w.write_audio(np.zeros(1920, np.float32))
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3
    back = cv2.cvtColor(cv2.imread(str(pngs[1]), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    np.testing.assert_array_equal(back, rgba[1])
    assert sf.info(str(out / "audio.wav")).frames == 1920
    # crash -> no folder
    with pytest.raises(RuntimeError):
        with PngSequenceWriter(tmp_path / "seq2", 30, 20, 25.0) as w:
            w.write(rgba)
            raise RuntimeError("boom")
    assert not (tmp_path / "seq2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seq"]


def test_webm_with_alpha(tmp_path):
    """VP9 .webm keeps the alpha plane (read back with the libvpx decoder) and muxes Opus audio."""
    import av

    rgba = np.zeros((6, 32, 48, 4), np.uint8)
    rgba[..., 0] = 220
    rgba[:, 8:24, 12:36, 3] = 255
    out = tmp_path / "a.webm"
    with VideoWriter(out, 48, 32, 25.0, audio_rate=48000, num_frames=6, alpha=True) as w:
        w.write(rgba)
        w.write_audio(np.zeros(int(0.24 * 48000), np.float32))
    info = probe_video(out)
    assert info["frames"] == 6 and info["audio_codec"] == "opus"
    with av.open(str(out)) as c:
        dec = av.codec.CodecContext.create("libvpx-vp9", "r")
        frames = [f for p in c.demux(c.streams.video[0]) for f in dec.decode(p)]
    a = frames[2].to_ndarray(format="rgba")[..., 3]
    assert a[16, 24] > 240 and a[2, 2] < 15
    with pytest.raises(AvatarError, match="webm"):
        VideoWriter(tmp_path / "x.mp4", 48, 32, 25.0, alpha=True)
