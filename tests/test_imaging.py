from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2ycbcr, ycbcr2rgb

from srkit import imaging
from srkit.errors import InputError


def test_ycbcr_matches_matlab_convention(sample_rgb: np.ndarray) -> None:
    rgb = imaging.to_float(sample_rgb)
    ours = imaging.rgb_to_ycbcr(rgb) * 255.0
    np.testing.assert_allclose(ours, rgb2ycbcr(rgb), atol=1e-3)
    np.testing.assert_allclose(imaging.rgb_to_y(rgb), ours[..., 0] / 255.0, atol=1e-6)


def test_ycbcr_round_trip(sample_rgb: np.ndarray) -> None:
    rgb = imaging.to_float(sample_rgb)
    np.testing.assert_allclose(imaging.ycbcr_to_rgb(imaging.rgb_to_ycbcr(rgb)), rgb, atol=1e-5)
    np.testing.assert_allclose(imaging.ycbcr_to_rgb(imaging.rgb_to_ycbcr(rgb)),
                               ycbcr2rgb(rgb2ycbcr(rgb)), atol=1e-4)


def test_gray_luma_is_the_luma_of_equal_rgb() -> None:
    g = np.linspace(0, 1, 50, dtype=np.float32).reshape(5, 10)
    np.testing.assert_allclose(imaging.gray_to_y(g), imaging.rgb_to_y(np.stack([g] * 3, -1)), atol=1e-6)
    np.testing.assert_allclose(imaging.y_to_gray(imaging.gray_to_y(g)), g, atol=1e-6)


@pytest.mark.parametrize("dtype,peak", [(np.uint8, 255), (np.uint16, 65535)])
def test_float_round_trip_is_decided_by_dtype(dtype: type, peak: int) -> None:
    # a dark 16-bit image must not be mistaken for 8-bit (Real-ESRGAN's max > 256 heuristic does)
    image = np.array([[0, 1, 200]], dtype=dtype)
    as_float = imaging.to_float(image)
    assert as_float.dtype == np.float32
    np.testing.assert_allclose(as_float, image / peak)
    np.testing.assert_array_equal(imaging.from_float(as_float, np.dtype(dtype)), image)


def test_from_float_rounds_and_clips_and_leaves_its_input_alone() -> None:
    floats = np.array([-0.5, 0.5 / 255 + 1e-4, 2.0], dtype=np.float32)
    out = imaging.from_float(floats, np.dtype(np.uint8))
    np.testing.assert_array_equal(out, [0, 1, 255])
    np.testing.assert_array_equal(floats, np.array([-0.5, 0.5 / 255 + 1e-4, 2.0], dtype=np.float32))


def test_describe_rejects_what_it_cannot_upscale() -> None:
    with pytest.raises(InputError, match="empty"):
        imaging.describe(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(InputError, match="dtype"):
        imaging.describe(np.zeros((4, 4), np.int32))
    with pytest.raises(InputError, match="shape"):
        imaging.describe(np.zeros((4, 4, 2), np.uint8))


def test_pad_to_multiple_reflects_and_reports_size() -> None:
    x = np.arange(2 * 5 * 7, dtype=np.float32).reshape(1, 2, 5, 7)
    padded, (h, w) = imaging.pad_to_multiple(x, 4)
    assert padded.shape == (1, 2, 8, 8) and (h, w) == (5, 7)
    np.testing.assert_array_equal(padded[..., :5, :7], x)
    np.testing.assert_array_equal(padded[..., 5, :7], x[..., 3, :])  # reflection, not zeros


def test_bicubic_resize_shape_and_flat_field() -> None:
    flat = np.full((10, 12, 2), 0.25, np.float32)
    out = imaging.resize_bicubic(flat, 30, 36)
    assert out.shape == (30, 36, 2)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)
