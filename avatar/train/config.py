"""The fit configuration: one dataclass per component, a docstring under every field (-> --help)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from avatar.model.config import ModelConfig


@dataclasses.dataclass
class DataConfig:
    """What is read from the dataset folder and at which resolution."""

    resolution: int = 256
    """Training/render resolution: the LONGER image side in pixels, as `PreprocessConfig.resolution` (0 = the dataset's own size; never upscaled)."""
    feature: str | None = None
    """Audio feature name under features/ (None = the dataset's default_feature)."""
    cache_frames: int = 3000
    """Decoded, resized training frames kept in RAM (LRU); bounds memory for long clips."""
    val_frames: int = 8
    """Held-out frames rendered for the PSNR logged during training (evenly spaced over the val split)."""
    voice_aug: float = 0.0
    """Share of training windows whose audio features come from the clip's audio pitch-shifted (pitch and formants,
    `avatar.core.voice.VOICE_SHIFTS` semitones) instead of the clip's own: the motion cannot lean on one voice's
    spectrum, so lip sync holds for other voices and languages (issue 17; 0 = off)."""
    viseme_dropout: float = 0.0
    """Share of training windows whose phone-class (viseme) columns are replaced by their training mean (no
    information): the motion must also follow the spectrum, since the English phone decoder's classes change
    with the voice and mean little in other languages (issue 17; only for the phonetic+spectral features)."""


@dataclasses.dataclass
class LossConfig:
    """Loss weights (TalkingGaussian / 3DGS photometric loss plus mask terms, design/model.md §4.1)."""

    ssim_weight: float = 0.2
    """Weight of D-SSIM = 1 - SSIM next to L1 (TalkingGaussian: L1 + 0.2 D-SSIM)."""
    ssim_window: int = 11
    """Side of the Gaussian SSIM window (sigma 1.5, Wang et al. 2004)."""
    background_weight: float = 0.3
    """Per-pixel weight of background pixels in L1/SSIM relative to person pixels (1)."""
    lips_weight: float = 4.0
    """Extra L1 weight inside the lips rectangle from the landmarks (lieu, 2.5k steps: 4 vs 2 with no eye penalty: +0.7 dB head PSNR)."""
    alpha_weight: float = 0.05
    """Weight of L1 between rendered alpha and the person mask (head + neck + torso)."""
    deform_weight: float = 1e-3
    """Weight of the mean |Δ| regulariser on the face/mouth offsets (TG: 1e-5 on its own scale)."""
    eye_attention_weight: float = 0.0
    """L1 sparsity on the blink attention of all Gaussians (off: applied everywhere it suppressed blinks; TG applies it in the lips rect only)."""
    landmark_weight: float = 0.1
    """Weight of the landmark motion loss: the face motion field, sampled at the canonical lip/jaw/eyelid landmarks and posed, must land on that frame's tracked landmarks (Huber, delta 1, on the error in percent of the face size). 0 = off (photometric supervision only, like TalkingGaussian)."""
    landmark_batch: int = 16
    """Random training frames per step for the landmark motion loss (cheap: no rendering)."""
    landmark_mouth_weight: float = 0.3
    """Relative weight of the same loss for the mouth-interior branch at the lower inner lip (lower teeth/tongue move with it)."""
    head_crop_weight: float = 0.0
    """Weight of the head-crop loss (layered models): each step also renders the head layer in its crop at
    `model.head_px` across the head box, composited at the DATASET resolution (the source's for clips up to
    the preprocess resolution), and compares the crop with the real frame there: the face learns the detail
    the training resolution cannot hold (avatar/engine/composite.py). 0: off."""


@dataclasses.dataclass
class StrategyConfig:
    """Densification and pruning (3DGS adaptive density control, gsplat DefaultStrategy, TG settings §4.4)."""

    refine_start: int = 300
    """First step at which Gaussians are cloned/split/pruned."""
    refine_stop: int = 15000
    """Last step at which Gaussians are cloned/split/pruned."""
    refine_every: int = 100
    """Steps between refinements."""
    grad_threshold: float = 2e-4
    """Mean screen-space (NDC) position gradient above which a Gaussian is cloned or split."""
    split_scale: float = 0.01
    """Gaussians larger than this (in face sizes) are split, smaller ones cloned."""
    prune_opacity: float = 0.02
    """Opacity below which a Gaussian is pruned at refinement (rises to 2x by refine_stop, like TG's rising floor)."""
    prune_scale: float = 0.25
    """Gaussians larger than this (in face sizes) are pruned."""
    max_gaussians: int = 60000
    """No growth beyond this many Gaussians in all (GaussianTalker caps at 50k)."""


@dataclasses.dataclass
class OptimConfig:
    """Learning rates and schedules (3DGS / TalkingGaussian values, design/model.md §4.2)."""

    means_lr: float = 1.6e-4
    """Initial position learning rate, times the face size."""
    means_lr_final: float = 1.6e-6
    """Final position learning rate, times the face size (log-linear decay over `iters`)."""
    sh0_lr: float = 2.5e-3
    """Learning rate of the DC colour."""
    shN_lr: float = 1.25e-4
    """Learning rate of the higher SH bands."""
    opacity_lr: float = 0.05
    """Learning rate of the opacity logits."""
    scale_lr: float = 5e-3
    """Learning rate of the log scales."""
    quat_lr: float = 1e-3
    """Learning rate of the quaternions."""
    skin_lr: float = 1e-2
    """Learning rate of the torso skinning weights."""
    grid_lr: float = 5e-3
    """Learning rate of the hash-grid tables (TG: 5e-3)."""
    net_lr: float = 5e-4
    """Learning rate of the motion/audio MLPs (TG: 5e-4; AudioAttNet gets 5x, TG)."""
    net_lr_decay: float = 0.1
    """Factor the network learning rates reach at the last step (exponential decay)."""
    warmup: int = 500
    """Static steps before the deformation networks are used (TalkingGaussian: 3k static warm-up)."""
    sh_degree_every: int = 1000
    """Steps between raising the active SH degree by one (3DGS)."""


@dataclasses.dataclass
class FitConfig:
    """Everything `avatar fit` needs. Presets: configs/NAME.yaml (cpu, gpu, tiny), loaded by avatar/train/presets.py."""

    iters: int = 6000
    """Training steps (one frame per step)."""
    device: str = "auto"
    """Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ..."""
    seed: int = 0
    """Seed of every random generator (init, frame order)."""
    threads: int = 0
    """CPU threads for torch (0 = leave torch's default)."""
    backend: Literal["auto", "torch", "cpu", "cuda", "gsplat"] = "auto"
    """Rasterizer backend of cuda_ext."""
    batch_size: int = 1
    """Frames per step (TalkingGaussian: 1; GaussianTalker fine stage: 32)."""
    log_every: int = 50
    """Steps between TensorBoard scalar logs."""
    eval_every: int = 500
    """Steps between held-out PSNR evaluations (logged with rendered-vs-real images)."""
    ckpt_every: int = 500
    """Steps between checkpoints (kill -9 loses at most this much work)."""
    keep_checkpoints: int = 2
    """Checkpoints kept in RUN/checkpoints."""
    max_nan_steps: int = 20
    """Stop with an error after this many consecutive non-finite losses."""
    time_limit_min: float = 0.0
    """Stop training after this many minutes and finish the run (0 = no limit)."""
    final_eval: bool = True
    """Run the held-out evaluation (PSNR, SSIM, LMD) at the end and write metrics.json."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """Data options."""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    """Model options."""
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    """Loss weights."""
    strategy: StrategyConfig = dataclasses.field(default_factory=StrategyConfig)
    """Densification/pruning."""
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    """Optimiser options."""
