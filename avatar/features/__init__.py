"""Audio -> per-frame feature rows (phonetic + spectral, local wav2vec2/HuBERT folders, imported .npy).

Shared by preprocessing (features of the training clip) and the inference engine (features of new
audio), so both see exactly the same extractor. Imports only `avatar.core`.
"""
