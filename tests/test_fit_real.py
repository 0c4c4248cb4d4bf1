"""A short CPU fit on a real clip (../shared/data/video/may_5s.mp4) at low resolution."""

from __future__ import annotations

import warnings

import pytest

from avatar.config import apply_overrides
from avatar.train.presets import get_preset
from avatar.train.trainer import Trainer


@pytest.fixture(scope="module")
def may_data(shared_data, tmp_path_factory):
    pipeline = pytest.importorskip("avatar.preprocess.pipeline", reason="preprocessing not installed")
    video = shared_data / "video" / "may_5s.mp4"
    if not video.is_file():
        pytest.skip(f"missing {video}")
    out = tmp_path_factory.mktemp("may") / "data"
    pipeline.run_preprocess(video, out, progress=False)
    return out


@pytest.mark.slow
def test_short_cpu_fit_on_real_clip_improves_held_out_psnr(may_data, tmp_path):
    warnings.filterwarnings("ignore", message=".*backend.*")
    cfg = apply_overrides(get_preset("cpu"), {
        "iters": "160", "eval_every": "0", "ckpt_every": "0", "final_eval": "false", "data.resolution": "96",
        "model.face_points": "2500", "model.shell_points": "1200", "model.mouth_points": "400", "model.torso_points": "800",
        "optim.warmup": "60", "strategy.refine_start": "50", "strategy.refine_every": "50", "strategy.refine_stop": "140",
    })
    tr = Trainer(cfg, may_data, tmp_path / "run", progress=False)
    first = tr.quick_eval(n=6)
    tr.train_step()
    after_one = tr.quick_eval(n=6)
    while tr.step < cfg.iters:
        assert tr.train_step() is not None
    last = tr.quick_eval(n=6)
    print(f"held-out PSNR: init {first['val_psnr']:.2f}, step 1 {after_one['val_psnr']:.2f}, "
          f"step {tr.step} {last['val_psnr']:.2f} dB (head {after_one['val_head_psnr']:.2f} -> {last['val_head_psnr']:.2f})")
    assert last["val_psnr"] > after_one["val_psnr"] + 2.0
    assert last["val_head_psnr"] > after_one["val_head_psnr"] + 1.5
    metrics = tr.finish(evaluate=True)
    assert metrics["lmd_frames"] > 0 and metrics["lmd"] < 10  # MediaPipe finds the rendered face; lips within a few px
