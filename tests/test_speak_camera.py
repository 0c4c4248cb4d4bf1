"""`avatar speak`: free-view cameras (orbit, camera translation, camera paths, plate reprojection) and
streaming (equal to offline; trained look-ahead). Split from test_speak.py; shares its tiny run (conftest)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_speak_support import SR, talking_wav


def test_orbit_changes_image_but_keeps_face_in_frame(avatar):
    from avatar.engine import SpeakConfig, Speaker

    wav = talking_wav(1.6)
    base = [f.rgb for f in Speaker(avatar, SpeakConfig(pose="static", blink="off", vad="off", background="transparent")).frames(wav)]
    orb = [f.rgb for f in Speaker(avatar, SpeakConfig(pose="static", blink="off", vad="off", background="transparent",
                                                      orbit=40.0, orbit_period=1.6)).frames(wav)]
    k = 10  # a quarter period: +20 degrees
    diff = np.abs(base[k][..., :3].astype(np.float32) - orb[k][..., :3].astype(np.float32)).mean()
    assert diff > 3.0
    assert np.abs(base[0].astype(np.float32) - orb[0].astype(np.float32)).mean() < 0.5  # angle 0 at frame 0

    def centroid(rgba):
        a = rgba[..., 3].astype(np.float64)
        ys, xs = np.mgrid[0:a.shape[0], 0:a.shape[1]]
        return np.array([(xs * a).sum(), (ys * a).sum()]) / a.sum(), a.sum()

    for img0, img1 in zip(base, orb):
        (c0, m0), (c1, m1) = centroid(img0), centroid(img1)
        assert np.all(c1 > 4) and np.all(c1 < 60) and np.linalg.norm(c1 - c0) < 8  # still centred in the frame
        assert m1 > 0.7 * m0  # the person did not leave the image


def test_orbit_turns_the_torso_with_the_head(avatar):
    """With a free-view camera the torso is seen from the new viewpoint too (no 2D torso layer): its
    alpha changes along the orbit, and stays identical frame to frame without one (static pose)."""
    from avatar.engine import SpeakConfig, Speaker

    wav = talking_wav(1.6)
    kw = dict(pose="static", blink="off", vad="off", background="transparent")
    base = [f.rgb[..., 3].astype(np.float32) for f in Speaker(avatar, SpeakConfig(**kw)).frames(wav)]
    orb = [f.rgb[..., 3].astype(np.float32) for f in Speaker(avatar, SpeakConfig(**kw, orbit=40.0, orbit_period=1.6)).frames(wav)]
    band = slice(48, 64)  # the tiny avatar's shoulders (below the neck)
    assert max(np.abs(b[band] - base[0][band]).max() for b in base) == 0
    assert np.abs(orb[10][band] - orb[0][band]).mean() > 3.0  # +20 degrees
    assert np.abs(orb[0] - base[0]).max() == 0  # angle 0: identical to the training camera


def _camera_translation(avatar, pixels: float, batch: int = 2):
    """Camera moves [batch, 4, 4]: frame 0 the identity, the others a sideways camera translation that
    shifts points at the mean head depth by `pixels` (as the rasterizer sees it: X' = X + t)."""
    import torch

    depth = float(avatar.train_viewmats[:, 2, 3].mean())
    C = torch.eye(4).repeat(batch, 1, 1)
    C[1:, 0, 3] = pixels * depth / float(avatar.K[0, 0])
    return C


def test_free_view_camera_moves_head_and_torso_together(avatar):
    import torch

    W = avatar.feature_window
    feats = torch.zeros(2, W, avatar.feature_dim)
    vm = avatar.train_viewmats[:1].expand(2, 4, 4).clone()
    blink = torch.zeros(2)
    C = _camera_translation(avatar, 6.0)
    ref = avatar.render(feats, vm, blink)  # plate background
    ident = avatar.render(feats, vm, blink, camera=torch.eye(4))  # [4, 4] broadcast
    assert torch.equal(ref["rgb"], ident["rgb"]) and torch.equal(ref["alpha"], ident["alpha"])  # bit for bit
    moved = avatar.render(feats, vm, blink, background=None, camera=C)
    a0 = ref["alpha"][0, ..., 0].numpy()
    a1 = moved["alpha"][1, ..., 0].numpy()
    assert np.array_equal(moved["alpha"][0].numpy(), ref["alpha"][0].numpy())  # per-frame: identity frame untouched

    def cx(a):
        return float((a * np.arange(a.shape[1])).sum() / a.sum())

    assert cx(a1[:40]) - cx(a0[:40]) == pytest.approx(6.0, abs=1.0)  # the head moved with the camera
    # the shoulders span the image width: moving right uncovers the left edge and keeps the right one
    # (a drop of a quarter or more: how far depends on the tiny fit's blob sizes, 0.95 -> 0.64 for the layered one)
    assert a0[48:, :3].mean() > 0.9 and a1[48:, :3].mean() < a0[48:, :3].mean() - 0.25
    assert a1[48:, -3:].mean() > 0.8
    from avatar.errors import AvatarError

    with pytest.raises(AvatarError):
        avatar.render(feats, vm, blink, camera=torch.eye(3))


def test_plate_reprojection_is_the_plane_homography(avatar):
    """The plate is warped as the plane z = D of the training camera: a 3D point on that plane projects
    to where the homography sends its pixel; a sideways camera shift moves the plate by f t / D; pixels
    with no source take the edge pixel; an identity camera leaves the plate unchanged."""
    import torch

    from avatar.core.camera import about_pivot, euler_camera
    from avatar.engine.runtime import plate_homographies, reproject_plate

    K = avatar.K.double()
    D = avatar.plate_depth
    assert D > float(avatar.train_viewmats[:, 2, 3].max())  # the plate is a wall behind the head, never in front
    rng = np.random.default_rng(0)
    cams = []
    for _ in range(4):
        M = about_pivot(euler_camera(*rng.uniform(-20, 20, 3)), np.array([0, 0, 5.6], np.float32)).astype(np.float64)
        M[:3, 3] += rng.uniform(-0.5, 0.5, 3)
        cams.append(M)
    cams = torch.as_tensor(np.stack(cams))
    Hs = plate_homographies(K, cams, D)
    X = np.concatenate([rng.uniform(-3, 3, (10, 2)), np.full((10, 1), D)], 1)  # points on the plane
    Kn = K.numpy()
    for M, H in zip(cams.numpy(), Hs.numpy()):
        p = X @ Kn.T
        p = p / p[:, 2:]
        Xc = X @ M[:3, :3].T + M[:3, 3]
        q = Xc @ Kn.T
        q = q / q[:, 2:]
        r = p @ H.T
        np.testing.assert_allclose(r[:, :2] / r[:, 2:], q[:, :2], atol=1e-6)

    h, w = avatar.height, avatar.width
    plate = torch.zeros(h, w, 3)
    plate[:, 20:] = 1.0  # a vertical edge between columns 19 and 20
    plate[:, 0, 1] = 0.5  # a marker in the first column
    C = _camera_translation(avatar, 6.0, batch=2).double()
    out = reproject_plate(plate, avatar.K, C, D)
    assert torch.equal(out[0], plate)
    shift = float(avatar.K[0, 0]) * float(C[1, 0, 3]) / D  # pixels at the plate's depth (< 6 at the head's)
    # the edge sits where the bilinear value crosses 0.5: plate column 19.5 + shift
    row = out[1, h // 2, :, 0].numpy()
    j = int(np.argmax(row >= 0.5))
    crossing = j - 1 + (0.5 - row[j - 1]) / (row[j] - row[j - 1]) + 0.5  # in pixel-centre units, + 0.5 -> image x
    assert crossing - 20.0 == pytest.approx(shift, abs=0.15)
    assert 1.5 < shift < 4.0
    np.testing.assert_allclose(out[1, :, : int(shift), 1].numpy(), 0.5)  # no source: edge clamped (column 0)
    # through Avatar.render: where the person does not cover the image, the composite shows the moved plate
    import torch as _t

    W = avatar.feature_window
    r = avatar.render(_t.zeros(2, W, avatar.feature_dim), avatar.train_viewmats[:1].expand(2, 4, 4), _t.zeros(2),
                      background=plate, camera=C.float())
    empty = r["alpha"][1, ..., 0] < 1e-4
    assert empty.sum() > 20
    np.testing.assert_allclose(r["rgb"][1][empty].numpy(), out[1][empty].numpy(), atol=1e-5)
    assert not torch.allclose(out[1][empty], plate[empty])


def test_identity_camera_path_equals_no_camera(avatar, tmp_path):
    from avatar.engine import SpeakConfig, Speaker

    wav = talking_wav(0.6)
    (tmp_path / "cam.json").write_text(json.dumps([np.eye(4).tolist()]))
    a = [f.rgb for f in Speaker(avatar, SpeakConfig(vad="off", pose="audio")).frames(wav)]
    b = [f.rgb for f in Speaker(avatar, SpeakConfig(vad="off", pose="audio", camera_path=str(tmp_path / "cam.json"))).frames(wav)]
    assert len(a) == len(b) == 15 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_streaming_equals_offline(avatar):
    from avatar.engine import SpeakConfig, Speaker

    wav = talking_wav(2.2, silence=(0.9, 1.3))
    cfg = SpeakConfig(vad="energy", pose="audio", orbit=20)
    ref = [f.rgb for f in Speaker(avatar, cfg).stream_offline_equivalent(wav)]
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(len(wav), 60, replace=False))
    sp = Speaker(avatar, cfg)
    chunks = np.split(wav, cuts)
    got, waited = [], []
    for f in sp.stream(chunks):
        got.append(f)
        if f.audio_in_s is not None:  # audio received when the frame's inputs were final, beyond its own time
            waited.append(f.audio_in_s - f.time_s)
    assert [f.index for f in got] == list(range(len(ref)))
    longest_chunk = max(len(c) for c in chunks) / SR
    assert waited and max(waited) <= sp.delay_s() + longest_chunk + 1e-6  # the stated delay is an upper bound
    assert max(np.abs(a.astype(int) - b.rgb.astype(int)).max() for a, b in zip(ref, got)) <= 1
    # the offline renderer (long feature segments) agrees too for this frame-local feature
    off = [f.rgb for f in Speaker(avatar, cfg).frames(wav)]
    assert len(off) == len(ref) == round(2.2 * 25)
    assert max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(ref, off)) <= 1
    st = sp.last_stats
    assert st["latency_p50_s"] is not None and st["latency_p50_s"] < 5.0
    assert 0 < sp.delay_s() < 1.0


