"""Image files in and out: formats, bit depth, gray, alpha, palette, EXIF orientation, ICC, bad files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from srkit.errors import InputError
from srkit.imageio import ORIENTATION_TAG, _orient, load_image, read_image, write_image


@pytest.fixture(scope="module")
def photo(sample_rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(sample_rgb[:48, :64])


@pytest.fixture(scope="module")
def photo16(photo: np.ndarray) -> np.ndarray:
    """Real 16-bit content: the photo scaled up plus low bits that an 8-bit path would lose."""
    rng = np.random.default_rng(1)
    return (photo.astype(np.uint16) * 257 + rng.integers(0, 200, photo.shape)).astype(np.uint16)


@pytest.fixture(scope="module")
def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp", ".webp"])
def test_lossless_formats_round_trip(tmp_path: Path, photo: np.ndarray, suffix: str) -> None:
    path = write_image(tmp_path / f"out{suffix}", photo, quality=100)
    back = read_image(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, photo)


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp"])
def test_lossy_quality_option(tmp_path: Path, photo: np.ndarray, suffix: str) -> None:
    low = write_image(tmp_path / f"low{suffix}", photo, quality=20)
    high = write_image(tmp_path / f"high{suffix}", photo, quality=95)
    assert low.stat().st_size < high.stat().st_size
    assert read_image(high).shape == photo.shape


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
def test_16bit_colour_round_trip(tmp_path: Path, photo16: np.ndarray, suffix: str) -> None:
    cv2 = pytest.importorskip("cv2")
    path = write_image(tmp_path / f"deep{suffix}", photo16)
    independent = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert independent.dtype == np.uint16
    np.testing.assert_array_equal(independent[..., ::-1], photo16)
    back = read_image(path)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, photo16)


def test_16bit_rgba_png_round_trip(tmp_path: Path, photo16: np.ndarray) -> None:
    pytest.importorskip("cv2")
    alpha = np.linspace(0, 65535, photo16.shape[1], dtype=np.uint16)[None].repeat(photo16.shape[0], 0)
    rgba = np.dstack([photo16, alpha])
    back = read_image(write_image(tmp_path / "deep.png", rgba))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, rgba)


def test_16bit_gray_png_round_trip(tmp_path: Path, photo16: np.ndarray) -> None:
    gray = np.ascontiguousarray(photo16[..., 1])
    path = write_image(tmp_path / "gray16.png", gray)
    with Image.open(path) as img:
        assert img.mode.startswith("I;16")
    back = read_image(path)
    assert back.dtype == np.uint16 and back.ndim == 2
    np.testing.assert_array_equal(back, gray)


def test_16bit_to_8bit_format_rounds(tmp_path: Path) -> None:
    image = np.array([[[0, 128, 65535], [257, 32896, 65000]]], dtype=np.uint16)
    back = read_image(write_image(tmp_path / "eight.bmp", image))
    expected = np.rint(image / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(back, expected)


def test_gray_stays_gray(tmp_path: Path, photo: np.ndarray) -> None:
    gray = np.ascontiguousarray(photo[..., 0])
    for suffix in (".png", ".jpg", ".tif", ".bmp"):
        back = read_image(write_image(tmp_path / f"g{suffix}", gray))
        assert back.ndim == 2 and back.shape == gray.shape, suffix


def test_rgba_round_trip_and_jpeg_drops_alpha(tmp_path: Path, photo: np.ndarray) -> None:
    alpha = np.zeros(photo.shape[:2], np.uint8)
    alpha[10:40, 10:50] = 255
    rgba = np.dstack([photo, alpha])
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "a.png", rgba)), rgba)
    assert read_image(write_image(tmp_path / "a.jpg", rgba)).shape == photo.shape


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_images(tmp_path: Path, photo: np.ndarray, transparent: bool) -> None:
    pal = Image.fromarray(photo).quantize(32)
    path = tmp_path / "pal.png"
    if transparent:
        pal.save(path, transparency=0)
    else:
        pal.save(path)
    back = read_image(path)
    assert back.shape == (*photo.shape[:2], 4 if transparent else 3)
    np.testing.assert_array_equal(back[..., :3], np.asarray(pal.convert("RGB")))


def _jpeg_with_orientation(path: Path, stored: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())


def test_exif_rotated_jpeg_comes_out_upright(tmp_path: Path, photo: np.ndarray) -> None:
    # Orientation 6: the camera stored the picture rotated 90 degrees counter-clockwise; viewers turn it back
    stored = np.ascontiguousarray(np.rot90(photo, 1))
    path = tmp_path / "rotated.jpg"
    _jpeg_with_orientation(path, stored, 6)
    upright = read_image(path)
    assert upright.shape == photo.shape
    err = np.abs(upright.astype(np.int16) - photo.astype(np.int16)).mean()
    assert err < 4, f"mean abs difference {err:.1f} from the upright photo"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_numpy_orientation_matches_pillow(photo: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG", exif=exif.tobytes())
    with Image.open(buffer) as img:
        expected = np.asarray(ImageOps.exif_transpose(img))
    np.testing.assert_array_equal(_orient(photo, orientation), expected)


@pytest.mark.parametrize("where", ["after IHDR", "before IEND"])
def test_16bit_png_with_exif_orientation(tmp_path: Path, photo16: np.ndarray, where: str) -> None:
    """The OpenCV path applies the orientation too, also from an eXIf chunk after the pixels (found by
    walking the chunks: Pillow would decode the whole image to find it)."""
    pytest.importorskip("cv2")
    path = write_image(tmp_path / "deep.png", np.ascontiguousarray(np.rot90(photo16, 1)))
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    raw = exif.tobytes()
    raw = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    body = b"eXIf" + raw
    chunk = struct.pack(">I", len(raw)) + body + struct.pack(">I", zlib.crc32(body))
    data = path.read_bytes()
    at = 33 if where == "after IHDR" else len(data) - 12  # IEND is the last 12 bytes
    path.write_bytes(data[:at] + chunk + data[at:])
    back = read_image(path)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, photo16)


@pytest.mark.parametrize(("suffix", "deep"), [(".png", False), (".jpg", False), (".webp", False),
                                              (".tif", False), (".png", True)])
def test_icc_profile_is_carried(tmp_path: Path, photo: np.ndarray, photo16: np.ndarray, srgb_icc: bytes,
                                suffix: str, deep: bool) -> None:
    if deep:
        pytest.importorskip("cv2")
    image = photo16 if deep else photo
    path = write_image(tmp_path / f"icc{suffix}", image, icc_profile=srgb_icc)
    loaded = load_image(path)
    assert loaded.icc_profile == srgb_icc
    assert loaded.pixels.dtype == image.dtype


def test_empty_file_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(InputError, match="empty"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
def test_truncated_file_is_a_clean_error(tmp_path: Path, photo: np.ndarray, suffix: str) -> None:
    whole = write_image(tmp_path / f"whole{suffix}", photo)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InputError, match="cannot read image"):
        read_image(cut)


def test_garbage_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="cannot read image"):
        read_image(path)


def test_write_errors_leave_no_file(tmp_path: Path, photo: np.ndarray) -> None:
    with pytest.raises(InputError, match="extension"):
        write_image(tmp_path / "out.gif", photo)
    with pytest.raises(InputError, match="does not exist"):
        write_image(tmp_path / "missing" / "out.png", photo)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(InputError):
        write_image(blocker / "out.png", photo)
    with pytest.raises(InputError):
        write_image(tmp_path / "bad.png", photo.astype(np.int32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
