"""`PreprocessConfig`: every knob of `avatar preprocess`, saved as DATA_DIR/preprocess.yaml."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from avatar.core.dataset_format import VAL_SHARE

FeatureKind = Literal["phonetic+spectral", "wav2vec2", "hubert"]
"""Audio feature extractors (see avatar.features)."""


@dataclasses.dataclass
class PreprocessConfig:
    """Configuration of the preprocessing pipeline (video -> dataset folder)."""

    resolution: int = 512
    """Size of the frames' LONGER side in pixels (as `DataConfig.resolution` in training); larger videos are downscaled (aspect kept, never upscaled)."""
    fps: float = 25.0
    """Dataset frame rate; the source is resampled to it from timestamps (nearest source frame per output time)."""
    jpeg_quality: int = 95
    """JPEG quality of the stored frames (frames/%06d.jpg)."""
    min_duration: float = 3.0
    """Shortest accepted clip in seconds (after aligning video and audio); shorter clips are refused."""
    max_missing_share: float = 0.1
    """Largest share of frames without a detected face before preprocessing stops with an error."""
    max_gap_seconds: float = 0.5
    """Longest face-lost stretch (seconds) that is filled by interpolation; a longer one is an error."""
    min_face_confidence: float = 0.5
    """MediaPipe face detection / tracking confidence (min_detection_confidence, min_tracking_confidence)."""
    threads: int = 2
    """Parallel workers: threads for the landmark stage (MediaPipe runs its graphs outside the GIL), processes for the mask stage (its label rules are Python-bound)."""
    fov_deg: float = 24.0
    """Assumed field of view across the frame's short side (degrees): initialises and regularises the focal length (24 deg = focal 1204 px at 512 px)."""
    focal_prior_weight: float = 1.0
    """Weight of the log-focal prior in the bundle adjustment (the focal is weakly observable from landmarks)."""
    pose_smooth_rot: float = 100.0
    """Temporal smoothness weight on the rotations' second differences (px per radian)."""
    pose_smooth_trans: float = 10.0
    """Temporal smoothness weight on the x/y translations' second differences (px per cm)."""
    pose_smooth_depth: float = 100.0
    """Temporal smoothness weight on the depth's second difference (px per cm; depth is 10x less observable than x/y)."""
    pose_iters: int = 100
    """L-BFGS iterations of the bundle adjustment."""
    features: FeatureKind = "phonetic+spectral"
    """Audio feature extractor for the default feature (wav2vec2/hubert need --model-dir)."""
    model_dir: Path | None = None
    """Local transformers model directory for the wav2vec2/hubert features (nothing is downloaded)."""
    import_features: Path | None = None
    """Optional precomputed feature array (.npy, e.g. ER-NeRF aud_ds.npy / aud_hu.npy) imported as an extra feature."""
    no_audio: bool = False
    """Build a silent dataset (no audio.wav, no audio features) when the video has no audio track."""
    preview: bool = False
    """Also write preview/contact_sheet.jpg and preview/overlay.mp4 (landmarks, pose axes, masks)."""
    preview_seconds: float = 6.0
    """Length of the overlay preview video in seconds."""
    val_share: float = VAL_SHARE
    """Share of frames (at the end of the clip) held out for validation, as ER-NeRF does."""
