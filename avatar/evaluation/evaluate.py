"""Held-out evaluation of a trained run (`avatar eval RUN`).

On the dataset's val split (the last 1/11 of frames, AD-NeRF/ER-NeRF/TalkingGaussian protocol,
design/model.md §1) each frame is rendered from its own real audio features, pose and blink, and
compared to the real frame at the run's render resolution:
  full_psnr / full_ssim   whole frame (background included, composited over the plate)
  head_psnr / head_ssim   inside the head mask (labels face, mouth, eyes, hair of that frame)
  lmd                     landmark distance (AD-NeRF/ER-NeRF "LMD"): mean distance between the 40
                          MediaPipe lip landmarks found on the rendered and on the real frame, in
                          pixels of the dataset resolution (frames are upscaled to it for tracking)
  lmd_no_audio            the same LMD with the audio-driven motion switched off (lip_scale 0): how much
                          the audio actually moves the lips (lmd well below lmd_no_audio = audio-driven)
  mouth_corr              Pearson correlation over the held-out frames between the mouth opening (inner
                          lip gap 13-14 / face height, MediaPipe) on rendered and on real frames
plus RUN/eval/side_by_side.jpg (real above rendered).

At native resolution (issue 12: a user judges the face at full size, and a figure at the 128 px training
resolution hides the blur of an upscaled render) each held-out frame is also rendered at the SOURCE clip's
size (`Avatar.output_frame()`, what `avatar speak` writes) and compared with the source frame itself
(`avatar.core.dataset_format.iter_source_frames`; the dataset frame resized when the source is gone):
  psnr_native_full / ssim_native_full   whole frame
  psnr_native_head / ssim_native_head   the landmark box of that frame padded 10 % on each side
  psnr_train_res / ssim_train_res       = full_psnr / full_ssim, the training-resolution figure, named for contrast
  psnr_labels                           PSNR per preprocessing label (background, face, mouth, eyes, hair,
                                        neck, torso) at native size, masks upscaled nearest: where the error lives
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from avatar.core.dataset_format import (HEAD_LABELS, MASK_LABELS, DatasetInfo, FrameCache, head_box, held_out_indices,
                                        iter_source_frames, load_dataset, resize_frame, source_size)
from avatar.core.landmarks import MOUTH_LANDMARKS, mouth_opening
from avatar.core.torso import torso_track
from avatar.errors import AvatarError
from avatar.evaluation.metrics import psnr, ssim
from avatar.model.audio import window_indices

METRIC_KEYS = ("head_psnr", "full_psnr", "head_ssim", "full_ssim", "lmd", "lmd_no_audio", "mouth_corr",
               "psnr_native_full", "psnr_native_head", "psnr_train_res", "ssim_native_full", "ssim_native_head",
               "ssim_train_res")
LABEL_ORDER = ("background", "face", "mouth", "eyes", "hair", "neck", "torso")
"""Rows of the per-label PSNR table (`psnr_labels`)."""


def _tracker():
    """A MediaPipe face-mesh tracker in image mode (the preprocess one when available)."""
    try:
        from avatar.preprocess.landmarks import FaceMeshTracker

        return FaceMeshTracker(video_mode=False, max_num_faces=1)
    except ImportError:  # pragma: no cover - preprocess not installed
        return None


class HeldOutFrames:
    """A run's held-out frames with their real inputs, at the run's render resolution.

    `batch(k)` gives what the model renders frame k from (its feature window, head pose and blink, as
    in training: edge-padded windows of `av.feature_window` rows with `av.feature_future` look-ahead)
    and the real frame to compare with (rgb [1, H, W, 3] in [0, 1], labels [1, H, W]), resized
    exactly as training resizes (`avatar.core.dataset_format.resize_frame`). The frames are
    `held_out_indices(info)`, the split the in-training PSNR uses too.
    """

    def __init__(self, info: DatasetInfo, av, feature: str | None = None):
        self.info, self.av, self.device = info, av, av.device
        self.width, self.height = int(av.width), int(av.height)
        name = feature or info.default_feature
        pose = info.camera_pose()
        blink = info.blink()
        if pose.R.shape[0] != info.num_frames or len(blink) != info.num_frames:
            raise AvatarError(f"{info.root}: pose.npz/blink.npy do not have one row per frame; re-run preprocess")
        self.viewmats = torch.as_tensor(pose.viewmats(), device=self.device)  # [N, 4, 4]
        self.blink = torch.as_tensor(blink.astype(np.float32), device=self.device)  # [N]
        self.feats = torch.as_tensor(np.array(info.feature(name), np.float32), device=self.device)  # [N, D]
        self.indices = held_out_indices(info)
        self._frames = FrameCache(info, capacity=4)
        self.torso = torch.as_tensor(torso_track(info), device=self.device)  # [N, 2] measured, like the head pose

    def native(self, indices) -> "Iterator[tuple[int, np.ndarray, np.ndarray, str]]":
        """(k, rgb uint8 [H, W, 3], labels uint8 [H, W], reference) at the source size for `indices` (ascending):
        the source clip's frames when readable ("source"), else the dataset frames resized ("dataset")."""
        import cv2

        sw, sh = source_size(self.info)
        it = None
        try:
            it = iter_source_frames(self.info, indices)
            first = next(it, None)
        except (AvatarError, OSError, ValueError, RuntimeError):  # av errors are OSError/ValueError subclasses
            first, it = None, None
        if first is None:
            for k in sorted(int(k) for k in indices):
                rgb, lab = self._frames.get(k)
                yield k, cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_CUBIC), \
                    cv2.resize(lab, (sw, sh), interpolation=cv2.INTER_NEAREST), "dataset"
            return
        for k, rgb in [first, *it]:
            lab = self._frames.get(k)[1]
            yield k, rgb, cv2.resize(lab, (sw, sh), interpolation=cv2.INTER_NEAREST), "source"

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        """Inputs and real frame of frame k: feats [1, W, D], viewmats [1, 4, 4], blink [1], torso_shift [1, 2]
        (measured in the frame, avatar/core/torso.py), rgb, labels."""
        rgb, lab = resize_frame(*self._frames.get(int(k)), self.width, self.height)
        idx = torch.tensor([int(k)], device=self.device)
        win = window_indices(idx, self.av.feature_window, self.av.feature_future, self.feats.shape[0])
        return {"feats": self.feats[win], "viewmats": self.viewmats[idx], "blink": self.blink[idx],
                "torso_shift": self.torso[idx],
                "rgb": torch.as_tensor(rgb[None], device=self.device).float() / 255.0,  # [1, H, W, 3]
                "labels": torch.as_tensor(lab[None], device=self.device).long()}  # [1, H, W]


