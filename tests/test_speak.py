"""`avatar speak` on the tiny trained avatar: exact frame counts for every input format, muxed audio,
closed mouth in silence, orbit, streaming == offline, motion export round trip, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from avatar.cli import main
from avatar.core.video_writer import probe_video
from conftest import shared_file
from test_audio_io import write_av
from test_speak_support import SR, get_tiny_run, talking_wav, voice_like


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return get_tiny_run(tmp_path_factory)


@pytest.fixture(scope="session")
def avatar(tiny_run):
    from avatar.engine.runtime import Avatar

    return Avatar.load(tiny_run, device="cpu")


def speak(*args) -> int:
    return main(["speak", *map(str, args)])


def write_wav(path, wav, sr=SR, subtype="PCM_16"):
    import soundfile as sf

    sf.write(str(path), wav, sr, subtype=subtype)
    return path


# ---------------------------------------------------------------------------------------------
# formats, exact frame counts, muxed audio


def _make_input(tmp_path, kind: str):
    """(path, true duration) for one input kind, built from the tiny dataset's style of audio."""
    import soundfile as sf

    dur = 1.13
    if kind.startswith("wav"):
        _, bits, rate, ch = kind.split("-")
        x = np.repeat(talking_wav(dur, sr=int(rate))[:, None], int(ch), axis=1)
        subtype = {"8": "PCM_U8", "16": "PCM_16", "24": "PCM_24", "32": "PCM_32", "f32": "FLOAT"}[bits]
        p = tmp_path / f"{kind}.wav"
        sf.write(str(p), x, int(rate), subtype=subtype)
        return p, x.shape[0] / int(rate)
    if kind in ("flac", "ogg"):
        p = tmp_path / f"a.{kind}"
        sf.write(str(p), talking_wav(dur, sr=22050), 22050, format=kind.upper())
        return p, dur
    codec, ext, video = {"mp3": ("libmp3lame", "mp3", False), "m4a": ("aac", "m4a", False), "video": ("aac", "mp4", True)}[kind]
    p = tmp_path / f"in.{ext}"
    write_av(p, np.repeat(talking_wav(dur, sr=44100)[:, None], 2, axis=1), 44100, codec, video=video)
    return p, dur


KINDS = ["wav-16-16000-1", "wav-8-8000-1", "wav-24-48000-2", "wav-32-44100-2", "wav-f32-24000-1",
         "flac", "ogg", "mp3", "m4a", "video"]


@pytest.fixture(scope="session")
def speaker(avatar):
    from avatar.engine import SpeakConfig, Speaker

    return Speaker(avatar, SpeakConfig(vad="energy"))


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_frame_exact_with_audio(tiny_run, speaker, tmp_path, kind):
    from avatar.core.audio import probe_duration

    src, _ = _make_input(tmp_path, kind)
    out = tmp_path / "out.mp4"
    if kind in ("wav-16-16000-1", "video"):  # through the CLI
        assert speak(tiny_run, "--audio", src, "-o", out, "--device", "cpu", "--vad", "energy") == 0
    else:  # same pipeline, without reloading the model each time
        speaker.render_file(src, out, progress=False)
    dur = probe_duration(src)
    info = probe_video(out)
    assert info["frames"] == round(dur * info["fps"])
    assert info["audio_codec"] == "aac" and info["video_codec"] == "h264"
    assert info["audio_duration"] == pytest.approx(dur, abs=0.05)
    assert info["width"] == 64 and info["height"] == 64


@pytest.mark.slow
def test_real_audio_files_frame_exact(tiny_run, tmp_path, shared_data):
    from avatar.core.audio import probe_duration

    names = ["dreamtalk_spanish1.wav", "sadtalker_imagine.wav", "sadtalker_itosinger1.wav"]  # 16k mono, 48k/24-bit stereo, 24k
    for name in names:
        src = shared_file(f"audio/{name}")
        out = tmp_path / f"{name}.mp4"
        assert speak(tiny_run, "--audio", src, "-o", out, "--device", "cpu", "--batch", "16") == 0
        info = probe_video(out)
        dur = probe_duration(src)
        assert info["frames"] == round(dur * 25.0), name
        assert info["audio_duration"] == pytest.approx(dur, abs=0.05), name


