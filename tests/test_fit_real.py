"""A short CPU fit on a real clip (../shared/data/video/may_5s.mp4): the cpu preset as a user runs it, 300 steps.

Asserts properties a working fit must have, whatever the exact figures: held-out PSNR rises by
decibels over the first step's, the motion field follows the tracked lips of the training frames
better than no motion (the rigid head), and MediaPipe finds the rendered face with its lips within a
few pixels of the tracked ones. The fit is conftest's `may_native_fit`, shared with test_native_real."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_short_cpu_fit_on_real_clip_improves_held_out_psnr(may_native_fit):
    from avatar.evaluation.evaluate import evaluate_run

    h = may_native_fit
    first, after_one, last = h["first"], h["after_one"], h["last"]
    # measured when this test was first written (160 steps at 96 px): held-out PSNR 19.8 -> 29.7 dB (head 18.0 -> 28.8)
    assert last["val_psnr"] > first["val_psnr"] + 2.0 and last["val_psnr"] > after_one["val_psnr"] + 2.0
    assert last["val_head_psnr"] > after_one["val_head_psnr"] + 1.5
    # The landmark motion loss makes the audio-driven field follow the tracked lips/jaw/eyelids of the
    # training frames better than no motion at all (measured at 160 steps: 0.47 -> 0.36 px). Held-out lips are not
    # asserted: 5 s of audio are too few to generalise (that is measured on the 60 s lieu clip by
    # bench/fit.py, mouth_corr / lmd_no_audio).
    assert h["lip_px"] < 0.9 * h["rigid_lip_px"]
    metrics = evaluate_run(h["run"], device="cpu", write=False, max_frames=8)
    assert metrics["lmd_frames"] > 0 and metrics["lmd"] < 10  # MediaPipe finds the rendered face; lips within a few px
