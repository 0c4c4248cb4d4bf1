"""Model configuration (one dataclass, a docstring under every field)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ModelConfig:
    """Sizes and options of the Gaussian avatar (see avatar/model/*.py for the papers followed)."""

    face_points: int = 6000
    """Initial head Gaussians sampled on the fitted face surface (triangulated 3D landmark shape)."""
    shell_points: int = 3000
    """Initial head Gaussians on an ellipsoid shell behind/around the face (hair, ears, back of the head)."""
    mouth_points: int = 1500
    """Initial mouth-interior Gaussians (teeth, tongue) behind the inner lip contour."""
    torso_points: int = 3000
    """Initial torso Gaussians (neck, shoulders) unprojected from the parsing masks of a reference frame."""
    sh_degree: int = 1
    """Spherical-harmonics degree of the colours (0 = view-independent; TalkingGaussian uses 2)."""
    init_opacity: float = 0.5
    """Initial opacity of Gaussians that project onto the person."""
    audio_dim: int = 32
    """Size of the audio code (AudioNet output, design/model.md §3)."""
    audio_window: int = 9
    """Feature rows (odd) AudioNet reads around a frame (9 rows at 25 fps = ±160 ms, like DeepSpeech's window)."""
    att_window: int = 9
    """Frames (odd) whose audio codes AudioAttNet smooths over."""
    audio_lookahead: int = -1
    """Future feature rows the audio window reaches (-1 = centred: W // 2 with W = audio_window +
    att_window - 1; else 0 <= L <= W - 1, the window of frame k being rows k - (W - 1 - L) ... k + L).
    Streaming must wait for these rows, so a smaller L lowers the delay (L rows = L / fps seconds); e.g.
    2 = 80 ms at 25 fps: lips lead the sound by ~100 ms, so a little look-ahead is needed."""
    grid_levels: int = 12
    """Levels of each tri-plane hash grid of the face motion field."""
    grid_base_res: int = 16
    """Coarsest grid resolution (cells per axis over the head box)."""
    grid_max_res: int = 64
    """Finest grid resolution (TalkingGaussian uses ≈39 over its head box)."""
    grid_log2_table: int = 17
    """log2 of the hash table size per level."""
    motion_hidden: int = 64
    """Hidden width of the face motion MLP."""
    motion_scale: float = 0.07
    """Δposition = motion_scale * face size * network output (TalkingGaussian: 0.01 on a 0.15-wide head)."""
    mouth_motion_scale: float = 0.07
    """Same for the mouth-interior translation."""
    torso: bool = True
    """Model the torso with its own Gaussians (else the head is composited straight over the background)."""
    torso_motion_scale: float = 0.05
    """Scale of the torso's pose-conditioned residual offsets (in face sizes)."""
    layered: bool = False
    """Render (and train) the head (face, hair, mouth interior) as its own layer in a head-aligned crop, pasted
    with its opacity over the torso layer and the plate (avatar/engine/composite.py). False: one joint pass
    (runs saved before layering load as False and render as they were trained)."""
    head_px: int = 0
    """Pixels across the head box of the head layer (0: the output's own density, i.e. native). The crop is
    never rendered denser than the output."""
    body_px: int = 0
    """Longest side of the torso layer in pixels (0: the output size); it is upsampled to the output size."""
