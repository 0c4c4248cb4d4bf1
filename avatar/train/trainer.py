"""The fit loop: owns optimisers, schedules, densification, logging, checkpoints, faults.

One step renders `batch_size` training frames (TalkingGaussian trains on one full image per step),
composites over the background plate, and minimises `compute_loss`. Static warm-up (no deformation)
for `optim.warmup` steps, as TalkingGaussian does, lets the canonical Gaussians settle first.

Faults: a non-finite loss or gradient skips the step with a warning and stops after
`max_nan_steps` in a row; Ctrl-C writes a checkpoint and re-raises; checkpoints are atomic and
resume restores parameters, optimiser moments, densification state, frame order and every RNG.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from avatar.core.config import from_dict, save_yaml, to_dict
from avatar.core.dataset_format import load_dataset
from avatar.core.torso import torso_track
from avatar.errors import AvatarError
from avatar.evaluation.metrics import masked_mean, psnr, ssim_map
from avatar.model.avatar_model import AvatarModel
from avatar.model.config import ModelConfig
from avatar.train.checkpoint import load_latest, save_checkpoint
from avatar.train.config import DataConfig, FitConfig
from avatar.train.data import PERSON_IDS, FitData
from avatar.train.strategy import DensifyStrategy

AUDIO_ATT_LR_FACTOR = 5.0  # TalkingGaussian trains AudioAttNet at 5x the network rate


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AvatarError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return dev


def person_mask(labels: torch.Tensor) -> torch.Tensor:
    """labels [B, H, W] -> [B, H, W, 1] float, 1 on head/neck/torso."""
    return torch.isin(labels, torch.tensor(PERSON_IDS, device=labels.device))[..., None].float()


def photometric_terms(pred: torch.Tensor, batch: dict, cfg: FitConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, D-SSIM) of pred [B, H, W, 3] against batch rgb, weighted towards the person and the lips."""
    lc = cfg.loss
    gt = batch["rgb"]  # [B, H, W, 3]
    person = person_mask(batch["labels"])  # [B, H, W, 1]
    w = lc.background_weight + (1 - lc.background_weight) * person
    l1 = masked_mean((pred - gt).abs(), w + lc.lips_weight * batch["lips"])
    dssim = 1 - masked_mean(ssim_map(pred, gt, lc.ssim_window), w)
    return l1, dssim