# ---------------------------------------------------------------------------------------------
# silence, orbit, streaming, background, motion export


def test_silence_closes_the_mouth(avatar):
    """Non-speech frames are driven by the training clip's silent closed-mouth row; the model's lip
    gap there is no wider than on the training clip's most-closed frames."""
    from avatar.core.dataset_format import load_dataset
    from avatar.evaluation.lipsync import gaussian_mouth_opening
    from avatar.engine import SpeakConfig, Speaker

    wav = talking_wav(3.0, silence=(1.0, 2.0))
    sp = Speaker(avatar, SpeakConfig(vad="energy", blink="off"))
    frames = list(sp.frames(wav, record=True))
    rec = sp.last_record
    speech = np.asarray(rec["speech"])
    feats = np.stack(rec["feats"])
    k = np.arange(len(frames))
    quiet = (k / 25.0 > 1.25) & (k / 25.0 < 1.75)
    assert speech[quiet].max() == 0.0 and speech[(k / 25.0 < 0.8)].min() == 1.0
    np.testing.assert_allclose(feats[quiet], np.repeat(sp.stats.silent_row[None], quiet.sum(), 0), atol=1e-6)
    gap = gaussian_mouth_opening(avatar, avatar.feature_windows(feats), np.asarray(rec["blink"]))
    info = load_dataset(avatar.dataset["root"])
    tr = np.asarray(info.feature(avatar.feature_meta["name"]), np.float32)
    gap_train = gaussian_mouth_opening(avatar, avatar.feature_windows(tr), np.zeros(len(tr)))
    assert gap[quiet].max() <= np.quantile(gap_train, 0.25) + 1e-4
    # the image in the silent stretch is steady (no mouth flapping)
    q = np.stack([frames[i].rgb for i in np.nonzero(quiet)[0]]).astype(np.float32)
    assert np.abs(np.diff(q, axis=0)).mean() < 2.0


def test_silence_only_audio_renders_closed_mouth(tiny_run, tmp_path, capsys):
    src = write_wav(tmp_path / "silence.wav", np.zeros(SR, np.float32))
    out = tmp_path / "s.mp4"
    assert speak(tiny_run, "--audio", src, "-o", out, "--device", "cpu") == 0
    assert "no speech detected" in capsys.readouterr().err
    assert probe_video(out)["frames"] == 25


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
        if not sp.engine.ended:  # audio received when the frame came out, beyond the frame's own time
            waited.append(sp.engine.samples_pushed / SR - f.time_s)
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


def test_streaming_with_trained_lookahead(lookahead_avatar):
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
    wins = []
    from avatar.engine.engine import FrameEngine

    take = FrameEngine.take

    def spy(self, count):
        out = take(self, count)
        wins.append(out.windows)
        return out

    FrameEngine.take = spy
    try:
        got, waited = [], []
        for f in sp.stream(chunks, record=True):
            got.append(f)
            if not sp.engine.ended:
                waited.append(sp.engine.samples_pushed / SR - f.time_s)
    finally:
        FrameEngine.take = take
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


def test_stream_cli_writes_raw_frames(tiny_run, tmp_path):
    src = write_wav(tmp_path / "a.wav", talking_wav(1.0))
    out = tmp_path / "frames.rgb"
    assert speak(tiny_run, "--audio", src, "--stream", "--no-realtime", "-o", out, "--device", "cpu", "--vad", "energy") == 0
    raw = np.frombuffer(out.read_bytes(), np.uint8)
    assert raw.size == 25 * 64 * 64 * 3
    from avatar.engine.runtime import Avatar
    from avatar.engine import SpeakConfig, Speaker

    ref = [f.rgb for f in Speaker(Avatar.load(tiny_run, device="cpu"), SpeakConfig(vad="energy")).stream_offline_equivalent(talking_wav(1.0))]
    assert np.abs(raw.reshape(25, 64, 64, 3).astype(int) - np.stack(ref).astype(int)).max() <= 1


