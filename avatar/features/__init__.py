"""Audio -> per-frame feature rows (phonetic + spectral, local wav2vec2/HuBERT folders, imported .npy).

Shared by preprocessing (features of the training clip) and the inference engine (features of new
audio), so both see exactly the same extractor. Imports only `avatar.core`.

    from avatar.features import FeatureExtractor, extract_features, frames_for_duration

Modules: extract (the front), frames (time convention and pooling), spectral (log-mel, loudness),
phonetic (pocketsphinx phones -> visemes, the default extractor), ssl (local wav2vec2/HuBERT),
imported (.npy arrays).
"""

from avatar.features.extract import (FEATURE_KINDS, FeatureExtractor, FeatureKind, extract_features,
                                     extract_features_chunked)
from avatar.features.frames import CONTEXT_S, DEFAULT_CHUNK_S, frames_for_duration
from avatar.features.imported import import_npy
from avatar.features.phonetic import SILENCE_CLASS, VISEME_NAMES, VISEMES
from avatar.features.spectral import N_FFT, N_MELS, mel_filterbank

__all__ = ["CONTEXT_S", "DEFAULT_CHUNK_S", "FEATURE_KINDS", "FeatureExtractor", "FeatureKind", "N_FFT", "N_MELS",
           "SILENCE_CLASS", "VISEMES", "VISEME_NAMES", "extract_features", "extract_features_chunked",
           "frames_for_duration", "import_npy", "mel_filterbank"]
