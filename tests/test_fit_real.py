"""A short CPU fit on a real clip (../shared/data/video/may_5s.mp4) at low resolution.

Asserts properties a working fit must have, whatever the exact figures: held-out PSNR rises by
decibels over the first step's, the motion field follows the tracked lips of the training frames
better than no motion (the rigid head), and MediaPipe finds the rendered face with its lips within a
few pixels of the tracked ones."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from avatar.core.config import apply_overrides
from avatar.train.presets import get_preset
from avatar.train.trainer import Trainer, landmark_motion_loss


@pytest.fixture(scope="module")
def may_data(may_dataset):
    """may_5s.mp4 preprocessed once per session (conftest `may_dataset`); the trainer only reads it."""
    return may_dataset[1].root


@pytest.mark.slow
def test_short_cpu_fit_on_real_clip_improves_held_out_psnr(may_data, tmp_path):
    warnings.filterwarnings("ignore", message=".*backend.*")
    cfg = apply_overrides(get_preset("cpu"), {
        "iters": "160", "eval_every": "0", "ckpt_every": "0", "final_eval": "false", "data.resolution": "96",
        "model.face_points": "2500", "model.shell_points": "1200", "model.mouth_points": "400", "model.torso_points": "800",
        "optim.warmup": "60", "strategy.refine_start": "50", "strategy.refine_every": "50", "strategy.refine_stop": "140",
    })
    tr = Trainer(cfg, may_data, tmp_path / "run", progress=False)

    def lip_error(frames) -> float:
        """Mean pixel error of the motion field at the lip/jaw/eyelid landmarks (no motion = rigid error)."""
        with torch.no_grad():
            return landmark_motion_loss(tr.model, tr.data, np.asarray(frames), tr.lm_canon, tr.lm_mouth_canon, 0.3)[1]["landmark_px"]

    rigid_train = lip_error(tr.data.train_idx)
    first = tr.quick_eval(n=6)
    tr.train_step()
    after_one = tr.quick_eval(n=6)
    while tr.step < cfg.iters:
        assert tr.train_step() is not None
    last = tr.quick_eval(n=6)
    # measured when this test was written: held-out PSNR 19.8 -> 29.7 dB (head 18.0 -> 28.8) over 160 steps
    assert last["val_psnr"] > first["val_psnr"] + 2.0 and last["val_psnr"] > after_one["val_psnr"] + 2.0
    assert last["val_head_psnr"] > after_one["val_head_psnr"] + 1.5
    # The landmark motion loss makes the audio-driven field follow the tracked lips/jaw/eyelids of the
    # training frames better than no motion at all (measured: 0.47 -> 0.36 px). Held-out lips are not
    # asserted: 5 s of audio are too few to generalise (that is measured on the 60 s lieu clip by
    # bench/fit.py, mouth_corr / lmd_no_audio).
    assert lip_error(tr.data.train_idx) < 0.9 * rigid_train
    metrics = tr.finish(evaluate=True)
    assert metrics["lmd_frames"] > 0 and metrics["lmd"] < 10  # MediaPipe finds the rendered face; lips within a few px
