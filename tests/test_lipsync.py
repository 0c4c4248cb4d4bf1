"""avatar.lipsync: AV-offset / AV-corr on rendered audio and on the training clip (tiny avatar)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from test_speak_support import SR, get_tiny_run, talking_wav


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return get_tiny_run(tmp_path_factory)


def test_eval_audio_keys_and_reference(tiny_run, tmp_path):
    import soundfile as sf

    from avatar.dataset import load_dataset
    from avatar.lipsync import eval_audio
    from avatar.preprocess.sync import av_offset, mouth_opening
    from avatar.speak import SpeakConfig

    sf.write(str(tmp_path / "a.wav"), talking_wav(2.0), SR)
    r = eval_audio(tiny_run, tmp_path / "a.wav", device="cpu", speak_config=SpeakConfig(vad="energy"))
    for key in ("av_offset_frames", "av_corr", "gt_av_offset_frames", "gt_av_corr"):
        assert key in r
    assert r["frames"] == 50 and r["mouth_measure"] in ("facemesh", "gaussians")
    assert -8 <= r["av_offset_frames"] <= 8 and (math.isnan(r["av_corr"]) or -1 <= r["av_corr"] <= 1)
    # the reference figures are exactly av_offset on the training clip's own landmarks and audio
    from avatar.audio import load_audio

    info = load_dataset(tiny_run / "data")
    lag, corr = av_offset(mouth_opening(np.asarray(info.landmarks())), load_audio(info.path("audio.wav")), SR, info.fps)
    assert r["gt_av_offset_frames"] == lag and r["gt_av_corr"] == pytest.approx(corr)


def test_av_offset_recovers_a_known_shift():
    """The measure used by eval_audio finds a 3-frame video delay on a synthetic mouth track."""
    from avatar.preprocess.sync import av_offset

    rng = np.random.default_rng(0)
    n, fps = 250, 25.0
    env = np.abs(np.convolve(rng.normal(size=n), np.ones(3) / 3, mode="same"))  # syllable-like energy per frame
    t = np.arange(int(n / fps * SR)) / SR
    wav = (np.interp(t * fps, np.arange(n), env) * np.sin(2 * np.pi * 1800 * t)).astype(np.float32)
    mouth = np.concatenate([np.zeros(3), env[:-3]])  # the mouth moves 3 frames after the sound
    lag, corr = av_offset(mouth, wav, SR, fps)
    assert lag == 3 and corr > 0.8


def test_gaussian_mouth_opening_shape(tiny_run):
    from avatar.lipsync import gaussian_mouth_opening
    from avatar.runtime import Avatar

    av = Avatar.load(tiny_run, device="cpu")
    feats = np.zeros((7, av.feature_dim), np.float32)
    g = gaussian_mouth_opening(av, av.feature_windows(feats), np.zeros(7))
    assert g.shape == (7,) and np.all(np.isfinite(g)) and np.all(g > 0)
