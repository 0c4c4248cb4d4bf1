"""Audio features (avatar/features/): alignment, robustness, chunking, SSL loading, import."""

from __future__ import annotations

import json

import numpy as np
import pytest

from avatar.errors import AvatarError
from conftest import max_gap_while, shared_file
import avatar.features as af
from avatar.core.audio import SAMPLE_RATE, load_audio
from avatar.features import phone_process, phonetic

SR = SAMPLE_RATE
SPEECH = ["ip_lap_audio2.wav", "dreamtalk_french1.wav", "sadtalker_japanese.wav", "sadtalker_chinese_news.wav",
          "sadtalker_deyu.wav"]


def _tone(seconds: float, freq: float = 220.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    # a harmonic-rich "vowel": several partials
    return (amp * sum(np.sin(2 * np.pi * freq * h * t) / h for h in range(1, 6))).astype(np.float32)


def _sections(meta: dict) -> dict[str, slice]:
    return {k: slice(*v) for k, v in meta["layout"].items()}


@pytest.mark.parametrize("fps", [24.0, 25.0, 29.97, 60.0])
@pytest.mark.parametrize("seconds", [0.37, 3.3])
def test_rows_match_frames_and_meta(fps, seconds):
    rng = np.random.default_rng(1)
    wav = np.concatenate([_tone(seconds / 2), 0.05 * rng.standard_normal(int(seconds / 2 * SR)).astype(np.float32)])
    n = af.frames_for_duration(len(wav), fps)
    feats, meta = af.extract_features(wav, n, fps)
    assert feats.shape == (n, meta["dim"]) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    for key in ("extractor", "dim", "fps", "window", "sample_rate", "layout", "phones"):
        assert key in meta
    assert meta["extractor"] == "phonetic+spectral" and meta["fps"] == fps
    json.dumps(meta)  # the meta goes into features/NAME.json
    vis = feats[:, _sections(meta)["viseme"]]
    np.testing.assert_allclose(vis.sum(axis=1), 1.0, atol=1e-4)
    # more frames than audio (video longer than audio): the extra rows are silence
    feats2, _ = af.extract_features(wav, n + 10, fps)
    assert feats2.shape[0] == n + 10
    np.testing.assert_allclose(feats2[:n - 2], feats[:n - 2], atol=1e-5)
    assert (feats2[-3:, _sections(meta)["viseme"]].argmax(1) == af.SILENCE_CLASS).all()


def test_silence_is_low_energy_and_silence_class():
    for wav in (np.zeros(3 * SR, np.float32), np.zeros(0, np.float32), np.zeros(50, np.float32),
                (1e-5 * np.random.default_rng(0).standard_normal(2 * SR)).astype(np.float32)):
        feats, meta = af.extract_features(wav, 40, 25.0)
        s = _sections(meta)
        assert feats.shape == (40, meta["dim"]) and np.isfinite(feats).all()
        assert (feats[:, s["viseme"]].argmax(1) == af.SILENCE_CLASS).all()
        assert feats[:, s["energy"]].max() <= -2.0  # >= 40 dB below speech level
    tone, _ = af.extract_features(_tone(1.6), 40, 25.0)
    assert tone[:, s["energy"]].mean() > -0.5
    assert tone[:, s["logmel"]].mean() > feats[:, s["logmel"]].mean() + 2.0


def test_centred_window_alignment():
    """Silence for 1 s then a tone: row k (centred on k/fps) switches at k = fps * 1 s."""
    fps = 25.0
    wav = np.concatenate([np.zeros(SR, np.float32), _tone(1.0)])
    feats, meta = af.extract_features(wav, 50, fps)
    energy = feats[:, _sections(meta)["energy"]][:, 0]
    assert (energy[:24] < -2.0).all()  # windows entirely before 1.0 s - 20 ms
    assert (energy[26:49] > -0.5).all()
    assert energy[24] < energy[25] < energy[26]  # row 25 straddles the onset


def test_loudness_invariance():
    """Per-utterance normalisation: the same audio 20 dB quieter gives nearly the same features."""
    rng = np.random.default_rng(3)
    wav = np.concatenate([_tone(0.8, 180), np.zeros(SR // 4, np.float32), _tone(0.8, 260),
                          0.1 * rng.standard_normal(SR // 2).astype(np.float32)])
    a, meta = af.extract_features(wav, 60, 25.0)
    b, _ = af.extract_features(0.1 * wav, 60, 25.0)
    s = _sections(meta)
    voiced = a[:, s["energy"]][:, 0] > -1.0  # digital silence stays at the absolute floor by design
    assert voiced.sum() > 40
    assert np.abs(a[voiced][:, s["logmel"]] - b[voiced][:, s["logmel"]]).mean() < 0.05
    assert np.abs(a[:, s["energy"]] - b[:, s["energy"]]).max() < 0.05


def test_deterministic_and_chunked_matches_whole():
    rng = np.random.default_rng(7)
    parts = []
    for k in range(6):
        parts += [_tone(0.9, 150 + 40 * k), np.zeros(SR // 5, np.float32),
                  (0.05 * rng.standard_normal(SR // 3)).astype(np.float32)]
    wav = np.concatenate(parts)  # ~8.6 s
    n = af.frames_for_duration(len(wav), 25.0)
    a, meta = af.extract_features(wav, n, 25.0)
    a2, _ = af.extract_features(wav, n, 25.0)
    np.testing.assert_array_equal(a, a2)
    c, cmeta = af.extract_features_chunked(wav, 25.0, chunk_s=2.5)
    assert c.shape == a.shape and cmeta["chunk_s"] == 2.5
    s = _sections(meta)
    np.testing.assert_allclose(c[:, s["logmel"]], a[:, s["logmel"]], atol=1e-4)  # exact up to float order
    np.testing.assert_allclose(c[:, s["energy"]], a[:, s["energy"]], atol=1e-4)
    agree = (c[:, s["viseme"]].argmax(1) == a[:, s["viseme"]].argmax(1)).mean()
    assert agree > 0.8


def test_reused_phone_decoder_equals_a_fresh_one():
    """The phone decoder is built once and reset per utterance (reinit_feat); its phones must equal a
    fresh decoder's whatever was decoded before (streaming decodes a new utterance every 0.2 s)."""
    rng = np.random.default_rng(3)
    t = np.arange(int(1.6 * SR)) / SR
    segs = []
    for i in range(8):
        f0 = 120 + 15 * i + 20 * np.sin(2 * np.pi * 0.7 * t)
        ph = 2 * np.pi * np.cumsum(f0) / SR
        voice = sum(np.sin(h * ph) / h for h in range(1, 12)) * (0.55 + 0.45 * np.sin(2 * np.pi * (3 + i / 2) * t))
        x = (0.05 + 0.05 * i) * voice + 0.01 * (i % 3) * rng.standard_normal(len(t))
        segs.append(x[: int((1.0 + 0.08 * i) * SR)].astype(np.float32))
    fresh = [phonetic._decode_phones(x, decoder=phonetic._new_phone_decoder()) for x in segs]
    for x, ref in zip(segs + segs[::-1], fresh + fresh[::-1]):  # every segment after different audio
        np.testing.assert_array_equal(phonetic._decode_phones(x), ref)
    assert phonetic._phone_decoder() is phonetic._phone_decoder()  # built once per thread
    # the reset matters: the same decoder without it carries state over and disagrees somewhere
    dec = phonetic._new_phone_decoder()
    assert any(not np.array_equal(phonetic._decode_phones(x, decoder=dec), ref) for x, ref in zip(segs, fresh))


def test_bad_arguments():
    with pytest.raises(AvatarError):
        af.extract_features(np.zeros(SR, np.float32), -1, 25.0)
    with pytest.raises(AvatarError):
        af.extract_features(np.zeros(SR, np.float32), 10, 0.0)
    with pytest.raises(AvatarError):
        af.extract_features(np.zeros((3, 4, 5), np.float32), 10, 25.0)
    with pytest.raises(AvatarError):
        af.extract_features(np.zeros(SR, np.float32), 10, 25.0, kind="deepspeech")  # type: ignore[arg-type]
    # int16 PCM and NaNs are accepted
    pcm = (_tone(1.0) * 32767).astype(np.int16)
    f, _ = af.extract_features(pcm, 25, 25.0)
    bad = _tone(1.0)
    bad[100:200] = np.nan
    g, _ = af.extract_features(bad, 25, 25.0)
    assert np.isfinite(f).all() and np.isfinite(g).all()


def test_mel_filterbank_shape_and_coverage():
    fb = af.mel_filterbank()
    assert fb.shape == (af.N_MELS, af.N_FFT // 2 + 1)
    assert (fb.max(axis=1) > 0.5).all()  # no empty band
    peaks = fb.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()  # increasing centre frequencies


# ---- real speech -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", SPEECH)
def test_real_speech(shared_data, name):
    path = shared_file(f"audio/{name}")
    wav = load_audio(path)
    n = af.frames_for_duration(len(wav), 25.0)
    feats, meta = af.extract_features(wav, n, 25.0)
    s = _sections(meta)
    assert feats.shape == (n, meta["dim"]) and np.isfinite(feats).all()
    cls = feats[:, s["viseme"]].argmax(1)
    assert len(np.unique(cls)) >= 6, "phone classes should vary over time in speech"
    assert (cls != af.SILENCE_CLASS).mean() > 0.4, "speech should not be mostly silence"
    # classes change at a speech-like rate: several changes per second
    changes = (np.diff(cls) != 0).sum() / (n / 25.0)
    assert 1.0 < changes < 20.0
    assert feats[:, s["energy"]].std() > 0.1


@pytest.mark.slow
def test_real_speech_chunked(shared_data):
    path = shared_file("audio/ip_lap_audio2.wav")
    wav = load_audio(path)
    n = af.frames_for_duration(len(wav), 25.0)
    a, meta = af.extract_features(wav, n, 25.0)
    c, _ = af.extract_features_chunked(wav, 25.0, chunk_s=8.0)
    s = _sections(meta)
    assert c.shape == a.shape
    np.testing.assert_allclose(c[:, s["logmel"]], a[:, s["logmel"]], atol=1e-4)
    assert (c[:, s["viseme"]].argmax(1) == a[:, s["viseme"]].argmax(1)).mean() > 0.7


# ---- wav2vec2 / HuBERT from a local folder -------------------------------------------------------


def _tiny_ssl(tmp_path, family: str, with_preprocessor: bool):
    import torch
    import transformers
    torch.manual_seed(0)
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    if family == "hubert":
        model = transformers.HubertModel(transformers.HubertConfig(**kw))
    else:
        model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**kw))
    d = tmp_path / family
    model.save_pretrained(d)
    if with_preprocessor:
        transformers.Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(d)
    return d


@pytest.mark.parametrize("family,pre", [("wav2vec2", False), ("hubert", True)])
def test_ssl_local_model(tmp_path, family, pre):
    d = _tiny_ssl(tmp_path, family, pre)
    wav = np.concatenate([_tone(1.0), np.zeros(SR // 2, np.float32), _tone(1.0, 300)])
    for fps in (25.0, 30.0):
        n = af.frames_for_duration(len(wav), fps)
        feats, meta = af.extract_features(wav, n, fps, kind=family, model_dir=d)
        assert feats.shape == (n, 32) and meta["dim"] == 32 and meta["extractor"] == family
        assert meta["model_type"] == family and meta["model_rate_hz"] == 50.0
        assert np.isfinite(feats).all() and feats.std() > 0
        json.dumps(meta)
    again, _ = af.extract_features(wav, n, fps, kind=family, model_dir=d)
    np.testing.assert_array_equal(again, feats)
    # the extractor rebuilt from the recorded meta gives the same features
    ex = af.FeatureExtractor.from_meta(meta)
    same, _ = ex(wav, n, fps)
    np.testing.assert_allclose(same, feats, atol=1e-5)
    # chunked over a longer file: right length, finite
    long = np.tile(wav, 3)
    c, cmeta = af.extract_features_chunked(long, 25.0, kind=family, model_dir=d, chunk_s=2.0)
    assert c.shape == (af.frames_for_duration(len(long), 25.0), 32) and np.isfinite(c).all()


def test_ssl_bad_model_dir(tmp_path):
    with pytest.raises(AvatarError, match="model folder"):
        af.extract_features(np.zeros(SR, np.float32), 25, 25.0, kind="hubert", model_dir=None)
    with pytest.raises(AvatarError, match="no such model folder"):
        af.extract_features(np.zeros(SR, np.float32), 25, 25.0, kind="wav2vec2", model_dir=tmp_path / "nope")
    with pytest.raises(AvatarError, match="config.json"):
        af.extract_features(np.zeros(SR, np.float32), 25, 25.0, kind="wav2vec2", model_dir=tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(AvatarError, match="not a speech model"):
        af.extract_features(np.zeros(SR, np.float32), 25, 25.0, kind="wav2vec2", model_dir=tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))  # no weights
    with pytest.raises(AvatarError, match="cannot load"):
        af.extract_features(np.zeros(SR, np.float32), 25, 25.0, kind="wav2vec2", model_dir=tmp_path)


def test_from_meta_checks_dim():
    wav = _tone(1.0)
    _, meta = af.extract_features(wav, 25, 25.0)
    ex = af.FeatureExtractor.from_meta(dict(meta, dim=meta["dim"] + 1))
    with pytest.raises(AvatarError, match="dim"):
        ex(wav, 25, 25.0)
    with pytest.raises(AvatarError):
        af.FeatureExtractor.from_meta({"extractor": "import:10x16x29", "dim": 29})


# ---- import of precomputed arrays ----------------------------------------------------------------


def test_import_deepspeech_windows(tmp_path):
    T = 100
    arr = np.zeros((T, 16, 29), np.float32)
    arr[:, :, 0] = np.arange(T)[:, None]  # channel 0 = frame index
    arr[:, :, 1] = np.arange(16)[None, :]  # channel 1 = row in the window
    p = tmp_path / "aud_ds.npy"
    np.save(p, arr)
    feats, meta = af.import_npy(p, T, 25.0)
    assert feats.shape == (T, 29) and meta["dim"] == 29 and meta["extractor"] == "import:100x16x29"
    np.testing.assert_array_equal(feats[:, 0], np.arange(T))
    np.testing.assert_allclose(feats[:, 1], 7.5)  # mean of the centre rows 7 and 8
    flat, fmeta = af.import_npy(p, T, 25.0, mode="flatten")
    assert flat.shape == (T, 16 * 29) and fmeta["dim"] == 464
    # off by a few rows: fixed by edge padding / truncation
    f2, _ = af.import_npy(p, T + 2, 25.0)
    assert f2.shape == (T + 2, 29) and f2[-1, 0] == T - 1
    f3, _ = af.import_npy(p, T - 3, 25.0)
    np.testing.assert_array_equal(f3[:, 0], np.arange(T - 3))
    # way off: another clip
    with pytest.raises(AvatarError, match="another clip"):
        af.import_npy(p, 2 * T, 25.0)
    # 25 fps features for a 30 fps video: re-timed by timestamps
    f4, _ = af.import_npy(p, 120, 30.0)
    assert f4.shape == (120, 29)
    np.testing.assert_array_equal(f4[:, 0], np.clip(np.round(np.arange(120) * 25 / 30), 0, T - 1))


def test_import_hubert_and_plain(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.standard_normal((50, 2, 1024)).astype(np.float32)
    np.save(tmp_path / "aud_hu.npy", hu)
    feats, meta = af.import_npy(tmp_path / "aud_hu.npy", 50, 25.0)
    assert feats.shape == (50, 1024) and meta["extractor"] == "import:50x2x1024"
    np.testing.assert_allclose(feats, hu.mean(axis=1), atol=1e-6)
    plain = rng.standard_normal((50, 44)).astype(np.float64)
    np.save(tmp_path / "aud_eo.npy", plain)
    f2, m2 = af.import_npy(tmp_path / "aud_eo.npy", 50, 25.0)
    assert f2.dtype == np.float32 and f2.shape == (50, 44) and m2["dim"] == 44


def test_import_bad_files(tmp_path):
    with pytest.raises(AvatarError, match="no such"):
        af.import_npy(tmp_path / "missing.npy", 10, 25.0)
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(AvatarError, match="readable"):
        af.import_npy(tmp_path / "junk.npy", 10, 25.0)
    np.save(tmp_path / "vec.npy", np.zeros(10))
    with pytest.raises(AvatarError, match="expected"):
        af.import_npy(tmp_path / "vec.npy", 10, 25.0)
    bad = np.zeros((10, 4), np.float32)
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(AvatarError, match="NaN"):
        af.import_npy(tmp_path / "nan.npy", 10, 25.0)


def test_phones_in_a_helper_process_equal_in_process_and_free_the_gil():
    """`avatar serve` decodes phones in a helper process: the classes are exactly an in-process decode's
    (real speech windows of several lengths, silence, a window too short for one frame), and while it
    decodes another Python thread runs (pocketsphinx itself holds the GIL for a whole decode)."""
    wav = load_audio(shared_file("audio/geneface_zozo.wav"), sr=SR)
    wins = [wav[int(a * SR):int((a + d) * SR)] for a, d in ((0.0, 1.28), (2.3, 0.28), (4.0, 3.0), (7.1, 1.0))]
    wins += [np.zeros(SR, np.float32), wav[:300]]
    ref = [phonetic._decode_phones(x) for x in wins]
    assert sum(len(r) for r in ref) > 500 and len(set(np.concatenate(ref).tolist())) > 5  # real phones
    long = wav[: 6 * SR]
    gap_in, dur_in = max_gap_while(lambda: phonetic._decode_phones(long))
    with phone_process.phones_in_helper_process() as proc:
        got = [phonetic._decode_phones(x) for x in wins]
        gap_out, dur_out = max_gap_while(lambda: phonetic._decode_phones(long))
        assert proc.alive
    with phone_process.phones_in_helper_process() as again:
        assert again is proc  # kept for the next user
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(g, r)
    assert gap_in > 0.3 * dur_in, (gap_in, dur_in)  # in process, the other thread waits for the decode
    assert gap_out < 0.2 * gap_in and gap_out < 0.25 * dur_out, (gap_out, dur_out, gap_in)


def test_a_dead_helper_process_falls_back_to_in_process():
    x = load_audio(shared_file("audio/geneface_zozo.wav"), sr=SR)[: 2 * SR]
    ref = phonetic._decode_phones(x)
    with phone_process.phones_in_helper_process() as proc:
        proc._p.kill()
        proc._p.wait()
        np.testing.assert_array_equal(phonetic._decode_phones(x), ref)
        np.testing.assert_array_equal(phonetic._decode_phones(x), ref)


def test_no_helper_process_for_an_extractor_without_phones():
    with phone_process.phones_in_helper_process({"extractor": "synthetic"}) as proc:
        assert proc is None
        assert getattr(phonetic._DECODER_CACHE, "helper", None) is None
