"""Audio features for the engine, and what it keeps from the training clip for silence.

- `feature_fn_for`: the extractor a run was trained with (its feature JSON), as a `FeatureFn`.
- `TrainingStats`: the silent closed-mouth feature row, the training audio level track (for
  `--pose audio`) and the real training window the model renders most closed (`closed_mouth_window`).
  `avatar fit` stores them in model.pt (`dataset_stats`, called by avatar/engine/runtime.py `save_model`),
  so inference never opens the training dataset; for runs saved before that, `training_stats` reads the
  dataset folder recorded in model.pt as before, and falls back to the extractor's own features of
  digital silence (with one warning line) when that folder is gone.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable

import numpy as np

from avatar.core.audio import SAMPLE_RATE, rms_envelope
from avatar.core.landmarks import mouth_opening
from avatar.engine.gate import silent_rows
from avatar.errors import AvatarError

FeatureFn = Callable[[np.ndarray, int, float], np.ndarray]
"""(wav16k [T], num_frames, fps) -> [num_frames, D] float32 features, frame j at time j/fps of the wav."""


def synthetic_features(wav: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
    """The 8-d "synthetic" feature of `avatar.testing.make_tiny_dataset` computed from audio.

    That dataset's audio is 0.3 * opening(t) * sin(220 Hz t), and its feature rows are
    [opening, opening^2, noise...]; the opening is recovered from the RMS over the frame (x sqrt 2 / 0.3).
    Lets `avatar speak` run end to end on the tiny test avatar; not a speech feature.
    """
    db = rms_envelope(wav, SAMPLE_RATE, fps, num_frames, win_s=1.0 / fps)
    opening = np.clip(np.sqrt(10 ** (db / 10.0)) * math.sqrt(2) / 0.3, 0.0, 1.0)
    out = np.zeros((num_frames, 8), np.float32)
    out[:, 0] = opening
    out[:, 1] = opening ** 2
    return out


def feature_fn_for(meta: dict, model_dir: str | None = None) -> FeatureFn:
    """The extractor a run was trained with (its feature JSON), as a `FeatureFn`."""
    kind = meta.get("extractor", "")
    if kind == "synthetic":
        return synthetic_features
    from avatar.features import FeatureExtractor

    flat = {k: v for k, v in meta.items() if k != "extra"} | dict(meta.get("extra") or {})
    flat["chunk_s"] = None  # the engine cuts the audio into segments itself
    ex = FeatureExtractor.from_meta(flat, model_dir)

    def fn(wav: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
        return ex(wav, num_frames, fps)[0]

    return fn


@dataclasses.dataclass
class TrainingStats:
    """What the engine keeps from the training clip: the silent closed-mouth feature row and the level track."""

    silent_row: np.ndarray | None  # [D]
    level_db: np.ndarray | None  # [N_train] RMS level per training frame
    source: str
    silent_window: np.ndarray | None = None  # [W, D] the real training window the model renders most closed

    def to_payload(self) -> dict:
        """Plain arrays for model.pt (`save_model`)."""
        return {k: (None if v is None else np.asarray(v, np.float32)) for k, v in
                (("silent_row", self.silent_row), ("level_db", self.level_db), ("silent_window", self.silent_window))}

    @classmethod
    def from_payload(cls, d: dict, source: str) -> TrainingStats:
        get = (lambda k: None if d.get(k) is None else np.asarray(d[k], np.float32))
        return cls(get("silent_row"), get("level_db"), source, get("silent_window"))


def closed_mouth_window(model, wins, level_db: np.ndarray | None, shape3d: np.ndarray | None) -> np.ndarray | None:
    """[W, D] the training clip's feature window (real, consecutive rows; `wins` [N, W, D] torch, edge
    padded as in training) for which the trained model's lips are most closed, among the quietest 30 % of
    training frames.

    Why not a window of the averaged silent row: a constant window never occurs in training, and on a
    real run (lieu, 15 min) it rendered a half-open mouth (MediaPipe opening 0.070 on 3 s of silence vs
    0.057 median over the clip). The model's predicted inner-lip gap is read from its motion field at
    the canonical landmarks 13/14 (`AvatarModel.point_motion`, the field the landmark motion loss
    trains), which costs one audio-encoder pass over the training windows, no rendering."""
    import torch

    from avatar.core.landmarks import LOWER_INNER_LIP, UPPER_INNER_LIP

    if wins.shape[0] == 0 or shape3d is None:
        return None
    dev = wins.device
    pts = torch.as_tensor(np.asarray(shape3d, np.float32)[[UPPER_INNER_LIP, LOWER_INNER_LIP]], device=dev)
    gaps = []
    with torch.no_grad():
        for i in range(0, wins.shape[0], 256):
            w = wins[i:i + 256]
            x, _ = model.point_motion(pts, model.audio(w), torch.zeros(w.shape[0], device=dev))
            gaps.append(((x[:, 1] - x[:, 0]).norm(dim=-1) / model.unit).cpu().numpy())
    gap = np.concatenate(gaps)
    cand = np.arange(len(gap))
    if level_db is not None and len(level_db) == len(gap):
        cand = cand[np.asarray(level_db) <= np.percentile(level_db, 30)]
    k = int(cand[np.argmin(gap[cand])])
    return wins[k].cpu().numpy().astype(np.float32)


def dataset_stats(model, root, feature_name: str | None, train: tuple[int, int] | None, device) -> TrainingStats:
    """`TrainingStats` of a dataset folder for a trained `AvatarModel` (train frames [a, b)).

    Called once by `save_model` at the end of `avatar fit` (stored in model.pt), and at inference only
    for runs saved before that."""
    import torch

    from avatar.core.dataset_format import load_dataset
    from avatar.model.audio import feature_windows

    info = load_dataset(root)
    a, b = (train or (0, info.num_frames))[:2]
    feats = np.array(info.feature(feature_name or info.default_feature), np.float32)[a:b]  # [N, D] (writable copy)
    level = None
    wav_path = info.path("audio.wav")
    if info.has_audio and wav_path.is_file():
        from avatar.core.audio import load_audio

        level = rms_envelope(load_audio(wav_path, sr=SAMPLE_RATE), SAMPLE_RATE, info.fps, info.num_frames)[a:b]
    mouth = None
    if info.path("landmarks.npy").is_file():
        mouth = mouth_opening(np.asarray(info.landmarks()[a:b]))
    window = None
    try:
        wins = feature_windows(torch.as_tensor(feats, device=device), model.audio.window, model.audio.future)
        window = closed_mouth_window(model, wins, level, info.camera_pose().shape3d)
    except (AvatarError, OSError, KeyError, ValueError):
        window = None
    return TrainingStats(silent_rows(feats, level, mouth), level, str(root), window)


def training_stats(avatar, feature_fn: FeatureFn | None = None) -> TrainingStats:
    """The run's `TrainingStats`: stored in model.pt (`Avatar.training_stats`), else read from the dataset
    folder recorded there (runs saved before the stats were stored), else the extractor's own features of
    digital silence (with a warning: the run should be re-fitted for the closed-mouth silence)."""
    saved = getattr(avatar, "training_stats", None)
    if saved is not None:
        return saved
    ds = getattr(avatar, "dataset", None) or {}
    root = ds.get("root")
    try:
        if root is None:
            raise AvatarError("no dataset recorded")
        model = avatar.model
        name = avatar.feature_meta.get("name")
        train = tuple(ds.get("train") or (0, len(avatar.train_viewmats)))
        return dataset_stats(model, root, name, train, avatar.device)
    except (AvatarError, OSError, KeyError, ValueError, TypeError, AttributeError):
        if root is not None:
            print(f"avatar: warning: this run's model.pt predates stored silence statistics and its dataset folder "
                  f"{root} is unreadable; silence uses the extractor's own silence features (re-run `avatar fit` "
                  f"to store them)", file=sys.stderr)
        if feature_fn is None:
            return TrainingStats(None, None, "none")
        fps = float(avatar.fps)
        row = feature_fn(np.zeros(int(SAMPLE_RATE * 2), np.float32), int(2 * fps), fps)[int(fps)]
        return TrainingStats(row.astype(np.float32), None, "extractor(silence)")
