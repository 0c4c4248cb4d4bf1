"""Self-supervised speech features (wav2vec2, HuBERT and relatives) from a LOCAL transformers folder.

Hidden states of the last layer at the model's rate (50 Hz), pooled to the frame windows of
`avatar.features.frames`. Nothing is downloaded: the folder must hold config.json and the weights
(written by `save_pretrained`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from avatar.core.audio import SAMPLE_RATE
from avatar.errors import AvatarError
from avatar.features.frames import CONTEXT_S, _chunks, _pool_to_frames

# Supported self-supervised model families (config.json "model_type").
_SSL_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer")


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
