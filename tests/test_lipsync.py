"""avatar.evaluation.lipsync: AV-offset / AV-corr on rendered audio and on the training clip (tiny avatar)."""

from __future__ import annotations

import numpy as np
import pytest
from test_speak_support import SR, get_tiny_run, talking_wav


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return get_tiny_run(tmp_path_factory)


def _speech_band_wav(mouth: np.ndarray, lead: int, fps: float) -> np.ndarray:
    """A 2 kHz tone (inside the measure's 1-3 kHz band) whose loudness at frame i follows mouth[i + lead]
    (circularly): the sound comes `lead` frames before the mouth shape, so the clip's true AV offset is
    +lead frames (video late)."""
    n = len(mouth)
    z = (mouth - mouth.mean()) / mouth.std()
    env = np.exp(np.roll(z, -lead))  # env[i] = exp(z[(i + lead) % n])
    t = np.arange(int(round(n / fps * SR))) / SR
    return (0.1 * np.interp(t * fps, np.arange(n), env) * np.sin(2 * np.pi * 2000 * t)).astype(np.float32)


@pytest.mark.parametrize("lead", [2, -3])
def test_clip_sync_finds_a_known_offset_in_the_training_clip(tiny_run, tmp_path, lead):
    """The reference figures come from the training clip's own landmarks and audio: with its audio
    replaced by speech-band audio that leads its tracked mouth by a known number of frames, `clip_sync`
    reports exactly that offset (sign convention of avatar/core/avsync.py) with a high correlation.
    The tiny clip is 24 frames = two periods of its 12-frame mouth cycle, so the circular shift is seamless."""
    import shutil
    import types

    import soundfile as sf

    from avatar.core.dataset_format import load_dataset
    from avatar.core.landmarks import mouth_opening
    from avatar.evaluation.lipsync import clip_sync

    data = tmp_path / "data"
    shutil.copytree(tiny_run / "data", data)
    info = load_dataset(data)
    mouth = mouth_opening(np.asarray(info.landmarks()))
    assert len(mouth) == 24 and info.fps == 25
    sf.write(str(data / "audio.wav"), _speech_band_wav(mouth, lead, info.fps), SR, subtype="FLOAT")
    g = clip_sync(types.SimpleNamespace(dataset={"root": str(data)}))  # clip_sync reads only the run's dataset
    assert g["gt_av_offset_frames"] == lead and g["gt_av_corr"] > 0.9
    assert g["gt_source"] == str(load_dataset(data).root)


def test_eval_audio_renders_every_frame_and_reports_the_clip(tiny_run, tmp_path):
    """eval_audio renders 2.0 s of audio at the run's 25 fps (50 frames) and reports the reference of the
    run's own training clip (its dataset folder). The rendered-mouth figures of the 20-step tiny model are
    not meaningful (its lips have not learnt to move), so only their type and range are checked."""
    import soundfile as sf

    from avatar.engine import SpeakConfig
    from avatar.evaluation.lipsync import eval_audio

    sf.write(str(tmp_path / "a.wav"), talking_wav(2.0), SR)
    r = eval_audio(tiny_run, tmp_path / "a.wav", device="cpu", speak_config=SpeakConfig(vad="energy"))
    assert r["frames"] == 50 and r["fps"] == 25.0 and r["audio"] == str(tmp_path / "a.wav")
    assert r["gt_source"] == str((tiny_run / "data").resolve())
    assert isinstance(r["av_offset_frames"], int) and isinstance(r["gt_av_offset_frames"], int)
    assert 0.0 <= r["face_found_ratio"] <= 1.0


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


