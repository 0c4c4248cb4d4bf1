"""One source of build flags for setup.py and the JIT path (placeholder until the kernels land)."""


def get_extensions():
    return []


def get_build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)
