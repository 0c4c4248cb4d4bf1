"""`avatar speak` on the tiny trained avatar: exact frame counts for every input format, muxed audio,
closed mouth in silence, orbit, streaming == offline, motion export round trip, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_file
from test_audio_io import write_av
from test_speak_support import SR, talking_wav, voice_like

from avatar.cli import main
from avatar.core.video_writer import probe_video


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
    from avatar.engine import SpeakConfig, Speaker
    from avatar.evaluation.lipsync import gaussian_mouth_opening

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


def test_stream_cli_writes_raw_frames(tiny_run, tmp_path):
    src = write_wav(tmp_path / "a.wav", talking_wav(1.0))
    out = tmp_path / "frames.rgb"
    assert speak(tiny_run, "--audio", src, "--stream", "--no-realtime", "-o", out, "--device", "cpu", "--vad", "energy") == 0
    raw = np.frombuffer(out.read_bytes(), np.uint8)
    assert raw.size == 25 * 64 * 64 * 3
    from avatar.engine import SpeakConfig, Speaker
    from avatar.engine.runtime import Avatar

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
    from avatar.engine import SpeakConfig, Speaker
    from avatar.features import extract_features

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
    from avatar.engine import SpeakConfig, Speaker
    from avatar.features import extract_features
    from avatar.features import phonetic as af

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
    from avatar.engine.features import training_stats
    from avatar.engine.runtime import Avatar

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


def test_streaming_engine_thread_stops_with_its_consumer_and_hands_over_errors(avatar):
    """Streaming computes features in a second thread: a consumer that stops early stops it, and the engine's
    one-line errors (NaN samples) reach the consumer as they did before."""
    import threading

    from avatar.engine import SpeakConfig, Speaker
    from avatar.errors import AvatarError

    def engine_threads() -> int:
        return sum(t.name == "avatar-engine" and t.is_alive() for t in threading.enumerate())

    sp = Speaker(avatar, SpeakConfig(vad="off"))
    gen = sp.stream(np.array_split(talking_wav(4.0), 100))
    assert [next(gen).index for _ in range(3)] == [0, 1, 2]
    assert engine_threads() == 1
    gen.close()
    assert engine_threads() == 0
    bad = talking_wav(1.0)
    bad[9000] = np.nan
    with pytest.raises(AvatarError, match="NaN"):
        list(sp.stream([bad[:4000], bad[4000:]]))
    assert engine_threads() == 0