def compute_loss(out: dict, batch: dict, cfg: FitConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + D-SSIM weighted towards the person and the lips, alpha-vs-mask L1, deformation/attention regularisers."""
    lc = cfg.loss
    l1, dssim = photometric_terms(out["rgb"], batch, cfg)
    person = person_mask(batch["labels"])  # [B, H, W, 1]
    alpha = (out["alpha"] - person).abs().mean()
    terms = {"l1": l1, "dssim": dssim, "alpha": alpha}
    loss = l1 + lc.ssim_weight * dssim + lc.alpha_weight * alpha
    d = out["deform"]
    if "d_xyz" in d:
        reg = d["d_xyz"].abs().mean() + d["d_rot"].abs().mean() + d["d_scale"].abs().mean() + d["d_mouth"].abs().mean()
        terms["deform"] = reg
        terms["eye_attention"] = d["w_e"].mean()
        loss = loss + lc.deform_weight * reg + lc.eye_attention_weight * d["w_e"].mean()
    terms["loss"] = loss
    return loss, {k: float(v.detach()) for k, v in terms.items()}


def project_points(x_head: torch.Tensor, viewmats: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Head-frame points [B, L, 3] -> pixels [B, L, 2] through head->camera viewmats [B, 4, 4] and K [3, 3]."""
    cam = torch.einsum("bij,blj->bli", viewmats[:, :3, :3], x_head) + viewmats[:, None, :3, 3]
    uv = cam @ K.T
    return uv[..., :2] / uv[..., 2:3].clamp_min(1e-6)


def landmark_motion_loss(model: AvatarModel, data, frames: np.ndarray, canon: torch.Tensor, mouth_canon: torch.Tensor,
                         mouth_weight: float, rng: np.random.Generator | None = None
                         ) -> tuple[torch.Tensor, dict[str, float]]:
    """Landmark motion loss (ours; not in TalkingGaussian/ER-NeRF, which learn lip motion from pixels alone).

    The face motion field is sampled at the canonical 3D landmarks of the lips, jaw and eyelids
    (`MOTION_LANDMARKS`, the fitted shape that also seeds the head Gaussians), driven by frame k's
    audio window and blink, posed by frame k's head pose and projected: it must land on frame k's
    tracked MediaPipe landmarks. The mouth-interior branch, sampled at the lower inner lip, must
    follow that lip (lower teeth and tongue move with the jaw). Errors are in percent of the face
    size (Huber, delta 1 % ≈ 0.6 px at 128 px) so the loss is resolution independent. It gives the audio path a
    direct geometric target on many frames per step, where pixels give a weak, late signal; it
    needs no rendering, so it also trains during the static warm-up."""
    idx = torch.as_tensor(frames, device=canon.device)
    feats = data.windows(frames, rng)  # rng: a training step, voice augmentation may apply
    audio = model.audio(feats)
    blink = data.blink[idx]
    x, xm = model.point_motion(canon, audio, blink, mouth_canon)
    vm = data.viewmats[idx]
    face = data.face_px[idx][:, None, None] / 100.0  # pixels per percent of the face size
    pred = project_points(x, vm, data.K)
    err = torch.nn.functional.huber_loss(pred / face, data.motion_targets[idx] / face, delta=1.0, reduction="mean")
    pred_m = project_points(xm, vm, data.K)
    err_m = torch.nn.functional.huber_loss(pred_m / face, data.mouth_targets[idx] / face, delta=1.0, reduction="mean")
    with torch.no_grad():
        px = ((pred - data.motion_targets[idx]).norm(dim=-1)).mean()
    return err + mouth_weight * err_m, {"landmark": float(err.detach()), "landmark_mouth": float(err_m.detach()),
                                         "landmark_px": float(px)}


class Trainer:
    """Build (or resume) everything for one run folder; `run()` trains and finishes the run."""

    def __init__(self, cfg: FitConfig, data_dir: str | Path, run_dir: str | Path, progress: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.device = resolve_device(cfg.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        info = load_dataset(data_dir)
        torso_track(info, progress=progress)  # measured once per dataset (cached there), with a bar; FitData reads it
        ckpt = load_latest(self.run_dir)
        if ckpt is not None:  # the architecture and data resolution come from the checkpoint
            saved = ckpt["config"]
            cfg = dataclasses.replace(cfg, model=from_dict(ModelConfig, saved["model"]), data=from_dict(DataConfig, saved["data"]))
        self.cfg = cfg
        self.data_dir = Path(data_dir)
        window = cfg.model.audio_window + cfg.model.att_window - 1
        if cfg.model.audio_window % 2 == 0 or cfg.model.att_window % 2 == 0:
            raise AvatarError("model.audio_window and model.att_window must be odd (windows are centred on a frame)")
        look = cfg.model.audio_lookahead
        if look != -1 and not 0 <= look <= window - 1:
            raise AvatarError(f"model.audio_lookahead must be -1 (centred) or in [0, {window - 1}] "
                              f"(the window has {window} rows), got {look}")
        self.data = FitData(info, cfg.data, window, self.device, future=None if look == -1 else look)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        if ckpt is not None:
            self.model = AvatarModel.from_state(cfg.model, self.data.feat_dim, ckpt["model"])
        else:
            train_feats = self.data.feats[torch.as_tensor(self.data.train_idx)].cpu().numpy()
            # a head trained in its crop takes its first colours from the dataset-resolution frames (sharper than
            # the training resolution's); otherwise from the frames it is trained on
            native = getattr(cfg.model, "layered", False) and cfg.loss.head_crop_weight > 0
            self.model = AvatarModel.from_data(
                cfg.model, shape3d=self.data.pose.shape3d, viewmats=self.data.pose.viewmats(),
                K=(self.data.K_native if native else self.data.K).cpu().numpy(),
                frame=self.data.native_frame if native else self.data.frame, landmarks=self.data.landmarks,
                train_idx=self.data.train_idx, train_feats=train_feats, seed=cfg.seed,
                torso_track=self.data.torso_track.cpu().numpy())
        self.model.to(self.device)
        self.unit = float(self.model.unit)
        from avatar.core.landmarks import LOWER_INNER_LIPS, MOTION_LANDMARKS

        shape3d = np.asarray(self.data.pose.shape3d, np.float32)
        self.lm_canon = torch.as_tensor(shape3d[list(MOTION_LANDMARKS)], device=self.device)  # [L, 3]
        self.lm_mouth_canon = torch.as_tensor(shape3d[list(LOWER_INNER_LIPS)], device=self.device)  # [M, 3]
        self.gauss_opt = self._gaussian_optimizer()
        self.net_opt = self._network_optimizer()
        self.strategy = DensifyStrategy(cfg.strategy, self.unit, cfg.iters)
        self.step = 0
        self.elapsed = 0.0
        self.nan_streak = 0
        self.order: np.ndarray = np.zeros(0, np.int64)
        self.order_pos = 0
        if ckpt is not None:
            self._load_state(ckpt)
        save_yaml(self.cfg, self.run_dir / "config.yaml")
        self.writer = None

    # ---- optimisers and schedules ---------------------------------------------------------------

    def _gaussian_optimizer(self) -> torch.optim.Optimizer:
        oc = self.cfg.optim
        lrs = {"means": oc.means_lr * self.unit, "quats": oc.quat_lr, "log_scales": oc.scale_lr, "opacity_logits": oc.opacity_lr,
               "sh0": oc.sh0_lr, "shN": oc.shN_lr, "skin_logits": oc.skin_lr}
        groups = [{"params": [p], "lr": lrs[name], "name": f"{sname}.{name}"}
                  for sname, gset in self.model.sets().items() for name, p in gset.params.items()]
        return torch.optim.Adam(groups, eps=1e-15, foreach=True)

    def _network_optimizer(self) -> torch.optim.Optimizer:
        oc, m = self.cfg.optim, self.model
        grids = [p for mod in (m.face_motion.enc, m.mouth_motion.enc) for p in mod.parameters()]
        grid_ids = {id(p) for p in grids}
        att = list(m.audio.att.parameters())
        att_ids = {id(p) for p in att}
        nets = [p for mod in (m.face_motion, m.mouth_motion, m.torso_motion, m.audio) for p in mod.parameters()
                if id(p) not in grid_ids and id(p) not in att_ids]
        groups = [{"params": grids, "lr": oc.grid_lr, "base_lr": oc.grid_lr, "weight_decay": 0.0, "name": "grids"},
                  {"params": nets, "lr": oc.net_lr, "base_lr": oc.net_lr, "weight_decay": 0.0, "name": "nets"},
                  {"params": att, "lr": oc.net_lr * AUDIO_ATT_LR_FACTOR, "base_lr": oc.net_lr * AUDIO_ATT_LR_FACTOR,
                   "weight_decay": 1e-4, "name": "audio_att"}]
        return torch.optim.AdamW(groups, betas=(0.9, 0.99), eps=1e-8, foreach=True)

    def _set_learning_rates(self, step: int) -> None:
        oc = self.cfg.optim
        t = step / max(1, self.cfg.iters)
        if self.cfg.time_limit_min > 0:  # with a time budget the schedule follows whichever runs out first
            t = max(t, self.elapsed / (self.cfg.time_limit_min * 60))
        t = min(1.0, t)
        means_lr = math.exp((1 - t) * math.log(oc.means_lr) + t * math.log(oc.means_lr_final)) * self.unit
        for g in self.gauss_opt.param_groups:
            if g["name"].endswith(".means"):
                g["lr"] = means_lr
        for g in self.net_opt.param_groups:
            g["lr"] = g["base_lr"] * oc.net_lr_decay ** t

    # ---- state ----------------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "format": "avatar-checkpoint", "step": self.step, "elapsed": self.elapsed, "config": to_dict(self.cfg),
            "model": self.model.state_dict(), "gauss_opt": self.gauss_opt.state_dict(), "net_opt": self.net_opt.state_dict(),
            "strategy": self.strategy.state_dict(), "nan_streak": self.nan_streak,
            "order": self.order.copy(), "order_pos": self.order_pos,
            "rng": {"torch": torch.get_rng_state(), "numpy": self.rng.bit_generator.state, "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def _load_state(self, ck: dict) -> None:
        self.gauss_opt.load_state_dict(ck["gauss_opt"])
        self.net_opt.load_state_dict(ck["net_opt"])
        self.strategy.load_state_dict(ck["strategy"])
        self.step, self.elapsed, self.nan_streak = int(ck["step"]), float(ck["elapsed"]), int(ck["nan_streak"])
        self.order, self.order_pos = np.asarray(ck["order"]), int(ck["order_pos"])
        torch.set_rng_state(ck["rng"]["torch"])
        self.rng.bit_generator.state = ck["rng"]["numpy"]
        random.setstate(ck["rng"]["python"])
        if ck["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])

    def checkpoint(self) -> Path | None:
        return save_checkpoint(self.run_dir, self.step, self.state(), self.cfg.keep_checkpoints)

    # ---- one step -------------------------------------------------------------------------------

    def _sample(self) -> np.ndarray:
        out = []
        for _ in range(self.cfg.batch_size):
            if self.order_pos >= len(self.order):
                self.order = self.rng.permutation(self.data.train_idx)
                self.order_pos = 0
            out.append(int(self.order[self.order_pos]))
            self.order_pos += 1
        return np.asarray(out)

    def _render(self, batch: dict, step: int, retain: bool = False) -> dict:
        cfg = self.cfg
        static = step < cfg.optim.warmup
        sh = min(cfg.model.sh_degree, step // max(1, cfg.optim.sh_degree_every))
        from avatar.engine.composite import render_layers

        # the layers the engine renders (head crop over the torso layer), at the training resolution
        return render_layers(self.model, batch["viewmats"], None if static else batch["feats"], batch["blink"], self.data.K,
                             self.data.width, self.data.height, self.data.background, sh_degree=sh,
                             retain_means2d=retain, backend=cfg.backend, torso_shift=batch["torso_shift"])

    def _head_crop_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float], list[dict]]:
        """The head layer rendered in its crop at `model.head_px` across the head box and composited over the
        torso layer (at the training resolution) and the dataset-resolution plate, compared with the real
        dataset-resolution frame inside the crop (same L1 + D-SSIM weighting as the full frame). Rendering
        the crop at the density `avatar speak` uses is what keeps the face sharp at native size."""
        from avatar.engine.composite import render_layers

        cfg, data = self.cfg, self.data
        static = self.step < cfg.optim.warmup
        sh = min(cfg.model.sh_degree, self.step // max(1, cfg.optim.sh_degree_every))
        W0, H0 = data.info.width, data.info.height
        out = render_layers(self.model, batch["viewmats"], None if static else batch["feats"], batch["blink"], data.K_native,
                            W0, H0, data.background_native, sh_degree=sh, body_px=max(data.width, data.height),
                            backend=cfg.backend, retain_means2d=True, torso_shift=batch["torso_shift"])
        boxes = out["boxes"]  # [B, 4] the head crops, dataset pixels (one size per frame)
        l1s, dssims = [], []
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            real = data.native_crops([int(batch["idx"][i])], boxes[i:i + 1])
            img = out["rgb"][i]
            pad = (max(0, -x0), max(0, x1 - W0), max(0, -y0), max(0, y1 - H0))
            if any(pad):  # crop reaching past the frame: repeat the edge, as the real crop does
                img = torch.nn.functional.pad(img.permute(2, 0, 1)[None], pad, mode="replicate")[0].permute(1, 2, 0)
                x0, x1, y0, y1 = x0 + pad[0], x1 + pad[0], y0 + pad[2], y1 + pad[2]
            l1, dssim = photometric_terms(img[y0:y1, x0:x1][None], real, cfg)
            l1s.append(l1)
            dssims.append(dssim)
        l1, dssim = torch.stack(l1s).mean(), torch.stack(dssims).mean()
        loss = l1 + cfg.loss.ssim_weight * dssim
        heads = [p for p in out["passes"] if p["counts"][0] > 0]  # the head crops (the body pass is the 128 px one)
        return loss, {"crop_l1": float(l1.detach()), "crop_dssim": float(dssim.detach())}, heads

    def train_step(self) -> dict[str, float] | None:
        """One optimisation step; returns the loss terms, or None when the step was skipped (non-finite)."""
        self._set_learning_rates(self.step)
        batch = self.data.batch(self._sample(), self.rng)
        out = self._render(batch, self.step, retain=True)
        loss, terms = compute_loss(out, batch, self.cfg)
        lc = self.cfg.loss
        if lc.head_crop_weight > 0 and getattr(self.cfg.model, "layered", False):
            crop_loss, crop_terms, crop_passes = self._head_crop_loss(batch)
            # the crop's screen-space gradients join the densification statistics: the face is split where
            # the native-size image asks for detail, not only where the training resolution does
            out = {**out, "passes": list(out.get("passes") or []) + crop_passes}
            loss = loss + lc.head_crop_weight * crop_loss
            terms.update(crop_terms)
            terms["loss"] = float(loss.detach())
        if lc.landmark_weight > 0 and lc.landmark_batch > 0:
            frames = self.rng.choice(self.data.train_idx, size=lc.landmark_batch, replace=len(self.data.train_idx) < lc.landmark_batch)
            lm_loss, lm_terms = landmark_motion_loss(self.model, self.data, frames, self.lm_canon, self.lm_mouth_canon,
                                                     lc.landmark_mouth_weight, self.rng)
            loss = loss + lc.landmark_weight * lm_loss
            terms.update(lm_terms)
            terms["loss"] = float(loss.detach())
        self.gauss_opt.zero_grad(set_to_none=True)
        self.net_opt.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(loss))
        if finite:
            loss.backward()
            finite = all(torch.isfinite(p.grad).all() for opt in (self.gauss_opt, self.net_opt)
                         for g in opt.param_groups for p in g["params"] if p.grad is not None)
        if not finite:
            self.nan_streak += 1
            warnings.warn(f"step {self.step}: non-finite loss or gradient, step skipped ({self.nan_streak} in a row)", stacklevel=2)
            self.gauss_opt.zero_grad(set_to_none=True)
            self.net_opt.zero_grad(set_to_none=True)
            if self.nan_streak >= self.cfg.max_nan_steps:
                raise AvatarError(f"training stopped at step {self.step}: {self.nan_streak} non-finite losses in a row; "
                                  f"lower the learning rates (e.g. --optim.net_lr) or check the dataset")
            self.step += 1
            return None
        self.nan_streak = 0
        self.gauss_opt.step()
        if self.step >= self.cfg.optim.warmup or self.cfg.loss.landmark_weight > 0:
            self.net_opt.step()  # during the static warm-up only the landmark motion loss reaches the networks
        report = self.strategy.step_post_backward(self.model.sets(), self.gauss_opt, out, self.step, self.data.width, self.data.height)
        if report is not None:
            terms["gaussians"] = report["total"]
        self.step += 1
        return terms

    # ---- evaluation during training ---------------------------------------------------------------

    @torch.no_grad()
    def quick_eval(self, n: int | None = None) -> dict[str, float]:
        """Held-out PSNR (full frame and head mask) on `data.val_frames` evenly spaced val frames."""
        from avatar.core.dataset_format import HEAD_LABELS, MASK_LABELS

        val = self.data.val_idx  # avatar.core.dataset_format.held_out_indices, as `avatar eval`
        n = n or self.cfg.data.val_frames
        pick = val[np.linspace(0, len(val) - 1, min(n, len(val))).round().astype(int)]
        full, head, images = [], [], []
        head_ids = torch.tensor([MASK_LABELS[h] for h in HEAD_LABELS], device=self.device)
        for k in pick:
            batch = self.data.batch([int(k)])
            out = self._render(batch, self.step)
            pred = out["rgb"].clamp(0, 1)
            hm = torch.isin(batch["labels"], head_ids)[..., None].float()
            full.append(float(psnr(pred, batch["rgb"])))
            head.append(float(psnr(pred, batch["rgb"], hm)))
            if len(images) < 4:
                images.append(torch.cat([batch["rgb"][0], pred[0]], 1))
        return {"val_psnr": float(np.mean(full)), "val_head_psnr": float(np.mean(head)), "images": images}

    # ---- the loop -------------------------------------------------------------------------------

    def _log(self, terms: dict[str, float]) -> None:
        if self.writer is None:
            return
        for k, v in terms.items():
            self.writer.add_scalar(f"train/{k}", v, self.step)
        self.writer.add_scalar("train/num_gaussians", sum(len(s) for s in self.model.sets().values()), self.step)
        self.writer.add_scalar("train/means_lr", self.gauss_opt.param_groups[0]["lr"], self.step)

    def run(self) -> dict:
        """Train until `iters` (or the time limit), then save model.pt and metrics.json. Returns the metrics."""
        from tqdm import tqdm

        cfg = self.cfg
        if self.step >= cfg.iters and (self.run_dir / "model.pt").is_file():
            print(f"{self.run_dir}: already trained for {self.step} steps (raise --iters to continue)")
            return self.finish(evaluate=not (self.run_dir / "metrics.json").is_file())
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"))
        except Exception as e:  # noqa: BLE001 - logging must never stop training
            warnings.warn(f"TensorBoard logging disabled ({e})", stacklevel=2)
        bar = tqdm(total=cfg.iters, initial=self.step, desc="fit", dynamic_ncols=True, disable=not self.progress, unit="it")
        last = time.perf_counter()
        postfix: dict[str, str] = {}
        try:
            while self.step < cfg.iters:
                terms = self.train_step()
                now = time.perf_counter()
                self.elapsed += now - last
                last = now
                bar.update(1)
                if terms is not None and (self.step % cfg.log_every == 0 or self.step == 1):
                    self._log(terms)
                    postfix["loss"] = f"{terms['loss']:.4f}"
                    postfix["N"] = str(sum(len(s) for s in self.model.sets().values()))
                    bar.set_postfix(postfix, refresh=False)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    ev = self.quick_eval()
                    postfix["val_psnr"] = f"{ev['val_head_psnr']:.2f}"
                    if self.writer is not None:
                        self.writer.add_scalar("val/psnr", ev["val_psnr"], self.step)
                        self.writer.add_scalar("val/head_psnr", ev["val_head_psnr"], self.step)
                        for i, im in enumerate(ev["images"]):
                            self.writer.add_image(f"val/real_vs_rendered_{i}", im.clamp(0, 1).cpu(), self.step, dataformats="HWC")
                    last = time.perf_counter()  # evaluation time is not training time
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.checkpoint()
                    last = time.perf_counter()
                if cfg.time_limit_min > 0 and self.elapsed > cfg.time_limit_min * 60:
                    print(f"\ntime limit of {cfg.time_limit_min} min reached at step {self.step}")
                    break
        except KeyboardInterrupt:
            bar.close()
            path = self.checkpoint()
            print(f"\ninterrupted at step {self.step}; checkpoint {path}; re-run the same command to resume")
            raise
        finally:
            bar.close()
        if self.cfg.iters > self.step:  # stopped by the time limit: record the real length
            self.cfg = dataclasses.replace(self.cfg, iters=self.step)
            save_yaml(self.cfg, self.run_dir / "config.yaml")
        self.checkpoint()
        return self.finish(evaluate=cfg.final_eval)

    def finish(self, evaluate: bool = True) -> dict:
        from avatar.core.io import write_json_atomic
        from avatar.engine.runtime import save_model

        try:
            save_model(self.run_dir / "model.pt", self.model, self.cfg, self.data, self.data_dir)
        except OSError as e:
            raise AvatarError(f"{self.run_dir / 'model.pt'}: cannot write ({e.strerror or e}); the last checkpoint is kept — "
                              f"free disk space and re-run the same command to finish") from None
        metrics = {"fit_time_s": round(self.elapsed, 1), "iters": self.step,
                   "num_gaussians": sum(len(s) for s in self.model.sets().values()),
                   "resolution": [self.data.width, self.data.height], "device": str(self.device)}
        if evaluate:
            from avatar.evaluation.evaluate import evaluate_run

            metrics.update(evaluate_run(self.run_dir, device=str(self.device), write=False))
        if self.writer is not None:
            self.writer.close()
        write_json_atomic(self.run_dir / "metrics.json", metrics)
        return metrics


def fit(cfg: FitConfig, data_dir: str | Path, run_dir: str | Path, progress: bool = True) -> dict:
    """Train (or resume) the run in `run_dir` on the dataset in `data_dir`; returns metrics.json's content."""
    return Trainer(cfg, data_dir, run_dir, progress).run()
