"""Stage 2 (landmarks): gap filling, coverage checks, and the reusable FaceMeshTracker."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from avatar.errors import AvatarError
from avatar.preprocess.landmarks import FaceMeshTracker, check_found, fill_gaps, find_gaps, track_frames
from conftest import shared_file


def test_find_gaps():
    found = np.array([1, 0, 0, 1, 1, 0, 1, 0], bool)
    assert find_gaps(found) == [(1, 3), (5, 6), (7, 8)]
    assert find_gaps(np.ones(5, bool)) == []


def test_fill_gaps_linear_and_edges():
    n = 10
    vals = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 3, 2), np.float32)  # [N, 3, 2] = k
    found = np.ones(n, bool)
    found[[0, 4, 5, 9]] = False
    garbage = vals.copy()
    garbage[~found] = -100
    out = fill_gaps(garbage, found)
    np.testing.assert_allclose(out[4:6], vals[4:6])  # interior: linear between 3 and 6
    np.testing.assert_allclose(out[0], vals[1])  # leading edge: nearest found
    np.testing.assert_allclose(out[9], vals[8])  # trailing edge


def test_check_found_errors():
    fps = 25.0
    with pytest.raises(AvatarError, match="no face found"):
        check_found(np.zeros(100, bool), fps, 0.1, 0.5, "clip.mp4")
    share = np.ones(100, bool)
    share[::5] = False  # 20 % missing, short gaps
    with pytest.raises(AvatarError, match="face missing in 20/100"):
        check_found(share, fps, 0.1, 0.5, "clip.mp4")
    long_gap = np.ones(500, bool)
    long_gap[100:140] = False  # 1.6 s lost, but only 8 % of frames
    with pytest.raises(AvatarError, match=r"face lost from 4\.00 s to 5\.60 s"):
        check_found(long_gap, fps, 0.1, 0.5, "clip.mp4")
    ok = np.ones(500, bool)
    ok[100:105] = False  # 0.2 s: interpolated
    check_found(ok, fps, 0.1, 0.5, "clip.mp4")


def test_tracker_on_noise_finds_nothing():
    rng = np.random.default_rng(0)
    with FaceMeshTracker() as tr:
        for _ in range(3):
            assert tr(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)) is None
        with pytest.raises(ValueError):
            tr(np.zeros((8, 8), np.uint8))


def test_tracker_needs_context():
    with pytest.raises(RuntimeError):
        FaceMeshTracker()(np.zeros((16, 16, 3), np.uint8))


def test_no_face_video_frames(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for k in range(30):
        p = tmp_path / f"{k:06d}.jpg"
        cv2.imwrite(str(p), rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
        paths.append(p)
    with pytest.raises(AvatarError, match="no face found"):
        track_frames(paths, 25.0, source="noise.mp4", progress=False)


@pytest.mark.slow
def test_tracker_on_real_frame(shared_data):
    import av

    video = shared_file("video/may_5s.mp4")
    with av.open(str(video)) as c:
        rgb = next(c.decode(video=0)).to_ndarray(format="rgb24")
    with FaceMeshTracker(video_mode=False) as tr:
        lm = tr(rgb)
        lm3, nfaces = tr.track(rgb)
    assert lm is not None and lm.shape == (478, 2) and lm.dtype == np.float32
    assert nfaces == 1 and lm3.shape == (478, 3)
    h, w = rgb.shape[:2]
    assert (lm[:, 0] > 0).all() and (lm[:, 0] < w).all() and (lm[:, 1] > 0).all() and (lm[:, 1] < h).all()
    # subject's right eye corner (33) is left of the left eye corner (263) in the image (design note §2a)
    assert lm[33, 0] < lm[263, 0]
    # iris centres inside their eye contours' bounding boxes
    for centre, corners in ((468, (33, 133)), (473, (362, 263))):
        xs = sorted(lm[list(corners), 0])
        assert xs[0] < lm[centre, 0] < xs[1]
    # a second face placed beside the first: the larger one is kept
    small = cv2.resize(rgb, (w // 2, h // 2))
    canvas = np.zeros((h, w + w // 2, 3), np.uint8)
    canvas[:, :w] = rgb
    canvas[: h // 2, w:] = small
    with FaceMeshTracker(video_mode=False) as tr:
        lm2, n2 = tr.track(canvas)
    assert n2 == 2
    assert np.ptp(lm2[:, 0]) > 0.8 * np.ptp(lm[:, 0])
