"""Torso track: how far the shoulders moved in each frame, a fact of the clip like the head pose.

The head pose comes from the face landmarks; nothing measured where the torso was, so the model had to guess its
motion from the head pose (`AvatarModel.torso_gaussians`: skinning + a pose-conditioned residual). On the 50 s
macron clip that guess left the torso at 21.6 dB PSNR on the *training* frames at 512 px (56 % of the held-out
squared error, shoulder and collar edges a few pixels off), while the torso region's image shift between frames
has a standard deviation of 7 px (x) and 4 px (y), and a linear fit from the head pose leaves 2-3 px of it
unexplained. RAD-NeRF / ER-NeRF give their torso field a learnt per-frame code for this (Tang et al. 2022,
"Real-time Neural Radiance Talking Portrait Synthesis via Audio-spatial Decomposition", Sec. 3.3); a code does not
exist for a held-out frame, so here the torso's 2D shift is *measured* in every frame instead, like the head
pose: phase correlation (Kuglin & Hines 1975; OpenCV `phaseCorrelate`) of the frame against one anchor frame
inside a soft window over the anchor's torso label, then a 5-frame running median against single-frame
outliers. The track is kept only where it explains the torso's change (`MIN_EXPLAINED`), else it is zeros and
the avatar is trained as before. Shifts are stored as angles (pixels / focal length), so they hold at any
resolution.

    track = torso_track(info)        # [N, 2] float32, (dx, dy) / focal relative to frame 0, cached in the dataset

Training and `avatar eval` render each frame with its measured shift (as they use its measured head pose);
`avatar speak` and everything else predict the shift from the head pose (`fit_shift_predictor`, the linear map
the model stores). Cached as `torso_track.npy` next to dataset.json (written atomically; a read-only dataset
folder just recomputes it: about 10 ms a frame at 512 px, 12 s for the 50 s macron clip).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avatar.core.dataset_format import MASK_LABELS

CACHE = "torso_track.npy"
_VERSION = 2.0  # stored in the last row of the cache: a change of method invalidates old caches


def _window(labels: np.ndarray) -> np.ndarray | None:
    """Soft window over the torso label (dilated so the shoulder/background edge is in it), times a Hanning
    window against the image border's wrap-around. None when the frame shows no torso."""
    import cv2

    torso = (labels == MASK_LABELS["torso"]).astype(np.uint8)
    if torso.sum() < 0.01 * torso.size:
        return None
    h, w = torso.shape
    r = max(3, int(round(0.03 * max(h, w))))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    win = cv2.GaussianBlur(cv2.dilate(torso, k).astype(np.float32), (0, 0), r / 2)
    return win * cv2.createHanningWindow((w, h), cv2.CV_32F)


def measure_shifts(gray_frames, anchor_gray: np.ndarray, anchor_labels: np.ndarray) -> np.ndarray:
    """(dx, dy) in pixels of each grey frame's torso against the anchor frame (`gray_frames`: an iterable of
    float32 [H, W]); zeros when the anchor shows no torso. + = the torso moved right / down."""
    import cv2

    win = _window(anchor_labels)
    frames = list(gray_frames) if win is None else gray_frames
    if win is None:
        return np.zeros((len(frames), 2), np.float32)
    a = anchor_gray.astype(np.float32) * win
    out = []
    for g in frames:
        (dx, dy), _ = cv2.phaseCorrelate(a, g.astype(np.float32) * win)
        out.append((dx, dy))
    return np.asarray(out, np.float32).reshape(-1, 2)


def clean_track(shifts: np.ndarray, limit: float) -> np.ndarray:
    """Shifts with outliers (|shift| > limit, phase correlation locking onto something else) replaced by linear
    interpolation, then a 5-frame running median (edges: the window shrinks)."""
    s = np.asarray(shifts, np.float64).copy()
    n = len(s)
    ok = np.all(np.abs(s) <= limit, axis=1)
    if not ok.any():
        return np.zeros_like(s, dtype=np.float32)
    idx = np.arange(n)
    for j in range(2):
        s[:, j] = np.interp(idx, idx[ok], s[ok, j])
    out = np.empty_like(s)
    for i in range(n):
        out[i] = np.median(s[max(0, i - 2):i + 3], axis=0)
    return out.astype(np.float32)


