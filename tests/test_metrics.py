"""The metric convention (CONTRACT "Metrics"), cross-checked against scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from srkit import imaging
from srkit.bench import metrics


@pytest.fixture(scope="module")
def pair(photos: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    hr = imaging.crop_to_multiple(photos["chelsea"], 3)
    sr = imaging.upscale_uint8(imaging.downscale_uint8(hr, 3), 3)
    return sr, hr


def skimage_y(image: np.ndarray) -> np.ndarray:
    return np.rint(rgb2ycbcr(image)[..., 0]).astype(np.float64)  # MATLAB rgb2ycbcr on uint8 rounds


def test_psnr_y_matches_scikit_image(pair: tuple[np.ndarray, np.ndarray]) -> None:
    sr, hr = pair
    a, b = skimage_y(sr)[3:-3, 3:-3], skimage_y(hr)[3:-3, 3:-3]
    expected = peak_signal_noise_ratio(b, a, data_range=255)
    assert metrics.psnr_y(sr, hr, 3) == pytest.approx(expected, abs=0.02)


def test_ssim_y_matches_scikit_image_gaussian_wang(pair: tuple[np.ndarray, np.ndarray]) -> None:
    sr, hr = pair
    a, b = skimage_y(sr)[3:-3, 3:-3], skimage_y(hr)[3:-3, 3:-3]
    expected = structural_similarity(
        a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert metrics.ssim_y(sr, hr, 3) == pytest.approx(expected, abs=2e-3)


def test_identical_images() -> None:
    img = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert math.isinf(metrics.psnr_y(img, img, 2))
    assert metrics.ssim_y(img, img, 2) == pytest.approx(1.0)


def test_border_is_cropped() -> None:
    hr = np.full((30, 30, 3), 128, np.uint8)
    sr = hr.copy()
    sr[:2] = 0  # damage only the 2-pixel border
    assert math.isinf(metrics.psnr_y(sr, hr, 2))
    assert not math.isinf(metrics.psnr_y(sr, hr, 1))


def test_parity_reports_nonfinite_as_failure() -> None:
    ref = np.zeros((2, 2), np.float32)
    out = ref.copy()
    out[0, 0] = np.nan
    psnr, max_abs = metrics.parity(out, ref)
    assert psnr == -math.inf and max_abs == math.inf
