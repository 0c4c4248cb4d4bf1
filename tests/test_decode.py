"""Stage 1 (decode): resampling from timestamps, A/V alignment, resizing and bad input, on synthetic clips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import soundfile as sf

from avatar.errors import AvatarError
from avatar.core.audio import SAMPLE_RATE
from avatar.preprocess.decode import decode_video, probe_video, target_size
from conftest import probe_times, read_frame_code, write_synthetic_video


def _codes(frames_dir, n):
    out = []
    for k in range(n):
        bgr = cv2.imread(str(frames_dir / f"{k:06d}.jpg"))
        out.append(read_frame_code(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return np.array(out)


def _expected_codes(vt, t0, n, fps=25.0):
    vt = np.asarray(vt)
    return np.array([int(np.argmin(np.abs(vt - (t0 + k / fps)))) for k in range(n)])


def _beep_onset(wav):
    return int(np.flatnonzero(np.abs(wav) > 0.2)[0])


def test_target_size():
    """`resolution` is the LONGER side (as `DataConfig.resolution` in training), sides rounded to even."""
    assert target_size(512, 512, 512) == (512, 512)
    assert target_size(1920, 1080, 512) == (512, 288)  # long side -> 512 (scale 4/15), 1080 * 4/15 = 288
    assert target_size(1080, 1920, 512) == (288, 512)
    assert target_size(256, 256, 512) == (256, 256)  # never upscaled
    assert target_size(4000, 3000, 512) == (512, 384)
    assert target_size(1280, 720, 500) == (500, 282)  # 720 * 500/1280 = 281.25 -> the even 282


@pytest.mark.parametrize("src_fps", [30.0, 50.0, 24.0, 60.0])
def test_resample_nearest_pts_and_audio_sync(tmp_path, src_fps):
    """Video starting 80 ms after the audio (like macron_50s_30fps.mp4): audio is trimmed to the video start,
    frame k shows the source frame nearest to t0 + k/25, and a beep stays at the same time relative to frame 0."""
    video = tmp_path / "v.mp4"
    n_src = int(4.0 * src_fps)
    write_synthetic_video(video, n_frames=n_src, fps=src_fps, video_start=0.08, beeps=[1.5], audio_start=0.0)
    vt, a0 = probe_times(video)
    assert vt[0] > a0 + 0.05  # the video really starts late
    res = decode_video(video, tmp_path / "frames", resolution=512, fps=25.0, min_duration=1.0, progress=False)
    t0 = max(vt[0], a0)
    assert res.t0 == pytest.approx(t0, abs=1e-6)
    np.testing.assert_array_equal(_codes(tmp_path / "frames", res.num_frames), _expected_codes(vt, t0, res.num_frames))
    # audio: exactly num_frames / 25 s, beep at (1.5 - t0) s
    assert len(res.audio) == round(res.num_frames / 25 * SAMPLE_RATE)
    onset = _beep_onset(res.audio) / SAMPLE_RATE
    assert onset == pytest.approx(1.5 - t0, abs=0.003)
    # frames never outrun the audio or the video
    assert res.num_frames / 25 <= vt[-1] + 1 / src_fps - t0 + 1e-6


def test_audio_starts_late_drops_leading_video(tmp_path):
    video = tmp_path / "v.mp4"
    write_synthetic_video(video, n_frames=100, fps=25.0, video_start=0.0, audio_start=0.5, beeps=[2.0])
    vt, a0 = probe_times(video)
    assert a0 > 0.3
    res = decode_video(video, tmp_path / "frames", fps=25.0, min_duration=1.0, progress=False)
    assert res.t0 == pytest.approx(a0, abs=1e-6)
    codes = _codes(tmp_path / "frames", res.num_frames)
    np.testing.assert_array_equal(codes, _expected_codes(vt, a0, res.num_frames))
    assert codes[0] >= 10  # the first ~0.5 s of video has no audio and is dropped
    assert _beep_onset(res.audio) / SAMPLE_RATE == pytest.approx(2.0 - a0, abs=0.003)


def test_variable_frame_rate(tmp_path):
    """Irregular pts (VFR phone video): every output frame is the nearest source frame in time."""
    rng = np.random.default_rng(1)
    times = np.cumsum(rng.uniform(1 / 60, 1 / 15, 120))
    times -= times[0]
    video = tmp_path / "vfr.mp4"
    write_synthetic_video(video, times=list(times), fps=30.0)
    vt, a0 = probe_times(video)
    res = decode_video(video, tmp_path / "frames", fps=25.0, min_duration=1.0, progress=False)
    codes = _codes(tmp_path / "frames", res.num_frames)
    np.testing.assert_array_equal(codes, _expected_codes(vt, res.t0, res.num_frames))
    assert res.repeated_frames > 0 and res.dropped_frames > 0  # both happen with VFR around 25 fps


def test_large_resolution_is_downscaled(tmp_path):
    video = tmp_path / "big.mp4"
    write_synthetic_video(video, n_frames=30, fps=25.0, width=1920, height=1080, audio=False)
    # resolution is the LONGER side (as in training): 1920x1080 at 480 is a quarter, 480x270
    res = decode_video(video, tmp_path / "frames", resolution=480, fps=25.0, with_audio=False, min_duration=1.0, progress=False)
    img = cv2.imread(str(tmp_path / "frames" / "000000.jpg"))
    assert img.shape[:2] == (270, 480) == (res.height, res.width)
    assert read_frame_code(cv2.cvtColor(cv2.imread(str(tmp_path / "frames" / "000007.jpg")), cv2.COLOR_BGR2RGB)) == 7


def test_frames_are_streamed_not_accumulated(tmp_path):
    """Peak traced memory while decoding 200 frames stays far below holding them all (numpy buffers are
    visible to tracemalloc)."""
    import tracemalloc

    video = tmp_path / "v.mp4"
    write_synthetic_video(video, n_frames=200, fps=25.0, width=320, height=240, audio=False, noise=True)
    all_frames = 200 * 320 * 240 * 3  # 46 MB
    tracemalloc.start()
    try:
        res = decode_video(video, tmp_path / "frames", with_audio=False, min_duration=1.0, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.num_frames == 200
    assert peak < 0.25 * all_frames, peak


# ---- bad input ---------------------------------------------------------------------------------


def test_no_such_file(tmp_path):
    with pytest.raises(AvatarError, match="no such file"):
        probe_video(tmp_path / "missing.mp4")


def test_not_a_video(tmp_path):
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 50)
    with pytest.raises(AvatarError, match="not a readable video"):
        probe_video(p)
    wav = tmp_path / "speech.wav"
    sf.write(str(wav), np.zeros(16000, np.float32), 16000)
    with pytest.raises(AvatarError, match="no video track"):
        probe_video(wav)


def test_truncated_file(tmp_path):
    video = tmp_path / "v.mp4"
    write_synthetic_video(video, n_frames=125, fps=25.0, noise=True)
    data = video.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(AvatarError, match="(truncated|corrupt|not a readable video)"):
        decode_video(cut, tmp_path / "frames", min_duration=1.0, progress=False)


def test_no_audio_track(tmp_path):
    video = tmp_path / "silent.mp4"
    write_synthetic_video(video, n_frames=100, fps=25.0, audio=False)
    with pytest.raises(AvatarError, match="no audio track.*--no-audio"):
        decode_video(video, tmp_path / "frames", progress=False)
    res = decode_video(video, tmp_path / "frames", with_audio=False, progress=False)
    assert res.audio is None and res.num_frames == 100


def test_too_short(tmp_path):
    video = tmp_path / "short.mp4"
    write_synthetic_video(video, n_frames=25, fps=25.0)
    with pytest.raises(AvatarError, match="too short"):
        decode_video(video, tmp_path / "frames", min_duration=3.0, progress=False)


def test_display_rotation_is_applied(tmp_path):
    """A phone clip stored sideways with a 90° display matrix is decoded upright (as ffmpeg/players show it)."""
    import subprocess

    import imageio_ffmpeg

    src = tmp_path / "src.mp4"
    write_synthetic_video(src, n_frames=80, fps=25.0, width=160, height=96)
    rot = tmp_path / "rot90.mp4"
    ff = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([ff, "-y", "-loglevel", "error", "-display_rotation", "90", "-i", str(src), "-c", "copy", str(rot)],
                   check=True)
    ref = tmp_path / "applied.mp4"  # ffmpeg applies the rotation when re-encoding: the upright truth
    subprocess.run([ff, "-y", "-loglevel", "error", "-i", str(rot), "-an", "-c:v", "libx264", str(ref)], check=True)
    probe = probe_video(rot)
    assert probe.rotation == 90 and (probe.width, probe.height) == (96, 160)
    res = decode_video(rot, tmp_path / "frames", min_duration=1.0, progress=False)
    assert (res.width, res.height) == (96, 160)
    import av

    with av.open(str(ref)) as c:
        truth = next(c.decode(video=0)).to_ndarray(format="rgb24")
    got = cv2.cvtColor(cv2.imread(str(tmp_path / "frames" / "000000.jpg")), cv2.COLOR_BGR2RGB)
    assert truth.shape == got.shape
    assert np.abs(truth.astype(int) - got.astype(int)).mean() < 8


def test_corrupt_header(tmp_path):
    video = tmp_path / "v.mp4"
    write_synthetic_video(video, n_frames=50, fps=25.0)
    data = bytearray(video.read_bytes())
    data[:64] = b"\xff" * 64
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    with pytest.raises(AvatarError, match="bad.mp4: (not a readable video|.*corrupt)"):
        decode_video(bad, tmp_path / "frames", min_duration=1.0, progress=False)
