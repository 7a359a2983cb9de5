"""SSIM under the SR convention (CONTRACT "Metrics"), so numbers compare with papers; PSNR and parity are
srkit.quality's, re-exported here.

Y channel of BT.601 YCbCr (MATLAB rgb2ycbcr), uint8, a border of `scale` pixels cropped, SSIM as
Wang et al. 2004 (Gaussian window 11, sigma 1.5, K1=0.01, K2=0.03). Cross-checked against scikit-image
in tests/test_metrics.py.
"""

from __future__ import annotations

import numpy as np

from srkit.quality import parity, psnr, psnr_y, y_channel_u8, y_planes

__all__ = ["parity", "psnr", "psnr_y", "ssim", "ssim_y", "y_channel_u8"]  # PSNR and parity live in srkit.quality


def _gaussian_filter(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """'valid' 2-D correlation with a separable window (as MATLAB's filter2(..., 'valid'))."""
    from numpy.lib.stride_tricks import sliding_window_view

    k = window.shape[0]
    rows = sliding_window_view(image, k, axis=0) @ window  # (H-k+1, W)
    return sliding_window_view(rows, k, axis=1) @ window  # (H-k+1, W-k+1)


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Wang et al. SSIM on two 2-D float arrays, valid region only."""
    size, sigma = 11, 1.5
    x = np.arange(size) - size // 2
    window = np.exp(-(x**2) / (2 * sigma**2))
    window /= window.sum()
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = _gaussian_filter(a, window), _gaussian_filter(b, window)
    var_a = _gaussian_filter(a * a, window) - mu_a**2
    var_b = _gaussian_filter(b * b, window) - mu_b**2
    cov = _gaussian_filter(a * b, window) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def ssim_y(sr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    a, b = y_planes(sr, hr, scale)
    return ssim(a, b)

