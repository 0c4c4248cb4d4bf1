"""Metrics, `avatar eval`, and the runtime API on a tiny trained run."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from avatar.errors import AvatarError
from avatar.engine.runtime import Avatar
from avatar.testing import make_tiny_run
from avatar.train.losses import psnr, ssim, ssim_map


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    warnings.filterwarnings("ignore", message=".*backend.*")
    return make_tiny_run(tmp_path_factory.mktemp("tinyrun"), iters=12)


def test_psnr_and_masked_psnr_reference():
    a = torch.zeros(1, 4, 4, 3)
    b = torch.full((1, 4, 4, 3), 0.1)
    assert math.isclose(float(psnr(a, b)), 20.0, rel_tol=1e-5)
    mask = torch.zeros(1, 4, 4, 1)
    mask[:, :2] = 1
    b2 = b.clone()
    b2[:, 2:] = 0.5  # outside the mask: ignored
    assert math.isclose(float(psnr(a, b2, mask)), 20.0, rel_tol=1e-5)


def test_ssim_properties():
    torch.manual_seed(0)
    x = torch.rand(2, 24, 24, 3)
    assert math.isclose(float(ssim(x, x)), 1.0, rel_tol=1e-6)
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    s = float(ssim(x, noisy))
    assert 0 < s < 0.95
    assert float(ssim(x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1))) > s  # less noise, higher SSIM
    # constant images: SSIM reduces to the luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) in the interior
    c1 = 0.01 ** 2
    m = ssim_map(torch.full((1, 32, 32, 1), 0.3), torch.full((1, 32, 32, 1), 0.6))[0, 16, 16, 0]
    assert math.isclose(float(m), (2 * 0.18 + c1) / (0.09 + 0.36 + c1), rel_tol=1e-4)


def test_runtime_api(tiny_run):
    av = Avatar.load(tiny_run, device="cpu")
    assert av.fps == 25.0 and (av.width, av.height) == (64, 64)
    assert av.K.shape == (3, 3) and av.background.shape == (64, 64, 3)
    n = av.train_viewmats.shape[0]
    assert av.train_blink.shape == (n,) and av.feature_meta["extractor"] == "synthetic"
    feats = torch.randn(5, av.feature_dim)
    wins = av.feature_windows(feats)
    assert wins.shape == (5, av.feature_window, av.feature_dim)
    torch.testing.assert_close(wins[2, av.feature_window // 2], feats[2])
    out = av.render(wins[:3], av.train_viewmats[:3], av.train_blink[:3])
    assert out["rgb"].shape == (3, 64, 64, 3) and out["alpha"].shape == (3, 64, 64, 1)
    assert 0 <= float(out["rgb"].min()) and float(out["rgb"].max()) <= 1
    assert float(out["alpha"].mean()) > 0.05  # the avatar covers part of the frame
    # background: a colour changes only where alpha < 1
    red = av.render(wins[:1], av.train_viewmats[:1], av.train_blink[:1], background=torch.tensor([1.0, 0, 0]))
    black = av.render(wins[:1], av.train_viewmats[:1], av.train_blink[:1], background=None)
    torch.testing.assert_close(red["rgb"] - black["rgb"], (1 - black["alpha"]) * torch.tensor([1.0, 0, 0]), atol=1e-5, rtol=0)
    # other size: K is rescaled, the plate resized
    big = av.render(wins[:1], av.train_viewmats[:1], av.train_blink[:1], width=96, height=80)
    assert big["rgb"].shape == (1, 80, 96, 3)
    no_torso = av.render(wins[:1], av.train_viewmats[:1], av.train_blink[:1], torso=False)
    assert float(no_torso["alpha"].sum()) < float(black["alpha"].sum())
    with pytest.raises(AvatarError):
        av.render(wins[:2, :1], av.train_viewmats[:2], av.train_blink[:2])


def test_lip_scale_zero_is_the_no_audio_deformation(tiny_run):
    av = Avatar.load(tiny_run, device="cpu")
    m = av.model
    with torch.no_grad():  # make the audio path matter
        torch.nn.init.normal_(m.face_motion.net[-1].weight, std=0.5)
    wins = av.feature_windows(torch.randn(2, av.feature_dim) * 3)
    code = m.audio(wins)
    d0 = m.deform(code, av.train_blink[:2], lip_scale=0.0)
    dz = m.deform(torch.zeros_like(code), av.train_blink[:2])
    torch.testing.assert_close(d0["means"], dz["means"], atol=1e-6, rtol=0)
    d1 = m.deform(code, av.train_blink[:2])
    assert (d1["means"] - dz["means"]).abs().max() > 1e-6


def test_load_unfinished_run_is_an_error(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(AvatarError, match="not finished"):
        Avatar.load(tmp_path / "run")


def test_eval_cli_json_and_side_by_side(tiny_run, capsys):
    from avatar.cli import main

    assert main(["eval", str(tiny_run), "--json", "--device", "cpu"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1
    obj = json.loads(lines[0])
    for key in ("head_psnr", "full_psnr", "head_ssim", "lmd", "fit_time_s"):
        assert key in obj
    assert obj["full_psnr"] > 10 and 0 < obj["head_ssim"] <= 1
    assert (tiny_run / "eval" / "side_by_side.jpg").is_file()
    on_disk = json.loads((tiny_run / "metrics.json").read_text())
    assert on_disk["head_psnr"] == pytest.approx(obj["head_psnr"])
    assert main(["eval", str(tiny_run), "--device", "cpu", "--no-lmd"]) == 0
    assert "head PSNR" in capsys.readouterr().out


def test_eval_audio_hook(tiny_run, capsys, monkeypatch):
    import sys
    import types

    from avatar.cli import main

    monkeypatch.setitem(sys.modules, "avatar.evaluation.lipsync", None)  # not installed -> one-line error
    assert main(["eval", str(tiny_run), "--audio", "x.wav"]) == 2
    assert "not available yet" in capsys.readouterr().err
    seen = {}
    fake = types.ModuleType("avatar.evaluation.lipsync")
    fake.eval_audio = lambda run_dir, audio: seen.update(run=str(run_dir), audio=str(audio)) or {"sync_score": 1.5}
    monkeypatch.setitem(sys.modules, "avatar.evaluation.lipsync", fake)
    import avatar

    # `import avatar.evaluation.lipsync as m` reads the package attribute first: set when an earlier test imported the real one
    monkeypatch.setattr(avatar, "lipsync", fake, raising=False)
    assert main(["eval", str(tiny_run), "--audio", "x.wav", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"sync_score": 1.5}
    assert seen == {"run": str(tiny_run), "audio": "x.wav"}
    # Without --json the lip-sync figures are printed as a table (they used to print nothing).
    fake.eval_audio = lambda run_dir, audio: {"av_offset_frames": -3, "av_corr": 0.25, "gt_av_offset_frames": -2,
                                              "gt_av_corr": 0.2, "frames": 50}
    assert main(["eval", str(tiny_run), "--audio", "x.wav"]) == 0
    out = capsys.readouterr().out
    assert "AV offset" in out and "-3" in out and "0.2500" in out and "real AV corr" in out
