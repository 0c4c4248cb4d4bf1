"""Audio features aligned one row per video frame, each array described by a metadata dict.

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

Long audio is processed in chunks with overlapping context (`extract_features_chunked`), so memory
stays bounded for hour-long files and results do not depend on where the file was cut.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np

from avatar.core.audio import SAMPLE_RATE
from avatar.errors import AvatarError

FeatureKind = Literal["phonetic+spectral", "wav2vec2", "hubert"]
FEATURE_KINDS: tuple[str, ...] = ("phonetic+spectral", "wav2vec2", "hubert")

"""All extractors take 16 kHz mono float32 audio in [-1, 1]."""
DEFAULT_CHUNK_S = 30.0
"""Audio longer than this is processed in chunks (bounded memory; pocketsphinx CMN is per chunk)."""
CONTEXT_S = 3.0
"""Audio context decoded on each side of a chunk and then discarded (hides chunk edges)."""

# ---- phonetic+spectral constants -------------------------------------------------------------
HOP = 160  # 10 ms, the pocketsphinx frame rate (frate = 100)
WIN = 400  # 25 ms analysis window
N_FFT = 512
N_MELS = 40
FMIN, FMAX = 60.0, 7600.0
PREEMPH = 0.97
N_SUB = 2  # log-mel sub-steps per video frame: 20 ms resolution at 25 fps, like DeepSpeech/HuBERT's 50 Hz
POWER_FLOOR = 1e-10  # absolute floor of the power spectrum ([-1, 1] audio): -100 dB
SILENCE_DB = 40.0  # a 10 ms frame more than this below the utterance's loud level is silence
ABS_SILENCE_DBFS = -60.0  # ... and so is a frame below this absolute level
ENERGY_CLIP = (-3.0, 0.5)  # loudness channel: (dB - reference) / 20, clipped
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

# Supported self-supervised model families (config.json "model_type").
_SSL_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer")


# ---------------------------------------------------------------------------------------------
# small helpers


def frames_for_duration(num_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of video frames for an audio of `num_samples`: frames at k/fps for k/fps < duration."""
    if num_samples <= 0:
        return 0
    return int(math.ceil(num_samples / sample_rate * fps - 1e-6))


