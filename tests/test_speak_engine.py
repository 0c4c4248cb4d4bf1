"""The engine as every caller sees it: bad audio stops with one line (CLI, offline and streaming), the
speak CLI is generated from `SpeakConfig`, the camera maths has one definition, and the silence
statistics travel inside model.pt so inference does not need the training dataset."""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_speak_support import SR, get_tiny_run, talking_wav


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return get_tiny_run(tmp_path_factory)


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "avatar.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("bad, rate, stream", [(np.nan, 16000, False), (np.inf, 44100, False), (np.nan, 16000, True)])
def test_non_finite_audio_is_one_line_error_and_no_output(tiny_run, tmp_path, bad, rate, stream):
    """A float WAV with NaN/inf samples: exit 2, exactly one `avatar: error:` line on stderr naming the
    problem, and no output file (it used to end in a PyAV encoder traceback, `avcodec_send_frame() returned 22`)."""
    import soundfile as sf

    wav = talking_wav(1.0, sr=rate)
    wav[rate // 2] = bad
    src = tmp_path / "bad.wav"
    sf.write(str(src), wav, rate, subtype="FLOAT")
    out = tmp_path / ("o.rgb" if stream else "o.mp4")
    extra = ("--stream", "--no-realtime") if stream else ()
    r = _cli("speak", tiny_run, "--audio", src, "-o", out, "--device", "cpu", "--vad", "energy", *extra)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    if stream:  # the stream announces its format first (one banner line), then fails
        assert len(lines) == 2 and lines[0].startswith("avatar speak --stream: raw"), lines
        lines = lines[1:]
    assert len(lines) == 1 and lines[0].startswith("avatar: error:"), lines
    assert "NaN or infinite" in lines[0] and "0.50 s" in lines[0]
    if stream:  # a raw stream may have begun, but no frame after the bad sample: 0.5 s in, nothing can be final yet
        assert not out.exists() or out.stat().st_size < 25 * 64 * 64 * 3
    else:
        assert not out.exists() and not list(tmp_path.glob("*.mp4*"))


def test_engine_audio_entry_rejects_non_finite_samples():
    from avatar.engine.engine import FrameEngine, Segmenting
    from avatar.errors import AvatarError

    eng = FrameEngine(25.0, lambda w, n, f: np.zeros((n, 2), np.float32), Segmenting(5, 2, 2), window_past=1,
                      window_future=1, lookahead=1)
    eng.push(np.zeros(SR, np.float32))
    bad = np.zeros(SR, np.float32)
    bad[SR // 4] = np.inf
    with pytest.raises(AvatarError, match=r"first at 1\.25 s"):  # 1 s already pushed + 0.25 s
        eng.push(bad)


def test_speak_help_lists_every_speak_config_field(capsys):
    from avatar.cli import main
    from avatar.core.config import field_docs
    from avatar.engine import SpeakConfig

    with pytest.raises(SystemExit):
        main(["speak", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    docs = field_docs(SpeakConfig)
    for f in dataclasses.fields(SpeakConfig):
        dash = f.name.replace("_", "-")
        assert f"--{dash}" in text or f"--no-{dash}" in text, f.name
        assert " ".join(docs[f.name].split()[:6]) in text, f.name  # its docstring is its help line
    for kept in ("--pose", "--yaw", "--orbit", "--lip-scale", "--background", "--stream", "--export-motion",
                 "--no-torso", "--stream-segment", "--feature-model"):  # flags users already rely on
        assert kept + " " in text or kept + "," in text, kept


def test_speak_options_build_the_config():
    from avatar.cli import build_parser
    from avatar.commands.speak import _config

    args = build_parser().parse_args(["speak", "run", "--audio", "a.wav", "-o", "o.mp4", "--no-torso", "--yaw", "12.5",
                                      "--stream-segment", "3", "--vad", "energy", "--segment-s", "7"])
    cfg = _config(args)
    assert (cfg.torso, cfg.yaw, cfg.stream_segment_frames, cfg.vad, cfg.segment_s) == (False, 12.5, 3, "energy", 7.0)
    assert cfg.pose == "replay" and cfg.fps is None  # untouched fields keep their defaults


def test_view_help_lists_every_viewer_config_field(capsys):
    from avatar.viewer.config import ViewerConfig

    from avatar.cli import main

    with pytest.raises(SystemExit):
        main(["view", "--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(ViewerConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name


def test_one_camera_rotation_for_speak_and_viewer():
    """speak's float32 rotation and the viewer's head offset use the same convention: a +yaw of 90 degrees
    maps the camera's +z (forward) axis to -x (the face turns towards image right: its front, pointing at
    the camera along -z, ends up pointing along +x)."""
    from avatar.viewer.camera import head_offset_matrix

    from avatar.core.camera import camera_rotation, euler_camera

    R = camera_rotation(90, 0, 0)
    np.testing.assert_allclose(R @ [0, 0, -1.0], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(R @ [0, 1.0, 0], [0, 1, 0], atol=1e-12)  # about the vertical axis
    np.testing.assert_allclose(camera_rotation(0, 90, 0) @ [0, 0, -1.0], [0, 1, 0], atol=1e-12)  # chin down (+y)
    rng = np.random.default_rng(0)
    for y, p, r in rng.uniform(-60, 60, (20, 3)):
        np.testing.assert_allclose(euler_camera(y, p, r), camera_rotation(y, p, r), atol=1e-7)
        M = head_offset_matrix(y, p, r, np.eye(3), np.zeros(3))  # training camera = head frame
        np.testing.assert_allclose(M[:3, :3], camera_rotation(y, p, r), atol=1e-12)
    assert math.isclose(np.linalg.det(camera_rotation(10, 20, 30)), 1.0)


def test_silence_statistics_are_stored_in_the_model(tiny_run, tmp_path):
    """model.pt carries the silent row, level track and closed-mouth window; they equal what the dataset
    folder gives, and speaking works the same with the dataset folder gone."""
    from avatar.engine import Avatar, SpeakConfig, Speaker
    from avatar.engine.features import dataset_stats

    av = Avatar.load(tiny_run, device="cpu")
    st = av.training_stats
    assert st is not None and "stored in model.pt" in st.source
    ref = dataset_stats(av.model, av.dataset["root"], av.feature_meta.get("name"), tuple(av.dataset["train"]), "cpu")
    np.testing.assert_array_equal(st.silent_row, ref.silent_row)
    np.testing.assert_array_equal(st.level_db, ref.level_db)
    np.testing.assert_array_equal(st.silent_window, ref.silent_window)
    assert st.silent_window.shape == (av.feature_window, av.feature_dim)

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("data"))
    assert not (copy / "data").exists()
    wav = talking_wav(1.2, silence=(0.4, 0.9))
    cfg = SpeakConfig(vad="energy")
    a = [f.rgb for f in Speaker(av, cfg).frames(wav)]
    b = [f.rgb for f in Speaker(Avatar.load(copy, device="cpu"), cfg).frames(wav)]
    assert len(a) == len(b) == 30 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_old_run_without_stored_statistics_reads_the_dataset(tiny_run, tmp_path):
    """A model.pt saved before the statistics were stored falls back to the dataset folder (same result),
    and with that folder gone to the extractor's silence with one warning line."""
    import torch

    from avatar.engine import Avatar
    from avatar.engine.features import training_stats

    payload = torch.load(tiny_run / "model.pt", map_location="cpu", weights_only=False)
    stored = payload.pop("training_stats")
    old = tmp_path / "old"
    old.mkdir()
    torch.save(payload, old / "model.pt")
    av = Avatar.load(old, device="cpu")
    assert av.training_stats is None
    st = training_stats(av)
    np.testing.assert_array_equal(st.silent_window, stored["silent_window"])
    payload["dataset"] = dict(payload["dataset"], root=str(tmp_path / "gone"))
    torch.save(payload, old / "model.pt")
    r = subprocess.run([sys.executable, "-c", "import sys; from avatar.engine import Avatar; "
                        "from avatar.engine.features import training_stats, synthetic_features; "
                        f"st = training_stats(Avatar.load({str(old)!r}, device='cpu'), synthetic_features); "
                        "print(st.source)"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1000:]
    assert r.stdout.strip() == "extractor(silence)"
    warn = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "re-run `avatar fit`" in warn[0]


def test_silero_gate_keeps_the_torch_thread_count():
    """`import silero_vad` sets torch to 1 thread process-wide; building the gate must not change it.
    In a fresh interpreter, so silero is imported for the first time here."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(2); from avatar.engine.gate import SpeechGate; "
            "SpeechGate(fps=25.0, kind='silero'); print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "2"


def test_same_file_whatever_the_thread_count(may_run, tmp_path):
    """`avatar speak` of a real-clip avatar at 1 and at 2 torch threads writes byte-identical mp4s. MKL chooses its GEMM
    kernels by thread count (results 1e-7 apart, 45-49 dB after H.264 at 512x512), so an `avatar batch` worker
    (1 thread) differed from `avatar speak` (all cores) until the package set MKL's strict reproducible mode
    (avatar/__init__.py). Also checked below the engine: the audio net's [9, 64] x [64, 64] Linear that differed."""
    import os

    import soundfile as sf
    from conftest import shared_file

    from avatar.core.audio import load_audio

    src = tmp_path / "fr.wav"
    sf.write(str(src), load_audio(shared_file("audio/dreamtalk_french1.wav"), sr=SR)[: 2 * SR], SR)
    probe = ("import avatar, torch, sys; torch.set_num_threads(int(sys.argv[1])); g = torch.Generator().manual_seed(0); "
             "w = torch.randn(64, 64, generator=g); x = torch.randn(9, 64, generator=g); "
             "sys.stdout.buffer.write(torch.nn.functional.linear(x, w).numpy().tobytes())")
    files, gemm = [], []
    for n in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(n))
        gemm.append(subprocess.run([sys.executable, "-c", probe, str(n)], capture_output=True, env=env, check=True).stdout)
        out = tmp_path / f"t{n}.mp4"
        r = subprocess.run([sys.executable, "-m", "avatar.cli", "speak", str(may_run), "--audio", str(src), "-o", str(out),
                            "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        files.append(out.read_bytes())
    assert len(files[0]) > 1000 and files[0] == files[1]
    assert len(gemm[0]) == 9 * 64 * 4 and gemm[0] == gemm[1]
