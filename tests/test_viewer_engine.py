"""The viewer renders through the one engine: a silent clip gets exactly the windows `avatar speak`
renders for the same silence, i.e. the training window with the most closed mouth; bad audio is refused
by the engine's one check."""

from __future__ import annotations

import numpy as np
import pytest
from test_speak_support import SR, get_tiny_run, talking_wav


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return get_tiny_run(tmp_path_factory)


def _inner_lip_gap(av, wins: np.ndarray) -> np.ndarray:
    """[N] the model's predicted inner-lip gap (landmarks 13/14, in units of the model's scale) for windows
    [N, W, D]: the measure of mouth opening the model's landmark motion loss trains."""
    import torch

    from avatar.core.dataset_format import load_dataset
    from avatar.core.landmarks import LOWER_INNER_LIP, UPPER_INNER_LIP

    shape = load_dataset(av.dataset["root"]).camera_pose().shape3d[[UPPER_INNER_LIP, LOWER_INNER_LIP]]
    w = torch.as_tensor(np.asarray(wins, np.float32))
    with torch.no_grad():
        x, _ = av.model.point_motion(torch.as_tensor(shape, dtype=torch.float32), av.model.audio(w), torch.zeros(len(w)))
    return ((x[:, 1] - x[:, 0]).norm(dim=-1) / av.model.unit).numpy()


def test_viewer_silence_is_speaks_closed_mouth(tiny_run, tmp_path, taken_windows):
    import soundfile as sf
    from avatar.viewer.clips import ClipLibrary
    from avatar.viewer.config import ViewerConfig
    from avatar.viewer.server import AvatarViewer

    from avatar.core.audio import load_audio, rms_envelope
    from avatar.core.dataset_format import load_dataset
    from avatar.engine import Avatar, SpeakConfig, Speaker
    from avatar.errors import AvatarError

    audio_dir = tmp_path / "clips"
    audio_dir.mkdir()
    sf.write(str(audio_dir / "silence.wav"), np.zeros(SR, np.float32), SR, subtype="PCM_16")
    bad = talking_wav(1.0)
    bad[100] = np.nan
    sf.write(str(audio_dir / "bad.wav"), bad, SR, subtype="FLOAT")
    av = Avatar.load(tiny_run, device="cpu")
    viewer = AvatarViewer(av, ClipLibrary(audio_dir, max_upload_bytes=1_000_000), host="127.0.0.1", port=0,
                          config=ViewerConfig(vad="energy"))
    try:
        seen = viewer.prepare("silence.wav")  # [25, W, D]
        with pytest.raises(AvatarError, match="NaN or infinite"):
            viewer.prepare("bad.wav")
    finally:
        viewer.stop()
    assert seen.shape == (25, av.feature_window, av.feature_dim)

    # what `avatar speak` feeds the model for the same second of silence (windows taken from its engine)
    taken_windows.clear()  # (the viewer's own prepare above went through the engine too)
    frames = list(Speaker(av, SpeakConfig(vad="energy")).frames(np.zeros(SR, np.float32)))
    spoken = np.concatenate(taken_windows)
    assert len(frames) == 25
    np.testing.assert_array_equal(seen, spoken)

    # ... which is the most closed mouth the model renders among the quiet training frames
    gap_seen = _inner_lip_gap(av, seen)
    info = load_dataset(av.dataset["root"])
    a, b = av.dataset["train"]
    wins = av.feature_windows(np.asarray(info.feature(info.default_feature), np.float32)[a:b]).numpy()
    lvl = rms_envelope(load_audio(info.path("audio.wav"), sr=SR), SR, info.fps, info.num_frames)[a:b]
    quiet = lvl <= np.percentile(lvl, 30)
    gaps = _inner_lip_gap(av, wins)
    np.testing.assert_allclose(gap_seen, gaps[quiet].min(), rtol=0, atol=1e-6)
    # and it is a real window of the training clip (not a constant window of averaged rows, which the model
    # never saw in training and rendered half open on a real run: avatar/engine/features.py)
    assert any(np.array_equal(seen[0], wins[k]) for k in np.flatnonzero(quiet))