def _as_mono_float(wav: np.ndarray) -> np.ndarray:
    """[T] float32 in [-1, 1]: integer PCM is rescaled, [T, C] is down-mixed, NaN/inf become 0."""
    wav = np.asarray(wav)
    if wav.ndim == 2 and min(wav.shape) <= 8:
        wav = wav.mean(axis=1 if wav.shape[1] <= 8 else 0)
    if wav.ndim != 1:
        raise AvatarError(f"audio must be mono [T] samples, got shape {tuple(wav.shape)}")
    if np.issubdtype(wav.dtype, np.integer):
        wav = wav.astype(np.float32) / float(np.iinfo(wav.dtype).max + 1)
    wav = np.nan_to_num(wav.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    return wav


def _check_frames(num_frames: int, fps: float) -> tuple[int, float]:
    if int(num_frames) != num_frames or num_frames < 0:
        raise AvatarError(f"num_frames must be a non-negative integer, got {num_frames}")
    if not (fps > 0 and math.isfinite(fps)):
        raise AvatarError(f"fps must be positive, got {fps}")
    return int(num_frames), float(fps)


def load_wav_16k(path: str | os.PathLike) -> np.ndarray:
    """Read an audio file (any rate, mono/stereo, 16/24-bit) as [T] float32 mono at 16 kHz."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AvatarError(f"{path}: no such audio file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    except Exception as e:  # soundfile raises its own error types
        raise AvatarError(f"{path}: not a readable audio file ({e}); convert it to WAV/FLAC") from None
    wav = data.mean(axis=1)  # [T]
    if sr != SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(int(sr), SAMPLE_RATE)
        wav = resample_poly(wav, SAMPLE_RATE // g, int(sr) // g).astype(np.float32)
    return wav


def _pool_to_frames(values: np.ndarray, times: np.ndarray, num_frames: int, fps: float, fill: np.ndarray,
                    n_sub: int = 1) -> np.ndarray:
    """Average rows of `values` ([F, D], row f at time `times[f]`, increasing) over the frame windows.

    Output row k, sub-step s (of `n_sub`) averages the rows whose times lie in
    [t_k - 0.5/fps + s/(n_sub fps), t_k - 0.5/fps + (s+1)/(n_sub fps)), t_k = k/fps. A window that holds
    no row takes the nearest row when that row is within the audio, else `fill` ([D], e.g. silence).
    Returns [num_frames, n_sub * D].
    """
    F, D = values.shape
    out = np.empty((num_frames, n_sub, D), np.float32)
    if num_frames == 0:
        return out.reshape(0, n_sub * D)
    if F == 0:
        out[:] = fill
        return out.reshape(num_frames, n_sub * D)
    edges = (np.arange(num_frames * n_sub + 1, dtype=np.float64) / n_sub - 0.5) / fps  # [K*S+1]
    lo = np.searchsorted(times, edges[:-1], side="left")  # [K*S]
    hi = np.searchsorted(times, edges[1:], side="left")
    csum = np.concatenate([np.zeros((1, D)), np.cumsum(values, axis=0, dtype=np.float64)])  # [F+1, D]
    cnt = (hi - lo)[:, None]
    mean = (csum[hi] - csum[lo]) / np.maximum(cnt, 1)  # [K*S, D]
    empty = cnt[:, 0] == 0
    if empty.any():
        centre = 0.5 * (edges[:-1] + edges[1:])
        nearest = np.clip(np.searchsorted(times, centre), 0, F - 1)
        prev = np.clip(nearest - 1, 0, F - 1)
        nearest = np.where(np.abs(times[prev] - centre) < np.abs(times[nearest] - centre), prev, nearest)
        step = (times[-1] - times[0]) / max(F - 1, 1) if F > 1 else 1.0 / fps
        inside = (centre >= times[0] - step) & (centre <= times[-1] + step)
        mean[empty] = np.where(inside[empty, None], values[nearest[empty]], fill[None, :])
    out[:] = mean.reshape(num_frames, n_sub, D)
    return out.reshape(num_frames, n_sub * D)


def _chunks(num_samples: int, chunk_s: float | None) -> list[tuple[int, int, int, int]]:
    """Split [0, T) into cores of `chunk_s` with CONTEXT_S of context: (ctx_a, core_a, core_b, ctx_b)."""
    if chunk_s is None or chunk_s <= 0 or num_samples <= chunk_s * SAMPLE_RATE:
        return [(0, 0, num_samples, num_samples)]
    c = int(round(chunk_s * SAMPLE_RATE))
    o = int(round(CONTEXT_S * SAMPLE_RATE))
    out = []
    for a in range(0, num_samples, c):
        b = min(a + c, num_samples)
        out.append((max(0, a - o), a, b, min(num_samples, b + o)))
    return out


# ---------------------------------------------------------------------------------------------
# phonetic+spectral


@functools.lru_cache(maxsize=4)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """[n_mels, n_fft//2+1] triangular filters, equally spaced on the HTK mel scale, unit peak.

    mel(f) = 2595 log10(1 + f/700) (O'Shaughnessy 1987, as in HTK). Own implementation (no librosa).
    """
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)  # [B]
    pts = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # [M+2]
    lower, centre, upper = pts[:-2, None], pts[1:-1, None], pts[2:, None]  # [M, 1]
    up = (freqs[None] - lower) / (centre - lower)
    down = (upper - freqs[None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)  # [M, B]


def _power_mel(wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mel power [F, N_MELS] and frame power [F] at 100 Hz; frame j is centred at sample j*HOP.

    Frames are computed from zero-padded audio so a frame depends only on its own 25 ms of samples:
    chunks cut at multiples of HOP reproduce the whole-file frames exactly.
    """
    import torch

    n = len(wav)
    num = n // HOP + 1 if n > 0 else 0
    if num == 0:
        return np.zeros((0, N_MELS), np.float32), np.zeros((0,), np.float32)
    x = np.concatenate([[0.0], wav[1:] - PREEMPH * wav[:-1]]).astype(np.float32) if n > 1 else wav.copy()
    x[0] = wav[0]
    pad = N_FFT // 2
    xp = np.pad(x, (pad, pad + HOP))  # [T + N_FFT + HOP]
    t = torch.from_numpy(xp)
    window = torch.hann_window(WIN, periodic=True, dtype=torch.float32)
    spec = torch.stft(t, n_fft=N_FFT, hop_length=HOP, win_length=WIN, window=window, center=False,
                      return_complex=True)  # [B, F']
    power = (spec.real ** 2 + spec.imag ** 2).T[:num].numpy()  # [F, B]
    fb = mel_filterbank()
    mel = power @ fb.T  # [F, M]
    # frame loudness: mean square of the un-emphasised signal over the WIN samples centred on the frame
    # (a full-scale sine is -3 dB); pre-emphasis would under-weight voiced speech
    sq = np.pad(wav.astype(np.float64) ** 2, (WIN // 2, WIN // 2 + HOP))
    csum = np.concatenate([[0.0], np.cumsum(sq)])
    starts = np.arange(num) * HOP  # frame j covers wav[j*HOP - WIN/2, j*HOP + WIN/2)
    frame_pow = (csum[starts + WIN] - csum[starts]) / WIN  # [F]
    return mel.astype(np.float32), frame_pow.astype(np.float32)


def _power_mel_chunked(wav: np.ndarray, chunk_s: float | None) -> tuple[np.ndarray, np.ndarray]:
    """`_power_mel` over the whole file computed in chunks (bounded STFT memory), identical result."""
    n = len(wav)
    total = n // HOP + 1 if n > 0 else 0
    if chunk_s is None or n <= chunk_s * SAMPLE_RATE:
        return _power_mel(wav)
    step = int(chunk_s * SAMPLE_RATE) // HOP * HOP
    mels, pows = [], []
    margin = -(-N_FFT // HOP) * HOP  # context (a multiple of HOP) so boundary frames see their whole window
    for a in range(0, n, step):
        b = min(a + step, n)
        lo = max(0, a - margin)
        m, p = _power_mel(wav[lo:min(n, b + margin)])
        first = (a - lo) // HOP  # frame index in the chunk of global frame a//HOP
        count = (b - a + HOP - 1) // HOP if b < n else total - a // HOP
        mels.append(m[first:first + count])
        pows.append(p[first:first + count])
    return np.concatenate(mels)[:total], np.concatenate(pows)[:total]


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

    `decoder`: a specific pocketsphinx decoder (default: this thread's reused one, reset first)."""
    n_frames = max(0, (len(wav) - int(PSPHINX_WLEN * SAMPLE_RATE)) // HOP + 1)
    out = np.zeros(n_frames, np.int64)
    if n_frames == 0:
        return out
    pcm = (np.clip(wav, -1.0, 1.0) * 32767.0).astype(np.int16)
    cached = decoder is None
    dec = _phone_decoder() if cached else decoder
    try:
        if cached:
            dec.reinit_feat()  # fresh front end + CMN: the result does not depend on earlier utterances
        dec.start_utt()
        dec.process_raw(pcm.tobytes(), no_search=False, full_utt=True)
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


# ---------------------------------------------------------------------------------------------
# wav2vec2 / HuBERT from a local directory


@dataclasses.dataclass
class _SSLModel:
    model: Any
    model_type: str
    normalize: bool
    stride: int
    receptive_field: int
    hidden_size: int
    path: str


def _load_ssl_model(kind: str, model_dir: str | os.PathLike | None) -> _SSLModel:
    """Load a local wav2vec2/HuBERT-style model folder (config.json + weights); never downloads."""
    if model_dir is None:
        raise AvatarError(f"audio features '{kind}' need a local model folder: pass its path (e.g. a "
                          f"saved facebook/hubert-large-ls960-ft), or use 'phonetic+spectral'")
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise AvatarError(f"{path}: no such model folder for '{kind}' audio features")
    if not (path / "config.json").is_file():
        raise AvatarError(f"{path}: not a transformers model folder (no config.json); pass the folder "
                          f"written by save_pretrained")
    try:
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        model_type = getattr(config, "model_type", "")
        if model_type not in _SSL_MODEL_TYPES:
            raise AvatarError(f"{path}: model type '{model_type}' is not a speech model "
                              f"(expected one of {', '.join(_SSL_MODEL_TYPES)})")
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
    except AvatarError:
        raise
    except Exception as e:
        raise AvatarError(f"{path}: cannot load the model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    model.eval()
    normalize = bool(getattr(config, "feat_extract_norm", "group") == "layer")
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        import json

        try:
            normalize = bool(json.loads(pre.read_text()).get("do_normalize", normalize))
        except (OSError, ValueError):
            pass
    else:
        normalize = True  # no feature extractor config: zero-mean unit-variance, as wav2vec2 pipelines do
    stride, rf = 1, 1
    for k, s in zip(config.conv_kernel, config.conv_stride):
        rf += (k - 1) * stride
        stride *= s
    return _SSLModel(model=model, model_type=model_type, normalize=normalize, stride=int(stride),
                     receptive_field=int(rf), hidden_size=int(config.hidden_size), path=str(path.resolve()))


def _ssl_features(ssl: _SSLModel, kind: str, wav: np.ndarray, num_frames: int, fps: float,
                  chunk_s: float | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Hidden states (last layer) at the model's rate (50 Hz), pooled to the frame windows."""
    import torch

    n = len(wav)
    rows, times = [], []
    for ctx_a, a, b, ctx_b in _chunks(n, chunk_s):
        x = wav[ctx_a:ctx_b].astype(np.float32)
        if len(x) < ssl.receptive_field:
            x = np.pad(x, (0, ssl.receptive_field - len(x)))
        if ssl.normalize:
            x = (x - x.mean()) / math.sqrt(x.var() + 1e-7)
        with torch.inference_mode():
            h = ssl.model(torch.from_numpy(x)[None]).last_hidden_state[0].float().numpy()  # [F, C]
        t = (ctx_a + np.arange(len(h)) * ssl.stride + ssl.receptive_field / 2) / SAMPLE_RATE  # [F] centres
        keep = (t >= a / SAMPLE_RATE) & (t < b / SAMPLE_RATE) if (a, b) != (0, n) else t <= max(n, 1) / SAMPLE_RATE + 0.5 / fps
        if not keep.any():
            keep[:1] = True
        rows.append(h[keep])
        times.append(t[keep])
    h = np.concatenate(rows) if rows else np.zeros((0, ssl.hidden_size), np.float32)
    t = np.concatenate(times) if times else np.zeros(0)
    fill = np.zeros(ssl.hidden_size, np.float32)
    feats = _pool_to_frames(h.astype(np.float32), t, num_frames, fps, fill)
    meta = {
        "extractor": kind,
        "dim": int(feats.shape[1]),
        "fps": float(fps),
        "window": {"centre": "k/fps", "span_s": 1.0 / fps, "sub_steps": 1},
        "sample_rate": SAMPLE_RATE,
        "model_dir": ssl.path,
        "model_type": ssl.model_type,
        "layer": "last_hidden_state",
        "model_rate_hz": SAMPLE_RATE / ssl.stride,
        "normalize": ssl.normalize,
        "chunk_s": chunk_s,
        "context_s": CONTEXT_S,
    }
    return feats.astype(np.float32), meta


# ---------------------------------------------------------------------------------------------
# public API


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


def import_npy(path: str | os.PathLike, num_frames: int, fps: float, src_fps: float = 25.0,
               mode: Literal["centre", "flatten"] = "centre") -> tuple[np.ndarray, dict[str, Any]]:
    """Import a precomputed ER-NeRF-style feature array as [num_frames, D] float32.

    Accepted shapes (one entry per `src_fps` frame, 25 fps in ER-NeRF, preprocess.md §7.1):
    - [T, W, C] windows: DeepSpeech [T, 16, 29] (50 Hz rows 2i-8 .. 2i+7 around frame i), HuBERT
      [T, 2, 1024] (50 Hz rows 2i, 2i+1). `mode="centre"` averages the two centre rows W//2-1, W//2
      (the audio at the frame's own time, dim C); `mode="flatten"` keeps the whole window (dim W*C).
    - [T, D]: used as is.
    Rows are re-timed from `src_fps` to `fps` (nearest source frame), and a length that is off by a
    few rows (edge padding) is fixed; a length far from `num_frames` is an error.
    """
    path = Path(path)
    num_frames, fps = _check_frames(num_frames, fps)
    if not path.is_file():
        raise AvatarError(f"{path}: no such feature file")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        raise AvatarError(f"{path}: not a readable .npy array ({type(e).__name__}); expected e.g. aud_ds.npy [T, 16, 29]") from None
    if not np.issubdtype(arr.dtype, np.number) or arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.size == 0:
        raise AvatarError(f"{path}: expected a numeric [T, D] or [T, W, D] array, got {arr.dtype} {tuple(arr.shape)}")
    shape = tuple(int(s) for s in arr.shape)
    x = arr.astype(np.float32)
    if not np.isfinite(x).all():
        raise AvatarError(f"{path}: contains NaN or inf values; recompute the features")
    if x.ndim == 3:
        W = x.shape[1]
        if mode == "centre":
            x = x[:, max(W // 2 - 1, 0):W // 2 + 1].mean(axis=1) if W > 1 else x[:, 0]
        else:
            x = x.reshape(x.shape[0], -1)
    T = x.shape[0]
    # re-time: target frame k at k/fps takes source frame round(k/fps * src_fps)
    expected = T * fps / src_fps
    tol = max(3.0, 0.02 * num_frames)
    if abs(expected - num_frames) > tol:
        raise AvatarError(f"{path}: {T} rows at {src_fps:g} fps cover {T / src_fps:.2f} s but the video has "
                          f"{num_frames} frames ({num_frames / fps:.2f} s); features belong to another clip?")
    idx = np.clip(np.round(np.arange(num_frames) * src_fps / fps).astype(np.int64), 0, T - 1)
    feats = np.ascontiguousarray(x[idx], dtype=np.float32)
    meta = {
        "extractor": f"import:{'x'.join(map(str, shape))}",
        "dim": int(feats.shape[1]),
        "fps": float(fps),
        "window": {"centre": "k/fps", "source_fps": float(src_fps), "mode": mode if len(shape) == 3 else "rows"},
        "source_file": str(path.resolve()),
        "source_shape": list(shape),
        "source_rows": T,
        "num_frames": num_frames,
    }
    return feats, meta
