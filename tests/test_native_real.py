"""Native-resolution avatars on real clips (issue 12): what a user checks by eye, as numbers.

- the output frame has the source clip's size (512², and 1920x1080 / 1080x1920 versions of a shared clip made
  here by scaling and padding it off-centre on a plain wall);
- the mouth is not blurred by the output path: on held-out frames the Laplacian variance of the rendered mouth
  box (as a share of the real one's) beats the best any 128 px render upscaled can do (the real frame itself
  through 128 px, which stays under the issue's 50 % bar: the check catches today's output), and is at least
  1.5x that of the same model rendered at its 128 px training size and upscaled (today's `avatar speak`).
  The issue's absolute bar, >= 50 % of the real mouth's, needs a full fit (about 0.4 after 600 steps here,
  rising with steps): bench/fit.py measures it, a short test cannot;
- no seam: the mean absolute colour step across the head crop's border in the composited frame is within 2x of
  the same step on the real frame.
Each fit is short (a few hundred steps of the cpu preset), so these are floors, not the benchmark figures
(bench/fit.py prints those).
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from avatar.core.landmarks import LIPS_OUTER
from conftest import shared_file
from test_speak_support import talking_wav


def _fit(data_dir, run_dir, iters: int, extra: dict | None = None):
    from avatar.core.config import apply_overrides
    from avatar.train.presets import get_preset
    from avatar.train.trainer import fit

    cfg = apply_overrides(get_preset("cpu"), {"iters": str(iters), "eval_every": "0", "ckpt_every": "0",
                                              "final_eval": "false", "time_limit_min": "0"} | dict(extra or {}))
    fit(cfg, data_dir, run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def native_run(may_native_fit):
    """The cpu preset's 300-step layered fit of may_5s (conftest `may_native_fit`, shared with test_fit_real)."""
    return may_native_fit["run"]


