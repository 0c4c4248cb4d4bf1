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

# MKL picks its GEMM kernels by thread count, so torch's Linear gave results 1e-7 apart at 1 and 2 threads
# (e.g. [9, 64] x [64, 64] in the audio net); after H.264 that was 45-49 dB between an `avatar batch` worker
# (1 thread) and `avatar speak` (all cores) rendering the same job. Intel's strict Conditional Numerical
# Reproducibility mode ("AUTO,STRICT": the CPU's own code path, results independent of the thread count)
# makes them byte-identical mp4s at no measurable cost (512x512 speak, 2 threads: 15.9 s either way).
# Read by MKL at its first call, so setting it at import is enough; a user's value wins.
_os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"

from avatar.errors import AvatarError  # noqa: E402,F401
