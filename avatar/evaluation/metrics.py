"""Image metrics: SSIM with a Gaussian window (own implementation), PSNR, masked means.

They live with evaluation (`avatar eval`); training imports them from here for its photometric loss
(D-SSIM = 1 - SSIM) and its in-training PSNR, so both measure with the same definitions.

SSIM follows Wang et al. 2004 ("Image quality assessment: from error visibility to structural
similarity"): local means/variances under an 11x11 Gaussian window with sigma 1.5, constants
C1 = (0.01)^2, C2 = (0.03)^2 for images in [0, 1] — the same definition 3DGS trains with.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=8)
def _gauss_window(size: int, sigma: float, channels: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).to(dtype)
    w = g[:, None] @ g[None, :]  # [S, S]
    return w.expand(channels, 1, size, size).contiguous().to(device)


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of x, y [B, H, W, C] in [0, 1] -> [B, H, W, C] (zero-padded borders, like 3DGS)."""
    c = x.shape[-1]
    xc, yc = x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)  # [B, C, H, W]
    w = _gauss_window(window, sigma, c, str(x.device), x.dtype)
    pad = window // 2
    mu_x = F.conv2d(xc, w, padding=pad, groups=c)
    mu_y = F.conv2d(yc, w, padding=pad, groups=c)
    sxx = F.conv2d(xc * xc, w, padding=pad, groups=c) - mu_x ** 2
    syy = F.conv2d(yc * yc, w, padding=pad, groups=c) - mu_y ** 2
    sxy = F.conv2d(xc * yc, w, padding=pad, groups=c) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.permute(0, 2, 3, 1)


def masked_mean(v: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of v [B, H, W, C] weighted by weight [B, H, W, 1] (None = plain mean)."""
    if weight is None:
        return v.mean()
    return (v * weight).sum() / (weight.sum() * v.shape[-1]).clamp_min(1e-8)


def ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, window: int = 11) -> torch.Tensor:
    """Mean SSIM (inside `mask` [B, H, W, 1] when given)."""
    return masked_mean(ssim_map(x, y, window), mask)


def psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB of images in [0, 1] (MSE over `mask` pixels when given)."""
    mse = masked_mean((x - y) ** 2, mask)
    return -10 * torch.log10(mse.clamp_min(1e-10))
