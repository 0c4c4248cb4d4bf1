"""The person-specific Gaussian avatar: canonical Gaussians + audio-driven deformation.

Modules:
    geometry   quaternion / rotation helpers and MediaPipe face-mesh index sets
    hashgrid   multiresolution hash grid (Instant-NGP) and its tri-plane variant (TalkingGaussian)
    audio      AudioNet + AudioAttNet (AD-NeRF / ER-NeRF / TalkingGaussian audio path)
    deform     region-attention face deformation, mouth-interior translation, torso skinning
    gaussians  a set of Gaussians with raw parameters and activated properties; initialisers
    avatar_model  `AvatarModel`: all of the above, `render()` for a batch of frames
"""

from avatar.model.config import ModelConfig
from avatar.model.avatar_model import AvatarModel

__all__ = ["ModelConfig", "AvatarModel"]