def explained_share(gray_frames, shifts_px: np.ndarray, anchor_gray: np.ndarray, anchor_labels: np.ndarray) -> float:
    """How much of the torso's change the shifts explain: 1 - sum over frames of mean |frame moved back by its
    shift - anchor| / sum of mean |frame - anchor|, inside the anchor's torso label (eroded, away from its edge
    and the image border). 1: every difference was a shift; <= 0: moving the frames back made it worse."""
    import cv2

    torso = (anchor_labels == MASK_LABELS["torso"]).astype(np.uint8)
    r = max(2, int(round(0.02 * max(torso.shape))))
    m = cv2.erode(torso, np.ones((2 * r + 1, 2 * r + 1), np.uint8)).astype(bool)
    m[:r], m[-r:], m[:, :r], m[:, -r:] = False, False, False, False
    if m.sum() < 100:
        return 0.0
    ref = anchor_gray.astype(np.float32)
    before = after = 0.0
    for g, (dx, dy) in zip(gray_frames, np.asarray(shifts_px, np.float64)):
        g = g.astype(np.float32)
        back = cv2.warpAffine(g, np.float32([[1, 0, -dx], [0, 1, -dy]]), g.shape[::-1], flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        before += float(np.abs(g - ref)[m].mean())
        after += float(np.abs(back - ref)[m].mean())
    return 1.0 - after / before if before > 0 else 0.0


MIN_EXPLAINED = 0.3
"""A track is used only when moving the frames back by it removes at least this share of the torso's change
(`explained_share`, on up to 60 frames spread over the clip). Measured: macron_50s 0.59 (its torso slides up to
30 px), german_anchor_20s 0.74, may_5s 0.08 (a dark jacket and scarf along the bottom edge). A track that
explains less (a torso that is a thin strip along the frame's edge, a scarf that
changes shape) would only add noise: it is replaced by zeros, and the model is trained as without the track."""


def torso_track(info, cache: bool = True, progress: bool = False) -> np.ndarray:
    """[N, 2] float32 torso shift of every frame of dataset `info` relative to frame 0, in units of the focal
    length ((dx, dy) pixels / focal). Cached in the dataset folder; `progress`: a bar while it is measured."""
    import cv2
    from tqdm import tqdm

    from avatar.core.io import atomic_path

    root = Path(info.root)
    path = root / CACHE
    n = int(info.num_frames)
    if path.is_file():
        try:
            arr = np.load(path)
            if arr.shape == (n + 1, 2) and float(arr[-1, 0]) == _VERSION:
                return arr[:n].astype(np.float32)
        except (OSError, ValueError):
            pass
    pose = info.camera_pose()

    def gray(k: int) -> np.ndarray:
        img = cv2.imread(str(info.frame_path(k)), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise OSError(f"cannot read frame {k} of {root}")
        return img.astype(np.float32)

    anchor_lab = cv2.imread(str(info.mask_path(0)), cv2.IMREAD_GRAYSCALE)
    if anchor_lab is None or not info.frame_path(0).is_file():  # no labels to find the torso in: unshifted
        return np.zeros((n, 2), np.float32)
    frames = tqdm(range(n), desc="torso track", unit="frame", dynamic_ncols=True, disable=not progress)
    px = measure_shifts((gray(k) for k in frames), gray(0), anchor_lab)
    track_px = clean_track(px, limit=0.1 * max(info.width, info.height))
    sample = np.unique(np.linspace(0, n - 1, min(n, 60)).round().astype(int))
    share = explained_share((gray(int(k)) for k in sample), track_px[sample], gray(0), anchor_lab)
    track = track_px / float(pose.focal) if share >= MIN_EXPLAINED else np.zeros((n, 2), np.float32)
    if cache:
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, np.concatenate([track, [[_VERSION, 0.0]]]).astype(np.float32))
        except OSError:
            pass  # a read-only dataset: recomputed next time
    return track


def shift_features(viewmats: np.ndarray, unit: float) -> np.ndarray:
    """[N, 13] head-pose features of viewmats [N, 4, 4] for the shift predictor: rotation (9), translation in
    face units (3), 1."""
    v = np.asarray(viewmats, np.float64)
    n = v.shape[0]
    return np.concatenate([v[:, :3, :3].reshape(n, 9), v[:, :3, 3] / unit, np.ones((n, 1))], 1)


def fit_shift_predictor(viewmats: np.ndarray, shifts: np.ndarray, unit: float, ridge: float = 1e-6) -> np.ndarray:
    """[13, 2] ridge least squares from `shift_features` to the shifts: what `avatar speak` uses when no frame
    tells it where the torso is (its head motion is made, not measured)."""
    X = shift_features(viewmats, unit)
    y = np.asarray(shifts, np.float64)
    A = X.T @ X + ridge * len(X) * np.eye(X.shape[1])
    return np.linalg.solve(A, X.T @ y).astype(np.float32)
