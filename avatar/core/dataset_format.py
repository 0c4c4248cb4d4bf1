"""The dataset folder: the contract between `avatar preprocess` and `avatar fit` / `speak` / `view`.

Layout of DATA_DIR (all arrays are one row per video frame at `fps`, frame k at time k/fps):

    dataset.json            written LAST and atomically; a folder without it is incomplete
    preprocess.yaml         the resolved preprocess config
    audio.wav               16 kHz mono PCM, starting at the time of frame 0 (absent with --no-audio)
    frames/000000.jpg ...   RGB frames at the dataset resolution (read lazily, never all in RAM)
    masks/000000.png ...    uint8 label map per frame, labels in `MASK_LABELS` (disjoint by design)
    background.png          the static background plate (RGB)
    landmarks.npy           [N, 478, 2] float32 MediaPipe face-mesh landmarks, pixels (x right, y down)
    pose.npz                per-frame rigid head pose and camera, see `CameraPose`
    blink.npy               [N] float32 eye openness -> blink in [0, 1] (1 = closed), person-normalised
    torso_track.npy         optional cache: [N + 1, 2] float32 torso shift per frame and a version row, written
                            by the first fit or eval that needs it (avatar/core/torso.py)
    features/NAME.npy       [N, D] float32 audio features, one row per video frame
    features/NAME.json      {"extractor", "dim", "fps", "window", ...} describing NAME.npy
    preview/...             optional contact sheet / overlay video

Camera convention (OpenCV): camera x right, y down, z forward. `pose.npz` holds, per frame,
the head-to-camera rigid transform: X_cam = R[k] @ X_head + t[k], where X_head is in the canonical
head frame (metric-free units in which the fitted canonical landmark shape `shape3d` lives).
Intrinsics K = [[focal, 0, cx], [0, focal, cy], [0, 0, 1]] in pixels of the dataset resolution.

`dataset.json` keys (see `DatasetInfo`): version, source {path, sha256, fps, duration}, fps,
num_frames, width, height, camera {focal, cx, cy}, stages {name: version}, files {...},
features {name: {file, extractor, dim, fps}}, default_feature, split {train: [a, b], val: [c, d]}
(half-open frame ranges, `split_ranges`), quality {...}, has_audio.

Resolution: everywhere in avatar (`PreprocessConfig.resolution`, `DataConfig.resolution`) a
resolution is the LONGER image side in pixels, the aspect ratio kept (`render_size`). Training,
the in-training PSNR and `avatar eval` read the held-out frames through the same two functions here
(`held_out_indices`, `resize_frame`), so they measure the same frames at the same size.

Source size (issue 12). dataset.json's "source" records the clip's own size (width, height, upright), its path,
and "time_origin": `avatar speak` writes video at that size by default, and full-size output is measured and
its background plate rebuilt from the source frames themselves (`iter_source_frames`: dataset frame k is the
source frame nearest to time_origin + k / fps), so the dataset never needs to hold frames larger than
`PreprocessConfig.resolution`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from avatar.errors import AvatarError

DATASET_VERSION = 1
DATASET_JSON = "dataset.json"

# Label map stored in masks/*.png. One label per pixel, so regions are disjoint by construction.
MASK_LABELS: dict[str, int] = {
    "background": 0,
    "face": 1,  # face skin (incl. lips, brows, nose)
    "mouth": 2,  # mouth interior: inside the inner lip contour (teeth, tongue)
    "eyes": 3,  # eye openings (inside the eyelid contours)
    "hair": 4,  # hair and the rest of the head above/around the face
    "neck": 5,  # neck
    "torso": 6,  # shoulders / clothing, everything of the person below the neck
}
HEAD_LABELS = ("face", "mouth", "eyes", "hair")
PERSON_LABELS = HEAD_LABELS + ("neck", "torso")

VAL_SHARE = 1.0 / 11.0
"""Default share of frames held out at the end of the clip (AD-NeRF/ER-NeRF/TalkingGaussian protocol)."""


def split_ranges(n: int, val_share: float = VAL_SHARE) -> dict[str, list[int]]:
    """Last `val_share` of the frames held out: train [0, a), val [a, n) (ER-NeRF: a = floor(10n/11)).

    Both parts keep at least one frame (n >= 2). Written to dataset.json by preprocessing; training and
    evaluation read it back through `DatasetInfo.split` / `held_out_indices`."""
    a = int(math.floor(n * (1.0 - val_share) + 1e-9))
    a = min(max(a, 1), n - 1)
    return {"train": [0, a], "val": [a, n]}


def render_size(width: int, height: int, resolution: int) -> tuple[int, int, float]:
    """(w, h, scale) for a LONGER side of `resolution` px, aspect kept (0 or >= the source = unchanged).

    The one meaning of "resolution" in avatar; preprocessing additionally rounds to even sizes for
    the video codec (preprocess/decode.py `target_size`)."""
    if resolution <= 0 or resolution >= max(width, height):
        return width, height, 1.0
    s = resolution / max(width, height)
    return max(8, round(width * s)), max(8, round(height * s)), s


@dataclasses.dataclass
class CameraPose:
    """Per-frame head pose and the (shared) pinhole camera, as stored in pose.npz."""

    R: np.ndarray
    """[N, 3, 3] float32 head-to-camera rotation."""
    t: np.ndarray
    """[N, 3] float32 head-to-camera translation."""
    focal: float
    """Focal length in pixels (fx = fy)."""
    cx: float
    """Principal point x in pixels."""
    cy: float
    """Principal point y in pixels."""
    shape3d: np.ndarray
    """[478, 3] float32 the person's canonical 3D landmark shape in the head frame."""

    @property
    def K(self) -> np.ndarray:
        """[3, 3] intrinsics."""
        return np.array([[self.focal, 0, self.cx], [0, self.focal, self.cy], [0, 0, 1]], np.float32)

    def viewmats(self) -> np.ndarray:
        """[N, 4, 4] world(head)-to-camera matrices."""
        n = self.R.shape[0]
        m = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
        m[:, :3, :3] = self.R
        m[:, :3, 3] = self.t
        return m

    def save(self, path: str | os.PathLike) -> None:
        from avatar.core.io import save_npz_atomic

        save_npz_atomic(path, R=self.R.astype(np.float32), t=self.t.astype(np.float32),
                        focal=np.float32(self.focal), cx=np.float32(self.cx), cy=np.float32(self.cy),
                        shape3d=self.shape3d.astype(np.float32))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CameraPose":
        z = np.load(path)
        return cls(R=z["R"], t=z["t"], focal=float(z["focal"]), cx=float(z["cx"]), cy=float(z["cy"]),
                   shape3d=z["shape3d"])


