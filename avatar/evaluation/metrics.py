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
def _gauss_taps(size: int, sigma: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    """The normalised 1-D Gaussian [size] whose outer product with itself is the SSIM window."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).to(device=device, dtype=dtype)


def gauss_blur(v: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """v [B, C, H, W] under the size x size Gaussian window, zero padded: as one 2-D convolution with the outer
    product window, done as a row pass then a column pass (2 S instead of S^2 multiply-adds per pixel; with
    zero padding the two are equal)."""
    c = v.shape[1]
    g = _gauss_taps(window, sigma, str(v.device), v.dtype)
    pad = window // 2
    v = F.conv2d(v, g.view(1, 1, 1, window).expand(c, 1, 1, window), padding=(0, pad), groups=c)
    return F.conv2d(v, g.view(1, 1, window, 1).expand(c, 1, window, 1), padding=(pad, 0), groups=c)


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of x, y [B, H, W, C] in [0, 1] -> [B, H, W, C] (zero-padded borders, like 3DGS).
    The five local moments go through one separable blur (`gauss_blur`)."""
    c = x.shape[-1]
    xc, yc = x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)  # [B, C, H, W]
    m = gauss_blur(torch.cat([xc, yc, xc * xc, yc * yc, xc * yc], 1), window, sigma)
    mu_x, mu_y = m[:, :c], m[:, c:2 * c]
    sxx = m[:, 2 * c:3 * c] - mu_x ** 2
    syy = m[:, 3 * c:4 * c] - mu_y ** 2
    sxy = m[:, 4 * c:] - mu_x * mu_y
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
