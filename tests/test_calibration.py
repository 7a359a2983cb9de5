"""Calibration data: deployment preprocessing, seeded sampling, and clear errors for bad folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srkit import imaging
from srkit.calibration.dataset import (
    CalibrationDataset,
    calibration_dataset,
    make_patches,
    model_planes,
    patch_size_for,
    read_folder,
)
from srkit.errors import InputError
from srkit.meta import Color, ModelInfo

Y_MODEL = ModelInfo(arch="espcn", scale=3, in_channels=1, color=Color.Y)
RGB_MODEL = ModelInfo(arch="srvgg", scale=4, in_channels=3, color=Color.RGB, size_multiple=4)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory, sample_rgb: np.ndarray) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    Image.fromarray(sample_rgb).save(folder / "a.png")
    Image.fromarray(np.ascontiguousarray(sample_rgb[::-1, ::-1])).save(folder / "sub_b.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    return folder


def test_patches_have_the_model_input_shape_and_are_seeded(photo_folder: Path) -> None:
    data = calibration_dataset(photo_folder, Y_MODEL, samples=8, patch=32, seed=3)
    items = list(data)
    assert len(data) == len(items) == 8
    assert all(x.shape == (1, 1, 32, 32) and x.dtype == np.float32 for x in items)
    # BT.601 luma of 8-bit RGB lies in 16/255..235/255
    assert all(x.min() >= 16 / 255 - 1e-6 and x.max() <= 235 / 255 + 1e-6 for x in items)
    again = list(calibration_dataset(photo_folder, Y_MODEL, samples=8, patch=32, seed=3))
    other = list(calibration_dataset(photo_folder, Y_MODEL, samples=8, patch=32, seed=4))
    assert all(np.array_equal(a, b) for a, b in zip(items, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(items, other, strict=True))
    assert "8 patches of 32x32 from 2 images" in data.description


def test_y_preprocessing_is_the_runtimes(sample_rgb: np.ndarray) -> None:
    planes = model_planes(sample_rgb, Y_MODEL)
    np.testing.assert_allclose(planes[..., 0], imaging.rgb_to_y(imaging.to_float(sample_rgb)), atol=1e-6)
    # a patch is a crop of those planes, NCHW
    data = make_patches([_src("x", sample_rgb)], Y_MODEL, samples=1, patch=24, seed=0)
    patch = next(iter(data))[0, 0]
    hits = np.argwhere(np.isclose(planes[..., 0], patch[0, 0], atol=0))
    assert any(np.array_equal(planes[r : r + 24, c : c + 24, 0], patch) for r, c in hits)


def test_rgb_patches_round_up_to_the_size_multiple_and_honour_static_shapes(sample_rgb: np.ndarray) -> None:
    assert patch_size_for(RGB_MODEL, 30) == (32, 32)
    static = ModelInfo(arch="espcn", scale=3, in_channels=1, color=Color.Y, static_shape=(20, 28))
    assert patch_size_for(static, 64) == (20, 28)
    data = make_patches([_src("x", sample_rgb)], RGB_MODEL, samples=3, patch=30)
    assert {x.shape for x in data} == {(1, 3, 32, 32)}
    # an image smaller than a patch is padded, not refused
    small = make_patches([_src("s", sample_rgb[:10, :12])], RGB_MODEL, samples=2, patch=16)
    assert {x.shape for x in small} == {(1, 3, 16, 16)}


def test_transform_shape_follows_nncf_dataset(sample_rgb: np.ndarray) -> None:
    data = make_patches([_src("x", sample_rgb)], Y_MODEL, samples=4, patch=16)
    fed = list(data.with_transform(lambda x: {"input": x}))
    raw = list(data.get_data())
    assert isinstance(data, CalibrationDataset) and len(fed) == 4
    assert all(f["input"] is r for f, r in zip(fed, raw, strict=True))


def test_builtin_calibration_set_excludes_validation_photos() -> None:
    from srkit.calibration.dataset import BUILTIN_CALIBRATION, BUILTIN_VALIDATION

    assert not set(BUILTIN_CALIBRATION) & set(BUILTIN_VALIDATION)
    data = calibration_dataset(None, Y_MODEL, samples=4, patch=16)
    assert len(data) == 4 and "built-in" in data.description


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d / "missing", "not found"),
        (lambda d: d, "is empty"),
        (lambda d: (d / "a.txt").write_text("x") and d, "holds no images"),
        (lambda d: (d / "broken.png").write_bytes(b"\x89PNG not really") and d, "unreadable"),
    ],
    ids=["missing", "empty", "no-images", "unreadable"],
)
def test_bad_folders_give_a_clear_error(tmp_path: Path, setup, message: str) -> None:
    folder = setup(tmp_path)
    with pytest.raises(InputError, match=message):
        read_folder(folder)


def test_sixteen_bit_images_are_converted_by_dtype(tmp_path: Path, sample_rgb: np.ndarray) -> None:
    gray8 = sample_rgb[..., 1]
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit gray PNG
    images = read_folder(tmp_path)
    assert images[0].pixels.dtype == np.uint16
    data16 = make_patches(images, Y_MODEL, samples=3, patch=16, seed=1)
    data8 = make_patches([_src("g", gray8)], Y_MODEL, samples=3, patch=16, seed=1)
    for a, b in zip(data16, data8, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert "1 16-bit (converted by dtype)" in data16.description


def test_gray_only_folder_is_refused_for_rgb_models_but_fine_for_y(tmp_path: Path,
                                                                   sample_rgb: np.ndarray) -> None:
    Image.fromarray(sample_rgb[..., 0]).save(tmp_path / "g.png")
    with pytest.raises(InputError, match="gray; an RGB model needs colour images"):
        calibration_dataset(tmp_path, RGB_MODEL, samples=2, patch=16)
    data = calibration_dataset(tmp_path, Y_MODEL, samples=2, patch=16)
    assert "1 gray" in data.description
    expected = imaging.gray_to_y(imaging.to_float(sample_rgb[..., 0]))
    patch = next(iter(data))[0, 0]
    assert expected.min() - 1e-6 <= patch.min() and patch.max() <= expected.max() + 1e-6


def test_bad_counts_are_input_errors(sample_rgb: np.ndarray) -> None:
    with pytest.raises(InputError, match="samples"):
        make_patches([_src("x", sample_rgb)], Y_MODEL, samples=0)


def _src(name: str, pixels: np.ndarray):
    from srkit.calibration.dataset import SourceImage

    return SourceImage(name, pixels)
