"""Per-frame semantic label maps (avatar.core.dataset_format.MASK_LABELS) from a person matte + face-mesh polygons.

No face-parsing network (BiSeNet's checkpoint is a drive link, preprocess.md §1): the person matte comes
from MediaPipe SelfieSegmentation (model shipped in the mediapipe wheel) and the face regions from the
478 face-mesh landmarks, following the recipe of ../shared/design/preprocess.md §4:

- mouth  = inside the inner-lip contour (teeth, tongue);
- eyes   = inside the two eyelid contours;
- face   = inside the face oval (skin incl. lips, brows, nose), where the matte is not clearly background,
           plus skin-coloured forehead pixels just above the oval (the mesh's oval stops mid-forehead);
- hair   = person pixels above the "cut line" (the lower face oval from jaw corner 172 around the chin
           to 397, extended horizontally to the image borders) inside a generous head box, not face;
- neck   = person pixels below the cut line inside a quad hanging from the jaw corners (172, 397, widened)
           down to 0.6 chin-to-nose-bridge lengths below the chin (design note's shoulder heuristic [U]),
           with the face's skin chroma (YCrCb) when the frame is given, so collars/scarves are torso;
- torso  = every other person pixel; background = the rest.

Pixels are painted in priority order (torso < neck < hair < face < eyes < mouth), so labels are
disjoint by construction. Known limits: long hair below the jaw becomes torso/neck; ears below the
cut line become neck/torso; hands in front of the face become face where they are inside the oval.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from avatar.core.dataset_format import MASK_LABELS
from avatar.core.landmarks import (CHIN, FACE_OVAL, JAW, JAW_LEFT, JAW_RIGHT, LEFT_EYE, LIPS_INNER,
                                    LIPS_OUTER, NOSE_BRIDGE, RIGHT_EYE)
from avatar.errors import AvatarError

# Landmark loops (preprocess.md §2b) come from avatar.core.landmarks. The lower face oval between the jaw
# corners (JAW) is the head/body cut line (extended horizontally outwards from the jaw corners, so hair and ears beside the cheeks stay head).
CUT_LINE = tuple(reversed(JAW))  # from the subject's left jaw corner (397) to the right (172)

_SHIFT = 4  # cv2.fillPoly fractional bits: sub-pixel polygon rasterisation (1/16 px)

L_BG, L_FACE, L_MOUTH, L_EYES = (MASK_LABELS[k] for k in ("background", "face", "mouth", "eyes"))
L_HAIR, L_NECK, L_TORSO = (MASK_LABELS[k] for k in ("hair", "neck", "torso"))


def _fixed(pts: np.ndarray) -> np.ndarray:
    """[P, 2] float pixels -> int32 fixed-point vertices (_SHIFT fractional bits) for cv2.fillPoly."""
    p = np.round(np.asarray(pts, np.float64) * (1 << _SHIFT))
    # keep coordinates inside int range when a polygon extends far outside the image
    lim = float(1 << 28)
    np.clip(p, -lim, lim, out=p)
    return p.astype(np.int32)


def _fill(shape: tuple[int, int], pts: np.ndarray, offset: tuple[int, int] = (0, 0), *more: np.ndarray) -> np.ndarray:
    """[H, W] bool mask of the polygon `pts` ([P, 2] float pixels, x right y down), OR the polygons `more`.

    `offset` (x, y) whole pixels: rasterise into the window of a larger image whose top-left corner
    is at `offset` (the vertices are moved in fixed point, so the pixels are exactly those of the
    full-image rasterisation)."""
    import cv2

    m = np.zeros(shape, np.uint8)
    for q in (pts,) + more:  # one fillPoly call per polygon: overlaps are filled (not XOR-ed)
        p = _fixed(q)
        if offset[0] or offset[1]:
            p -= np.array([offset[0] << _SHIFT, offset[1] << _SHIFT], np.int32)
        cv2.fillPoly(m, [p.reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return m.view(bool)


def _hist_median(hist: np.ndarray, n: int, values: np.ndarray) -> np.float32:
    """np.median of a multiset given as counts `hist[i]` of `values[i]` (float32, any order), n = hist.sum()."""
    order = np.argsort(values, kind="stable")
    cs = np.cumsum(hist[order])
    lo = values[order[np.searchsorted(cs, (n - 1) // 2, side="right")]]
    hi = values[order[np.searchsorted(cs, n // 2, side="right")]]
    return np.mean(np.array([lo, hi], np.float32))  # what np.median does with the middle pair


_LEVELS = np.arange(256, dtype=np.float32)


def _skin_model(rgb: np.ndarray, skin: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Robust chroma model of the `skin` pixels: (median, robust std) of YCrCb (Cr, Cb), or None.

    Computed from the chroma histograms of a [::3, ::3] subsample (the same figures as np.median
    over the pixels, without gathering them)."""
    import cv2

    # a [::3, ::3] subsample of the face pixels is plenty for a median: every third row, converted
    # whole, with a mask on every third column
    sub = np.zeros((len(range(0, skin.shape[0], 3)), skin.shape[1]), np.uint8)
    sub[:, ::3] = skin[::3, ::3]
    n = int(np.count_nonzero(sub))
    if n < 20:
        return None
    ycc = cv2.cvtColor(rgb[::3], cv2.COLOR_RGB2YCrCb)
    med = np.zeros(2, np.float32)
    mad = np.zeros(2, np.float32)
    for i, ch in enumerate((1, 2)):
        h = cv2.calcHist([ycc], [ch], sub, [256], [0, 256]).ravel()
        med[i] = _hist_median(h, n, _LEVELS)
        mad[i] = _hist_median(h, n, np.abs(_LEVELS - med[i]))
    mad = np.maximum(1.4826 * mad, 3.0)  # robust std, >= 3 levels
    return med, mad


