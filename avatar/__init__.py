"""avatar: person-specific, audio-driven 3D Gaussian talking heads.

`avatar fit video.mp4` -> a trained run folder; `avatar speak RUN --audio a.wav` -> an mp4;
`avatar view RUN` -> an interactive web viewer. Importing this package is cheap: heavy modules
(torch, mediapipe, viser) are imported by the submodules that need them.
"""

__version__ = "0.1.0"

from avatar.errors import AvatarError  # noqa: E402,F401
