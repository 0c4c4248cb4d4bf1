"""Torso track (avatar/core/torso.py) and its use by the model: measured shifts, the head-pose predictor, the torso
layer sliding by the shift, old runs unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar.core.dataset_format import MASK_LABELS
from avatar.core.torso import clean_track, explained_share, fit_shift_predictor, measure_shifts, shift_features


def _scene(h: int = 160, w: int = 200, seed: int = 0):
    """A textured 'torso' (label torso) in the lower half over a flat background, and its label map."""
    import cv2

    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0) * 200
    lab = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    body = ((xx - w / 2) / (0.4 * w)) ** 2 + ((yy - h) / (0.55 * h)) ** 2 <= 1  # shoulders: a half ellipse
    lab[body] = MASK_LABELS["torso"]
    img = np.where(body, tex + 30, 90.0).astype(np.float32)
    return img, lab


def _shifted(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    import cv2

    M = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, M, (img.shape[1], img.shape[0]), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def test_measured_shift_is_the_applied_one():
    """A torso moved by known sub-pixel amounts (right/down positive) is measured within 0.35 px (the window
    stays on the anchor's torso while the torso leaves part of it: measured here 0.1-0.3 px short of the truth)."""
    img, lab = _scene()
    truth = [(0.0, 0.0), (3.4, -2.2), (-7.0, 1.5), (0.6, 5.3)]
    frames = []
    for dx, dy in truth:
        moved = _shifted(img, dx, dy)
        lab_moved = _shifted(lab.astype(np.float32), dx, dy) > MASK_LABELS["torso"] / 2
        frames.append(np.where(lab_moved, moved, 90.0).astype(np.float32))
    got = measure_shifts(frames, img, lab)
    np.testing.assert_allclose(got, np.asarray(truth), atol=0.35)


def test_explained_share_tells_a_slide_from_a_change():
    """Frames that are the anchor slid by known amounts: moving them back by those shifts explains nearly all of
    the change (> 0.9); the same frames with wrong shifts, or frames whose torso changed texture without moving,
    are explained by little or nothing (< 0.2)."""
    img, lab = _scene()
    truth = np.array([(3.0, -2.0), (-5.0, 1.0), (2.0, 4.0)])
    slid = [_shifted(img, dx, dy) for dx, dy in truth]
    assert explained_share(slid, truth, img, lab) > 0.9
    assert explained_share(slid, -truth, img, lab) < 0.2
    other, _ = _scene(seed=1)  # new texture, same place
    changed = [np.where(lab == MASK_LABELS["torso"], other, img).astype(np.float32)] * 3
    assert explained_share(changed, truth, img, lab) < 0.2


def test_no_torso_gives_zero_shifts():
    img, lab = _scene()
    got = measure_shifts([img, _shifted(img, 4, 4)], img, np.zeros_like(lab))
    assert got.shape == (2, 2) and not got.any()


def test_clean_track_interpolates_outliers_then_takes_a_running_median():
    s = np.array([[0, 0], [1, 0], [2, 0], [50, 0], [4, 0], [5, 0], [6, 0]], np.float32)  # one lock-on at frame 3
    out = clean_track(s, limit=10)
    # frame 3 -> interpolated 3; then medians of 5 (windows shrink at the edges): a line stays a line
    np.testing.assert_allclose(out[:, 0], [1, 1.5, 2, 3, 4, 4.5, 5])
    assert not out[:, 1].any()


def test_predictor_recovers_a_linear_map_of_the_head_pose():
    """Shifts made exactly linear in the pose features are recovered (closed form: least squares)."""
    from avatar.model.geometry import quat_to_matrix

    rng = np.random.default_rng(1)
    n = 60
    vm = np.tile(np.eye(4), (n, 1, 1))
    q = torch.as_tensor(np.concatenate([np.ones((n, 1)), rng.normal(0, 0.1, (n, 3))], 1), dtype=torch.float64)
    vm[:, :3, :3] = quat_to_matrix(torch.nn.functional.normalize(q, dim=-1)).numpy()
    vm[:, :3, 3] = rng.normal(0, 0.3, (n, 3)) + [0, 0, 4]
    coef = rng.normal(0, 0.01, (13, 2))
    y = shift_features(vm, unit=0.5) @ coef
    got = fit_shift_predictor(vm, y, unit=0.5)
    np.testing.assert_allclose(shift_features(vm, 0.5) @ got, y, atol=2e-5)


def _tracked_model():
    from avatar.model.avatar_model import AvatarModel
    from avatar.model.config import ModelConfig

    torch.manual_seed(5)
    m = AvatarModel(ModelConfig(layered=True), 6, {"head": 60, "mouth": 10, "torso": 200})
    with torch.no_grad():
        tp = m.torso.params
        tp["means"].copy_(torch.stack([torch.rand(200) * 1.2 - 0.6, torch.rand(200) * 0.5 + 0.2,
                                       torch.full((200,), 3.0)], 1))
        tp["log_scales"].fill_(-3.0)
        tp["skin_logits"].fill_(-20.0)  # static torso: the shift alone moves it
        for s in (m.head, m.mouth):
            s.params["opacity_logits"].fill_(-20.0)  # an invisible head: only the torso layer is seen
        m.ref_viewmat.copy_(torch.eye(4))
        m.ref_viewmat[2, 3] = 3.0
        m.torso_center.copy_(torch.tensor([0.0, 0.3, 3.0]))
    vm = torch.eye(4)[None].clone()
    vm[0, 2, 3] = 3.0
    K = torch.tensor([[80.0, 0, 40], [0, 80.0, 40], [0, 0, 1]])
    return m, vm, K


def _alpha_centroid(m, vm, K, shift):
    from avatar.engine.composite import render_layers

    with torch.no_grad():
        out = render_layers(m, vm, None, torch.zeros(1), K, 80, 80, None, backend="torch", body_px=80,
                            torso_shift=shift, deform=False)
    a = out["alpha"][0, ..., 0].double()
    ys, xs = torch.meshgrid(torch.arange(80.0, dtype=torch.float64), torch.arange(80.0, dtype=torch.float64), indexing="ij")
    return float((a * xs).sum() / a.sum()), float((a * ys).sum() / a.sum()), out["rgb"]


def test_torso_layer_slides_by_the_measured_shift():
    """Shift s, reference shift r: the torso layer moves by (s - r) x focal pixels in the image (the centroid of
    its opacity, away from the image border); a model without the track ignores any shift bit for bit."""
    m, vm, K = _tracked_model()
    with torch.no_grad():
        m.torso_tracked.fill_(1.0)
        m.torso_shift_ref.copy_(torch.tensor([0.01, -0.02]))
    x0, y0, _ = _alpha_centroid(m, vm, K, torch.tensor([[0.01, -0.02]]))
    x1, y1, _ = _alpha_centroid(m, vm, K, torch.tensor([[0.01 + 3 / 80, -0.02 - 2 / 80]]))  # +3 px, -2 px
    assert abs((x1 - x0) - 3.0) < 0.15 and abs((y1 - y0) + 2.0) < 0.15
    with torch.no_grad():
        m.torso_tracked.fill_(0.0)
    *_, a = _alpha_centroid(m, vm, K, torch.tensor([[0.5, 0.5]]))
    *_, b = _alpha_centroid(m, vm, K, None)
    assert torch.equal(a, b)


def test_without_a_measure_the_shift_is_predicted_from_the_pose():
    m, vm, K = _tracked_model()
    with torch.no_grad():
        m.torso_tracked.fill_(1.0)
        m.torso_coef[12] = torch.tensor([0.03, 0.0])  # the constant feature: every pose predicts (0.03, 0)
    np.testing.assert_allclose(m.torso_shift(vm[0]).numpy(), [0.03, 0.0], atol=1e-7)
    *_, a = _alpha_centroid(m, vm, K, None)
    *_, b = _alpha_centroid(m, vm, K, torch.tensor([[0.03, 0.0]]))
    torch.testing.assert_close(a, b)


def test_a_state_saved_before_the_track_loads_and_ignores_shifts():
    from avatar.model.avatar_model import AvatarModel
    from avatar.model.config import ModelConfig

    m, vm, K = _tracked_model()
    old = {k: v for k, v in m.state_dict().items() if k not in ("torso_shift_ref", "torso_coef", "torso_tracked")}
    back = AvatarModel.from_state(ModelConfig(layered=True), 6, old)
    assert float(back.torso_tracked) == 0.0
    *_, a = _alpha_centroid(back, vm, K, torch.tensor([[0.2, 0.1]]))
    *_, b = _alpha_centroid(m, vm, K, None)
    assert torch.equal(a, b)


def test_real_clip_track(may_dataset):
    """The real may_5s clip, preprocessed: its frame 0 moved by known amounts is measured within 0.4 px inside
    its own torso label (a dark jacket and scarf, 8 % of the frame along the bottom edge); the whole clip's
    track has a row per frame, is cached in the dataset folder and read back as computed."""
    import cv2

    from avatar.core.dataset_format import load_dataset
    from avatar.core.torso import CACHE, torso_track

    info = load_dataset(may_dataset[1].root)
    ref = cv2.imread(str(info.frame_path(0)), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    lab = cv2.imread(str(info.mask_path(0)), cv2.IMREAD_GRAYSCALE)
    assert (lab == MASK_LABELS["torso"]).mean() > 0.02
    truth = [(4.0, -3.0), (-2.5, 1.25)]
    got = measure_shifts([_shifted(ref, dx, dy) for dx, dy in truth], ref, lab)
    np.testing.assert_allclose(got, np.asarray(truth), atol=0.4)  # half-pixel shifts: -2.15 measured for -2.5
    (info.root / CACHE).unlink(missing_ok=True)  # derived data: every fit on this dataset writes it again
    track = torso_track(info)
    assert track.shape == (info.num_frames, 2) and (info.root / CACHE).is_file()
    assert np.array_equal(torso_track(info), track)
    assert np.all(np.abs(track * info.camera_pose().focal) <= 0.1 * max(info.width, info.height))  # cleaned


def test_model_prediction_uses_the_same_features_as_the_fit():
    """`AvatarModel.torso_shift` (torch, per frame on the device) and `shift_features` (numpy, for the fit) build
    the same 13 features: with any stored map they predict the same shift for the same pose."""
    m, vm, _ = _tracked_model()
    rng = np.random.default_rng(4)
    with torch.no_grad():
        m.unit.fill_(0.7)
        m.torso_coef.copy_(torch.as_tensor(rng.normal(0, 0.05, (13, 2)), dtype=torch.float32))
    v = vm[0].clone()
    v[:3, 3] = torch.tensor([0.1, -0.2, 3.0])
    want = shift_features(v[None].numpy(), 0.7) @ m.torso_coef.numpy().astype(np.float64)
    np.testing.assert_allclose(m.torso_shift(v).numpy(), want[0], atol=1e-6)
