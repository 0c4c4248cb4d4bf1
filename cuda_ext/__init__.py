"""Gaussian rasterization kernels (see cuda_ext/README.md once the kernels land)."""