def test_backgrounds(avatar, tmp_path):
    import cv2

    from avatar.engine import SpeakConfig, Speaker

    wav = talking_wav(0.4)
    green = [f.rgb for f in Speaker(avatar, SpeakConfig(background="green", vad="off")).frames(wav)][0]
    assert green[0, 0, 1] > 200 and green[0, 0, 0] < 40  # corner pixel is background
    img = np.zeros((10, 10, 3), np.uint8)
    img[..., 2] = 255  # red in BGR
    cv2.imwrite(str(tmp_path / "bg.png"), img)
    red = [f.rgb for f in Speaker(avatar, SpeakConfig(background=str(tmp_path / "bg.png"), vad="off")).frames(wav)][0]
    assert red[0, 0, 0] > 200
    rgba = [f.rgb for f in Speaker(avatar, SpeakConfig(background="transparent", vad="off")).frames(wav)][0]
    assert rgba.shape == (64, 64, 4) and rgba[0, 0, 3] < 10 and rgba[..., 3].max() > 200


def test_transparent_png_sequence_cli(tiny_run, tmp_path):
    src = write_wav(tmp_path / "a.wav", talking_wav(0.6))
    out = tmp_path / "seq"
    assert speak(tiny_run, "--audio", src, "-o", out, "--background", "transparent", "--device", "cpu", "--vad", "energy") == 0
    assert len(list(out.glob("*.png"))) == 15 and (out / "audio.wav").is_file()
    assert speak(tiny_run, "--audio", src, "-o", tmp_path / "x.mp4", "--background", "transparent") != 0
    webm = tmp_path / "a.webm"
    assert speak(tiny_run, "--audio", src, "-o", webm, "--background", "transparent", "--device", "cpu", "--vad", "energy") == 0
    info = probe_video(webm)
    assert info["frames"] == 15 and info["audio_codec"] == "opus" and info["video_codec"] == "vp9"


def test_motion_export_round_trip(tiny_run, tmp_path):
    src = write_wav(tmp_path / "a.wav", talking_wav(1.2))
    m = tmp_path / "motion.npz"
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    assert speak(tiny_run, "--audio", src, "-o", a, "--pose", "audio", "--orbit", "25", "--yaw", "5", "--export-motion", m,
                 "--device", "cpu", "--vad", "energy") == 0
    z = np.load(m)
    n = 30
    for key, shape in (("head", (n, 4, 4)), ("camera", (n, 4, 4)), ("viewmats", (n, 4, 4)), ("blink", (n,)), ("speech", (n,))):
        assert z[key].shape == shape, key
    assert json.loads(str(z["config"]))["pose"] == "audio"
    # replaying the exported head poses, blinks and camera (plus the same yaw) reproduces the video
    assert speak(tiny_run, "--audio", src, "-o", b, "--pose", m, "--blink", m, "--camera-path", m, "--yaw", "5",
                 "--device", "cpu", "--vad", "energy") == 0
    import av

    def decode(p):
        with av.open(str(p)) as c:
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(int)

    assert np.abs(decode(a) - decode(b)).mean() < 0.5


def test_head_offsets_and_lip_scale_change_the_image(avatar):
    from avatar.engine import SpeakConfig, Speaker

    wav = talking_wav(0.4)

    def first(**kw):
        return next(iter(Speaker(avatar, SpeakConfig(pose="static", vad="off", blink="off", **kw)).frames(wav))).rgb.astype(np.float32)

    ref = first()
    assert np.abs(first(yaw=15) - ref).mean() > 1.0
    assert np.abs(first(pitch=-10, roll=5) - ref).mean() > 1.0
    assert np.abs(first() - ref).max() == 0  # deterministic


