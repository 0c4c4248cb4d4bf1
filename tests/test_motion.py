"""avatar.engine pose/blink/gate and avatar.core.camera: seamless replay loop, static/audio-driven poses, camera paths, blinks, silence gate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from avatar.errors import AvatarError
from avatar.core.camera import apply_head_offset, euler_camera, orbit_path, pose_step_sizes, pose_vectors
from avatar.engine.blink import BlinkModel, FileBlink
from avatar.engine.gate import SpeechGate, close_mouth, silent_rows
from avatar.engine.pose import AudioPoseModel, ReplayPose, StaticPose, load_camera_path

FPS = 25.0


def rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], np.float32)


def training_poses(n: int = 200, seed: int = 0) -> np.ndarray:
    """[n, 4, 4] a head that sways (yaw/pitch drift plus tracking jitter) at 5.6 units from the camera.
    Start and end poses differ on purpose, so a plain loop would jump."""
    rng = np.random.default_rng(seed)
    k = np.arange(n)
    yaw = 0.15 * np.sin(2 * np.pi * k / 90) + 0.002 * k + 0.003 * rng.normal(size=n)
    pitch = 0.05 * np.sin(2 * np.pi * k / 57 + 1)
    out = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
    for i in range(n):
        rx = np.array([[1, 0, 0], [0, math.cos(pitch[i]), -math.sin(pitch[i])], [0, math.sin(pitch[i]), math.cos(pitch[i])]])
        out[i, :3, :3] = rx @ rot_y(yaw[i])
        out[i, :3, 3] = [0.05 * math.sin(i / 30), 0.1, 5.6]
    return out


def test_replay_loop_has_no_jump():
    v = training_poses()
    typical = pose_step_sizes(v)
    naive_jump = pose_step_sizes(np.stack([v[-1], v[0]]))[0]
    assert naive_jump > 4 * np.percentile(typical, 95)  # the test clip really needs a seamless loop
    for loop in ("crossfade", "pingpong"):
        rp = ReplayPose(v, loop=loop)
        track = np.stack([rp.pose(k) for k in range(3 * len(v))])
        steps = pose_step_sizes(track)
        assert steps.max() <= typical.max() * 1.05, loop
    # crossfade keeps the middle of the clip untouched
    rp = ReplayPose(v, loop="crossfade", crossfade_frames=20)
    np.testing.assert_allclose(rp.pose(100), v[100])


def test_static_pose_is_constant_and_central():
    v = training_poses()
    sp = StaticPose(v)
    assert np.array_equal(sp.pose(0), sp.pose(77))
    mean_R, mean_t, _ = pose_vectors(v)
    np.testing.assert_allclose(sp.pose(3)[:3, 3], mean_t, atol=1e-5)


def test_head_offsets_directions():
    v = np.eye(4, dtype=np.float32)
    v[:3, 3] = [0, 0, 5]
    nose = np.array([0, 0, -1, 1.0])  # the face looks at the camera (towards -z)
    chin = np.array([0, 1, 0, 1.0])
    top = np.array([0, -1, 0, 1.0])
    assert (apply_head_offset(v, yaw=20) @ nose)[0] > 0.2  # face turns towards image right
    assert (apply_head_offset(v, pitch=20) @ chin)[2] > 5.2  # chin moves away: nod down
    assert (apply_head_offset(v, roll=20) @ top)[0] > 0.2  # clockwise tilt in the image
    np.testing.assert_allclose(apply_head_offset(v, yaw=30)[:3, 3], v[:3, 3], atol=1e-6)  # pivot = head origin
    assert np.allclose(euler_camera(0, 0, 0), np.eye(3))


def test_orbit_keeps_head_centred_and_turns_it():
    pivot = np.array([0.0, 0.1, 5.6], np.float32)
    path = orbit_path(150, 40.0, pivot, FPS, period_s=6.0)
    assert path.shape == (150, 4, 4)
    head = np.append(pivot, 1.0)
    for M in path:
        np.testing.assert_allclose(M @ head, head, atol=1e-5)  # the pivot never moves in the image
    from scipy.spatial.transform import Rotation

    angles = np.degrees(Rotation.from_matrix(path[:, :3, :3].astype(np.float64)).magnitude())
    assert angles.max() == pytest.approx(20.0, abs=0.2)  # +-20 deg = 40 deg peak to peak
    assert np.abs(np.diff(angles)).max() < 2.0  # smooth: under 2 degrees per frame


def test_camera_path_files(tmp_path):
    pivot = np.array([0, 0, 5.0], np.float32)
    mats = [np.eye(4).tolist(), euler_camera(10, 0, 0).tolist()]
    mats[1] = np.pad(np.array(mats[1]), ((0, 1), (0, 1))).tolist()
    mats[1][3][3] = 1.0
    (tmp_path / "m.json").write_text(json.dumps(mats))
    cp = load_camera_path(tmp_path / "m.json", pivot)
    assert cp.moves.shape == (2, 4, 4) and np.allclose(cp.at(5), cp.at(1))
    (tmp_path / "y.json").write_text(json.dumps([{"yaw": 0}, {"yaw": 15, "pitch": 5}]))
    cp = load_camera_path(tmp_path / "y.json", pivot)
    np.testing.assert_allclose(cp.at(1) @ np.append(pivot, 1), np.append(pivot, 1), atol=1e-5)
    np.save(tmp_path / "c.npy", np.tile(np.eye(4, dtype=np.float32), (3, 1, 1)))
    assert load_camera_path(tmp_path / "c.npy", pivot).moves.shape == (3, 4, 4)
    (tmp_path / "bad.json").write_text("[1, 2, 3]")
    for bad in ("bad.json", "missing.json"):
        with pytest.raises(AvatarError):
            load_camera_path(tmp_path / bad, pivot)


def test_audio_pose_follows_speech_rhythm():
    """Train on a clip whose head moves more while talking; generated motion must do the same,
    with a spread close to the training clip's."""
    rng = np.random.default_rng(1)
    n = 1500
    talk = ((np.arange(n) // 100) % 2 == 0)  # 4 s talking, 4 s silent
    level = np.where(talk, -20.0, -70.0) + rng.normal(0, 2, n)
    x = np.zeros((n, 6))
    for k in range(2, n):
        amp = 0.004 if talk[k] else 0.0008
        x[k] = 1.6 * x[k - 1] - 0.64 * x[k - 2] + amp * rng.normal(size=6)
    mean_R, mean_t = np.eye(3), np.array([0, 0, 5.0])
    from avatar.core.camera import pose_from_vector

    v = pose_from_vector(x, mean_R, mean_t)
    model = AudioPoseModel.fit(v, FPS, level_db=level)
    assert model.c[:, 1].mean() > 0.5  # learned: more innovation while talking
    assert model.step_frames == 5
    gen = model.generator(seed=3)
    new_level = np.where((np.arange(n) // 60) % 2 == 0, -20.0, -70.0)  # a different rhythm
    track = np.stack([gen.pose(k, new_level[k]) for k in range(n)])
    speed = pose_step_sizes(track)
    loud = new_level[1:] > -40
    assert speed[loud].mean() > 1.3 * speed[~loud].mean()
    _, _, xg = pose_vectors(track)
    _, _, xt = pose_vectors(v)
    ratio = xg[:, :3].std(0).mean() / xt[:, :3].std(0).mean()
    assert 0.6 < ratio < 1.5  # the spread is calibrated to the training clip's
    # determinism and order
    g2 = model.generator(seed=3)
    np.testing.assert_allclose(np.stack([g2.pose(k, new_level[k]) for k in range(50)]), track[:50])
    with pytest.raises(AvatarError):
        model.generator().pose(5, -20.0)


def test_blink_model_learns_rate_and_duration():
    n = 25 * 120  # two minutes
    rng = np.random.default_rng(0)
    b = np.zeros(n, np.float32) + 0.05
    onsets = np.cumsum(rng.gamma(4.0, 3.0 / 4.0, 60) * FPS).astype(int)  # mean 3 s -> 20/min
    shape = np.array([0.3, 0.8, 1.0, 0.7, 0.3])
    for s in onsets[onsets < n - 5]:
        b[s:s + 5] = np.maximum(b[s:s + 5], shape)
    m = BlinkModel.fit(b, FPS)
    assert m.learned and 16 < m.rate_per_min < 24
    assert 3 <= len(m.template) <= 9 and m.baseline == pytest.approx(0.05, abs=0.01)
    tr = m.generator(seed=1)
    gen = np.array([tr.value(k) for k in range(n)])
    ev = np.sum((gen[1:] > 0.5) & (gen[:-1] <= 0.5))
    assert 0.6 * 40 < ev < 1.4 * 40  # about 20/min over two minutes
    assert gen.max() == pytest.approx(m.peak, abs=0.05) and gen.min() == pytest.approx(0.05, abs=1e-6)
    # no blinks in the clip -> a human resting rate (Bentivoglio et al. 1997: 4.5-26 blinks/min), and the
    # generator really blinks at the rate it declares (counted over 10 minutes)
    m0 = BlinkModel.fit(np.zeros(100), FPS)
    assert not m0.learned and 4.5 <= m0.rate_per_min <= 26
    g0 = m0.generator(seed=2)
    v0 = np.array([g0.value(k) for k in range(int(FPS * 600))])
    thr = 0.5 * (v0.max() + v0.min())
    per_min = np.sum((v0[1:] > thr) & (v0[:-1] <= thr)) / 10.0
    assert 0.7 * m0.rate_per_min < per_min < 1.3 * m0.rate_per_min


def test_blink_file(tmp_path):
    np.save(tmp_path / "b.npy", np.array([0, 0.5, 1.0], np.float32))
    fb = FileBlink(tmp_path / "b.npy")
    assert fb.value(1) == 0.5 and fb.value(10) == 1.0
    (tmp_path / "b.txt").write_text("oops")
    with pytest.raises(AvatarError):
        FileBlink(tmp_path / "b.txt")


def _speechy(seconds_on: float, seconds_off: float, reps: int, sr: int = 16000) -> np.ndarray:
    """Speech-like bursts (a harmonic tone with syllable-rate amplitude modulation) and silences."""
    t_on = np.arange(int(seconds_on * sr)) / sr
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t_on)
    ph = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(h * ph) / h for h in range(1, 15)) * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t_on))
    noise = np.random.default_rng(0).normal(0, 0.002, int(seconds_off * sr))
    return np.concatenate([np.concatenate([0.2 * voiced, noise]) for _ in range(reps)]).astype(np.float32)