_CLOSE_7 = None  # 7x7 ellipse (closing of the skin test's speckles)


def _skin_like(rgb: np.ndarray, model: tuple[np.ndarray, np.ndarray] | None, where: np.ndarray,
               k: float = 4.0) -> np.ndarray:
    """[H, W] bool: pixels inside `where` whose chroma (YCrCb Cr, Cb) is within k robust standard
    deviations of the skin model (the face's chroma). Chroma ignores most shading.

    The test is a 256x256 table over (Cr, Cb) looked up by cv2.calcBackProject (identical to the
    per-pixel float32 arithmetic, ~10x faster)."""
    import cv2

    global _CLOSE_7
    if model is None:
        return where.copy()
    rows = np.flatnonzero(where.any(axis=1))
    out = np.zeros(where.shape, bool)
    if len(rows) == 0:
        return out
    cols = np.flatnonzero(where[rows[0]:rows[-1] + 1].any(axis=0))
    med, mad = model
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    ycc = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2YCrCb)
    t_cr = ((_LEVELS - med[0]) / mad[0]) ** 2
    t_cb = ((_LEVELS - med[1]) / mad[1]) ** 2
    table = ((t_cr[:, None] + t_cb[None, :]) < k * k).astype(np.float32) * 255  # [Cr, Cb]
    ok = cv2.calcBackProject([ycc], [1, 2], table, [0, 256, 0, 256], 1)
    if _CLOSE_7 is None:
        _CLOSE_7 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    ok = cv2.morphologyEx(ok, cv2.MORPH_CLOSE, _CLOSE_7)  # fill speckles
    out[y0:y1, x0:x1] = (ok > 0) & where[y0:y1, x0:x1]
    return out


