"""Background plate (preprocess/background.py) on a synthetic clip with a known background."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.core.dataset_format import MASK_LABELS
from avatar.errors import AvatarError
from avatar.preprocess.background import BackgroundAccumulator, _masked_median

H, W = 160, 200
TORSO = MASK_LABELS["torso"]


def _background() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return np.stack([xx * 255 // W, yy * 255 // H, ((xx // 10 + yy // 10) % 2) * 150 + 50], -1).astype(np.uint8)


def _clip(n: int = 60, noise: int = 2, seed: int = 0):
    """Frames of a red square moving left to right over the background, plus a static grey block
    (never reveals what is behind it). Yields (rgb, labels)."""
    rng = np.random.default_rng(seed)
    bg = _background()
    for k in range(n):
        img = bg.copy()
        lab = np.zeros((H, W), np.uint8)
        x0 = 10 + k * 2
        img[40:100, x0:x0 + 40] = (255, 0, 0)
        lab[40:100, x0:x0 + 40] = TORSO
        img[120:150, 80:120] = (128, 128, 128)
        lab[120:150, 80:120] = TORSO
        img = np.clip(img.astype(np.int16) + rng.integers(-noise, noise + 1, img.shape), 0, 255).astype(np.uint8)
        yield img, lab


def test_plate_matches_revealed_background_and_fills_holes():
    bg = _background()
    acc = BackgroundAccumulator(H, W, max_samples=16, margin=3.0)
    for rgb, lab in _clip():
        acc.add(rgb, lab)
    plate = acc.finish()
    assert plate.shape == (H, W, 3) and plate.dtype == np.uint8
    err = np.abs(plate.astype(int) - bg).max(-1)  # [H, W]
    # the square sweeps x in [10, 168): everything it covered was revealed at some time
    revealed = np.ones((H, W), bool)
    revealed[117:153, 77:123] = False  # static block + margin: never seen
    assert np.percentile(err[revealed], 99) <= 3 and err[revealed].max() <= 12
    # no red square left anywhere
    red = (plate[..., 0] > 200) & (plate[..., 1] < 60) & (plate[..., 2] < 60)
    bg_red = (bg[..., 0] > 180) & (bg[..., 1] < 80) & (bg[..., 2] < 80)
    assert not (red & ~bg_red).any()
    # hole filled: not black, not the grey block, and close to the surrounding colours
    hole = plate[125:145, 85:115].astype(int)
    assert (hole.sum(-1) > 0).all()
    assert np.abs(hole - 128).max(-1).mean() > 10
    ring = np.concatenate([plate[110:115, 80:120].reshape(-1, 3), plate[:, 70:75][120:150].reshape(-1, 3)]).astype(int)
    assert (hole.min(axis=(0, 1)) >= ring.min(0) - 30).all() and (hole.max(axis=(0, 1)) <= ring.max(0) + 30).all()
    st = acc.stats
    assert st["frames"] == 60 and st["frames_used"] == 15 and st["samples"] == 15
    assert 0.01 < st["inpainted_fraction"] < 0.1  # ~36x46 px of 160x200 = 5 %
    assert 0.9 < st["visible_fraction"] < 0.99
    assert st["background_std"] < 3.0  # static camera: small temporal std


def test_bounded_memory_and_deterministic():
    a = BackgroundAccumulator(H, W, max_samples=8, seed=3, stride=1)
    b = BackgroundAccumulator(H, W, max_samples=8, seed=3, stride=1)
    for rgb, lab in _clip(n=40):
        a.add(rgb, lab)
        b.add(rgb, lab)
    assert a._rgb.shape[0] == 8 and a._dist.shape[0] == 8
    np.testing.assert_array_equal(a.finish(), b.finish())


def test_streaming_farthest_covers_frames_outside_reservoir():
    """With one reservoir slot, pixels revealed only in dropped frames still come out right."""
    bg = _background()
    acc = BackgroundAccumulator(H, W, max_samples=1, margin=3.0, stride=1)
    for rgb, lab in _clip(n=60, noise=0):
        acc.add(rgb, lab)
    plate = acc.finish()
    revealed = np.ones((H, W), bool)
    revealed[117:153, 77:123] = False
    assert np.abs(plate.astype(int) - bg).max(-1)[revealed].max() <= 2


def test_empty_person_and_errors():
    bg = _background()
    acc = BackgroundAccumulator(H, W)
    acc.add(bg, np.zeros((H, W), np.uint8))
    np.testing.assert_array_equal(acc.finish(), bg)
    with pytest.raises(AvatarError):
        BackgroundAccumulator(H, W).finish()
    with pytest.raises(AvatarError):
        BackgroundAccumulator(H, W).add(np.zeros((H + 1, W, 3), np.uint8), np.zeros((H + 1, W), np.uint8))
    with pytest.raises(AvatarError):
        BackgroundAccumulator(0, W)
    # the person covers everything all the time: a flat plate, no crash
    full = BackgroundAccumulator(H, W)
    full.add(bg, np.full((H, W), TORSO, np.uint8))
    assert full.finish().shape == (H, W, 3)


def test_masked_median_matches_numpy():
    rng = np.random.default_rng(0)
    vals = rng.integers(0, 256, (9, 4, 5, 3)).astype(np.uint8)
    valid = rng.random((9, 4, 5)) > 0.4
    valid[:, 0, 0] = False
    med, cnt, sd = _masked_median(vals, valid)
    ref = np.where(valid[..., None], vals.astype(float), np.nan)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expect = np.nanmedian(ref, axis=0)
    ok = cnt > 0
    assert not ok[0, 0]
    assert np.abs(med[ok].astype(float) - expect[ok]).max() <= 0.5
    np.testing.assert_array_equal(cnt, valid.sum(0))


def _clip_with_hair(n: int, seed: int = 1):
    """_clip frames with a hair blob on top of the moving square (hair widens the person margin)."""
    for k, (rgb, lab) in enumerate(_clip(n=n, seed=seed)):
        x0 = 10 + k * 2
        lab[30:40, x0 + 5:x0 + 35] = MASK_LABELS["hair"]
        yield rgb, lab


def test_distance_matches_full_frame_dilation():
    """distance() grows hair inside the hair's box only; same distances as dilating the whole frame."""
    import cv2

    acc = BackgroundAccumulator(H, W, hair_margin=6)
    for rgb, lab in list(_clip_with_hair(3)) + [(None, np.zeros((H, W), np.uint8))]:
        bg = (lab == MASK_LABELS["background"]).astype(np.uint8)
        hair = (lab == MASK_LABELS["hair"]).astype(np.uint8)
        bg &= 1 - cv2.dilate(hair, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (13, 13)))
        ref = cv2.distanceTransform(bg, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) if not bg.all() else np.full((H, W), 255.0, np.float32)
        np.testing.assert_array_equal(acc.distance(lab), ref)
    lab = np.zeros((H, W), np.uint8)
    lab[:4, :3] = MASK_LABELS["hair"]  # hair in a corner: the grown box is clipped to the image
    bg = (lab == 0).astype(np.uint8) & (1 - cv2.dilate((lab > 0).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (13, 13))))
    np.testing.assert_array_equal(acc.distance(lab), cv2.distanceTransform(bg, cv2.DIST_L2, cv2.DIST_MASK_PRECISE))


