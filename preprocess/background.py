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

from avatar.core.dataset_format import MASK_LABELS
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
        self._seed = seed
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

    def uses(self, index: int) -> bool:
        """Whether the `index`-th added frame (0-based, counting `skip()` calls) enters the plate."""
        return index % self.stride == 0

    def distance(self, labels: np.ndarray) -> np.ndarray:
        """[H, W] float32 distance (px) from each pixel to the nearest person pixel (0 on the person).

        Stateless (callers may compute it in worker threads and pass it to `add`)."""
        import cv2

        bg = cv2.compare(labels, MASK_LABELS["background"], cv2.CMP_EQ)  # 255 / 0
        k = int(round(self.hair_margin))
        if k > 0:
            hair = cv2.compare(labels, MASK_LABELS["hair"], cv2.CMP_EQ)
            box = cv2.boundingRect(hair)  # (x, y, w, h); w == 0 without hair
            if box[2] > 0:  # grow the person around hair before measuring distances
                x0, y0 = max(0, box[0] - k), max(0, box[1] - k)
                x1, y1 = min(labels.shape[1], box[0] + box[2] + k), min(labels.shape[0], box[1] + box[3] + k)
                # only the hair's box grown by k can change (dilation pads with 0 outside the window)
                grown = cv2.dilate(hair[y0:y1, x0:x1], cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
                bg[y0:y1, x0:x1] &= ~grown
        if cv2.countNonZero(bg) < bg.size:
            return cv2.distanceTransform(bg, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        return np.full(labels.shape, 255.0, np.float32)  # nobody in the frame: everything is far

    def skip(self) -> None:
        """Count a frame that is not used (`uses(index)` is False for it) without passing its data."""
        self._calls += 1

    def add(self, rgb: np.ndarray, labels: np.ndarray, dist: np.ndarray | None = None) -> None:
        """Add one frame (RGB uint8 [H, W, 3]) and its label map ([H, W] uint8, MASK_LABELS).

        `dist`: `self.distance(labels)` when already computed (e.g. in a worker thread)."""
        if rgb.shape != (self.height, self.width, 3) or labels.shape != (self.height, self.width):
            raise AvatarError(f"background: frame {rgb.shape} / labels {labels.shape} do not match the plate "
                              f"size {self.height}x{self.width}")
        import cv2

        self._calls += 1
        if (self._calls - 1) % self.stride:
            return
        if dist is None:
            dist = self.distance(labels)  # [H, W]
        far = cv2.compare(dist, self._best_dist, cv2.CMP_GT)  # 255 where farther than ever before
        np.maximum(self._best_dist, dist, out=self._best_dist)
        cv2.copyTo(np.ascontiguousarray(rgb), far, self._best_rgb)  # in place (np.copyto(where=) is 100x slower)
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

    # -- parallel accumulation: workers fill `BackgroundPart`s over consecutive frame ranges, which
    # `merge` folds in in frame order; the result is identical to add() on every frame in order.

    def reservoir_plan(self, num_frames: int) -> dict[int, int]:
        """{frame index: reservoir slot} for the frames a fresh accumulator holds in its reservoir after
        `num_frames` add()/skip() calls. Reservoir sampling draws do not depend on the frames, so the
        survivors are known in advance and workers need to hand over only those."""
        rng = np.random.default_rng(self._seed)
        owner: dict[int, int] = {}  # slot -> frame
        filled = 0
        for seen, k in enumerate(range(0, num_frames, self.stride), start=1):
            if filled < self.max_samples:
                slot = filled
                filled += 1
            else:
                slot = int(rng.integers(0, seen))
                if slot >= self.max_samples:
                    continue
            owner[slot] = k
        return {k: slot for slot, k in owner.items()}

    def part(self, start: int, stop: int, plan: dict[int, int]) -> "BackgroundPart":
        """An empty share of frames [start, stop) for a worker (`plan`: from `reservoir_plan`)."""
        return BackgroundPart(self, start, stop, {k: s for k, s in plan.items() if start <= k < stop})

    def merge(self, part: "BackgroundPart") -> None:
        """Fold in a worker's share; shares must come in frame order, starting at frame 0."""
        import cv2

        if part.start != self._calls or part.calls != part.stop - part.start:
            raise AvatarError(f"background: share of frames [{part.start}, {part.stop}) merged out of order "
                              f"or incomplete ({part.calls} frames added, {self._calls} merged before)")
        far = cv2.compare(part.best_dist, self._best_dist, cv2.CMP_GT)  # strict: earlier frames win ties
        np.maximum(self._best_dist, part.best_dist, out=self._best_dist)
        cv2.copyTo(part.best_rgb, far, self._best_rgb)
        self._visible_count += part.visible_count
        self._calls = part.stop
        self._seen += part.seen
        for slot, (rgb, dist8) in part.kept.items():
            self._rgb[slot] = rgb
            self._dist[slot] = dist8
        self._filled = min(self.max_samples, self._seen)

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

        def block(y0: int) -> tuple[float, int]:
            y1 = min(H, y0 + rows)
            med, cnt, sd = _masked_median(self._rgb[:S, y0:y1], self._dist[:S, y0:y1] > self.margin)
            ok = cnt > 0  # [h, W]
            plate[y0:y1][ok] = med[ok]
            multi = cnt >= 3
            have[y0:y1] = ok
            return float(sd[multi].sum()), int(multi.sum())

        # blocks in 2 threads (sorting and OpenCV release the GIL); sums added in block order
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(2) as pool:
            for bs, bn in pool.map(block, range(0, H, rows)):
                std_sum += bs
                std_n += bn
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


class BackgroundPart:
    """A worker's share of a `BackgroundAccumulator`: frames [start, stop), added in order with `add`
    (every frame, like the accumulator's add). Holds the farthest-from-person colour and visibility of
    its frames and the reservoir frames the plan assigns to it; small enough to pickle."""

    def __init__(self, acc: BackgroundAccumulator, start: int, stop: int, plan: dict[int, int]):
        self.start, self.stop = int(start), int(stop)
        self.stride, self.margin = acc.stride, acc.margin
        self.height, self.width = acc.height, acc.width
        self._acc = acc  # for distance(); not pickled
        self.plan = plan
        self.calls = 0
        self.seen = 0
        self.best_dist = np.zeros((acc.height, acc.width), np.float32)
        self.best_rgb = np.zeros((acc.height, acc.width, 3), np.uint8)
        used = len(range(self.start - self.start % self.stride, self.stop, self.stride))  # upper bound
        self.visible_count = np.zeros((acc.height, acc.width), np.uint8 if used < 256 else np.uint32)
        self.kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # slot -> (rgb, distance clipped to uint8)

    def uses(self, index: int) -> bool:
        return index % self.stride == 0

    def add(self, rgb: np.ndarray, labels: np.ndarray, dist: np.ndarray | None = None) -> None:
        """Add the next frame of the share (RGB uint8 [H, W, 3], labels [H, W] uint8)."""
        import cv2

        k = self.start + self.calls
        if k >= self.stop:
            raise AvatarError(f"background: share [{self.start}, {self.stop}) is full")
        if rgb.shape != (self.height, self.width, 3) or labels.shape != (self.height, self.width):
            raise AvatarError(f"background: frame {rgb.shape} / labels {labels.shape} do not match the plate "
                              f"size {self.height}x{self.width}")
        self.calls += 1
        if not self.uses(k):
            return
        if dist is None:
            dist = self._acc.distance(labels)
        far = cv2.compare(dist, self.best_dist, cv2.CMP_GT)
        np.maximum(self.best_dist, dist, out=self.best_dist)
        cv2.copyTo(np.ascontiguousarray(rgb), far, self.best_rgb)
        np.add(self.visible_count, dist > self.margin, out=self.visible_count, casting="unsafe")
        self.seen += 1
        slot = self.plan.get(k)
        if slot is not None:
            self.kept[slot] = (rgb.copy(), np.minimum(dist, 255.0).astype(np.uint8))

    def skip(self) -> None:
        """Count the next frame without its data (only for frames `uses` rejects)."""
        k = self.start + self.calls
        if self.uses(k):
            raise AvatarError(f"background: frame {k} is sampled for the plate and cannot be skipped")
        self.calls += 1

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_acc"] = None
        return state


def _masked_median(vals: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel median over samples of uint8 `vals` [S, h, W, 3] where `valid` [S, h, W].

    Sorting uint16 keys with invalid samples pushed past 255 is ~10x faster than np.nanmedian.
    Returns (median [h, W, 3] uint8, count [h, W], mean per-channel std [h, W] float32).
    """
    import cv2

    S, h, W = valid.shape
    keys = vals.astype(np.uint16)
    invalid = (~valid).view(np.uint8).reshape(S * h, W)
    # invalid samples + 1024: they sort after every real value (a masked add: numpy's broadcast
    # store over the 3 channels was the slowest step)
    cv2.add(keys.reshape(S * h, W, 3), (1024, 1024, 1024, 0), dst=keys.reshape(S * h, W, 3), mask=invalid)
    keys.sort(axis=0)
    cnt = valid.sum(axis=0)  # [h, W]
    lo = np.clip((cnt - 1) // 2, 0, S - 1)[None, ..., None]  # [1, h, W, 1]
    hi = np.clip(cnt // 2, 0, S - 1)[None, ..., None]
    a = np.take_along_axis(keys, np.broadcast_to(lo, (1,) + keys.shape[1:]), axis=0)[0]
    b = np.take_along_axis(keys, np.broadcast_to(hi, (1,) + keys.shape[1:]), axis=0)[0]
    med = ((a.astype(np.uint32) + b + 1) // 2).clip(0, 255).astype(np.uint8)  # [h, W, 3]
    n = np.maximum(cnt, 1)[..., None].astype(np.float32)
    x = vals.astype(np.float32)
    mask = valid.view(np.uint8).reshape(S * h, W)
    # x * valid and (x - mean)^2 * valid as masked copies into zeros (same values, no broadcasting)
    xw = np.zeros_like(x)
    cv2.copyTo(x.reshape(S * h, W, 3), mask, xw.reshape(S * h, W, 3))
    mean = xw.sum(axis=0) / n
    d2 = (x - mean) ** 2
    xw[:] = 0
    cv2.copyTo(d2.reshape(S * h, W, 3), mask, xw.reshape(S * h, W, 3))
    var = xw.sum(axis=0) / n
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


def source_plate(info, samples: int = 16) -> np.ndarray | None:
    """The background plate at the SOURCE clip's size (uint8 [H, W, 3]) for full-size output (issue 12).

    The dataset keeps frames at `PreprocessConfig.resolution` (512 px long side): a 1920x1080 clip's plate
    would be upscaled 2.1x at full size. Here `samples` evenly spaced source frames are read back at their own
    size (avatar.core.dataset_format.iter_source_frames) with the dataset's label maps upsampled (nearest), and
    run through the same `BackgroundAccumulator` as the masks stage (margins scaled to the source size).
    None when the source is the dataset size already (background.png is then that plate) or is unreadable."""
    import cv2

    from avatar.core.dataset_format import iter_source_frames, source_size

    sw, sh = source_size(info)
    if (sw, sh) == (info.width, info.height):
        return None
    s = max(sw / info.width, sh / info.height)
    idx = np.unique(np.linspace(0, info.num_frames - 1, max(1, samples)).round().astype(int))
    acc = BackgroundAccumulator(sh, sw, max_samples=len(idx), margin=5.0 * s, stride=1)
    try:
        for k, rgb in iter_source_frames(info, idx):
            lab = cv2.imread(str(info.mask_path(k)), cv2.IMREAD_UNCHANGED)
            if lab is None:
                return None
            acc.add(rgb, cv2.resize(lab, (sw, sh), interpolation=cv2.INTER_NEAREST))
    except (AvatarError, OSError, ValueError):
        return None
    return acc.finish()