def labels_from_matte(matte: np.ndarray, landmarks: np.ndarray | None, person_threshold: float = 0.5,
                      face_threshold: float = 0.1, neck_length: float = 0.6, neck_widen: float = 0.1,
                      head_box: float = 0.7, rgb: np.ndarray | None = None, forehead: float = 1.2) -> np.ndarray:
    """Label map [H, W] uint8 from a person matte ([H, W] float in [0, 1]) and face landmarks.

    `landmarks`: [>=468, 2] pixels (x right, y down); None or non-finite -> only background/torso.
    `neck_length`: neck bottom below the chin in chin-to-nose-bridge lengths. `neck_widen`: neck quad
    widening on each side as a share of the jaw width. `head_box`: hair is searched within the face
    oval's bounding box grown by this share of its width (sides) and its height (top).
    `rgb` ([H, W, 3] uint8, optional): when given, neck pixels must also have the face's skin chroma
    (except a strip just under the jaw), so a collar or scarf inside the neck quad becomes torso; and
    skin-coloured pixels above the oval inside an oval stretched upwards by `forehead` become face
    (the mesh's oval stops mid-forehead).
    """
    H, W = matte.shape[:2]
    person = matte > person_threshold  # [H, W]
    labels = person.view(np.uint8) * np.uint8(L_TORSO)  # [H, W] torso / background
    if landmarks is None:
        return labels
    lm = np.asarray(landmarks, np.float64)[:, :2]  # [478, 2]
    if lm.shape[0] < 468 or not np.isfinite(lm[:468]).all():
        return labels
    big = 4.0 * max(H, W)

    # --- geometry (pixels, full image)
    # head area = above the cut line (lower oval 397..172, extended horizontally to the borders)
    cut = lm[list(CUT_LINE)]
    y_r, y_l = cut[0, 1], cut[-1, 1]
    head_poly = np.concatenate([[[big, y_r]], cut, [[-big, y_l], [-big, -big], [big, -big]]])
    oval = lm[list(FACE_OVAL)]
    x0, y0 = oval.min(axis=0)
    x1, y1 = oval.max(axis=0)
    fw, fh = x1 - x0, y1 - y0
    # hair box: oval box grown by head_box (sides, top), open downwards (the cut line bounds it)
    bx0, bx1 = int(max(0, np.floor(x0 - head_box * fw))), int(min(W, np.ceil(x1 + head_box * fw)))
    by0 = int(max(0, np.floor(y0 - head_box * fh)))
    # neck quad hanging from the widened jaw corners along the face's down axis
    chin, bridge = lm[CHIN], lm[NOSE_BRIDGE]
    down = chin - bridge
    length = float(np.linalg.norm(down))
    polys = [oval, lm[list(RIGHT_EYE)], lm[list(LEFT_EYE)], lm[list(LIPS_OUTER)], lm[list(LIPS_INNER)]]
    neck_quad = near_jaw = tall = None
    if length > 1e-6:
        down = down / length
        right = np.array([-down[1], down[0]])  # perpendicular
        a, b = lm[JAW_RIGHT], lm[JAW_LEFT]
        jaw_w = float(np.linalg.norm(b - a))
        if np.dot(b - a, right) < 0:
            right = -right
        a = a - neck_widen * jaw_w * right
        b = b + neck_widen * jaw_w * right
        bottom = float(np.dot(chin, down)) + neck_length * length  # along `down`
        c = b + (bottom - np.dot(b, down)) * down
        d = a + (bottom - np.dot(a, down)) * down
        neck_quad = np.stack([a, b, c, d])
        polys.append(neck_quad)
        if rgb is not None:
            near_jaw = np.concatenate([cut, cut[::-1] + 0.25 * length * down])
            polys.append(near_jaw)
    if rgb is not None:
        # forehead above the oval (whose top is mid-forehead): a taller oval
        centre = oval.mean(axis=0)
        tall = oval.copy()
        upper = oval[:, 1] < centre[1]
        tall[upper, 1] = centre[1] + forehead * (oval[upper, 1] - centre[1])
        polys.append(tall)

    # --- regions of interest. S: the polygons' boxes (oval, eyes, lips, neck quad, forehead), which
    # hold every face/eyes/mouth/neck pixel. R: S and the hair box (down to the cut line). Outside R
    # the labels are torso/background. Polygons are rasterised in windows that contain them whole
    # (or end at the image border), so the pixels are those of a full-image rasterisation; window
    # corners are on the 3-pixel grid so the skin model's [::3, ::3] subsample is the same too.
    allp = np.concatenate(polys)
    lo = np.floor(allp.min(axis=0)) - 2
    hi = np.ceil(allp.max(axis=0)) + 3
    sx0, sx1 = int(np.clip(lo[0], 0, W)), int(np.clip(hi[0], 0, W))
    sy0, sy1 = int(np.clip(lo[1], 0, H)), int(np.clip(hi[1], 0, H))
    sx0 -= sx0 % 3
    sy0 -= sy0 % 3
    hy1 = int(np.clip(np.ceil(cut[:, 1].max()) + 3, 0, H))  # hair stops at the cut line
    boxes = [(sx0, sx1, sy0, sy1)] if sx1 > sx0 and sy1 > sy0 else []
    if bx1 > bx0 and hy1 > by0:
        boxes.append((bx0, bx1, by0, hy1))
    if not boxes:
        return labels
    rx0, rx1 = min(bb[0] for bb in boxes), max(bb[1] for bb in boxes)
    ry0, ry1 = min(bb[2] for bb in boxes), max(bb[3] for bb in boxes)
    above = _fill((ry1 - ry0, rx1 - rx0), head_poly, (rx0, ry0))  # [R]
    # hair: person above the cut line inside the hair box
    hr = (slice(max(0, by0 - ry0), max(0, hy1 - ry0)), slice(max(0, bx0 - rx0), max(0, bx1 - rx0)))
    _paint(labels[ry0:ry1, rx0:rx1][hr], person[ry0:ry1, rx0:rx1][hr] & above[hr], L_HAIR)
    if sx1 <= sx0 or sy1 <= sy0:
        return labels
    shape = (sy1 - sy0, sx1 - sx0)
    off = (sx0, sy0)
    above = above[sy0 - ry0:sy1 - ry0, sx0 - rx0:sx1 - rx0]  # [S] views
    per = person[sy0:sy1, sx0:sx1]
    oval_mask = _fill(shape, oval, off)
    face = oval_mask & (matte[sy0:sy1, sx0:sx1] > face_threshold)
    eyes = _fill(shape, polys[1], off, polys[2])
    if neck_quad is not None:
        neck = _fill(shape, neck_quad, off)
        neck &= per
        neck &= ~above
    else:
        neck = np.zeros(shape, bool)
    if rgb is not None:
        rgb = rgb[sy0:sy1, sx0:sx1]
        skin = _skin_model(rgb, face & ~_fill(shape, polys[3], off, polys[1], polys[2]))
        if neck.any():
            # the strip just under the jaw is neck whatever its colour (it is often in shadow)
            neck = _skin_like(rgb, skin, neck) | (neck & _fill(shape, near_jaw, off))
        # skin-coloured pixels of the taller oval above the face oval are forehead
        brow = _fill(shape, tall, off)
        brow &= per
        brow &= above
        brow &= ~oval_mask
        if skin is not None and brow.any():
            face |= _skin_like(rgb, skin, brow, k=3.0)
    lab = labels[sy0:sy1, sx0:sx1]  # a view: painted in priority order
    _paint(lab, neck, L_NECK)
    _paint(lab, face, L_FACE)
    _paint(lab, eyes, L_EYES)
    _paint(lab, _fill(shape, polys[4], off), L_MOUTH)
    return labels