@dataclasses.dataclass
class FeatureInfo:
    """Description of one audio feature file (mirrors features/NAME.json)."""

    name: str
    """Feature name (features/NAME.npy)."""
    file: str
    """Path of the array relative to the dataset folder."""
    extractor: str
    """Extractor that made it ("phonetic+spectral", "wav2vec2", "hubert", "import:SHAPE", ...)."""
    dim: int
    """Row length D of the [N, D] array."""
    fps: float
    """Rows per second (the dataset fps: one row per video frame)."""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Every other key of NAME.json (window, extractor parameters, ...)."""


@dataclasses.dataclass
class DatasetInfo:
    """Parsed dataset.json plus the folder it came from."""

    root: Path
    """The dataset folder."""
    fps: float
    """Frame rate; frame k is at time k / fps."""
    num_frames: int
    """Frames (and rows of every per-frame array)."""
    width: int
    """Frame width in pixels (the dataset resolution)."""
    height: int
    """Frame height in pixels."""
    split: dict[str, tuple[int, int]]
    """Half-open frame ranges {"train": (a, b), "val": (c, d)} (`split_ranges`)."""
    features: dict[str, FeatureInfo]
    """Audio feature files by name."""
    default_feature: str | None
    """Feature used when none is named (None in a silent dataset)."""
    has_audio: bool
    """Whether audio.wav exists."""
    raw: dict[str, Any]
    """The whole parsed dataset.json (quality figures, timings, config, ...)."""

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def frame_path(self, k: int) -> Path:
        return self.root / "frames" / f"{k:06d}.jpg"

    def mask_path(self, k: int) -> Path:
        return self.root / "masks" / f"{k:06d}.png"

    def indices(self, split: str) -> np.ndarray:
        a, b = self.split[split]
        return np.arange(a, b)

    def camera_pose(self) -> CameraPose:
        return CameraPose.load(self.root / "pose.npz")

    def landmarks(self) -> np.ndarray:
        return np.load(self.root / "landmarks.npy", mmap_mode="r")

    def blink(self) -> np.ndarray:
        return np.load(self.root / "blink.npy")

    def feature(self, name: str | None = None) -> np.ndarray:
        name = name or self.default_feature
        if name is None or name not in self.features:
            raise AvatarError(f"{self.root}: no audio feature '{name}' (have: {', '.join(self.features) or 'none'})")
        arr = np.load(self.root / self.features[name].file, mmap_mode="r")
        if arr.shape[0] != self.num_frames:
            raise AvatarError(f"{self.root}: feature '{name}' has {arr.shape[0]} rows for {self.num_frames} frames; re-run preprocess")
        return arr


def held_out_indices(info: DatasetInfo) -> np.ndarray:
    """Frame indices of the held-out (val) split: the ones `avatar eval` and the in-training PSNR use.

    A dataset without val frames (not written by `avatar preprocess`, which always keeps >= 1) falls
    back to the last 1/11 of its training frames, so evaluation never runs on nothing."""
    val = info.indices("val") if "val" in info.split else np.arange(0)
    if len(val):
        return val
    train = info.indices("train")
    return train[-max(1, len(train) // 11):]


def resize_frame(rgb: np.ndarray, labels: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A frame (rgb uint8 [H, W, 3], labels uint8 [H, W]) at (width, height): area filter for colours,
    nearest for the label map (labels are ids, never averaged). Unchanged when already that size."""
    if (rgb.shape[1], rgb.shape[0]) == (width, height):
        return rgb, labels
    import cv2

    rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    return rgb, labels


