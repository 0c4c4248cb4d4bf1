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
from avatar.evaluation.metrics import psnr, ssim, ssim_map


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


def test_ssim_equals_the_plain_sum_over_the_window():
    """SSIM of Wang et al. 2004 written out: at each pixel, sums over the 11 x 11 window of Gaussian weights
    (sigma 1.5, zero outside the image), in float64 loops; the fast (separable) map must agree."""
    torch.manual_seed(1)
    x, y = torch.rand(1, 14, 13, 2), torch.rand(1, 14, 13, 2)
    r = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-r ** 2 / (2 * 1.5 ** 2))
    w = (g[:, None] * g[None, :]) / g.sum() ** 2
    X, Y = x[0].double(), y[0].double()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    fast = ssim_map(x, y)[0]
    for i, j in [(0, 0), (7, 6), (13, 12), (3, 11)]:
        mom = torch.zeros(5, 2, dtype=torch.float64)
        for di in range(-5, 6):
            for dj in range(-5, 6):
                if 0 <= i + di < 14 and 0 <= j + dj < 13:
                    a, b = X[i + di, j + dj], Y[i + di, j + dj]
                    mom += w[di + 5, dj + 5] * torch.stack([a, b, a * a, b * b, a * b])
        mx, my = mom[0], mom[1]
        vx, vy, cxy = mom[2] - mx ** 2, mom[3] - my ** 2, mom[4] - mx * my
        want = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
        assert torch.allclose(fast[i, j].double(), want, atol=2e-5), (i, j, fast[i, j], want)


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


def test_eval_audio_runs_the_real_lipsync(tiny_run, tmp_path, capsys):
    """`avatar eval RUN --audio A` runs the real lip-sync evaluation (no stand-in module): 2.0 s of audio at
    the run's 25 fps is 50 rendered frames, the reference is the run's own training clip; without --json
    the figures are printed as a table; a missing audio file is a one-line error."""
    import soundfile as sf

    from avatar.cli import main
    from test_speak_support import SR, talking_wav

    a = tmp_path / "a.wav"
    sf.write(str(a), talking_wav(2.0), SR)
    assert main(["eval", str(tiny_run), "--audio", str(a), "--device", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["frames"] == 50 and r["fps"] == 25.0 and r["gt_source"] == str((tiny_run / "data").resolve())
    assert main(["eval", str(tiny_run), "--audio", str(a), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "AV offset" in out and "real AV corr" in out and str(r["av_offset_frames"]) in out
    assert main(["eval", str(tiny_run), "--audio", str(tmp_path / "missing.wav"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.wav" in err[0]


def test_eval_audio_passes_device_to_the_avatar(tiny_run, tmp_path, monkeypatch, capsys):
    """`avatar eval RUN --audio A --device D` loads the avatar on D (the option used to be dropped on the
    way to the lip-sync evaluation, which then always ran on "auto")."""
    import numpy as np
    import soundfile as sf

    from avatar.cli import main

    wav = tmp_path / "a.wav"
    sf.write(str(wav), np.zeros(16000, np.float32), 16000)
    seen = []

    def spy(cls, run_dir, device="auto"):
        seen.append((str(run_dir), device))
        raise AvatarError("stopped by the test after Avatar.load")

    monkeypatch.setattr(Avatar, "load", classmethod(spy))
    for device in ("cpu", "cuda:7"):
        assert main(["eval", str(tiny_run), "--audio", str(wav), "--device", device]) == 2
        assert "stopped by the test" in capsys.readouterr().err
    assert seen == [(str(tiny_run), "cpu"), (str(tiny_run), "cuda:7")]


def test_training_and_eval_read_the_same_held_out_frames(tiny_run):
    """One held-out split and one resize: the frames the in-training PSNR uses (FitData) are the frames
    `avatar eval` measures (HeldOutFrames), with identical pixels, labels and inputs."""
    from avatar.core.config import from_dict
    from avatar.core.dataset_format import load_dataset
    from avatar.evaluation.evaluate import HeldOutFrames
    from avatar.train.config import DataConfig
    from avatar.train.data import FitData

    av = Avatar.load(tiny_run, device="cpu")
    info = load_dataset(tiny_run / "data")
    assert info.num_frames == 24 and info.split["val"] == (22, 24)  # make_tiny_dataset: the last 24 // 11 frames
    fit = FitData(info, from_dict(DataConfig, av.config["data"]), av.feature_window, "cpu", future=av.feature_future)
    ev = HeldOutFrames(info, av)
    assert ev.indices.tolist() == fit.val_idx.tolist() == [22, 23]
    for k in ev.indices:
        a, b = ev.batch(int(k)), fit.batch([int(k)])
        for key in ("rgb", "labels", "feats", "viewmats", "blink"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_held_out_indices_falls_back_to_the_end_of_training():
    """A dataset without val frames is evaluated on the last 1/11 of its training frames (at least one)."""
    import dataclasses

    from avatar.core.dataset_format import DatasetInfo, held_out_indices

    base = DatasetInfo(root=None, fps=25.0, num_frames=24, width=64, height=64, split={"train": (0, 22), "val": (22, 24)},
                       features={}, default_feature=None, has_audio=False, raw={})
    assert held_out_indices(base).tolist() == [22, 23]
    assert held_out_indices(dataclasses.replace(base, split={"train": (0, 22), "val": (22, 22)})).tolist() == [20, 21]
    assert held_out_indices(dataclasses.replace(base, split={"train": (0, 5)})).tolist() == [4]