# ---------------------------------------------------------------------------------------------
# bad input: one line, non-zero exit, no output file


def _one_line_error(capsys, code):
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("avatar: error:"), err
    return err[0]


def test_bad_inputs(tiny_run, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    line = _one_line_error(capsys, speak(tiny_run, "--audio", tmp_path / "missing.wav", "-o", out))
    assert "missing.wav" in line
    (tmp_path / "corrupt.mp3").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    _one_line_error(capsys, speak(tiny_run, "--audio", tmp_path / "corrupt.mp3", "-o", out))
    (tmp_path / "empty.wav").write_bytes(b"")
    _one_line_error(capsys, speak(tiny_run, "--audio", tmp_path / "empty.wav", "-o", out))
    write_wav(tmp_path / "zero.wav", np.zeros(0, np.float32))
    _one_line_error(capsys, speak(tiny_run, "--audio", tmp_path / "zero.wav", "-o", out))
    unfinished = tmp_path / "run_unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("x: 1\n")
    src = write_wav(tmp_path / "ok.wav", talking_wav(3.0))
    line = _one_line_error(capsys, speak(unfinished, "--audio", src, "-o", out))
    assert "not finished" in line
    line = _one_line_error(capsys, speak(tiny_run, "--audio", src, "-o", out, "--max-duration", "2"))
    assert "--allow-long" in line
    _one_line_error(capsys, speak(tiny_run, "--audio", src, "-o", out, "--blink", "nofile.npy"))
    _one_line_error(capsys, speak(tiny_run, "--audio", src, "-o", out, "--background", "not-a-colour"))
    assert not out.exists()
    assert speak(tiny_run, "--audio", src, "-o", out, "--max-duration", "2", "--allow-long", "--device", "cpu",
                 "--vad", "energy") == 0
    assert probe_video(out)["frames"] == 75


def test_help_documents_every_control(capsys):
    with pytest.raises(SystemExit):
        main(["speak", "--help"])
    text = capsys.readouterr().out
    for opt in ("--pose", "--yaw", "--pitch", "--roll", "--orbit", "--camera-path", "--blink", "--lip-scale", "--background",
                "--export-motion", "--stream", "--allow-long", "--device", "--fps", "replay", "static", "transparent"):
        assert opt in text, opt


def test_silero_tells_speech_from_silence_and_noise(avatar):
    """silero-vad on a real recording: French speech (dreamtalk_french1.wav, talking from ~1 s on), then
    1.5 s of digital silence, then 1.5 s of white noise at -30 dBFS RMS. Speech frames are speech; silence and
    noise are not, although the noise is 15 dB above the energy gate (-45 dB): the energy VAD, run as a
    control, does call the noise speech, so a silero path that fell back to energy would fail here."""
    from avatar.core.audio import load_audio
    from avatar.engine import SpeakConfig, Speaker

    speech = load_audio(shared_file("audio/dreamtalk_french1.wav"), sr=SR)[: 3 * SR]
    noise = (0.03 * np.random.default_rng(0).standard_normal(3 * SR // 2)).astype(np.float32)  # RMS 0.03 = -30 dBFS
    wav = np.concatenate([speech, np.zeros(3 * SR // 2, np.float32), noise])
    flags = {}
    for vad in ("silero", "energy"):
        sp = Speaker(avatar, SpeakConfig(vad=vad))
        list(sp.frames(wav, record=True))
        flags[vad] = np.asarray(sp.last_record["speech"])
    t = np.arange(len(flags["silero"])) / 25.0
    talking, silent, noisy = (t > 1.2) & (t < 3.0), (t > 3.4) & (t < 4.4), t > 4.8
    assert flags["silero"][talking].mean() > 0.9
    assert flags["silero"][silent].max() == 0.0
    assert flags["silero"][noisy].mean() < 0.1
    assert flags["energy"][noisy].mean() > 0.9  # the control: by energy alone the noise is "speech"


class _StubAvatar:
    """Duck-typed Avatar whose render is free, to run the engine over long audio quickly."""

    def __init__(self):
        import torch

        self.fps, self.width, self.height, self.feature_window, self.feature_dim = 25.0, 8, 8, 17, 8
        self.feature_meta = {"extractor": "synthetic"}
        self.dataset = {}
        self.device = "cpu"
        self.train_viewmats = torch.eye(4).repeat(50, 1, 1)
        self.train_viewmats[:, 2, 3] = 5.0
        self.train_blink = torch.zeros(50)
        self.background = torch.zeros(8, 8, 3)

    def render(self, feats, viewmats, blink, **kw):
        import torch

        b = feats.shape[0]
        return {"rgb": torch.zeros(b, 8, 8, 3), "alpha": torch.ones(b, 8, 8, 1)}


def test_engine_memory_is_bounded_on_long_audio():
    """Ten minutes of audio streamed through the engine: audio buffer and feature rows stay O(window)."""
    from avatar.engine import SpeakConfig, Speaker

    sp = Speaker(_StubAvatar(), SpeakConfig(vad="energy", pose="audio"))
    block = talking_wav(10.0, silence=(6.0, 8.0))
    n = 0
    max_buf = max_rows = 0

    def chunks():
        for _ in range(60):
            yield block

    for _ in sp.run(chunks(), streaming=False, batch=8):
        n += 1
        eng = sp.engine
        max_buf = max(max_buf, eng.buffered_samples)
        max_rows = max(max_rows, eng.buffered_rows)
    assert n == 600 * 25
    assert max_buf < 45 * SR  # one 30 s feature segment + context + one pushed block, never the whole 600 s
    assert max_rows < 30 * 25 + 100


def test_stream_from_stdin(tiny_run, tmp_path):
    import subprocess
    import sys

    pcm = (np.clip(talking_wav(0.8), -1, 1) * 32767).astype("<i2").tobytes()
    out = tmp_path / "o.rgb"
    r = subprocess.run([sys.executable, "-m", "avatar.cli", "speak", str(tiny_run), "--audio", "-", "--stream", "-o", str(out),
                        "--device", "cpu", "--vad", "energy"], input=pcm, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-500:]
    assert out.stat().st_size == 20 * 64 * 64 * 3
    assert b"latency" in r.stderr


def test_output_fps_option(avatar):
    from avatar.engine import SpeakConfig, Speaker

    frames = list(Speaker(avatar, SpeakConfig(fps=30.0, vad="off")).frames(talking_wav(1.0)))
    assert len(frames) == 30 and frames[-1].time_s == pytest.approx(29 / 30)


def test_real_extractor_through_the_engine():
    """The default extractor (phonetic+spectral, what real runs use) runs per segment inside the engine:
    rows match a direct extraction on the same segment, and streaming equals the offline reference."""
    from avatar.features import extract_features
    from avatar.engine import SpeakConfig, Speaker

    wav = np.concatenate([voice_like(1.2), np.zeros(SR // 2, np.float32), voice_like(0.8)])
    dim = extract_features(wav[:SR], 25, 25.0)[0].shape[1]
    stub = _StubAvatar()
    stub.feature_dim = dim
    stub.feature_meta = {"name": "default", "extractor": "phonetic+spectral", "dim": dim, "fps": 25.0, "extra": {}}
    sp = Speaker(stub, SpeakConfig(vad="energy", stream_segment_frames=10, stream_future_frames=4))
    assert sp.stats.silent_row is not None and sp.stats.silent_row.shape == (dim,)  # extractor's own silence row
    ref = list(sp.stream_offline_equivalent(wav))
    got = list(Speaker(stub, sp.cfg).stream(np.array_split(wav, 37)))
    assert len(ref) == len(got) == round(len(wav) / SR * 25)
    sp2 = Speaker(stub, SpeakConfig(vad="off"))
    list(sp2.frames(wav, record=True))
    rows = np.stack(sp2.last_record["feats"])
    n = len(rows)  # one offline segment: the audio from 0 plus 1.5 s (38 frames) of silence after its end
    padded = np.zeros((n + 38) * 640, np.float32)
    padded[:len(wav)] = wav
    direct = extract_features(padded, n + 38, 25.0)[0][:n]
    np.testing.assert_allclose(rows, direct, atol=1e-4)


def test_streaming_builds_the_phone_decoder_once(monkeypatch):
    """Streaming decodes one short utterance per segment; the pocketsphinx decoder (0.1-0.4 s to build)
    must be built at most once per thread, not per segment (that made streaming slower than real time)."""
    from avatar.features import phonetic as af
    from avatar.features import extract_features
    from avatar.engine import SpeakConfig, Speaker

    built, decoded = [], []
    new, decode = af._new_phone_decoder, af._decode_phones
    monkeypatch.setattr(af, "_new_phone_decoder", lambda: built.append(1) or new())
    monkeypatch.setattr(af, "_decode_phones", lambda *a, **k: decoded.append(1) or decode(*a, **k))
    monkeypatch.setattr(af._DECODER_CACHE, "decoder", None, raising=False)  # start cold
    wav = voice_like(2.0)
    stub = _StubAvatar()
    stub.feature_dim = extract_features(wav[:SR], 25, 25.0)[0].shape[1]
    stub.feature_meta = {"name": "default", "extractor": "phonetic+spectral", "dim": stub.feature_dim, "fps": 25.0, "extra": {}}
    sp = Speaker(stub, SpeakConfig(vad="off"))
    built.clear()
    decoded.clear()
    frames = list(sp.stream(np.array_split(wav, 50)))
    assert len(frames) == 50
    assert len(decoded) >= 10  # one utterance per 5-frame segment
    assert len(built) == 0  # the Speaker's own set-up (training stats) already built it


def test_silence_uses_a_real_closed_mouth_training_window(tiny_run):
    """The silence window is a real run of consecutive training feature rows (edge padded like training),
    from the quieter half of the clip, with an inner-lip gap the model predicts no wider than the median window's."""
    import torch

    from avatar.core.dataset_format import load_dataset
    from avatar.core.landmarks import LOWER_INNER_LIP, UPPER_INNER_LIP
    from avatar.engine.runtime import Avatar
    from avatar.engine.features import training_stats

    av = Avatar.load(tiny_run, device="cpu")
    st = training_stats(av)
    assert st.silent_window is not None and st.silent_window.shape == (av.feature_window, av.feature_dim)
    info = load_dataset(av.dataset["root"])
    a, b = av.dataset["train"]
    feats = np.asarray(info.feature(info.default_feature), np.float32)[a:b]
    wins = av.feature_windows(feats).numpy()
    match = [k for k in range(len(wins)) if np.array_equal(wins[k], st.silent_window)]
    assert match, "not a training window"
    shape = torch.as_tensor(info.camera_pose().shape3d[[UPPER_INNER_LIP, LOWER_INNER_LIP]], dtype=torch.float32)
    with torch.no_grad():
        x, _ = av.model.point_motion(shape, av.model.audio(torch.as_tensor(wins)), torch.zeros(len(wins)))
    gap = ((x[:, 1] - x[:, 0]).norm(dim=-1) / av.model.unit).numpy()
    # properties, not the selection rule's own percentile: the window is from the quieter half of the clip
    # and renders a mouth no more open than the median training window
    assert st.level_db[match[0]] <= np.median(st.level_db)
    assert gap[match[0]] <= np.median(gap) + 1e-7