def _paint(dst: np.ndarray, mask: np.ndarray, value: int) -> None:
    """dst[mask] = value (uint8 view, bool mask of the same shape), 5x faster than numpy's masked store."""
    import cv2

    if dst.size == 0:
        return
    src = np.full(dst.shape, value, np.uint8)
    if cv2.copyTo(src, mask.view(np.uint8), dst) is not dst:  # OpenCV wrote elsewhere: do it with numpy
        dst[mask] = value


class MaskSegmenter:
    """Label maps per frame: MediaPipe SelfieSegmentation matte + face-mesh polygons.

    `model_selection=0` (general model, 256x256 input) is the default: our frames are square portrait
    crops, for which the landscape model (144x256) wastes resolution (preprocess.md §4).
    Use as a context manager (releases the MediaPipe graph):

        with MaskSegmenter() as seg:
            labels = seg(rgb, landmarks)  # [H, W] uint8, MASK_LABELS
    """

    def __init__(self, model_selection: Literal[0, 1] = 0, person_threshold: float = 0.5,
                 neck_length: float = 0.6, temporal_smoothing: float = 0.0, skin_neck: bool = True):
        """`temporal_smoothing` in [0, 1): weight of the previous frame's matte (EMA), 0 = off.
        `skin_neck`: neck pixels must have the face's skin chroma (collars become torso)."""
        if model_selection not in (0, 1):
            raise AvatarError(f"selfie segmentation model_selection must be 0 or 1, got {model_selection}")
        self.model_selection = model_selection
        self.person_threshold = float(person_threshold)
        self.neck_length = float(neck_length)
        self.temporal_smoothing = float(temporal_smoothing)
        self.skin_neck = bool(skin_neck)
        self._seg = None
        self._prev: np.ndarray | None = None
        self.last_matte: np.ndarray | None = None
        """[H, W] float32 person matte of the last call (for plates / previews)."""

    def _segmenter(self):
        if self._seg is None:
            from mediapipe.python.solutions.selfie_segmentation import SelfieSegmentation

            self._seg = SelfieSegmentation(model_selection=self.model_selection)
        return self._seg

    def open(self) -> "MaskSegmenter":
        """Build the MediaPipe graph now (it is otherwise built on the first frame)."""
        self._segmenter()
        return self

    def matte(self, rgb: np.ndarray) -> np.ndarray:
        """[H, W] float32 person probability for an RGB uint8 frame."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise AvatarError(f"mask segmentation needs an RGB uint8 [H, W, 3] frame, got {rgb.dtype} {rgb.shape}")
        res = self._segmenter().process(np.ascontiguousarray(rgb))
        m = res.segmentation_mask
        if m is None:
            m = np.zeros(rgb.shape[:2], np.float32)
        m = np.asarray(m, np.float32)
        a = self.temporal_smoothing
        if a > 0 and self._prev is not None and self._prev.shape == m.shape:
            m = a * self._prev + (1 - a) * m
        self._prev = m
        return m

    def __call__(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Labels [H, W] uint8 (MASK_LABELS) for one RGB frame and its landmarks [478, 2] in pixels."""
        m = self.matte(rgb)
        self.last_matte = m
        return labels_from_matte(m, landmarks, person_threshold=self.person_threshold,
                                 neck_length=self.neck_length, rgb=rgb if self.skin_neck else None)

    def reset(self) -> None:
        """Forget the temporal state (call between clips)."""
        self._prev = None

    def close(self) -> None:
        if self._seg is not None:
            self._seg.close()
            self._seg = None

    def __enter__(self) -> "MaskSegmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