def test_gaussian_mouth_opening_is_the_lip_gap(tiny_run, monkeypatch):
    """Closed form: with 6 head Gaussians placed on the canonical upper inner lip (landmark 13), 6 on the lower
    (14), the rest far away, and a deformation that moves the lower ones down by lip_scale * a_b * delta for
    window b, the measure is |p14 - p13 + lip_scale a_b delta e_y| / unit for every window (70 windows:
    more than one batch of 64)."""
    import torch

    from avatar.core.dataset_format import load_dataset
    from avatar.engine import Avatar
    from avatar.evaluation.lipsync import gaussian_mouth_opening

    av = Avatar.load(tiny_run, device="cpu")
    m = av.model
    shape3d = torch.as_tensor(load_dataset(av.dataset["root"]).camera_pose().shape3d, dtype=torch.float32)  # [478, 3]
    means = m.head.params["means"]
    assert means.shape[0] >= 12
    with torch.no_grad():
        means.data[:] = shape3d.mean(0) + 10.0  # far from the lips
        means.data[:6] = shape3d[13]
        means.data[6:12] = shape3d[14]
    delta = 0.05
    move = torch.zeros_like(means)  # [N, 3]
    move[6:12, 1] = delta
    monkeypatch.setattr(m.audio, "forward", lambda w: w[:, w.shape[1] // 2, :1])  # [B, 1]: the centre row's first feature
    monkeypatch.setattr(m, "deform", lambda a, blink, s=1.0: {"means": means.detach()[None] + s * a[:, :, None] * move[None]})
    a = np.linspace(0.0, 1.0, 70).astype(np.float32)
    wins = np.zeros((70, 3, av.feature_dim), np.float32)
    wins[:, 1, 0] = a
    unit = float(m.unit)
    for lip_scale in (1.0, 0.5):
        g = gaussian_mouth_opening(av, wins, np.zeros(70), lip_scale=lip_scale)
        gap = (shape3d[14] - shape3d[13]).numpy()[None].repeat(70, 0)
        gap[:, 1] += lip_scale * a * delta
        np.testing.assert_allclose(g, np.linalg.norm(gap, axis=1) / unit, rtol=1e-5)


def test_bench_lipsync_over_a_folder(tiny_run, tmp_path, capsys):
    """bench/lipsync.py over a folder: audio files only, in name order, one rendered frame per 40 ms of each,
    the run's own training clip as the reference (once), the means those of the rows, the machine stated."""
    import importlib.util
    import json
    from pathlib import Path

    import soundfile as sf

    spec = importlib.util.spec_from_file_location("bench_lipsync", Path(__file__).resolve().parents[1] / "bench" / "lipsync.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    folder = tmp_path / "clips"
    folder.mkdir()
    sf.write(str(folder / "a.wav"), talking_wav(1.2), SR)
    sf.write(str(folder / "b.flac"), talking_wav(0.8, silence=(0.3, 0.5)), SR, format="FLAC")
    (folder / "notes.txt").write_text("not audio")
    assert bench.main([str(tiny_run), "--audio-dir", str(folder), "--device", "cpu", "--no-tts"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert [r["file"] for r in summary["files"]] == ["a.wav", "b.flac"] and summary["evaluated"] == 2
    # 1.2 s and 0.8 s at 25 fps: 30 and 20 rendered frames; the reference is the run's own clip, reported once
    assert [(r["frames"], r["seconds"]) for r in summary["files"]] == [(30, 1.2), (20, 0.8)]
    assert summary["gt_source"] == str((tiny_run / "data").resolve()) and isinstance(summary["gt_av_offset_frames"], int)
    assert summary["machine"]["cores"] >= 1 and summary["machine"]["device"] == "cpu"
    assert summary["mean_abs_offset_frames"] == pytest.approx(np.mean([abs(r["av_offset_frames"]) for r in summary["files"]]))
    assert sum("a.wav" in line for line in out[:-1]) == 1  # the table
    for r in summary["files"]:  # judged against the clip's own figures
        assert r["d_offset"] == r["av_offset_frames"] - summary["gt_av_offset_frames"]
    # issue 17's targets on a hand-made table: clip offset -2, corr 0.4
    rows = [{"file": "fr.wav", "av_offset_frames": -1, "av_corr": 0.36}, {"file": "ja.wav", "av_offset_frames": -4, "av_corr": 0.2},
            {"file": "itosinger1.wav", "av_offset_frames": 8, "av_corr": 0.01}, {"file": "bad.wav", "error": "x"}]
    t = bench.judge(rows, -2, 0.4)
    assert t["speech_files"] == 2 and t["files_offset_within_1"] == 1 and t["mean_abs_d_offset"] == 1.5
    assert t["mean_corr_ratio"] == pytest.approx(0.7) and t["min_corr_ratio"] == pytest.approx(0.5)
    assert not t["target_offset_every_file"] and not t["target_mean_corr_ratio_0.8"] and not t["target_min_corr_ratio_0.6"]
    assert rows[2]["singing"] and rows[2]["d_offset"] == 10  # singing: reported, not judged
    assert bench.judge(rows[:1], -2, 0.4)["target_offset_every_file"] and bench.judge(rows[:1], -2, 0.4)["target_min_corr_ratio_0.6"]
    # bad folders: one line on stderr, exit code 2
    capsys.readouterr()
    assert bench.main([str(tiny_run), "--audio-dir", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert bench.main([str(tiny_run), "--audio-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("bench/lipsync.py: error:") for line in err)
