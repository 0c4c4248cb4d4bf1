"""Static background plate from the pixels the person does not cover, with bounded memory.

ER-NeRF / TalkingGaussian build `bc.jpg` by keeping, per pixel, the colour from the sampled frame in
which the pixel is farthest from the person (distance > 5 px), and filling the rest by nearest-neighbour
copy, which leaves streaks (../shared/design/preprocess.md §5, model.md §1.2). We keep:

1. a reservoir (Vitter's algorithm R, seeded) of at most `max_samples` frames, each stored as RGB
   uint8 + the distance to the person clipped to uint8: memory is O(max_samples * H * W), not O(clip);
2. a streaming farthest-from-person colour over EVERY added frame (TalkingGaussian's rule), which
   covers pixels that are visible only in frames the reservoir did not keep.

`finish()` takes per pixel the temporal median of the reservoir samples where the pixel is more than
`margin` px from the person (robust to flicker and to matte errors), falls back to the farthest colour
where no reservoir sample qualifies, and fills never-visible pixels by push-pull pyramid interpolation
(smooth, streak-free; ER-NeRF's nearest-neighbour fill streaks).
"""

from __future__ import annotations

import numpy as np

from avatar.dataset import MASK_LABELS
from avatar.errors import AvatarError


class BackgroundAccumulator:
    """Accumulate frames + label maps, then `finish()` -> background plate [H, W, 3] uint8."""

    def __init__(self, height: int, width: int, max_samples: int = 32, margin: float = 5.0, seed: int = 0,
                 hair_margin: float | None = None, stride: int = 4):
        """`margin`: px a pixel must be away from the person to count as background (matte edges are soft).
        `hair_margin`: extra px around hair, whose flyaway strands the person matte misses
        (default 2 % of the image size, ~10 px at 512²). `stride`: only every stride-th added frame is
        used (neighbouring frames are near duplicates; ER-NeRF samples every 20th), so `add` is cheap
        to call on every frame; the first frame is always used."""
        if height <= 0 or width <= 0:
            raise AvatarError(f"background plate size must be positive, got {width}x{height}")
        self.height, self.width = int(height), int(width)
        self.max_samples = max(1, int(max_samples))
        self.margin = float(margin)
        self.hair_margin = float(0.02 * max(height, width) if hair_margin is None else hair_margin)
        self._rng = np.random.default_rng(seed)
        self._rgb = np.zeros((self.max_samples, height, width, 3), np.uint8)  # [S, H, W, 3] reservoir
        self._dist = np.zeros((self.max_samples, height, width), np.uint8)  # [S, H, W] px to person, clipped
        self._filled = 0
        self._seen = 0
        self._calls = 0
        self.stride = max(1, int(stride))
        self._best_dist = np.zeros((height, width), np.float32)  # [H, W] farthest distance seen
        self._best_rgb = np.zeros((height, width, 3), np.uint8)  # [H, W, 3] colour at that distance
        self._visible_count = np.zeros((height, width), np.uint32)  # [H, W] frames with dist > margin
        self.stats: dict[str, float] = {}
        """Filled by `finish()`: frames, frames_used, samples, visible_fraction, inpainted_fraction,
        background_std (mean temporal std of visible background, /255 levels: large = moving camera)."""

    def _distance(self, labels: np.ndarray) -> np.ndarray:
        """[H, W] float32 distance (px) from each pixel to the nearest person pixel (0 on the person)."""
        import cv2

        bg = (labels == MASK_LABELS["background"]).astype(np.uint8)
        k = int(round(self.hair_margin))
        if k > 0:
            hair = (labels == MASK_LABELS["hair"]).astype(np.uint8)
            if hair.any():  # grow the person around hair before measuring distances
                hair = cv2.dilate(hair, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
                bg &= 1 - hair
        if not bg.all():
            return cv2.distanceTransform(bg, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        return np.full(labels.shape, 255.0, np.float32)  # nobody in the frame: everything is far

    def add(self, rgb: np.ndarray, labels: np.ndarray) -> None:
        """Add one frame (RGB uint8 [H, W, 3]) and its label map ([H, W] uint8, MASK_LABELS)."""
        if rgb.shape != (self.height, self.width, 3) or labels.shape != (self.height, self.width):
            raise AvatarError(f"background: frame {rgb.shape} / labels {labels.shape} do not match the plate "
                              f"size {self.height}x{self.width}")
        self._calls += 1
        if (self._calls - 1) % self.stride:
            return
        dist = self._distance(labels)  # [H, W]
        far = dist > self._best_dist
        np.maximum(self._best_dist, dist, out=self._best_dist)
        np.copyto(self._best_rgb, rgb, where=far[..., None])  # (boolean indexing is 5x slower)
        np.add(self._visible_count, dist > self.margin, out=self._visible_count, casting="unsafe")
        self._seen += 1
        if self._filled < self.max_samples:  # reservoir sampling (algorithm R)
            slot = self._filled
            self._filled += 1
        else:
            j = int(self._rng.integers(0, self._seen))
            if j >= self.max_samples:
                return
            slot = j
        self._rgb[slot] = rgb
        self._dist[slot] = np.minimum(dist, 255.0).astype(np.uint8)

    def finish(self) -> np.ndarray:
        """The background plate [H, W, 3] uint8 (holes filled). Also fills `self.stats`."""
        if self._seen == 0:
            raise AvatarError("background: no frames were added")
        self.stats = {}
        H, W, S = self.height, self.width, self._filled
        plate = np.zeros((H, W, 3), np.uint8)
        have = np.zeros((H, W), bool)
        std_sum, std_n = 0.0, 0
        rows = max(1, (1 << 22) // max(1, S * W * 3))  # bound the scratch arrays to ~8-16 MB per block
        for y0 in range(0, H, rows):
            y1 = min(H, y0 + rows)
            med, cnt, sd = _masked_median(self._rgb[:S, y0:y1], self._dist[:S, y0:y1] > self.margin)
            ok = cnt > 0  # [h, W]
            plate[y0:y1][ok] = med[ok]
            multi = cnt >= 3
            std_sum += float(sd[multi].sum())
            std_n += int(multi.sum())
            have[y0:y1] = ok
        # pixels visible only in frames the reservoir dropped: farthest-from-person colour
        extra = ~have & (self._best_dist > self.margin)
        plate[extra] = self._best_rgb[extra]
        have |= extra
        holes = ~have
        if holes.any() and have.any():
            plate = _fill_holes(plate, holes)
        elif not have.any():  # the person covers everything in every frame: nothing to go on
            plate[:] = np.median(self._best_rgb.reshape(-1, 3), axis=0).astype(np.uint8)
        self.stats = {
            "frames": float(self._calls),
            "frames_used": float(self._seen),
            "samples": float(S),
            "visible_fraction": float((self._visible_count > 0).mean()),
            "inpainted_fraction": float(holes.mean()),
            "background_std": float(std_sum / std_n) if std_n else 0.0,  # /255 levels; large = moving camera
        }
        return plate


def _masked_median(vals: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel median over samples of uint8 `vals` [S, h, W, 3] where `valid` [S, h, W].

    Sorting uint16 keys with invalid samples pushed past 255 is ~10x faster than np.nanmedian.
    Returns (median [h, W, 3] uint8, count [h, W], mean per-channel std [h, W] float32).
    """
    S = vals.shape[0]
    keys = vals.astype(np.uint16)
    keys[~valid] = 1024  # sorts after every real value
    keys.sort(axis=0)
    cnt = valid.sum(axis=0)  # [h, W]
    lo = np.clip((cnt - 1) // 2, 0, S - 1)[None, ..., None]  # [1, h, W, 1]
    hi = np.clip(cnt // 2, 0, S - 1)[None, ..., None]
    a = np.take_along_axis(keys, np.broadcast_to(lo, (1,) + keys.shape[1:]), axis=0)[0]
    b = np.take_along_axis(keys, np.broadcast_to(hi, (1,) + keys.shape[1:]), axis=0)[0]
    med = ((a.astype(np.uint32) + b + 1) // 2).clip(0, 255).astype(np.uint8)  # [h, W, 3]
    w = valid[..., None].astype(np.float32)  # [S, h, W, 1]
    n = np.maximum(cnt, 1)[..., None].astype(np.float32)
    x = vals.astype(np.float32)
    mean = (x * w).sum(axis=0) / n
    var = ((x - mean) ** 2 * w).sum(axis=0) / n
    return med, cnt, np.sqrt(var).mean(axis=-1)


def _fill_holes(plate: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """Fill `holes` ([H, W] bool) of `plate` by push-pull interpolation (Gortler et al., "The
    Lumigraph", SIGGRAPH 1996, §3.4.1): average the known pixels down an image pyramid (weights =
    known-ness), then fill each level's holes from the coarser level on the way up. Smooth, no
    streaks (cv2.inpaint Telea smeared edge colours across the large hole behind a still speaker),
    and O(H W)."""
    import cv2

    w = (~holes).astype(np.float32)  # [H, W]
    c = plate.astype(np.float32) * w[..., None]  # [H, W, 3] premultiplied
    levels = []
    while True:
        levels.append((c, w))
        h, wd = w.shape
        if min(h, wd) <= 2:
            break
        c = cv2.pyrDown(c)
        w = cv2.pyrDown(w)
    # pull: coarsest level normalised (a fully unknown coarsest level keeps the global mean)
    c, w = levels[-1]
    known = w > 1e-6
    mean = levels[0][0].reshape(-1, 3).sum(0) / max(float(levels[0][1].sum()), 1e-6)
    col = np.where(known[..., None], c / np.maximum(w, 1e-6)[..., None], mean)
    for c, w in reversed(levels[:-1]):
        up = cv2.resize(col, (w.shape[1], w.shape[0]), interpolation=cv2.INTER_LINEAR)
        a = np.clip(w, 0.0, 1.0)[..., None]  # confidence of this level's own average
        col = a * (c / np.maximum(w, 1e-6)[..., None]) + (1 - a) * up
    out = plate.copy()
    out[holes] = np.clip(np.round(col[holes]), 0, 255).astype(np.uint8)
    return out
