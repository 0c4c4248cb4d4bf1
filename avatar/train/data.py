"""Streaming access to a dataset folder at the training resolution, with bounded memory.

Frames are decoded by `avatar.core.dataset_format.FrameCache` (small, full resolution) and the resized
(rgb, labels) pairs are kept in an LRU of `cache_frames` entries, so RAM is O(cache), not O(clip):
a 5-minute clip at 256 px with the default 3000-frame cache holds < 0.8 GB of pixels.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from avatar.core.dataset_format import (
    MASK_LABELS,
    PERSON_LABELS,
    DatasetInfo,
    FrameCache,
    held_out_indices,
    render_size,
    resize_frame,
)
from avatar.core.landmarks import LIPS_OUTER, LOWER_INNER_LIPS, MOTION_LANDMARKS
from avatar.core.torso import torso_track
from avatar.errors import AvatarError
from avatar.model.audio import feature_windows, window_indices, window_offsets
from avatar.train.config import DataConfig

PERSON_IDS = tuple(MASK_LABELS[n] for n in PERSON_LABELS)


class FitData:
    """Everything the trainer reads from DATA_DIR, as torch tensors at the training resolution."""

    def __init__(self, info: DatasetInfo, cfg: DataConfig, window: int, device: torch.device | str = "cpu",
                 future: int | None = None):
        """window: feature rows per frame; future: rows after the frame's own (None = centred,
        `AudioEncoder.future` of the model being trained or evaluated)."""
        import cv2

        self.info, self.cfg, self.device, self.window = info, cfg, torch.device(device), window
        self.past, self.future = window_offsets(window, future)
        self.width, self.height, self.scale = render_size(info.width, info.height, cfg.resolution)
        sx, sy = self.width / info.width, self.height / info.height
        pose = info.camera_pose()
        if pose.R.shape[0] != info.num_frames:
            raise AvatarError(f"{info.root}/pose.npz: {pose.R.shape[0]} poses for {info.num_frames} frames; re-run preprocess")
        self.pose = pose
        self.K = torch.tensor([[pose.focal * sx, 0, pose.cx * sx], [0, pose.focal * sy, pose.cy * sy], [0, 0, 1]],
                              dtype=torch.float32, device=self.device)  # [3, 3]
        self.viewmats = torch.as_tensor(pose.viewmats(), device=self.device)  # [N, 4, 4]
        self.feature_name = cfg.feature or info.default_feature
        self.feats = torch.as_tensor(np.array(info.feature(self.feature_name), np.float32), device=self.device)  # [N, D]
        self.feature_meta = dict(vars(info.features[self.feature_name]))
        for name in ("voice_aug", "viseme_dropout"):
            v = getattr(cfg, name)
            if not 0.0 <= v <= 1.0:
                raise AvatarError(f"--data.{name} is a share of training windows: 0 to 1, got {v}")
        self.voice_feats = self._voice_features() if cfg.voice_aug > 0 else None  # [K, N, D] or None
        self.viseme_cols = self._viseme_columns() if cfg.viseme_dropout > 0 else None  # slice or None
        self.feat_mean = self.feats[torch.as_tensor(info.indices("train"), device=self.device)].mean(0)  # [D]
        self.blink = torch.as_tensor(info.blink().astype(np.float32), device=self.device)  # [N]
        self.torso_track = torch.as_tensor(torso_track(info), device=self.device)  # [N, 2] avatar/core/torso.py
        self.landmarks = info.landmarks()  # [N, 478, 2] mmap, dataset pixels
        if len(self.blink) != info.num_frames or self.landmarks.shape[0] != info.num_frames:
            raise AvatarError(f"{info.root}: blink/landmarks do not have one row per frame; re-run preprocess")
        lm = np.asarray(self.landmarks, np.float32)
        self.face_px = torch.as_tensor(np.ptp(lm, axis=1).max(-1) * max(sx, sy), device=self.device)  # [N] face size, px
        scale = np.array([sx, sy], np.float32)
        self.motion_targets = torch.as_tensor(lm[:, list(MOTION_LANDMARKS)] * scale, device=self.device)  # [N, L, 2]
        self.mouth_targets = torch.as_tensor(lm[:, list(LOWER_INNER_LIPS)] * scale, device=self.device)  # [N, M, 2]
        del lm
        bg = cv2.imread(str(info.path("background.png")), cv2.IMREAD_COLOR)
        if bg is None:
            raise AvatarError(f"{info.path('background.png')}: missing or unreadable; re-run preprocess")
        bg = cv2.resize(cv2.cvtColor(bg, cv2.COLOR_BGR2RGB), (self.width, self.height), interpolation=cv2.INTER_AREA)
        self.background = torch.as_tensor(bg, device=self.device).float() / 255.0  # [H, W, 3]
        full = cv2.cvtColor(cv2.imread(str(info.path("background.png")), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if full.shape[:2] != (info.height, info.width):
            full = cv2.resize(full, (info.width, info.height), interpolation=cv2.INTER_AREA)
        self.background_native = torch.as_tensor(full, device=self.device).float() / 255.0  # [H0, W0, 3] dataset size
        self.K_native = torch.tensor([[pose.focal, 0, pose.cx], [0, pose.focal, pose.cy], [0, 0, 1]],
                                     dtype=torch.float32, device=self.device)  # [3, 3] dataset pixels
        self.train_idx = info.indices("train")
        self.val_idx = held_out_indices(info)  # the frames `avatar eval` measures (avatar.core.dataset_format)
        if len(self.train_idx) == 0:
            raise AvatarError(f"{info.root}/dataset.json: empty training split")
        self._decoder = FrameCache(info, capacity=4)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _feature_json(self) -> dict:
        """features/NAME.json of the training feature (its extractor and column layout); {} when unreadable."""
        import json

        try:
            return json.loads((self.info.root / "features" / f"{self.feature_name}.json").read_text())
        except (OSError, ValueError):
            return {}

    def _voice_features(self) -> torch.Tensor | None:
        """Features of the clip's audio pitch-shifted by each of `VOICE_SHIFTS` ([K, N, D]), made with the
        dataset's own extractor: the same words at the same times in other voices (`DataConfig.voice_aug`).
        None (with one line on stderr) when the features cannot be recomputed, e.g. imported .npy features."""
        import sys

        from avatar.core.audio import load_audio
        from avatar.core.voice import VOICE_SHIFTS, pitch_shift
        from avatar.features import FeatureExtractor

        info = self.info
        try:
            ex = FeatureExtractor.from_meta(self._feature_json())
            wav = load_audio(info.path("audio.wav"))
        except (AvatarError, OSError, ValueError) as e:
            print(f"voice augmentation off: {e}", file=sys.stderr)
            return None
        banks = [ex(pitch_shift(wav, s), info.num_frames, info.fps)[0] for s in VOICE_SHIFTS]
        return torch.as_tensor(np.stack(banks), dtype=torch.float32, device=self.device)

    def _viseme_columns(self) -> slice | None:
        layout = self._feature_json().get("layout", {})
        if "viseme" not in layout:
            return None  # features without phone classes: nothing to drop
        a, b = layout["viseme"]
        return slice(int(a), int(b))

    @property
    def feat_dim(self) -> int:
        return int(self.feats.shape[1])

    def frame(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 [h, w, 3], labels uint8 [h, w]) of frame k at the training resolution."""
        k = int(k)
        hit = self._cache.get(k)
        if hit is not None:
            self._cache.move_to_end(k)
            return hit
        rgb, lab = resize_frame(*self._decoder.get(k), self.width, self.height)
        self._cache[k] = (rgb, lab)
        if len(self._cache) > self.cfg.cache_frames:
            self._cache.popitem(last=False)
        return rgb, lab

    def lips_rect(self, k: int, margin: float = 0.3) -> tuple[int, int, int, int]:
        """Square box (x0, y0, x1, y1) around the outer lip landmarks at the training resolution (TG lips rect)."""
        p = np.asarray(self.landmarks[k][list(LIPS_OUTER)]) * np.array([self.width / self.info.width, self.height / self.info.height])
        c = (p.min(0) + p.max(0)) / 2
        half = (p.max(0) - p.min(0)).max() / 2 * (1 + margin)
        x0, y0 = np.floor(c - half).astype(int)
        x1, y1 = np.ceil(c + half).astype(int)
        return max(0, x0), max(0, y0), min(self.width, x1), min(self.height, y1)

    def native_frame(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 [H0, W0, 3], labels uint8 [H0, W0]) of frame k at the DATASET resolution (`K_native`)."""
        return self._decoder.get(int(k))

    def native_crops(self, idx, boxes: np.ndarray) -> dict[str, torch.Tensor]:
        """Real crops at the DATASET resolution for the head-crop loss: boxes [B, 4] (x0, y0, x1, y1), one size,
        may reach past the frame (edge pixels repeat there). rgb [B, h, w, 3] in [0, 1], labels [B, h, w],
        lips [B, h, w, 1] (the lips rect in dataset pixels)."""
        rgbs, labs, lips = [], [], []
        for k, (x0, y0, x1, y1) in zip(idx, np.asarray(boxes)):
            rgb, lab = self._decoder.get(int(k))
            ys = np.clip(np.arange(y0, y1), 0, rgb.shape[0] - 1)
            xs = np.clip(np.arange(x0, x1), 0, rgb.shape[1] - 1)
            rgbs.append(rgb[ys][:, xs])
            labs.append(lab[ys][:, xs])
            p = np.asarray(self.landmarks[int(k)][list(LIPS_OUTER)], np.float64)
            c, half = (p.min(0) + p.max(0)) / 2, (p.max(0) - p.min(0)).max() / 2 * 1.3
            m = np.zeros((y1 - y0, x1 - x0, 1), np.float32)
            lx0, ly0 = int(np.floor(c[0] - half)) - x0, int(np.floor(c[1] - half)) - y0
            lx1, ly1 = int(np.ceil(c[0] + half)) - x0, int(np.ceil(c[1] + half)) - y0
            m[max(0, ly0):max(0, ly1), max(0, lx0):max(0, lx1)] = 1
            lips.append(m)
        dev = self.device
        return {"rgb": torch.as_tensor(np.stack(rgbs), device=dev).float() / 255.0,
                "labels": torch.as_tensor(np.stack(labs), device=dev).long(),
                "lips": torch.as_tensor(np.stack(lips), device=dev)}

    def windows(self, idx: np.ndarray | list[int], rng: np.random.Generator | None = None) -> torch.Tensor:
        """[B, W, D] edge-padded feature windows of frames idx (rows k - past ... k + future).

        With `rng` (training steps) and `voice_aug` on, each window comes with probability `voice_aug` from one
        pitch-shifted copy of the audio drawn at random (the whole window from the same copy), and with
        `viseme_dropout` on, its viseme columns are set to their training mean with that probability; without `rng`
        (evaluation) always the clip's own rows."""
        idx_t = torch.as_tensor(np.asarray(idx), device=self.device).reshape(-1)
        rows = window_indices(idx_t, self.window, self.future, self.feats.shape[0])  # [B, W]
        if rng is None or (self.voice_feats is None and self.viseme_cols is None):
            return self.feats[rows]
        out = self.feats[rows].clone()
        if self.voice_feats is not None:
            k = len(self.voice_feats)
            pick = np.where(rng.random(len(idx_t)) < self.cfg.voice_aug, rng.integers(0, k, len(idx_t)), -1)
            for b in np.flatnonzero(pick >= 0):
                out[b] = self.voice_feats[int(pick[b])][rows[b]]
        if self.viseme_cols is not None:
            for b in np.flatnonzero(rng.random(len(idx_t)) < self.cfg.viseme_dropout):
                out[b, :, self.viseme_cols] = self.feat_mean[self.viseme_cols]
        return out

    def all_windows(self) -> torch.Tensor:
        return feature_windows(self.feats, self.window, self.future)

    def batch(self, idx: np.ndarray | list[int], rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """Tensors for frames idx: rgb [B,H,W,3] in [0,1], labels [B,H,W] long, viewmats, feats [B,W,D], blink [B], torso_shift [B,2]
        (avatar/core/torso.py), lips [B,H,W,1].
        `rng`: a training step (voice augmentation may apply, `windows`)."""
        rgbs, labs, lips = [], [], []
        for k in idx:
            rgb, lab = self.frame(k)
            rgbs.append(rgb)
            labs.append(lab)
            m = np.zeros((self.height, self.width, 1), np.float32)
            x0, y0, x1, y1 = self.lips_rect(int(k))
            m[y0:y1, x0:x1] = 1
            lips.append(m)
        dev = self.device
        return {
            "idx": torch.as_tensor(np.asarray(idx)),
            "rgb": torch.as_tensor(np.stack(rgbs), device=dev).float() / 255.0,
            "labels": torch.as_tensor(np.stack(labs), device=dev).long(),
            "viewmats": self.viewmats[torch.as_tensor(np.asarray(idx), device=dev)],
            "feats": self.windows(idx, rng),
            "blink": self.blink[torch.as_tensor(np.asarray(idx), device=dev)],
            "torso_shift": self.torso_track[torch.as_tensor(np.asarray(idx), device=dev)],  # [B, 2]
            "lips": torch.as_tensor(np.stack(lips), device=dev),
        }