@pytest.fixture(scope="session")
def lookahead_avatar(tmp_path_factory):
    """A tiny run trained with a causal window: 9 rows (audio_window 5 + att_window 5 - 1), look-ahead 2."""
    from avatar.engine.runtime import Avatar
    from avatar.testing import make_tiny_run

    root = make_tiny_run(tmp_path_factory.mktemp("lookahead") / "run",
                         overrides={"model.audio_window": 5, "model.att_window": 5, "model.audio_lookahead": 2})
    return Avatar.load(root, device="cpu")


def test_streaming_with_trained_lookahead(lookahead_avatar, taken_windows):
    import copy

    from avatar.engine import SpeakConfig, Speaker

    av = lookahead_avatar
    assert (av.feature_window, av.feature_past, av.feature_future) == (9, 6, 2)
    assert av.config["model"]["audio_lookahead"] == 2
    centred = copy.deepcopy(av)  # same weights and window, centred (lookahead is a plain attribute)
    centred.model.audio.lookahead = -1
    assert (centred.feature_past, centred.feature_future) == (4, 4)
    cfg = SpeakConfig(vad="energy", pose="audio")
    sp = Speaker(av, cfg)
    assert sp.delay_s() < Speaker(centred, cfg).delay_s()
    assert Speaker(centred, cfg).delay_s() - sp.delay_s() == pytest.approx(2 / 25)  # two rows less look-ahead
    assert Speaker(av, SpeakConfig(vad="energy", window_lookahead=5)).delay_s() == pytest.approx(sp.delay_s())  # clamp only lowers

    wav = talking_wav(2.0, silence=(0.9, 1.2))
    ref = [f.rgb for f in Speaker(av, cfg).stream_offline_equivalent(wav)]
    rng = np.random.default_rng(1)
    chunks = np.split(wav, np.sort(rng.choice(len(wav), 50, replace=False)))
    taken_windows.clear()  # (the offline reference above went through the engine too)
    wins = taken_windows
    got, waited = [], []
    for f in sp.stream(chunks, record=True):
        got.append(f)
        if f.audio_in_s is not None:
            waited.append(f.audio_in_s - f.time_s)
    assert [f.index for f in got] == list(range(len(ref))) and len(ref) == 50
    assert max(np.abs(a.astype(int) - b.rgb.astype(int)).max() for a, b in zip(ref, got)) <= 1  # frame for frame
    assert waited and max(waited) <= sp.delay_s() + max(len(c) for c in chunks) / SR + 1e-6
    # the engine feeds the model exactly the windows it was trained on (rows k - 6 ... k + 2, edge padded)
    # (silent frames: cross-faded to the closed-mouth training window by their speech weight)
    rows = np.stack(sp.last_record["feats"])
    expect = av.feature_windows(rows).numpy()
    w = np.asarray(sp.last_record["speech"], np.float32)[:, None, None]
    if sp.stats.silent_window is not None:
        expect = np.where(w < 1, w * expect + (1 - w) * sp.stats.silent_window[None], expect)
    np.testing.assert_allclose(np.concatenate(wins), expect, rtol=0, atol=1e-6)
