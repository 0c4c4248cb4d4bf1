"""Lip sync that holds for other voices and languages (issue 17), on an avatar fitted to a real clip.

A short cpu-preset fit of may_5s.mp4 (English) with voice augmentation, then driven by speech it never heard:
the shared clips in French, Japanese, Mandarin, German and English, and espeak-ng sentences in six languages.
Properties, not figures: the mouth motion of a copy of the same speech spoken higher or lower (pitch and formants
shifted by 3 semitones, a different-sized voice) follows the original's; silence closes the mouth in every language.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require, shared_file

from avatar.core.audio import SAMPLE_RATE as SR

SPEECH = ("dreamtalk_french1", "sadtalker_japanese", "sadtalker_chinese_news", "sadtalker_deyu",
          "real3dportrait_obama_5s")


@pytest.fixture(scope="module")
def voice_avatar(may_run):
    from avatar.engine import Avatar

    return Avatar.load(may_run, device="cpu")


def _speech(name: str) -> np.ndarray:
    from avatar.core.audio import load_audio

    return load_audio(shared_file(f"audio/{name}.wav"))


def _train_gaps(avatar) -> np.ndarray:
    from avatar.core.dataset_format import load_dataset
    from avatar.evaluation.lipsync import gaussian_mouth_opening

    info = load_dataset(avatar.dataset["root"])
    tr = np.asarray(info.feature(avatar.feature_meta["name"]), np.float32)
    return gaussian_mouth_opening(avatar, avatar.feature_windows(tr), np.zeros(len(tr)))


def _gap(avatar, speaker, wav: np.ndarray) -> np.ndarray:
    from avatar.evaluation.lipsync import gaussian_mouth_opening

    w = speaker.windows(wav)
    return gaussian_mouth_opening(avatar, w, np.zeros(len(w)))


@pytest.mark.slow
def test_a_higher_or_lower_voice_moves_the_mouth_the_same_way(voice_avatar):
    """Mouth opening from speech shifted by +-3 semitones correlates with the original's: >= 0.8 on average over
    the languages and both directions, >= 0.6 for every one (the may_run fixture, 600 steps: mean 0.866 / 0.883, lowest
    0.708 / 0.806 for two seeds; at 300 steps: mean 0.81-0.85, lowest 0.60-0.71 over five fits, and without voice
    augmentation and viseme dropout: mean 0.69, lowest 0.57; before the encoder's std floor (avatar/model/audio.py)
    ~0.1 with mouths thrown open by unseen visemes)."""
    from avatar.core.voice import pitch_shift
    from avatar.engine import SpeakConfig, Speaker

    sp = Speaker(voice_avatar, SpeakConfig(blink="off"))
    widest = float(_train_gaps(voice_avatar).max())
    corr = {}
    for name in SPEECH:
        wav = _speech(name)
        ref = _gap(voice_avatar, sp, wav)
        assert ref.std() > 1e-4, f"{name}: the mouth does not move at all"
        # no mouth thrown open by a sound the clip never made (was 14x the widest training gap, see docstring)
        assert ref.max() <= 1.5 * widest, f"{name}: lip gap {ref.max():.3f} vs {widest:.3f} at most in training"
        for s in (-3.0, 3.0):
            got = _gap(voice_avatar, sp, pitch_shift(wav, s))
            corr[(name, s)] = float(np.corrcoef(ref, got)[0, 1])
    table = {f"{n} {s:+g}": round(v, 2) for (n, s), v in corr.items()}
    assert np.mean(list(corr.values())) >= 0.8, f"mouth motion of shifted voices departs from the original's: {table}"
    assert min(corr.values()) >= 0.6, f"mouth motion of a shifted voice departs from the original's: {table}"


@pytest.mark.slow
def test_silence_closes_the_mouth_in_every_language(voice_avatar, tmp_path):
    """1.2 s of silence cut into speech of each language (recorded and synthetic): in its middle the lip gap is no
    wider than on the training clip's most-closed quarter of frames (within a tenth of the clip's closed-to-open
    span: fits are not bit-reproducible and the silent mouth lands within +-0.0002 of that quartile, the span is
    ~0.02), and it is wider while they talk."""
    from avatar.core.audio import load_audio
    from avatar.engine import SpeakConfig, Speaker
    from avatar.testing import espeak_available, tts_samples

    if not espeak_available():
        require("tts", "espeak-ng is not installed (scripts/install.sh installs it)")
    wavs = {name: _speech(name) for name in SPEECH}
    wavs.update({p.stem: load_audio(p) for p in tts_samples(tmp_path)})
    closed, open_ = np.quantile(_train_gaps(voice_avatar), [0.25, 0.9])
    sp = Speaker(voice_avatar, SpeakConfig(blink="off"))
    for name, wav in wavs.items():
        cut = len(wav) // 2
        x = np.concatenate([wav[:cut], np.zeros(int(1.2 * SR), np.float32), wav[cut:]])
        gap = _gap(voice_avatar, sp, x)
        k = np.arange(len(gap)) / 25.0
        quiet = (k > cut / SR + 0.4) & (k < cut / SR + 0.8)
        limit = closed + 0.1 * (open_ - closed)
        assert gap[quiet].max() <= limit, f"{name}: mouth open in silence ({gap[quiet].max():.4f} > {limit:.4f})"
        assert np.percentile(gap[~quiet], 90) > closed, f"{name}: the mouth never opens while talking"