def load_dataset(root: str | os.PathLike) -> DatasetInfo:
    """Read DATA_DIR/dataset.json. Raises a one-line AvatarError for a missing/incomplete folder."""
    root = Path(root)
    if not root.is_dir():
        raise AvatarError(f"{root}: no such dataset folder (run `avatar preprocess VIDEO -o {root}`)")
    meta = root / DATASET_JSON
    if not meta.is_file():
        raise AvatarError(f"{root}: dataset is incomplete (no {DATASET_JSON}); re-run `avatar preprocess VIDEO -o {root}`")
    try:
        raw = json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise AvatarError(f"{meta}: corrupt ({e.msg}); re-run preprocess") from None
    try:
        feats = {
            name: FeatureInfo(name=name, file=d["file"], extractor=d["extractor"], dim=int(d["dim"]), fps=float(d["fps"]),
                              extra={k: v for k, v in d.items() if k not in ("file", "extractor", "dim", "fps")})
            for name, d in raw.get("features", {}).items()
        }
        info = DatasetInfo(
            root=root,
            fps=float(raw["fps"]),
            num_frames=int(raw["num_frames"]),
            width=int(raw["width"]),
            height=int(raw["height"]),
            split={k: (int(v[0]), int(v[1])) for k, v in raw["split"].items()},
            features=feats,
            default_feature=raw.get("default_feature"),
            has_audio=bool(raw.get("has_audio", True)),
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise AvatarError(f"{meta}: missing or bad field {e}; re-run preprocess") from None
    if int(raw.get("version", 0)) > DATASET_VERSION:
        raise AvatarError(f"{meta}: dataset version {raw.get('version')} is newer than this avatar supports ({DATASET_VERSION})")
    return info


class FrameCache:
    """Bounded LRU cache of decoded frames/masks: memory stays O(capacity), not O(clip length).

    `get(k)` returns (rgb [H, W, 3] uint8, labels [H, W] uint8).
    """

    def __init__(self, info: DatasetInfo, capacity: int = 256):
        self.info = info
        self.capacity = int(capacity)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def get(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        import cv2

        bgr = cv2.imread(str(self.info.frame_path(k)), cv2.IMREAD_COLOR)
        if bgr is None:
            raise AvatarError(f"{self.info.frame_path(k)}: missing or unreadable frame; re-run preprocess")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        labels = cv2.imread(str(self.info.mask_path(k)), cv2.IMREAD_UNCHANGED)
        if labels is None:
            raise AvatarError(f"{self.info.mask_path(k)}: missing or unreadable mask; re-run preprocess")
        self._cache[k] = (rgb, labels)
        if len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return rgb, labels

    def __len__(self) -> int:
        return len(self._cache)


def source_size(info: DatasetInfo) -> tuple[int, int]:
    """(width, height) of the source clip (dataset.json "source", upright); the dataset size when absent."""
    src = info.raw.get("source") if isinstance(info.raw.get("source"), dict) else {}
    try:
        w, h = int(src["width"]), int(src["height"])
    except (KeyError, TypeError, ValueError):
        return info.width, info.height
    return (w, h) if w > 0 and h > 0 else (info.width, info.height)


def iter_source_frames(info: DatasetInfo, indices) -> "Iterator[tuple[int, np.ndarray]]":
    """(k, rgb uint8 [H, W, 3] at the SOURCE resolution) for dataset frames `indices`, ascending.

    The dataset keeps its frames at `PreprocessConfig.resolution`; full-size output is measured against the
    source clip itself, read here from dataset.json's source path: dataset frame k is the source frame whose
    pts is nearest to time_origin + k / fps (preprocess/decode.py's rule). Raises `AvatarError` when the
    source file is gone or changed size (the caller falls back to the dataset frames)."""
    import av

    src = info.raw.get("source") if isinstance(info.raw.get("source"), dict) else {}
    path = Path(str(src.get("path", "")))
    if not path.is_file():
        raise AvatarError(f"{path}: the source clip is not there any more")
    want = sorted(int(k) for k in indices)
    if not want:
        return
    sw, sh = source_size(info)
    t0 = float(info.raw.get("time_origin", 0.0))
    times = {k: t0 + k / info.fps for k in want}
    j = 0
    prev: tuple[float, np.ndarray] | None = None
    with av.open(str(path)) as c:
        vs = next((s for s in c.streams if s.type == "video"), None)
        if vs is None:
            raise AvatarError(f"{path}: has no video track")
        vs.thread_type = "AUTO"
        for frame in c.decode(vs):
            if frame.pts is None:
                continue
            t = float(frame.pts * frame.time_base)
            if (frame.width, frame.height) != (sw, sh):
                raise AvatarError(f"{path}: frames are {frame.width}x{frame.height}, dataset.json says {sw}x{sh}")
            cur = (t, frame.to_ndarray(format="rgb24"))
            while j < len(want) and prev is not None and abs(prev[0] - times[want[j]]) <= abs(t - times[want[j]]):
                yield want[j], prev[1]
                j += 1
            if j >= len(want):
                return
            prev = cur
        while j < len(want) and prev is not None:
            yield want[j], prev[1]
            j += 1


def head_box(landmarks: np.ndarray, sx: float, sy: float, width: int, height: int, pad: float = 0.1) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) integer box around one frame's landmarks [478, 2] (dataset pixels, scaled by sx, sy to
    the target image) padded by `pad` x its size on every side, clipped to width x height (`avatar eval`'s head box)."""
    p = np.asarray(landmarks, np.float64) * np.array([sx, sy])
    lo, hi = p.min(0), p.max(0)
    d = (hi - lo) * pad
    x0, y0 = np.floor(lo - d).astype(int)
    x1, y1 = np.ceil(hi + d).astype(int)
    return max(0, int(x0)), max(0, int(y0)), min(width, int(x1)), min(height, int(y1))