def evaluate_run(run_dir: str | Path, device: str = "auto", write: bool = True, max_frames: int = 0,
                 lmd: bool = True, progress: bool = False) -> dict:
    """Render the held-out frames of a finished run and compute the metrics (see module docstring)."""
    import cv2
    from tqdm import tqdm

    from avatar.core.io import atomic_path, write_json_atomic
    from avatar.engine import Avatar

    run_dir = Path(run_dir)
    av = Avatar.load(run_dir, device=device)
    root = Path(av.dataset.get("root", ""))
    if not (root / "dataset.json").is_file() and (run_dir / "data" / "dataset.json").is_file():
        root = run_dir / "data"
    info = load_dataset(root)
    feature = av.feature_meta.get("name") or (av.config.get("data") or {}).get("feature")
    data = HeldOutFrames(info, av, feature)
    val = data.indices
    if max_frames and len(val) > max_frames:
        val = val[np.linspace(0, len(val) - 1, max_frames).round().astype(int)]
    head_ids = torch.tensor([MASK_LABELS[h] for h in HEAD_LABELS], device=av.device)
    rows: dict[str, list[float]] = {k: [] for k in ("head_psnr", "full_psnr", "head_ssim", "full_ssim")}
    lmd_vals: list[float] = []
    lmd_static: list[float] = []
    open_real: list[float] = []
    open_fake: list[float] = []
    sheet: list[tuple[np.ndarray, np.ndarray]] = []
    show = set(val[np.linspace(0, len(val) - 1, min(4, len(val))).round().astype(int)].tolist())
    up = (info.width, info.height)
    trk_real, trk_fake = (_tracker(), _tracker()) if lmd else (None, None)
    with contextlib.ExitStack() as stack:
        if trk_real is not None:
            stack.enter_context(trk_real)
            stack.enter_context(trk_fake)
        for k in tqdm(val, desc="eval", disable=not progress, dynamic_ncols=True):
            batch = data.batch(int(k))
            pred = av.render(batch["feats"], batch["viewmats"], batch["blink"],
                             torso_shift=batch["torso_shift"])["rgb"]  # [1, H, W, 3]
            gt = batch["rgb"]
            hm = torch.isin(batch["labels"], head_ids)[..., None].float()
            rows["full_psnr"].append(float(psnr(pred, gt)))
            rows["full_ssim"].append(float(ssim(pred, gt)))
            if hm.sum() > 0:
                rows["head_psnr"].append(float(psnr(pred, gt, hm)))
                rows["head_ssim"].append(float(ssim(pred, gt, hm)))
            p8 = (pred[0].cpu().numpy() * 255).round().astype(np.uint8)
            g8 = (gt[0].cpu().numpy() * 255).round().astype(np.uint8)
            if trk_real is not None:
                a = trk_real(cv2.resize(g8, up, interpolation=cv2.INTER_CUBIC))
                b = trk_fake(cv2.resize(p8, up, interpolation=cv2.INTER_CUBIC))
                idx = list(MOUTH_LANDMARKS)
                if a is not None and b is not None:
                    lmd_vals.append(float(np.linalg.norm(a[idx] - b[idx], axis=-1).mean()))
                    open_real.append(float(mouth_opening(a[None])[0]))
                    open_fake.append(float(mouth_opening(b[None])[0]))
                if a is not None:
                    still = av.render(batch["feats"], batch["viewmats"], batch["blink"], lip_scale=0.0,
                                      torso_shift=batch["torso_shift"])["rgb"]
                    s8 = (still[0].cpu().numpy() * 255).round().astype(np.uint8)
                    c = trk_fake(cv2.resize(s8, up, interpolation=cv2.INTER_CUBIC))
                    if c is not None:
                        lmd_static.append(float(np.linalg.norm(a[idx] - c[idx], axis=-1).mean()))
            if int(k) in show:
                sheet.append((g8, p8))
    metrics = {k: (float(np.mean(v)) if v else float("nan")) for k, v in rows.items()}
    metrics.update(native_metrics(av, data, info, val, progress))
    metrics["psnr_train_res"], metrics["ssim_train_res"] = metrics["full_psnr"], metrics["full_ssim"]
    metrics["lmd"] = float(np.mean(lmd_vals)) if lmd_vals else float("nan")
    metrics["lmd_no_audio"] = float(np.mean(lmd_static)) if lmd_static else float("nan")
    ok = len(open_real) >= 3 and np.std(open_real) > 1e-6 and np.std(open_fake) > 1e-6
    metrics["mouth_corr"] = float(np.corrcoef(open_real, open_fake)[0, 1]) if ok else float("nan")
    metrics["lmd_frames"] = len(lmd_vals)
    metrics["eval_frames"] = int(len(val))
    metrics["eval_resolution"] = [data.width, data.height]
    if sheet:
        img = np.concatenate([np.concatenate([g for g, _ in sheet], 1), np.concatenate([p for _, p in sheet], 1)], 0)
        if img.shape[0] < 256:
            f = int(np.ceil(256 / img.shape[0]))
            img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST)
        out = run_dir / "eval" / "side_by_side.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            cv2.imwrite(str(tmp), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        metrics["side_by_side"] = str(out)
    if write:
        import json

        path = run_dir / "metrics.json"
        old = {}
        if path.is_file():
            with contextlib.suppress(ValueError):
                old = json.loads(path.read_text())
        old.update(metrics)
        write_json_atomic(path, old)
    return metrics