@pytest.mark.parametrize("stride,max_samples,runs", [(1, 4, (7, 13, 1, 19)), (3, 5, (32, 32)), (4, 32, (5,))])
def test_parts_merged_in_order_equal_sequential(stride, max_samples, runs):
    """Workers' shares (BackgroundPart over consecutive frames, pickled as between processes) merged in
    frame order give exactly the plate and stats of add() on every frame in order."""
    import pickle

    frames = list(_clip_with_hair(64))
    seq = BackgroundAccumulator(H, W, max_samples=max_samples, stride=stride, seed=5, margin=3.0)
    for rgb, lab in frames:
        seq.add(rgb, lab)
    par = BackgroundAccumulator(H, W, max_samples=max_samples, stride=stride, seed=5, margin=3.0)
    plan = par.reservoir_plan(len(frames))
    assert len(plan) == min(max_samples, len(range(0, len(frames), stride))) and sorted(plan.values()) == list(range(len(plan)))
    worker = BackgroundAccumulator(H, W, max_samples=max_samples, stride=stride, seed=5, margin=3.0)
    bounds, a = [], 0
    while a < len(frames):  # runs of the given sizes, cycled
        b = min(len(frames), a + runs[len(bounds) % len(runs)])
        bounds.append((a, b))
        a = b
    parts = []
    for a, b in bounds:
        part = worker.part(a, b, plan)
        for k in range(a, b):
            if part.uses(k):
                part.add(*frames[k])
            else:
                part.skip()
        parts.append(pickle.loads(pickle.dumps(part)))
    if len(parts) > 1:
        with pytest.raises(AvatarError):  # out of order
            BackgroundAccumulator(H, W, max_samples=max_samples, stride=stride, seed=5).merge(parts[1])
    for part in parts:
        par.merge(part)
    np.testing.assert_array_equal(par.finish(), seq.finish())
    assert par.stats == seq.stats


def test_part_skip_and_bounds():
    acc = BackgroundAccumulator(H, W, stride=2)
    part = acc.part(3, 6, acc.reservoir_plan(6))
    rgb, lab = next(_clip(n=1))
    part.skip()  # frame 3: not sampled
    with pytest.raises(AvatarError):
        part.skip()  # frame 4 is sampled: needs its data
    part.add(rgb, lab)
    part.add(rgb, lab)
    with pytest.raises(AvatarError):
        part.add(rgb, lab)  # past the share's end