@pytest.mark.parametrize("kind", ["energy", "silero"])
def test_speech_gate_streaming_equals_offline(kind):
    wav = _speechy(1.0, 1.0, 3)
    n = int(round(len(wav) / 16000 * FPS))

    def run(chunks):
        g = SpeechGate(FPS, kind=kind)
        out = []
        for c in chunks:
            g.push(c)
            while len(out) < n and g.ready(len(out)):
                out.append(g.speech(len(out)))
        g.end()
        while len(out) < n:
            assert g.ready(len(out), n)
            out.append(g.speech(len(out)))
        return np.array(out)

    whole = run([wav])
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(len(wav), 40, replace=False))
    streamed = run(np.split(wav, cuts))
    np.testing.assert_array_equal(whole, streamed)
    talk = (np.arange(n) / FPS) % 2.0 < 1.0
    if kind == "energy":  # the synthetic bursts are unmistakable for the energy gate
        assert (whole == talk).mean() > 0.85
    assert whole[~talk].mean() < 0.3  # silences are mostly detected as silence


def test_silent_rows_and_close_mouth():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(100, 4)).astype(np.float32)
    f[17] = [9, 9, 9, 9]  # the one silent, closed-mouth frame
    level = rng.uniform(-30, -10, 100)
    level[17] = -80
    mouth = rng.uniform(0.05, 0.3, 100)
    mouth[17] = 0.0
    s = silent_rows(f, level, mouth, k=1)
    np.testing.assert_allclose(s, f[17])
    assert np.allclose(close_mouth(f[0], s, 0.0), s) and np.allclose(close_mouth(f[0], s, 1.0), f[0])
