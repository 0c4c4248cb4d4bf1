"""Voice transforms (avatar.core.voice), the AV-sync metric on a real clip with a known delay, and the voice
augmentation of training windows (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest

from avatar.core.audio import SAMPLE_RATE as SR
from avatar.core.voice import pitch_shift, time_stretch


def _peak_hz(x: np.ndarray) -> float:
    seg = x[SR // 4: -SR // 4]
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
    return float(np.fft.rfftfreq(len(seg), 1 / SR)[spec.argmax()])


@pytest.mark.parametrize("semitones", [-3.0, 3.0, 7.0])
def test_pitch_shift_moves_a_tone_by_the_equal_tempered_ratio(semitones):
    t = np.arange(2 * SR) / SR
    x = (0.5 * np.sin(2 * np.pi * 300.0 * t)).astype(np.float32)
    y = pitch_shift(x, semitones)
    assert y.shape == x.shape and y.dtype == np.float32
    want = 300.0 * 2 ** (semitones / 12)  # 252.3, 356.8, 449.5 Hz
    assert abs(_peak_hz(y) - want) < 1.0  # FFT bin 0.67 Hz
    rms = lambda a: float(np.sqrt(np.mean(a[SR // 4: -SR // 4] ** 2)))  # noqa: E731
    assert 0.8 < rms(y) / rms(x) < 1.2


def test_pitch_shift_keeps_events_at_their_times():
    """A 100 ms burst at 1.00-1.10 s stays there within 20 ms (half a 25 fps frame; the 64 ms analysis window smears edges) after +-4 semitones."""
    x = np.zeros(2 * SR, np.float32)
    x[SR:SR + SR // 10] = 0.5 * np.sin(2 * np.pi * 220.0 * np.arange(SR // 10) / SR)
    for s in (-4.0, 4.0):
        env = np.abs(pitch_shift(x, s)) > 0.1
        on, off = np.argmax(env) / SR, (len(env) - np.argmax(env[::-1])) / SR
        assert abs(on - 1.0) < 0.02 and abs(off - 1.1) < 0.02, (s, on, off)


def test_time_stretch_changes_duration_not_pitch():
    t = np.arange(SR) / SR
    x = (0.5 * np.sin(2 * np.pi * 400.0 * t)).astype(np.float32)
    y = time_stretch(x, 0.5)
    assert len(y) == 2 * SR
    assert abs(_peak_hz(y) - 400.0) < 1.0
    assert pitch_shift(np.zeros(0, np.float32), 3).shape == (0,)


def test_av_offset_follows_a_known_audio_delay_on_a_real_clip(may_dataset):
    """The metric on the real clip: delaying its audio by 3 frames moves the offset by -3 (the video now leads),
    advancing it by 3 moves it by +3, and the clip's own correlation is clearly positive."""
    from avatar.core.audio import load_audio
    from avatar.core.avsync import av_offset
    from avatar.core.landmarks import mouth_opening

    info = may_dataset[1]
    mouth = mouth_opening(np.asarray(info.landmarks()))
    wav = load_audio(info.path("audio.wav"))
    d = int(round(3 * SR / info.fps))
    lag0, corr0 = av_offset(mouth, wav, SR, info.fps)
    # a real talking clip: the mouth leads its sound by up to ~150 ms (it opens before the vowel is heard; may_5s: -3)
    assert corr0 > 0.2 and -4 <= lag0 <= 1
    # shifted by cutting, not by padding with digital silence (whose log energy would dominate the envelope):
    # audio 3 frames late = frame j shown with the sound of frame j - 3 = the video from frame 3 on, same audio
    assert av_offset(mouth[3:], wav, SR, info.fps)[0] == lag0 - 3
    # audio 3 frames early = frame j with the sound of frame j + 3 (the last 3 frames have no audio: dropped)
    assert av_offset(mouth[:-3], wav[d:], SR, info.fps)[0] == lag0 + 3


