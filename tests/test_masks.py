"""Label maps (preprocess/masks.py) on synthetic geometry and on a real frame."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.dataset import MASK_LABELS, PERSON_LABELS
from avatar.preprocess import masks as mk

H = W = 256
L = MASK_LABELS


def _ellipse_loop(idx: tuple[int, ...], cx: float, cy: float, rx: float, ry: float, lm: np.ndarray,
                  start_deg: float = -90.0) -> None:
    """Place a landmark loop on an ellipse, in loop order, clockwise in the image from `start_deg`."""
    ang = np.deg2rad(start_deg) + 2 * np.pi * np.arange(len(idx)) / len(idx)
    lm[list(idx)] = np.stack([cx + rx * np.cos(ang), cy + ry * np.sin(ang)], 1)


def synthetic_face() -> tuple[np.ndarray, np.ndarray]:
    """(landmarks [478, 2], matte [H, W]): an oval face on a head blob on a torso."""
    lm = np.full((478, 2), np.nan)
    _ellipse_loop(mk.FACE_OVAL, 128, 110, 45, 60, lm)  # 10 at the top, 152 at the bottom (index 18 of 36)
    _ellipse_loop(mk.LIPS_OUTER, 128, 140, 18, 8, lm, start_deg=180)  # 61 at the image-left corner
    _ellipse_loop(mk.LIPS_INNER, 128, 140, 12, 4, lm, start_deg=180)
    _ellipse_loop(mk.RIGHT_EYE, 108, 95, 9, 3, lm, start_deg=180)
    _ellipse_loop(mk.LEFT_EYE, 148, 95, 9, 3, lm, start_deg=0)
    lm[mk.NOSE_BRIDGE] = (128, 95)
    lm[np.isnan(lm[:, 0])] = (128, 115)  # the other points: somewhere on the face
    yy, xx = np.mgrid[:H, :W]
    head = ((xx - 128) / 62.0) ** 2 + ((yy - 100) / 78.0) ** 2 <= 1.0
    neck = (np.abs(xx - 128) < 28) & (yy > 150) & (yy < 210)
    torso = (yy >= 200) & (np.abs(xx - 128) < 110)
    matte = (head | neck | torso).astype(np.float32)
    return lm.astype(np.float32), matte


def _poly(idx, lm):
    return mk._fill((H, W), lm[list(idx)])


def test_synthetic_labels_geometry():
    lm, matte = synthetic_face()
    lab = mk.labels_from_matte(matte, lm)
    assert lab.shape == (H, W) and lab.dtype == np.uint8
    assert set(np.unique(lab)) <= set(MASK_LABELS.values())
    for name in ("face", "mouth", "eyes", "hair", "neck", "torso", "background"):
        assert (lab == L[name]).any(), name
    # point checks at known places
    assert lab[140, 128] == L["mouth"]
    assert lab[95, 108] == L["eyes"] and lab[95, 148] == L["eyes"]
    assert lab[120, 100] == L["face"]  # cheek
    assert lab[35, 128] == L["hair"]  # above the forehead, inside the head blob
    assert lab[185, 128] == L["neck"]  # below the chin
    assert lab[240, 30] == L["torso"]  # shoulder
    assert lab[10, 10] == L["background"]
    # regions follow their polygons: mouth = inner lips, eyes = eyelids, mouth/eyes inside the face oval
    oval = _poly(mk.FACE_OVAL, lm)
    assert np.array_equal(lab == L["mouth"], _poly(mk.LIPS_INNER, lm))
    assert np.array_equal(lab == L["eyes"], _poly(mk.RIGHT_EYE, lm) | _poly(mk.LEFT_EYE, lm))
    assert oval[lab == L["mouth"]].all() and oval[lab == L["eyes"]].all()
    assert (lab[oval & (matte > 0.1)] != L["background"]).all()
    # person labels only on the person (matte) or the face polygon; background never on the person
    person = np.isin(lab, [L[n] for n in PERSON_LABELS])
    assert not (person & (matte < 0.5) & ~oval).any()
    assert (person[matte > 0.5]).all()
    # hair is above the jaw, torso/neck below the chin line
    ys_hair = np.nonzero(lab == L["hair"])[0]
    ys_neck = np.nonzero(lab == L["neck"])[0]
    assert ys_hair.max() < lm[mk.CHIN, 1] and ys_neck.min() > lm[mk.JAW_RIGHT, 1] - 1


def test_face_needs_matte_and_missing_landmarks():
    lm, matte = synthetic_face()
    matte2 = matte.copy()
    matte2[:, :128] = 0.0  # left half of the image is background for the matte
    lab = mk.labels_from_matte(matte2, lm)
    assert not (lab[:, :128] == L["face"]).any()  # the face oval where the matte says background is dropped ...
    assert (lab[:, 128:] == L["face"]).any()
    assert lab[140, 128] == L["mouth"]  # ... but polygons of mouth/eyes are kept
    # no (or broken) landmarks: person is torso, no head labels
    for bad in (None, np.full((478, 2), np.nan, np.float32), np.zeros((10, 2), np.float32)):
        lab = mk.labels_from_matte(matte, bad)
        assert set(np.unique(lab)) == {L["background"], L["torso"]}


def test_rolled_head_and_offscreen_landmarks():
    lm, matte = synthetic_face()
    c = np.array([128, 110])
    th = np.deg2rad(25)
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    lab = mk.labels_from_matte(matte, (lm - c) @ R.T + c)
    assert (lab == L["neck"]).any() and (lab == L["face"]).any() and (lab == L["mouth"]).any()
    # a face partly outside the frame
    lab2 = mk.labels_from_matte(matte, lm + np.array([150, -80], np.float32))
    assert lab2.shape == (H, W)


def test_skin_neck_excludes_collar():
    lm, matte = synthetic_face()
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:] = (40, 40, 60)
    rgb[matte > 0] = (220, 170, 140)  # skin everywhere on the person ...
    rgb[190:, :] = (20, 30, 120)  # ... except a blue collar from y=190 on
    lab = mk.labels_from_matte(matte, lm, rgb=rgb)
    assert lab[180, 128] == L["neck"] and lab[200, 128] == L["torso"]
    assert mk.labels_from_matte(matte, lm)[200, 128] == L["neck"]  # without colour: geometry only


def test_labels_speed():
    import time

    lm, matte = synthetic_face()
    big = np.zeros((512, 512), np.float32)
    big[:H * 2, :W * 2] = np.kron(matte, np.ones((2, 2), np.float32))
    rgb = np.full((512, 512, 3), 128, np.uint8)
    mk.labels_from_matte(big, lm * 2, rgb=rgb)
    n = 20
    t = time.perf_counter()
    for _ in range(n):
        mk.labels_from_matte(big, lm * 2, rgb=rgb)
    fps = n / (time.perf_counter() - t)
    assert fps > 30  # ~400/s measured; the bound is loose for a loaded CI machine


@pytest.mark.slow
def test_real_frame(shared_data):
    av = pytest.importorskip("av")
    mp = pytest.importorskip("mediapipe")
    path = shared_data / "video" / "may_5s.mp4"
    if not path.is_file():
        pytest.skip(f"missing {path}")
    with av.open(str(path)) as c:
        rgb = next(c.decode(video=0)).to_ndarray(format="rgb24")
    h, w = rgb.shape[:2]
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as fm:
        res = fm.process(rgb)
    assert res.multi_face_landmarks, "face mesh found no face in may_5s frame 0"
    lm = np.array([[p.x * w, p.y * h] for p in res.multi_face_landmarks[0].landmark], np.float32)
    with mk.MaskSegmenter() as seg:
        lab = seg(rgb, lm)
        matte = seg.last_matte
    assert lab.shape == (h, w) and lab.dtype == np.uint8
    counts = {n: int((lab == v).sum()) for n, v in MASK_LABELS.items()}
    for name in ("face", "eyes", "hair", "torso", "background"):
        assert counts[name] > 200, (name, counts)
    lips = mk._fill((h, w), lm[list(mk.LIPS_OUTER)])
    assert lips.sum() > 200 and (lab[lips] == L["face"]).mean() + (lab[lips] == L["mouth"]).mean() > 0.95
    assert counts["face"] > counts["eyes"] + counts["mouth"]
    # person labels lie inside the selfie-segmentation person region (or the landmark polygons)
    person = np.isin(lab, [L[n] for n in PERSON_LABELS])
    oval = mk._fill((h, w), lm[list(mk.FACE_OVAL)])
    assert not (person & (matte <= 0.5) & ~oval).any()
    assert (lab[matte > 0.5] != L["background"]).all()
    # the face is where the landmarks are; hair above the eyes; torso in the bottom rows
    ys, xs = np.nonzero(lab == L["face"])
    assert abs(xs.mean() - lm[:, 0].mean()) < 0.1 * w and abs(ys.mean() - lm[:, 1].mean()) < 0.1 * h
    assert np.nonzero(lab == L["hair"])[0].mean() < lm[159, 1]
    assert (lab[-5:] == L["torso"]).mean() > 0.3
