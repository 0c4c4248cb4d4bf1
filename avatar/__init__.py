"""avatar: person-specific, audio-driven 3D Gaussian talking heads.

`avatar fit video.mp4` -> a trained run folder; `avatar speak RUN --audio a.wav` -> an mp4;
`avatar view RUN` -> an interactive web viewer. Importing this package is cheap: heavy modules
(torch, mediapipe, viser) are imported by the submodules that need them.
"""

import os as _os

# torch's OpenMP threads busy-wait by default; with anything else on the same cores (a 2-core laptop,
# CI, the viewer's server thread) one training step measured 10 s instead of 0.18 s. Passive waiting
# costs nothing measurable when the cores are free. Set before torch is imported; a user's value wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from avatar.errors import AvatarError  # noqa: E402,F401
