"""The default extractor, "phonetic+spectral": pocketsphinx phone-loop decoding mapped to visemes,
plus the log-mel and loudness rows of `avatar.features.spectral`.

Phones come from pocketsphinx's phone-loop (allphone) decoder with the en-us model shipped inside the
pocketsphinx wheel (nothing is downloaded) and are mapped to the 22 Microsoft SAPI visemes
(design/preprocess.md §7.3): fewer classes than phones, so the decoder's frequent confusions inside a
viseme group (it was trained on English) cost nothing, and any language still yields mouth-shape
classes. Loudness and timbre are normalised away per utterance so the feature depends on what is said
rather than who says it.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from avatar.core.audio import SAMPLE_RATE
from avatar.features.frames import _chunks, _pool_to_frames
from avatar.features.spectral import (ABS_SILENCE_DBFS, ENERGY_CLIP, FMAX, FMIN, HOP, N_FFT, N_MELS, N_SUB,
                                      POWER_FLOOR, PREEMPH, SILENCE_DB, WIN, _power_mel_chunked)

PSPHINX_WLEN = 0.025625  # pocketsphinx analysis window (s); its frame f is centred at f/100 + WLEN/2
PHONE_SMOOTH_S = 0.02  # Gaussian sigma turning the one-hot viseme track into soft labels

# Microsoft SAPI viseme IDs ("based on the Disney visemes"), see preprocess.md §7.3. Noise units -> 0.
VISEMES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sil", ("SIL", "+NSN+", "+SPN+")),
    ("ae_ah", ("AE", "AH")),
    ("aa", ("AA",)),
    ("ao", ("AO",)),
    ("ey_eh_uh", ("EY", "EH", "UH")),
    ("er", ("ER",)),
    ("y_iy_ih", ("Y", "IY", "IH")),
    ("w_uw", ("W", "UW")),
    ("ow", ("OW",)),
    ("aw", ("AW",)),
    ("oy", ("OY",)),
    ("ay", ("AY",)),
    ("hh", ("HH",)),
    ("r", ("R",)),
    ("l", ("L",)),
    ("s_z", ("S", "Z")),
    ("sh_ch_jh_zh", ("SH", "CH", "JH", "ZH")),
    ("th_dh", ("TH", "DH")),
    ("f_v", ("F", "V")),
    ("d_t_n", ("D", "T", "N")),
    ("k_g_ng", ("K", "G", "NG")),
    ("p_b_m", ("P", "B", "M")),
)
VISEME_NAMES: tuple[str, ...] = tuple(name for name, _ in VISEMES)
PHONE_TO_VISEME: dict[str, int] = {p: i for i, (_, phones) in enumerate(VISEMES) for p in phones}
SILENCE_CLASS = 0


_DECODER_CACHE = threading.local()  # one reusable decoder per thread (pocketsphinx decoders are not thread safe)


def _new_phone_decoder():
    """A new pocketsphinx phone-loop decoder with the en-us model and phone LM shipped in the wheel (~0.1 s)."""
    from pocketsphinx import Decoder, get_model_path

    return Decoder(allphone=get_model_path("en-us/en-us-phone.lm.bin"), lm=None, loglevel="FATAL")


def _phone_decoder():
    """This thread's phone-loop decoder, built once and reused for every utterance.

    A reused decoder carries front-end state over from the previous utterance (the `remove_noise`
    noise tracker and the CMN estimate), so decoding the same audio twice gave different phones
    (measured: 90 % agreement) and this used to build a fresh decoder per utterance — 0.1-0.4 s each,
    which made `avatar speak --stream` (one utterance per 0.2 s segment) slower than real time.
    `_decode_phones` now calls `Decoder.reinit_feat()` (~30 us) before each utterance: it rebuilds the
    front end and feature computation from the config, i.e. exactly a fresh decoder's state, so the
    phones equal a fresh decoder's bit for bit (tests/test_audio_features.py checks it after decoding
    other audio). The search itself is restarted by `start_utt`.
    """
    dec = getattr(_DECODER_CACHE, "decoder", None)
    if dec is None:
        dec = _new_phone_decoder()
        _DECODER_CACHE.decoder = dec
    return dec


def _decode_phones(wav: np.ndarray, decoder=None) -> np.ndarray:
    """Viseme class per pocketsphinx 10 ms frame ([F] int64) for one utterance; never raises.

    `decoder`: a specific pocketsphinx decoder (default: this thread's reused one, reset first; or this
    thread's helper process inside `avatar.features.phone_process.phones_in_helper_process`)."""
    pcm = (np.clip(wav, -1.0, 1.0) * 32767.0).astype(np.int16)
    helper = getattr(_DECODER_CACHE, "helper", None)
    if decoder is None and helper is not None and len(pcm) >= int(PSPHINX_WLEN * SAMPLE_RATE):
        try:
            return helper.decode(pcm)
        except (OSError, EOFError, ValueError):  # the process is gone: decode here from now on
            _DECODER_CACHE.helper = None
    return _decode_pcm16(pcm, decoder)


def _decode_pcm16(pcm: np.ndarray, decoder=None) -> np.ndarray:
    """`_decode_phones` of int16 samples, in this process."""
    n_frames = max(0, (len(pcm) - int(PSPHINX_WLEN * SAMPLE_RATE)) // HOP + 1)
    out = np.zeros(n_frames, np.int64)
    if n_frames == 0:
        return out
    cached = decoder is None
    dec = _phone_decoder() if cached else decoder
    try:
        if cached:
            dec.reinit_feat()  # fresh front end + CMN: the result does not depend on earlier utterances
        dec.start_utt()
        dec.process_raw(np.ascontiguousarray(pcm, np.int16).tobytes(), no_search=False, full_utt=True)
        dec.end_utt()
        segs = [(s.word, s.start_frame, s.end_frame) for s in (dec.seg() or ())]
    except Exception:  # pocketsphinx errors on degenerate input: treat as silence
        if cached:
            _DECODER_CACHE.decoder = None  # its state is unknown now: build a new one next time
        return out
    for word, start, end in segs:
        cls = PHONE_TO_VISEME.get(word.upper(), SILENCE_CLASS)
        a, b = max(0, start), min(n_frames - 1, end)
        if b >= a:
            out[a:b + 1] = cls
    return out


def _phones_chunked(wav: np.ndarray, chunk_s: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Viseme class per 10 ms frame over the whole file and its frame times ([F] int64, [F] s)."""
    n = len(wav)
    classes = []
    times = []
    for ctx_a, a, b, ctx_b in _chunks(n, chunk_s):
        cls = _decode_phones(wav[ctx_a:ctx_b])
        t = ctx_a / SAMPLE_RATE + np.arange(len(cls)) * (HOP / SAMPLE_RATE) + PSPHINX_WLEN / 2  # [F]
        keep = (t >= a / SAMPLE_RATE) & (t < b / SAMPLE_RATE) if (a, b) != (0, n) else np.ones(len(t), bool)
        classes.append(cls[keep])
        times.append(t[keep])
    if not classes:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(classes), np.concatenate(times)


def _gaussian_smooth_rows(x: np.ndarray, sigma_frames: float) -> np.ndarray:
    """Smooth [F, C] along F with a normalised Gaussian (edges renormalised)."""
    from scipy.ndimage import gaussian_filter1d

    if len(x) == 0 or sigma_frames <= 0:
        return x
    return gaussian_filter1d(x, sigma=sigma_frames, axis=0, mode="nearest", truncate=3.0)


def _phonetic_spectral(wav: np.ndarray, num_frames: int, fps: float, chunk_s: float | None
                       ) -> tuple[np.ndarray, dict[str, Any]]:
    """The default extractor; see the module docstring. Returns ([N, D] float32, meta)."""
    mel, frame_pow = _power_mel_chunked(wav, chunk_s)  # [F, M], [F]
    F = len(mel)
    t_mel = np.arange(F) * (HOP / SAMPLE_RATE)  # frame j centred at j*HOP
    e_db = 10.0 * np.log10(frame_pow + POWER_FLOOR)  # [F]
    loud_ref = float(np.percentile(e_db, 95)) if F else -100.0
    ref_db = max(loud_ref, ABS_SILENCE_DBFS + 10.0)
    active = (e_db > ref_db - SILENCE_DB) & (e_db > ABS_SILENCE_DBFS)  # [F] bool

    # log-mel, normalised per utterance over active frames (CMN per band + one global scale), so that
    # loudness and the speaker's / channel's spectral tilt matter less. Silence stays strongly negative.
    logmel = np.log(mel + POWER_FLOOR)  # [F, M]
    if active.sum() >= 10:
        mu = logmel[active].mean(axis=0)  # [M]
        sd = float(max(logmel[active].std(), 1.0))
    else:  # (almost) silent audio: a fixed reference of typical speech level, so silence stays low
        mu = np.full(N_MELS, math.log(1e-4), np.float32)
        sd = 2.5
    logmel = np.clip((logmel - mu) / sd, -6.0, 6.0).astype(np.float32)
    energy = np.clip((e_db - ref_db) / 20.0, *ENERGY_CLIP).astype(np.float32)[:, None]  # [F, 1]
    silence_mel = np.full(N_MELS, ((math.log(POWER_FLOOR) - mu) / sd).clip(-6, 6).min(), np.float32)

    # visemes: pocketsphinx phones -> viseme ids, forced to silence where the audio is silent, then a
    # Gaussian-smoothed one-hot (soft labels) pooled to the frame windows.
    cls, t_ph = _phones_chunked(wav, chunk_s)  # [P], [P]
    if len(cls):
        j = np.clip(np.round(t_ph * SAMPLE_RATE / HOP).astype(np.int64), 0, max(F - 1, 0))
        if F:
            cls = np.where(active[j], cls, SILENCE_CLASS)
    onehot = np.zeros((len(cls), len(VISEMES)), np.float32)
    onehot[np.arange(len(cls)), cls] = 1.0
    soft = _gaussian_smooth_rows(onehot, PHONE_SMOOTH_S * SAMPLE_RATE / HOP)
    sil_onehot = np.eye(len(VISEMES), dtype=np.float32)[SILENCE_CLASS]

    mel_rows = _pool_to_frames(logmel, t_mel, num_frames, fps, silence_mel, n_sub=N_SUB)  # [N, S*M]
    en_rows = _pool_to_frames(energy, t_mel, num_frames, fps, np.array([ENERGY_CLIP[0]], np.float32))  # [N, 1]
    vis_rows = _pool_to_frames(soft, t_ph.astype(np.float64), num_frames, fps, sil_onehot)  # [N, V]
    vis_rows /= np.maximum(vis_rows.sum(axis=1, keepdims=True), 1e-6)
    feats = np.concatenate([mel_rows, en_rows, vis_rows], axis=1).astype(np.float32)

    a = N_SUB * N_MELS
    meta = {
        "extractor": "phonetic+spectral",
        "dim": int(feats.shape[1]),
        "fps": float(fps),
        "window": {"centre": "k/fps", "span_s": 1.0 / fps, "sub_steps": N_SUB},
        "sample_rate": SAMPLE_RATE,
        "hop": HOP,
        "layout": {"logmel": [0, a], "energy": [a, a + 1], "viseme": [a + 1, a + 1 + len(VISEMES)]},
        "logmel": {"n_mels": N_MELS, "n_fft": N_FFT, "win": WIN, "fmin": FMIN, "fmax": FMAX,
                   "preemphasis": PREEMPH, "scale": "htk", "norm": "per-utterance band mean over active frames, global std"},
        "energy": {"unit": "(dB - p95 dB) / 20", "clip": list(ENERGY_CLIP)},
        "phones": {"decoder": "pocketsphinx allphone en-us-phone.lm.bin", "classes": list(VISEME_NAMES),
                   "mapping": {name: list(ph) for name, ph in VISEMES}, "smooth_sigma_s": PHONE_SMOOTH_S,
                   "silence_db": SILENCE_DB},
        "chunk_s": chunk_s,
    }
    return feats, meta

