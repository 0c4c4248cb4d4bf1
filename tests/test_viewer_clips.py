"""Upload validation and the clip table of the viewer (viewer/clips.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from avatar.errors import AvatarError
from avatar.viewer.clips import SAMPLE_RATE, ClipLibrary, check_upload


def _wav_bytes(seconds: float = 0.5, sr: int = 22050) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def test_check_upload_size_and_type():
    assert check_upload("speech.WAV", 1000, 2000) == ".wav"
    assert check_upload("a.mp3", 10, 2000) == ".mp3"
    with pytest.raises(AvatarError, match="over the"):
        check_upload("big.wav", 2001, 2000)
    with pytest.raises(AvatarError, match="empty"):
        check_upload("a.wav", 0, 2000)
    with pytest.raises(AvatarError, match="not an audio file"):
        check_upload("script.sh", 10, 2000)
    with pytest.raises(AvatarError, match="not an audio file"):
        check_upload("noext", 10, 2000)


def test_upload_decoded_and_stored_under_server_name(tmp_path):
    lib = ClipLibrary(None, max_upload_bytes=1_000_000)
    try:
        clip = lib.add_upload("../../etc/evil name.wav", _wav_bytes(0.5))
        # stored inside the private folder under a server-chosen name, resampled to 16 kHz mono
        assert clip.path.parent == lib.upload_dir and clip.path.name == "upload-0001.wav"
        assert abs(clip.wav.shape[0] - SAMPLE_RATE // 2) <= 1 and clip.wav.dtype == np.float32
        assert clip.label in lib.labels and "/" not in clip.label and ".." not in clip.label
        assert lib.get(clip.label) is clip
        # the browser copy is a playable WAV of the same length
        import soundfile as sf

        data, sr = sf.read(io.BytesIO(clip.wav_bytes()))
        assert sr == SAMPLE_RATE and len(data) == clip.wav.shape[0]
        assert clip.data_url().startswith("data:audio/wav;base64,")
    finally:
        lib.close()
    assert not lib.upload_dir.exists()


def test_upload_rejections_leave_nothing_behind():
    lib = ClipLibrary(None, max_upload_bytes=10_000)
    try:
        with pytest.raises(AvatarError, match="over the"):
            lib.add_upload("long.wav", _wav_bytes(2.0))  # ~88 KB > 10 KB
        with pytest.raises(AvatarError, match="not an audio file"):
            lib.add_upload("page.html", b"<html></html>")
        # right extension, wrong content: refused by decoding, file removed, no temp path leaked
        with pytest.raises(AvatarError, match="not readable audio") as e:
            lib.add_upload("fake.wav", b"RIFF this is not a wave file at all" * 10)
        assert str(lib.upload_dir) not in str(e.value)
        assert lib.labels == [] and list(lib.upload_dir.iterdir()) == []
    finally:
        lib.close()


def test_audio_dir_listing_and_unknown_labels(tmp_path):
    (tmp_path / "a.wav").write_bytes(_wav_bytes(0.3))
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "sub").mkdir()
    lib = ClipLibrary(tmp_path, max_upload_bytes=1_000_000)
    try:
        assert lib.labels == ["a.wav"]
        assert lib.get("a.wav").duration == pytest.approx(0.3, abs=1e-3)
        for bad in ("notes.txt", "../a.wav", str(tmp_path / "a.wav"), "/etc/passwd"):
            with pytest.raises(AvatarError, match="unknown clip"):
                lib.get(bad)
    finally:
        lib.close()
    with pytest.raises(AvatarError, match="not a folder"):
        ClipLibrary(tmp_path / "missing", max_upload_bytes=10)