def _psnr_np(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)) / 255.0 ** 2
    return float(-10 * np.log10(max(mse, 1e-10)))


@torch.no_grad()
def native_metrics(av, data: HeldOutFrames, info: DatasetInfo, val, progress: bool = False) -> dict:
    """PSNR/SSIM at the source size on the held-out frames `val` (module docstring), one frame in memory at a time."""
    frame = av.output_frame()
    W, H = frame.width, frame.height
    lm = info.landmarks()
    sx, sy = W / info.width, H / info.height
    full_p, full_s, head_p, head_s = [], [], [], []
    sq: dict[str, list[float]] = {n: [] for n in LABEL_ORDER}  # per label: summed squared error, pixels
    cnt: dict[str, list[float]] = {n: [] for n in LABEL_ORDER}
    ref = "source"
    for k, rgb, lab, ref in data.native(val):
        b = data.batch(k)
        pred = av.render(b["feats"], b["viewmats"], b["blink"], frame=frame, torso_shift=b["torso_shift"])["rgb"]
        p8 = (pred[0].cpu().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
        gt = torch.as_tensor(rgb[None], device=pred.device).float() / 255.0
        pq = torch.as_tensor(p8[None], device=pred.device).float() / 255.0
        full_p.append(_psnr_np(p8, rgb))
        full_s.append(float(ssim(pq, gt)))
        x0, y0, x1, y1 = head_box(lm[k], sx, sy, W, H, 0.1)
        if x1 - x0 >= 8 and y1 - y0 >= 8:
            head_p.append(_psnr_np(p8[y0:y1, x0:x1], rgb[y0:y1, x0:x1]))
            head_s.append(float(ssim(pq[:, y0:y1, x0:x1], gt[:, y0:y1, x0:x1])))
        err = ((p8.astype(np.float64) - rgb.astype(np.float64)) / 255.0) ** 2  # [H, W, 3]
        for name in LABEL_ORDER:
            m = lab == MASK_LABELS[name]
            sq[name].append(float(err[m].sum()))
            cnt[name].append(float(m.sum()) * 3)
    out = {"psnr_native_full": float(np.mean(full_p)) if full_p else float("nan"),
           "ssim_native_full": float(np.mean(full_s)) if full_s else float("nan"),
           "psnr_native_head": float(np.mean(head_p)) if head_p else float("nan"),
           "ssim_native_head": float(np.mean(head_s)) if head_s else float("nan"),
           "native_resolution": [W, H], "native_reference": ref}
    labels = {}
    for name in LABEL_ORDER:
        n = sum(cnt[name])
        if n > 0:
            labels[name] = float(-10 * np.log10(max(sum(sq[name]) / n, 1e-10)))
    out["psnr_labels"] = labels
    total = sum(sum(v) for v in sq.values())
    out["error_share_labels"] = {n: float(sum(sq[n]) / total) for n in labels} if total > 0 else {}
    return out
