"""The extractor front: `FeatureExtractor`, `extract_features`, `extract_features_chunked`.

Audio features aligned one row per video frame, each array described by a metadata dict.

Time convention (shared by every extractor here): video frame k is the image at time t_k = k / fps
(avatar/core/dataset_format.py), and feature row k summarises the audio in the window CENTRED on t_k,
[t_k - 0.5/fps, t_k + 0.5/fps). This is the convention of ER-NeRF's DeepSpeech windows, whose window i
is centred on i/25 s (../shared/design/preprocess.md §7.1). Audio before 0 or after the end counts as
silence. The model applies its own temporal window over rows (model.md §3), so rows carry only the
frame's own 1/fps of audio.

Extractors (`FeatureKind`):
- "phonetic+spectral" (default, offline, no download): per-utterance normalised log-mel energies at two
  sub-steps per frame, a relative loudness channel, and soft viseme classes from pocketsphinx's
  phone-loop (allphone) decoder with the en-us model shipped inside the pocketsphinx wheel. Phones are
  mapped to the 22 Microsoft SAPI visemes (preprocess.md §7.3): fewer classes than phones, so the
  decoder's frequent confusions inside a viseme group (it was trained on English) cost nothing, and any
  language still yields mouth-shape classes. Loudness and timbre are normalised away per utterance so
  the feature depends on what is said rather than who says it.
- "wav2vec2" / "hubert": hidden states of a self-supervised speech model from a LOCAL directory
  (transformers), 50 Hz, pooled to the frame windows. Nothing is downloaded.
- `import_npy`: precomputed ER-NeRF arrays (DeepSpeech [T, 16, 29], HuBERT [T, 2, 1024], or [T, D]).

Files: frames.py (time convention, pooling to frame windows, chunks), spectral.py (log-mel, loudness),
phonetic.py (pocketsphinx phones -> visemes; the default extractor), ssl.py (local wav2vec2/HuBERT),
imported.py (.npy import), this file (the front every caller uses through `avatar.features`).

Long audio is processed in chunks with overlapping context (`extract_features_chunked`), so memory
stays bounded for hour-long files and results do not depend on where the file was cut.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from avatar.core.audio import SAMPLE_RATE
from avatar.errors import AvatarError
from avatar.features.frames import DEFAULT_CHUNK_S, _as_mono_float, _check_frames, frames_for_duration
from avatar.features.phonetic import _phonetic_spectral
from avatar.features.ssl import _load_ssl_model, _ssl_features, _SSLModel

FeatureKind = Literal["phonetic+spectral", "wav2vec2", "hubert"]
FEATURE_KINDS: tuple[str, ...] = ("phonetic+spectral", "wav2vec2", "hubert")
"""Built-in extractors; all take 16 kHz mono float32 audio in [-1, 1]."""


class FeatureExtractor:
    """Reusable extractor: holds the loaded model, so `speak` can featurise many files cheaply.

    Build it from the kind at preprocess time, or with `from_meta` from the feature JSON recorded at
    training time so new audio gets exactly the same kind of features.
    """

    def __init__(self, kind: FeatureKind = "phonetic+spectral", model_dir: str | os.PathLike | None = None,
                 chunk_s: float | None = DEFAULT_CHUNK_S):
        if kind not in FEATURE_KINDS:
            raise AvatarError(f"unknown audio feature kind '{kind}' (choose from {', '.join(FEATURE_KINDS)})")
        self.kind = kind
        self.model_dir = None if model_dir is None else Path(model_dir)
        self.chunk_s = chunk_s
        self._ssl: _SSLModel | None = None
        self.expected_dim: int | None = None
        """Set by `from_meta`: the dim the features must have (the trained model's input)."""
        if kind != "phonetic+spectral":
            self._ssl = _load_ssl_model(kind, model_dir)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], model_dir: str | os.PathLike | None = None) -> "FeatureExtractor":
        """Rebuild the extractor a feature file was made with (its NAME.json). `model_dir` overrides
        the recorded model folder (e.g. on another machine)."""
        kind = meta.get("extractor", "")
        if kind.startswith("import:"):
            raise AvatarError(f"features were imported ({kind}); compute the same features for the new audio "
                              f"outside avatar, or re-run preprocess with a built-in extractor")
        if kind not in FEATURE_KINDS:
            raise AvatarError(f"unknown audio feature extractor '{kind}' in the dataset's feature JSON")
        if kind != "phonetic+spectral" and model_dir is None:
            model_dir = meta.get("model_dir")
        chunk_s = meta.get("chunk_s", DEFAULT_CHUNK_S)
        ex = cls(kind, model_dir, chunk_s=chunk_s)
        ex.expected_dim = int(meta["dim"]) if "dim" in meta else None
        return ex

    def __call__(self, wav: np.ndarray, num_frames: int | None = None, fps: float = 25.0
                 ) -> tuple[np.ndarray, dict[str, Any]]:
        """Features [num_frames, D] float32 (default: frames covering the audio) and their meta."""
        wav = _as_mono_float(wav)
        if num_frames is None:
            num_frames = frames_for_duration(len(wav), fps)
        num_frames, fps = _check_frames(num_frames, fps)
        if self.kind == "phonetic+spectral":
            feats, meta = _phonetic_spectral(wav, num_frames, fps, self.chunk_s)
        else:
            assert self._ssl is not None
            feats, meta = _ssl_features(self._ssl, self.kind, wav, num_frames, fps, self.chunk_s)
        if self.expected_dim is not None and feats.shape[1] != self.expected_dim:
            raise AvatarError(f"audio features have dim {feats.shape[1]} but the model was trained with "
                              f"{self.expected_dim}; use the same extractor/model folder as at training time")
        meta["num_frames"] = num_frames
        meta["duration_s"] = len(wav) / SAMPLE_RATE
        return feats, meta


def extract_features(wav: np.ndarray, num_frames: int, fps: float, kind: FeatureKind = "phonetic+spectral",
                     model_dir: Path | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Audio features for `num_frames` video frames at `fps` from 16 kHz mono `wav` ([T] float32).

    Returns ([num_frames, D] float32, meta) with meta keys extractor, dim, fps, window and the
    extractor's parameters. Deterministic; audio longer than DEFAULT_CHUNK_S is processed in chunks.
    """
    return FeatureExtractor(kind, model_dir, chunk_s=DEFAULT_CHUNK_S)(wav, num_frames, fps)


def extract_features_chunked(wav: np.ndarray, fps: float, kind: FeatureKind = "phonetic+spectral",
                             model_dir: Path | None = None, chunk_s: float = DEFAULT_CHUNK_S,
                             num_frames: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Like `extract_features` for long (hour-long) audio: chunks of `chunk_s` with CONTEXT_S of
    overlapping context each side, so memory is bounded and the result matches whole-file extraction
    closely (log-mel exactly; phone decoding up to decoder differences near chunk edges).
    `num_frames` defaults to the frames covering the audio (`frames_for_duration`)."""
    return FeatureExtractor(kind, model_dir, chunk_s=chunk_s)(wav, num_frames, fps)

