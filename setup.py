"""Install the `avatar` package.

Source layout (kept from the design) and installed names:

    avatar/      -> avatar             library + CLI
    preprocess/  -> avatar.preprocess  (a top-level `preprocess` would collide with other packages)
    viewer/      -> avatar.viewer      (same reason)
    cuda_ext/    -> cuda_ext           (the kernels; its issue asks for `import cuda_ext`)

The C++ CPU rasterizer is always built; the CUDA driver only when the installed torch has CUDA.
Build flags come from one place, `cuda_ext/build.py`, shared with the JIT path.
Install with `--no-build-isolation` so the extension builds against the torch already installed
(a CUDA torch on a GPU machine is never replaced).
"""

import importlib.util
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_build_module():
    spec = importlib.util.spec_from_file_location("_cuda_ext_build", os.path.join(ROOT, "cuda_ext", "build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _extensions():
    try:
        import torch  # noqa: F401
    except ImportError:
        print("setup.py: torch is not installed; skipping the C++ extension (install torch first)")
        return [], {}
    build = _load_build_module()
    return build.get_extensions(), {"build_ext": build.get_build_ext_class()}


packages = ["avatar"] + ["avatar." + p for p in find_packages("avatar")]
packages += ["avatar.preprocess"] + ["avatar.preprocess." + p for p in find_packages("preprocess")]
packages += ["avatar.viewer"] + ["avatar.viewer." + p for p in find_packages("viewer")]
packages += ["cuda_ext"] + ["cuda_ext." + p for p in find_packages("cuda_ext")]
package_dir = {"avatar": "avatar", "avatar.preprocess": "preprocess", "avatar.viewer": "viewer", "cuda_ext": "cuda_ext"}

ext_modules, cmdclass = _extensions()

setup(
    name="avatar",
    version="0.1.0",
    description="Person-specific audio-driven 3D Gaussian talking heads: preprocess, fit, speak, view.",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"cuda_ext": ["csrc/*.h", "csrc/*.cpp", "csrc/*.cu", "csrc/*.cuh"], "avatar.viewer": ["static/*"],
                  "avatar.serve": ["static/*"]},
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        # torch is deliberately NOT listed: a plain `torch` requirement would pull the newest CUDA
        # build (several GB) on a CPU box or replace a CUDA torch on a GPU box. The README's install
        # command installs torch==2.13.0 only when no torch is present.
        "numpy>=1.26",
        "scipy>=1.10",
        "pyyaml>=6",
        "tqdm>=4.60",
        # mediapipe <= 0.10.21 ships its models (face mesh, selfie segmentation); 0.10.14 runs with numpy 2.
        "mediapipe==0.10.14",
        # one cv2 distribution only (mediapipe requires contrib); 5.x dropped things we may use.
        "opencv-contrib-python>=4.8,<5",
        "av==18.1.0",
        "soundfile>=0.12",
        "pocketsphinx>=5.0",
        "silero-vad>=5.1",
        "imageio-ffmpeg>=0.5",
        # 2.21 needs protobuf>=6.31, which conflicts with mediapipe's protobuf<5.
        "tensorboard==2.20.0",
        "viser==1.1.1",
        "plyfile>=1.0",
        "transformers>=4.40",
        # `avatar batch` (issue 16): embedded local Ray by default, or a cluster; 2.60.0 has Python 3.11 wheels.
        "ray==2.60.0",
        # `avatar serve` (issue 15): WebRTC (1.16.0 works with av 18.1.0 on Python 3.11) and the HTTP server.
        "aiortc==1.16.0",
        "aiohttp==3.14.5",
    ],
    extras_require={
        "test": ["pytest>=7", "playwright>=1.40"],
        "gsplat": ["gsplat==1.5.3", "packaging"],
    },
    entry_points={"console_scripts": ["avatar=avatar.cli:console"]},
)
