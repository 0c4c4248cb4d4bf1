"""Multiresolution hash-grid encodings (PyTorch reference implementation).

* `HashGrid`: the multiresolution hash encoding of Instant-NGP (Müller et al. 2022,
  https://arxiv.org/abs/2201.05989) in 2 or 3 dimensions: L levels with geometrically growing
  resolution, each a table of at most 2^T feature vectors, addressed directly while the level's
  vertex grid fits in the table and by the spatial hash (XOR of coordinate * prime) otherwise;
  features of the 2^d cell corners are blended with d-linear weights.
* `TriPlaneHashEncoding`: three 2D hash grids over the xy, yz and xz projections, concatenated —
  the tri-plane hash used by ER-NeRF (Li et al. ICCV'23) and TalkingGaussian (Li et al. ECCV'24)
  for their motion fields (design/model.md §2.2): 2D tables collide far less than one 3D table.

Kernel slot: `encode()` dispatches on `backend`; only "torch" exists today. A fused CUDA/C++
kernel can be added as another backend with the same signature (inputs [N, d] in [0, 1], output
[N, L*F]) and checked against `_hash_grid_encode_torch` (tests/test_hashgrid.py does exactly that
for the reference against a dense trilinear `grid_sample`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn

# Primes of the Instant-NGP spatial hash (the first is 1 so that 1D stays coherent).
_PRIMES = (1, 2654435761, 805459861)

Backend = Literal["torch"]


def _hash_grid_encode_torch(x: torch.Tensor, table: torch.Tensor, offsets: list[int], resolutions: list[int],
                            hashed: list[bool]) -> torch.Tensor:
    """Reference hash-grid lookup, vectorised over levels (one gather per cell corner).

    x: [N, d] in [0, 1]; table: [sum(sizes), F]; level l uses rows offsets[l]:offsets[l+1] and has
    `resolutions[l]` cells per axis (resolution + 1 vertices per axis), addressed densely
    (x + y (r+1) + z (r+1)^2) when they fit and by the Instant-NGP XOR-of-primes hash otherwise.
    Returns [N, L * F] (level-major).
    """
    n, d = x.shape
    dev = x.device
    nl = len(resolutions)
    res = torch.tensor(resolutions, dtype=x.dtype, device=dev)  # [L]
    pos = x.clamp(0.0, 1.0)[None] * res[:, None, None]  # [L, N, d]
    base = torch.minimum(pos.floor(), (res - 1)[:, None, None])  # [L, N, d]
    frac = pos - base  # [L, N, d]
    base = base.long()
    off = torch.tensor(offsets, device=dev)
    sizes = (off[1:] - off[:-1])[:, None]  # [L, 1]
    is_hashed = torch.tensor(hashed, device=dev)[:, None]  # [L, 1]
    strides = torch.tensor([[(r + 1) ** i for i in range(d)] for r in resolutions], device=dev)[:, None, :]  # [L, 1, d]
    out = x.new_zeros(nl, n, table.shape[1])
    for c in range(2 ** d):
        bits = [(c >> i) & 1 for i in range(d)]
        v = base + torch.tensor(bits, device=dev)  # [L, N, d] vertex coordinates
        dense = (v * strides).sum(-1)  # [L, N]
        h = v[..., 0] * _PRIMES[0]
        for i in range(1, d):
            h = h ^ (v[..., i] * _PRIMES[i])
        idx = torch.where(is_hashed, h % sizes, dense) + off[:-1, None]  # [L, N]
        w = frac[..., 0] if bits[0] else 1 - frac[..., 0]
        for i in range(1, d):
            w = w * (frac[..., i] if bits[i] else 1 - frac[..., i])  # [L, N]
        out = out + w[..., None] * table[idx]  # [L, N, F]
    return out.permute(1, 0, 2).reshape(n, nl * table.shape[1])


class HashGrid(nn.Module):
    """Multiresolution hash grid over [0, 1]^dim (Instant-NGP; TalkingGaussian gridencoder/grid.py layout).

    Level l has ceil(base_res * growth^l) cells per axis, growth = (max_res/base_res)^(1/(L-1)).
    """

    def __init__(self, dim: int = 3, levels: int = 12, features: int = 1, base_res: int = 16, max_res: float = 256,
                 log2_table: int = 17, init_scale: float = 1e-4, backend: Backend = "torch"):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError("HashGrid supports dim 2 or 3")
        self.dim, self.levels, self.features, self.backend = dim, levels, features, backend
        growth = math.exp(math.log(max_res / base_res) / max(levels - 1, 1)) if levels > 1 else 1.0
        self.resolutions: list[int] = []
        self.hashed: list[bool] = []
        self.offsets: list[int] = [0]
        cap = 2 ** log2_table
        for lvl in range(levels):
            res = max(1, int(math.ceil(base_res * growth ** lvl)))
            dense = (res + 1) ** dim
            self.resolutions.append(res)
            self.hashed.append(dense > cap)
            self.offsets.append(self.offsets[-1] + min(dense, cap))
        self.table = nn.Parameter(torch.empty(self.offsets[-1], features).uniform_(-init_scale, init_scale))  # [T_all, F]

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, dim] in [0, 1] -> [N, levels * features]."""
        if self.backend == "torch":
            return _hash_grid_encode_torch(x, self.table, self.offsets, self.resolutions, self.hashed)
        raise ValueError(f"unknown hash-grid backend {self.backend}")  # pragma: no cover


class TriPlaneHashEncoding(nn.Module):
    """Three 2D hash grids on the xy, yz, xz planes of positions normalised to [-bound, bound]^3.

    ER-NeRF / TalkingGaussian tri-plane hash (design/model.md §2.2). Output [N, 3 * levels * features].
    """

    PLANES = ((0, 1), (1, 2), (0, 2))

    def __init__(self, bound: float = 1.0, levels: int = 12, features: int = 1, base_res: int = 16,
                 max_res: float = 64, log2_table: int = 17):
        super().__init__()
        self.bound = float(bound)
        self.grids = nn.ModuleList([HashGrid(2, levels, features, base_res, max_res, log2_table) for _ in self.PLANES])

    @property
    def out_dim(self) -> int:
        return sum(g.out_dim for g in self.grids)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3] in the encoder's normalised frame (inside [-bound, bound]) -> [N, out_dim]."""
        u = ((x / self.bound) + 1) * 0.5  # [N, 3] in [0, 1]
        return torch.cat([g(u[:, list(p)]) for g, p in zip(self.grids, self.PLANES)], -1)
