"""avatar.evaluation.lipsync: AV-offset / AV-corr on rendered audio and on the training clip (tiny avatar)."""

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

    from avatar.core.dataset_format import load_dataset
    from avatar.evaluation.lipsync import eval_audio
    from avatar.core.avsync import av_offset
    from avatar.core.landmarks import mouth_opening
    from avatar.engine.speak import SpeakConfig

    sf.write(str(tmp_path / "a.wav"), talking_wav(2.0), SR)
    r = eval_audio(tiny_run, tmp_path / "a.wav", device="cpu", speak_config=SpeakConfig(vad="energy"))
    for key in ("av_offset_frames", "av_corr", "gt_av_offset_frames", "gt_av_corr"):
        assert key in r
    assert r["frames"] == 50 and r["mouth_measure"] in ("facemesh", "gaussians")
    assert -8 <= r["av_offset_frames"] <= 8 and (math.isnan(r["av_corr"]) or -1 <= r["av_corr"] <= 1)
    # the reference figures are exactly av_offset on the training clip's own landmarks and audio
    from avatar.core.audio import load_audio

    info = load_dataset(tiny_run / "data")
    lag, corr = av_offset(mouth_opening(np.asarray(info.landmarks())), load_audio(info.path("audio.wav")), SR, info.fps)
    assert r["gt_av_offset_frames"] == lag and r["gt_av_corr"] == pytest.approx(corr)


def test_av_offset_recovers_a_known_shift():
    """The measure used by eval_audio finds a 3-frame video delay on a synthetic mouth track."""
    from avatar.core.avsync import av_offset

    rng = np.random.default_rng(0)
    n, fps = 250, 25.0
    env = np.abs(np.convolve(rng.normal(size=n), np.ones(3) / 3, mode="same"))  # syllable-like energy per frame
    t = np.arange(int(n / fps * SR)) / SR
    wav = (np.interp(t * fps, np.arange(n), env) * np.sin(2 * np.pi * 1800 * t)).astype(np.float32)
    mouth = np.concatenate([np.zeros(3), env[:-3]])  # the mouth moves 3 frames after the sound
    lag, corr = av_offset(mouth, wav, SR, fps)
    assert lag == 3 and corr > 0.8


def test_gaussian_mouth_opening_shape(tiny_run):
    from avatar.evaluation.lipsync import gaussian_mouth_opening
    from avatar.engine.runtime import Avatar

    av = Avatar.load(tiny_run, device="cpu")
    feats = np.zeros((7, av.feature_dim), np.float32)
    g = gaussian_mouth_opening(av, av.feature_windows(feats), np.zeros(7))
    assert g.shape == (7,) and np.all(np.isfinite(g)) and np.all(g > 0)


def test_bench_lipsync_over_a_folder(tiny_run, tmp_path, capsys):
    """bench/lipsync.py: per-file figures are exactly `eval_audio`'s (what `avatar eval --audio --json`
    prints), the training-clip reference is reported once, and the means are those of the rows."""
    import importlib.util
    import json
    from pathlib import Path

    import soundfile as sf

    from avatar.evaluation.lipsync import eval_audio

    spec = importlib.util.spec_from_file_location("bench_lipsync", Path(__file__).resolve().parents[1] / "bench" / "lipsync.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    folder = tmp_path / "clips"
    folder.mkdir()
    sf.write(str(folder / "a.wav"), talking_wav(1.2), SR)
    sf.write(str(folder / "b.flac"), talking_wav(0.8, silence=(0.3, 0.5)), SR, format="FLAC")
    (folder / "notes.txt").write_text("not audio")
    assert bench.main([str(tiny_run), "--audio-dir", str(folder), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert [r["file"] for r in summary["files"]] == ["a.wav", "b.flac"] and summary["evaluated"] == 2
    for row in summary["files"]:
        ref = eval_audio(tiny_run, folder / row["file"], device="cpu")
        assert row["av_offset_frames"] == ref["av_offset_frames"] and row["frames"] == ref["frames"]
        assert row["av_corr"] == (None if math.isnan(ref["av_corr"]) else pytest.approx(ref["av_corr"]))
        assert summary["gt_av_offset_frames"] == ref["gt_av_offset_frames"]
    assert summary["mean_abs_offset_frames"] == pytest.approx(np.mean([abs(r["av_offset_frames"]) for r in summary["files"]]))
    assert sum("a.wav" in line for line in out[:-1]) == 1  # the table
    # bad folders: one line on stderr, exit code 2
    capsys.readouterr()
    assert bench.main([str(tiny_run), "--audio-dir", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert bench.main([str(tiny_run), "--audio-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("bench/lipsync.py: error:") for line in err)