def test_voice_augmented_windows(may_dataset):
    """Training windows come from a pitch-shifted copy at the configured rate, a whole window from one copy;
    evaluation windows (no rng) are always the clip's own; the copies keep the clip's silences."""
    from avatar.core.voice import VOICE_SHIFTS
    from avatar.train.config import DataConfig
    from avatar.train.data import FitData

    info = may_dataset[1]
    data = FitData(info, DataConfig(resolution=64, voice_aug=0.5), window=5)
    assert data.voice_feats is not None and data.voice_feats.shape == (len(VOICE_SHIFTS),) + tuple(data.feats.shape)
    idx = np.arange(2, info.num_frames - 2)
    own = data.windows(idx)
    assert (data.windows(idx) == own).all()
    rng = np.random.default_rng(0)
    shares = []
    for _ in range(20):
        w = data.windows(idx, rng)
        changed = (w != own).flatten(1).any(1).numpy()
        shares.append(changed.mean())
        for b in np.flatnonzero(changed)[:5]:  # the whole window from one of the copies
            rows = np.arange(idx[b] - 2, idx[b] + 3)
            assert any(bool((w[b] == bank[rows]).all()) for bank in data.voice_feats)
    assert 0.4 < float(np.mean(shares)) < 0.6
    # loudness channel: silence is silence in every voice (same frames below -40 dB within one frame's slack)
    import json

    lay = json.loads((info.root / "features" / f"{data.feature_name}.json").read_text())["layout"]["energy"][0]
    quiet = data.feats[:, lay].numpy() <= -2.9
    for bank in data.voice_feats:
        q = bank[:, lay].numpy() <= -2.9
        assert (q != quiet).mean() < 0.05
    off = FitData(info, DataConfig(resolution=64), window=5)
    assert off.voice_feats is None and (off.windows(idx, rng) == own).all()


def test_audio_encoder_guards_classes_the_clip_never_used():
    """A feature column that is constant over the training rows (a viseme class the clip never produced) reaches
    the network at most Z_CLIP training std from its mean when new audio produces it, not 1/1e-4: with one
    training-constant column the code moves no more than with an ordinary column at the same clipped value."""
    import torch

    from avatar.model.audio import AudioEncoder

    torch.manual_seed(0)
    enc = AudioEncoder(in_dim=6, dim=8, audio_window=3, att_window=3)
    train = torch.randn(500, 6)
    train[:, 5] = 0.0  # never used in training
    enc.set_normalisation(train)
    base = torch.zeros(4, enc.window, 6)
    rare = base.clone()
    rare[:, :, 5] = 1.0  # the class appears in new audio
    big = base.clone()
    big[:, :, 4] = enc.Z_CLIP * float(enc.feat_std[4])  # an ordinary column at exactly Z_CLIP std
    huge = base.clone()
    huge[:, :, 4] = 1e4  # an absurd value of an ordinary column
    with torch.no_grad():
        c0, cr, cb, ch = enc(base), enc(rare), enc(big), enc(huge)
    assert torch.isfinite(cr).all()
    # 1 / STD_FLOOR = 10 std > Z_CLIP: the rare class arrives clipped at Z_CLIP, like any column at Z_CLIP
    step_rare = float((cr - c0).norm())
    assert step_rare < 5 * max(float((cb - c0).norm()), 1e-3)
    assert torch.allclose(enc(big), ch, atol=1e-5)  # beyond Z_CLIP std, values are clipped


def test_augmentation_shares_are_checked(may_dataset):
    from avatar.errors import AvatarError
    from avatar.train.config import DataConfig
    from avatar.train.data import FitData

    for bad in (DataConfig(voice_aug=1.5), DataConfig(viseme_dropout=-0.1)):
        with pytest.raises(AvatarError, match="0 to 1"):
            FitData(may_dataset[1], bad, window=5)


def test_viseme_dropout_replaces_only_the_phone_classes(may_dataset):
    """viseme_dropout: in a dropped window every row's viseme columns hold their training mean (normalised: 0, no
    information) and nothing else changes; evaluation windows are untouched."""
    import json

    import torch

    from avatar.train.config import DataConfig
    from avatar.train.data import FitData

    info = may_dataset[1]
    data = FitData(info, DataConfig(resolution=64, viseme_dropout=1.0), window=5)
    a, b = json.loads((info.root / "features" / f"{data.feature_name}.json").read_text())["layout"]["viseme"]
    idx = np.arange(3, info.num_frames - 3, 7)
    own = data.windows(idx)
    got = data.windows(idx, np.random.default_rng(1))
    mean = data.feats[torch.as_tensor(info.indices("train"))].mean(0)
    assert torch.allclose(got[:, :, a:b], mean[a:b].expand(len(idx), 5, -1))
    assert torch.equal(got[:, :, :a], own[:, :, :a]) and torch.equal(got[:, :, b:], own[:, :, b:])
    assert not torch.allclose(own[:, :, a:b], got[:, :, a:b])  # the clip's own windows do carry phone classes
