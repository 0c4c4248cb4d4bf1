"""One source of build flags for setup.py (`get_extensions`, `get_build_ext_class`) and the JIT path
(`jit_load`, used when CUDA_EXT_JIT=1 and the extension was not installed).

The C++ CPU driver is always built. The CUDA driver (csrc/raster_cuda.cu) is added when the installed
torch has CUDA and a CUDA toolkit is found; set CUDA_EXT_NO_CUDA=1 to force a CPU-only build.
Pattern after gsplat HEAD `gsplat/cuda/build.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
EXT_NAME = "cuda_ext._C"

CPU_SOURCES = ["ext.cpp", "raster_cpu.cpp"]
CUDA_SOURCES = ["raster_cuda.cu"]

# -ffp-contract=off: forward and backward must make identical skip decisions (raster.md 6), so no
# FMA contraction that could differ between the two inlined copies of the same core function.
# -Wno-psabi: the 8-lane vector helpers of core.h are always inlined (no call ABI), yet GCC warns about their ABI.
CXX_FLAGS = ["-O3", "-std=c++17", "-ffp-contract=off", "-fopenmp", "-Wno-psabi"]
LINK_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]


def _rel(paths: list[str]) -> list[str]:
    # setuptools wants paths relative to setup.py's folder (the repository root)
    root = HERE.parent
    return [os.path.relpath(CSRC / p, root) for p in paths]


def want_cuda() -> bool:
    """True when the CUDA driver should be built (CUDA torch + toolkit, not disabled)."""
    if os.environ.get("CUDA_EXT_NO_CUDA") == "1":
        return False
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None


def get_extensions() -> list:
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    if want_cuda():
        return [
            CUDAExtension(
                EXT_NAME,
                _rel(CPU_SOURCES + CUDA_SOURCES),
                include_dirs=[str(CSRC)],
                define_macros=[("CE_WITH_CUDA", None)],
                extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
                extra_link_args=LINK_FLAGS,
            )
        ]
    return [
        CppExtension(
            EXT_NAME,
            _rel(CPU_SOURCES),
            include_dirs=[str(CSRC)],
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=LINK_FLAGS,
        )
    ]


def get_build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


def jit_load(verbose: bool = False):
    """Build and load the extension with torch.utils.cpp_extension.load (same sources and flags)."""
    from torch.utils.cpp_extension import load

    cuda = want_cuda()
    sources = [str(CSRC / p) for p in CPU_SOURCES + (CUDA_SOURCES if cuda else [])]
    return load(
        name="cuda_ext_C",
        sources=sources,
        extra_include_paths=[str(CSRC)],
        extra_cflags=CXX_FLAGS + (["-DCE_WITH_CUDA"] if cuda else []),
        extra_cuda_cflags=NVCC_FLAGS + ["-DCE_WITH_CUDA"],
        extra_ldflags=LINK_FLAGS,
        verbose=verbose,
    )