def _lapvar(rgb: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def _mouth_box(lm: np.ndarray) -> tuple[int, int, int, int]:
    p = np.asarray(lm[list(LIPS_OUTER)], np.float64)
    c, half = (p.min(0) + p.max(0)) / 2, (p.max(0) - p.min(0)).max() / 2 * 1.3
    return int(c[0] - half), int(c[1] - half), int(c[0] + half), int(c[1] + half)


def _border_step(img: np.ndarray, box) -> float:
    """Mean |colour step| between the pixel rows/columns just outside and just inside a box's sides (those
    inside the image), in levels."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = img.shape[:2]
    f = img.astype(np.float64)
    xa, xb, ya, yb = max(0, x0), min(w, x1), max(0, y0), min(h, y1)
    steps = []
    if y0 >= 1:
        steps.append(np.abs(f[y0 - 1, xa:xb] - f[y0, xa:xb]).mean())
    if y1 < h:
        steps.append(np.abs(f[y1, xa:xb] - f[y1 - 1, xa:xb]).mean())
    if x0 >= 1:
        steps.append(np.abs(f[ya:yb, x0 - 1] - f[ya:yb, x0]).mean())
    if x1 < w:
        steps.append(np.abs(f[ya:yb, x1] - f[ya:yb, x1 - 1]).mean())
    assert steps, "the head crop covers the whole frame: no border to measure"
    return float(np.mean(steps))


def test_native_render_is_source_size_sharp_and_seamless(native_run):
    import cv2

    from avatar.core.dataset_format import load_dataset
    from avatar.engine import Avatar
    from avatar.evaluation.evaluate import HeldOutFrames

    av = Avatar.load(native_run, device="cpu")
    info = load_dataset(av.dataset["root"])
    assert (av.source_width, av.source_height) == (512, 512) and av.width == 128  # trained at 128 px
    data = HeldOutFrames(info, av)
    frame = av.output_frame()
    lm = info.landmarks()
    ours, base, today, seam, seam_gt = [], [], [], [], []
    for k, rgb, _lab, ref in data.native(data.indices[::2]):
        assert ref == "source" and rgb.shape == (512, 512, 3)
        b = data.batch(k)
        out = av.render(b["feats"], b["viewmats"], b["blink"], frame=frame)
        img = (out["rgb"][0].numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
        assert img.shape == rgb.shape  # the source size
        x0, y0, x1, y1 = _mouth_box(lm[k])
        real = _lapvar(rgb[y0:y1, x0:x1])
        up = cv2.resize(cv2.resize(rgb, (128, 128), interpolation=cv2.INTER_AREA), (512, 512), interpolation=cv2.INTER_CUBIC)
        small = av.render(b["feats"], b["viewmats"], b["blink"])["rgb"][0].numpy()  # the 128 px training size
        small = cv2.resize((small * 255 + 0.5).clip(0, 255).astype(np.uint8), (512, 512), interpolation=cv2.INTER_CUBIC)
        ours.append(_lapvar(img[y0:y1, x0:x1]) / real)
        base.append(_lapvar(up[y0:y1, x0:x1]) / real)
        today.append(_lapvar(small[y0:y1, x0:x1]) / real)
        seam.append(_border_step(img, out["boxes"][0]))
        seam_gt.append(_border_step(rgb, out["boxes"][0]))
    assert np.mean(base) < 0.5  # the bar catches a 128 px image upscaled, even a perfect one
    assert np.mean(ours) > np.mean(base), f"mouth sharpness {np.mean(ours):.2f} vs a perfect 128 px {np.mean(base):.2f}"
    assert np.mean(ours) >= 1.5 * np.mean(today), f"native {np.mean(ours):.2f} vs 128 px upscaled {np.mean(today):.2f}"
    assert np.mean(seam) <= 2 * np.mean(seam_gt), (np.mean(seam), np.mean(seam_gt))


def test_eval_reports_native_and_training_resolution_figures(native_run):
    import json

    from avatar.cli import main

    assert main(["eval", str(native_run), "--json", "--no-lmd", "--max-frames", "4"]) == 0
    m = json.loads((native_run / "metrics.json").read_text())
    for key in ("psnr_native_full", "psnr_native_head", "psnr_train_res", "ssim_native_full", "ssim_native_head",
                "ssim_train_res"):
        assert np.isfinite(m[key]), key
    assert m["native_resolution"] == [512, 512] and m["eval_resolution"] == [128, 128]
    assert m["native_reference"] == "source"
    assert m["psnr_train_res"] == m["full_psnr"]
    # the labels a 512² news clip has in its held-out frames, each with a PSNR; shares of the error sum to 1
    assert {"background", "face", "hair", "neck", "torso"} <= set(m["psnr_labels"])
    assert sum(m["error_share_labels"].values()) == pytest.approx(1.0)
    assert 12.0 < m["psnr_native_head"] < 60.0 and 12.0 < m["psnr_native_full"] < 60.0


def _framed_clip(src, out, size: tuple[int, int], at: tuple[int, int], seconds: float = 3.6):
    """The 512² clip scaled to the short side of `size` and placed at `at` on a plain wall (ffmpeg)."""
    import imageio_ffmpeg

    w, h = size
    s = min(w, h)
    vf = f"scale={s}:{s},pad={w}:{h}:{at[0]}:{at[1]}:color=0x8a7f70"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(src), "-t", str(seconds),
                    "-vf", vf, "-c:v", "libx264", "-preset", "ultrafast", "-crf", "16", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", str(out)], check=True)
    return out


@pytest.mark.parametrize("size,at", [((1920, 1080), (250, 0)), ((1080, 1920), (0, 300))], ids=["landscape", "portrait"])
def test_phone_framings_speak_at_their_own_size(size, at, tmp_path):
    import av as pyav
    import soundfile as sf

    from avatar.cli import main
    from avatar.core.dataset_format import load_dataset
    from avatar.engine import Avatar
    from avatar.preprocess.config import PreprocessConfig
    from avatar.preprocess.pipeline import run_preprocess

    clip = _framed_clip(shared_file("video/may_5s.mp4"), tmp_path / "clip.mp4", size, at)
    info = run_preprocess(clip, tmp_path / "data", PreprocessConfig(), progress=False)
    assert max(info.width, info.height) == 512  # the dataset is smaller than the source ...
    run = _fit(tmp_path / "data", tmp_path / "run", 8)
    av = Avatar.load(run, device="cpu")
    assert (av.source_width, av.source_height) == size  # ... and the run knows the source size
    wav = tmp_path / "a.wav"
    sf.write(str(wav), talking_wav(0.4), 16000)
    out = tmp_path / "out.mp4"
    assert main(["speak", str(run), "--audio", str(wav), "-o", str(out), "--vad", "off"]) == 0
    with pyav.open(str(out)) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.width, cc.height) == size
        first = next(c.decode(video=0)).to_ndarray(format="rgb24")
    # the head is drawn where the face is in the source: the landmark centre of frame 0 scaled to the source
    lm = load_dataset(tmp_path / "data").landmarks()[0] * (size[0] / info.width)
    cx, cy = lm.mean(0)
    vm = av.train_viewmats[:1]
    from avatar.engine.composite import head_boxes

    box = head_boxes(av.model, vm, av.source_K, None, *size)[0]
    assert box[0] < cx < box[2] and box[1] < cy < box[3]
    # and the wall around the person stays the wall's colour at full size (plate at the source size)
    wall = first[5:40, -40:-5].reshape(-1, 3).mean(0) if at[0] > 0 else first[-40:-5, 5:40].reshape(-1, 3).mean(0)
    assert np.abs(wall - np.array([0x8a, 0x7f, 0x70])).max() < 12
