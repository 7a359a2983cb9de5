"""PSNR and SSIM under the SR convention (CONTRACT "Metrics"), so numbers compare with papers.

Y channel of BT.601 YCbCr (MATLAB rgb2ycbcr), uint8, a border of `scale` pixels cropped, SSIM as
Wang et al. 2004 (Gaussian window 11, sigma 1.5, K1=0.01, K2=0.03). Cross-checked against scikit-image
in tests/test_metrics.py.
"""

from __future__ import annotations

import math

import numpy as np

from srkit import imaging
from srkit.errors import InputError


def y_channel_u8(image: np.ndarray) -> np.ndarray:
    """uint8 RGB (or gray) -> the luma plane as MATLAB gives it: float64 holding rounded 0-255 values."""
    if image.dtype != np.uint8:
        raise InputError(f"metrics expect uint8 images, got {image.dtype}")
    as_float = imaging.to_float(image)
    if as_float.ndim == 3 and as_float.shape[2] >= 3:
        y = imaging.rgb_to_y(as_float[..., :3])
    else:
        y = imaging.gray_to_y(as_float.reshape(as_float.shape[:2]))
    return np.rint(y.astype(np.float64) * 255.0)


def _prepare(sr: np.ndarray, hr: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    if sr.shape != hr.shape:
        raise InputError(f"shape mismatch: {sr.shape} vs {hr.shape}")
    a, b = y_channel_u8(sr), y_channel_u8(hr)
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def psnr_y(sr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    a, b = _prepare(sr, hr, scale)
    return psnr(a, b)


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
    a, b = _prepare(sr, hr, scale)
    return ssim(a, b)


def parity(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(PSNR in dB with peak 1.0, max abs error) of a float output against a float reference."""
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    finite = np.isfinite(diff)
    if not finite.all():
        return -math.inf, math.inf
    mse = float(np.mean(diff**2))
    return (math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)), float(diff.max())
