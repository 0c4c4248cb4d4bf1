"""Label maps (preprocess/masks.py) on synthetic geometry and on a real frame."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.core.dataset_format import MASK_LABELS, PERSON_LABELS
from avatar.preprocess import masks as mk
from conftest import shared_file

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


@pytest.mark.slow
def test_real_frame(shared_data):
    import av
    import mediapipe as mp

    path = shared_file("video/may_5s.mp4")
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
    np.testing.assert_array_equal(lab, _reference_labels(matte, lm, rgb=rgb))
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


# ---- the windowed, table-driven labels_from_matte against a plain full-image implementation -----------


def _reference_labels(matte, landmarks, rgb=None, person_threshold=0.5, face_threshold=0.1, neck_length=0.6,
                      neck_widen=0.1, head_box=0.7, forehead=1.2):
    """labels_from_matte written the plain way: every mask over the whole image, per-pixel float32
    chroma distances, np.median skin model (the implementation before the speed-up)."""
    import cv2

    def fill(pts):
        m = np.zeros(shape, np.uint8)
        p = np.clip(np.round(np.asarray(pts, np.float64) * 16), -(1 << 28), 1 << 28).astype(np.int32)
        cv2.fillPoly(m, [p.reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8, shift=4)
        return m.view(bool)

    def skin_model(skin):
        sub = skin[::3, ::3]
        if sub.sum() < 20:
            return None
        sk = cv2.cvtColor(np.ascontiguousarray(rgb[::3, ::3][sub][None]), cv2.COLOR_RGB2YCrCb)[0, :, 1:].astype(np.float32)
        med = np.median(sk, axis=0)
        return med, np.maximum(1.4826 * np.median(np.abs(sk - med), axis=0), 3.0)

    def skin_like(model, where, k=4.0):
        if model is None:
            return where.copy()
        out = np.zeros(where.shape, bool)
        rows, cols = np.flatnonzero(where.any(axis=1)), np.flatnonzero(where.any(axis=0))
        if len(rows) == 0:
            return out
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        ycc = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2YCrCb)[..., 1:].astype(np.float32)
        ok = (((((ycc - model[0]) / model[1]) ** 2).sum(-1) < k * k) * 255).astype(np.uint8)
        ok = cv2.morphologyEx(ok, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
        out[y0:y1, x0:x1] = (ok > 0) & where[y0:y1, x0:x1]
        return out

    shape = matte.shape
    Hh, Ww = shape
    person = matte > person_threshold
    labels = np.zeros(shape, np.uint8)
    labels[person] = L["torso"]
    lm = np.asarray(landmarks, np.float64)[:, :2]
    big = 4.0 * max(Hh, Ww)
    cut = lm[list(mk.CUT_LINE)]
    above = fill(np.concatenate([[[big, cut[0, 1]]], cut, [[-big, cut[-1, 1]], [-big, -big], [big, -big]]]))
    oval = lm[list(mk.FACE_OVAL)]
    (x0, y0), (x1, y1) = oval.min(axis=0), oval.max(axis=0)
    box = np.zeros(shape, bool)
    bx0, bx1 = int(max(0, np.floor(x0 - head_box * (x1 - x0)))), int(min(Ww, np.ceil(x1 + head_box * (x1 - x0))))
    box[int(max(0, np.floor(y0 - head_box * (y1 - y0)))):, bx0:max(bx1, 0)] = True  # (a negative end is no box)
    chin, bridge = lm[mk.CHIN], lm[mk.NOSE_BRIDGE]
    down = chin - bridge
    length = float(np.linalg.norm(down))
    down = down / length
    right = np.array([-down[1], down[0]])
    a, b = lm[mk.JAW_RIGHT], lm[mk.JAW_LEFT]
    jaw_w = float(np.linalg.norm(b - a))
    right = -right if np.dot(b - a, right) < 0 else right
    a, b = a - neck_widen * jaw_w * right, b + neck_widen * jaw_w * right
    bottom = float(np.dot(chin, down)) + neck_length * length
    quad = fill(np.stack([a, b, b + (bottom - np.dot(b, down)) * down, a + (bottom - np.dot(a, down)) * down]))
    oval_mask = fill(oval)
    face = oval_mask & (matte > face_threshold)
    eyes = fill(lm[list(mk.RIGHT_EYE)]) | fill(lm[list(mk.LEFT_EYE)])
    neck = person & ~above & quad
    if rgb is not None:
        skin = skin_model(face & ~eyes & ~fill(lm[list(mk.LIPS_OUTER)]))
        if neck.any():
            neck = skin_like(skin, neck) | (neck & fill(np.concatenate([cut, cut[::-1] + 0.25 * length * down])))
        centre = oval.mean(axis=0)
        tall = oval.copy()
        up = oval[:, 1] < centre[1]
        tall[up, 1] = centre[1] + forehead * (oval[up, 1] - centre[1])
        brow = person & above & fill(tall) & ~oval_mask
        if brow.any() and skin is not None:
            face |= skin_like(skin, brow, k=3.0)
    labels[person & above & box] = L["hair"]
    labels[neck] = L["neck"]
    labels[face] = L["face"]
    labels[eyes] = L["eyes"]
    labels[fill(lm[list(mk.LIPS_INNER)])] = L["mouth"]
    return labels


def _synthetic_rgb(matte: np.ndarray, lm: np.ndarray, rng) -> np.ndarray:
    """Skin-coloured person with noise, a hair cap, a collar, on a dark background."""
    h, w = matte.shape
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = (40, 45, 60)
    rgb[matte > 0.3] = (215, 165, 140)
    chin_y = int(lm[mk.CHIN, 1])
    top_y = int(lm[list(mk.FACE_OVAL), 1].min())
    rgb[: max(0, top_y + 5)][matte[: max(0, top_y + 5)] > 0.3] = (70, 50, 30)  # hair
    rgb[max(0, chin_y + 25):][matte[max(0, chin_y + 25):] > 0.3] = (30, 40, 150)  # collar
    noise = rng.integers(-12, 13, rgb.shape)
    return np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def test_labels_equal_full_image_reference():
    """The windowed labelling (regions of interest, chroma table, histogram medians, cv2 painting) gives
    exactly the labels of the plain full-image computation, for faces anywhere (rolled, scaled, partly or
    wholly off-screen), with and without colour."""
    lm0, matte0 = synthetic_face()
    matte = cv2_resize(matte0, 512)
    lm0 = lm0 * 2
    rng = np.random.default_rng(0)
    soft = np.clip(matte + rng.normal(0, 0.2, matte.shape).astype(np.float32), 0, 1)  # thresholds cut noise
    centre = lm0[list(mk.FACE_OVAL)].mean(axis=0)
    for i in range(60):
        th, sc = rng.normal(0, 0.4), rng.uniform(0.4, 1.6)
        shift = rng.uniform(-300, 300, 2) if i % 3 == 0 else rng.uniform(-40, 40, 2)
        R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        lm = ((lm0 - centre) @ R.T * sc + centre + shift).astype(np.float32)
        m = soft if i % 2 else matte
        rgb = _synthetic_rgb(m, lm, rng)
        for r in (rgb, None):
            np.testing.assert_array_equal(mk.labels_from_matte(m, lm, rgb=r), _reference_labels(m, lm, rgb=r),
                                          err_msg=f"case {i}, colour {r is not None}")


def cv2_resize(a: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.resize(a, (size, size), interpolation=cv2.INTER_LINEAR)


def test_skin_model_and_table_match_float_arithmetic():
    import cv2

    rng = np.random.default_rng(1)
    for i in range(20):
        h, w = rng.integers(20, 90, 2)
        rgb = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        rgb[..., 0] = np.clip(rgb[..., 0] // 4 + 150, 0, 255)  # a skin-ish cluster plus outliers
        skin = rng.random((h, w)) > rng.uniform(0.1, 0.9)
        model = mk._skin_model(rgb, skin)
        sub = skin[::3, ::3]
        if sub.sum() < 20:
            assert model is None
            continue
        sk = cv2.cvtColor(np.ascontiguousarray(rgb[::3, ::3][sub][None]), cv2.COLOR_RGB2YCrCb)[0, :, 1:].astype(np.float32)
        med = np.median(sk, axis=0)
        np.testing.assert_array_equal(model[0], med)
        np.testing.assert_array_equal(model[1], np.maximum(1.4826 * np.median(np.abs(sk - med), axis=0), 3.0))
        where = rng.random((h, w)) > 0.3
        ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., 1:].astype(np.float32)
        ok = ((((ycc - model[0]) / model[1]) ** 2).sum(-1) < 16.0).astype(np.uint8) * 255
        rows, cols = np.flatnonzero(where.any(1)), np.flatnonzero(where.any(0))
        ok = ok[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        ok = cv2.morphologyEx(ok, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
        expect = np.zeros((h, w), bool)
        expect[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = ok > 0
        np.testing.assert_array_equal(mk._skin_like(rgb, model, where), expect & where)


def test_fill_window_matches_full_image():
    """A polygon rasterised into a window containing it equals the full-image rasterisation's crop."""
    rng = np.random.default_rng(2)
    for _ in range(50):
        pts = rng.uniform(20, 230, (int(rng.integers(3, 12)), 2))
        full = mk._fill((H, W), pts)
        x0, y0 = (np.floor(pts.min(0)) - 2).astype(int)
        x1, y1 = (np.ceil(pts.max(0)) + 3).astype(int)
        np.testing.assert_array_equal(mk._fill((y1 - y0, x1 - x0), pts, (x0, y0)), full[y0:y1, x0:x1])
        assert not full[:y0].any() and not full[y1:].any() and not full[:, :x0].any() and not full[:, x1:].any()
        more = rng.uniform(20, 230, (5, 2))
        np.testing.assert_array_equal(mk._fill((H, W), pts, (0, 0), more), full | mk._fill((H, W), more))
