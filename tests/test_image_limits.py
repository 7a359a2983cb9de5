"""Hostile and unusual image files (issue 16 items 4, 8, 12): float TIFFs, decompression bombs, NaN/inf."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srkit import imageio
from srkit.errors import InputError
from srkit.imageio import MAX_MEGAPIXELS_ENV, load_image, pixel_limit, read_image, write_image
from srkit.imaging import check_finite

ROOT = Path(__file__).resolve().parents[1]


# ---- helpers: real files written by independent encoders -------------------------------------------
def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(path: Path, width: int, height: int, *, bit_depth: int = 16, colour_type: int = 6) -> Path:
    """A valid all-zero PNG of any declared size that is tiny on disk: one compressed block of zero rows,
    flushed so that its deflate output repeats byte for byte, then the stream's true Adler-32."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = 1 + width * channels * bit_depth // 8  # the filter byte, then the samples
    rows_per_block = next(r for r in (10, 8, 5, 4, 2, 1) if height % r == 0)
    block = bytes(row * rows_per_block)
    co = zlib.compressobj(9)
    first = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    repeat = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    assert co.compress(block) + co.flush(zlib.Z_FULL_FLUSH) == repeat  # a full flush resets the state
    end = co.flush(zlib.Z_FINISH)[:-4]  # the final empty block, without the Adler-32 of what co saw
    total = row * height
    adler = ((total % 65521) << 16) | 1  # Adler-32 of `total` zero bytes
    stream = first + repeat * (height // rows_per_block - 1) + end + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def photo_float(sample_rgb: np.ndarray) -> np.ndarray:
    """Real photo content as float32 in 0-1, with values between the 8-bit steps."""
    crop = sample_rgb[:40, :56].astype(np.float32) / 255.0
    return np.clip(crop + np.float32(0.4 / 255.0), 0.0, 1.0)


# ---- item 4: float TIFFs ---------------------------------------------------------------------------
def test_bomb_png_builder_makes_a_real_png(tmp_path: Path) -> None:
    """The helper's files are valid PNGs: Pillow and zlib decode them completely."""
    path = bomb_png(tmp_path / "small.png", 300, 200, bit_depth=8, colour_type=2)
    with Image.open(path) as img:
        img.load()
        assert img.size == (300, 200) and img.mode == "RGB"
        assert not np.asarray(img).any()


@pytest.mark.parametrize("writer", ["tifffile", "tifffile-zlib", "opencv", "pillow-gray", "tifffile-gray"])
def test_float32_tiff_reads_as_unit_float(tmp_path: Path, photo_float: np.ndarray, writer: str) -> None:
    path = tmp_path / "float.tif"
    expected = photo_float
    if writer.startswith("tifffile"):
        tifffile = pytest.importorskip("tifffile")
        if writer == "tifffile-gray":
            expected = np.ascontiguousarray(photo_float[..., 1])
            tifffile.imwrite(path, expected)
        else:
            tifffile.imwrite(path, photo_float, photometric="rgb",
                             compression="zlib" if writer.endswith("zlib") else None)
    elif writer == "opencv":
        cv2 = pytest.importorskip("cv2")
        assert cv2.imwrite(str(path), np.ascontiguousarray(photo_float[..., ::-1]))
    else:
        expected = np.ascontiguousarray(photo_float[..., 0])
        Image.fromarray(expected, mode="F").save(path)
    back = read_image(path)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, expected)  # not black, not white, not 8-bit


def test_float64_tiff_becomes_float32(tmp_path: Path, photo_float: np.ndarray) -> None:
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("cv2")
    tifffile.imwrite(tmp_path / "f64.tif", photo_float.astype(np.float64), photometric="rgb")
    back = read_image(tmp_path / "f64.tif")
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, photo_float, atol=1e-7)


@pytest.mark.parametrize("scale,hint", [(255.0, "divide by 255"), (-1.0, "map it into 0-1")])
def test_float_tiff_outside_unit_range_is_refused(tmp_path: Path, photo_float: np.ndarray, scale: float,
                                                  hint: str) -> None:
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "hdr.tif"
    tifffile.imwrite(path, photo_float[..., 0] * np.float32(scale))
    with pytest.raises(InputError, match=rf"hdr.tif: float pixel values span .* 0-1 \({hint}"):
        read_image(path)


def test_float_tiff_rounding_noise_is_clipped(tmp_path: Path, photo_float: np.ndarray) -> None:
    tifffile = pytest.importorskip("tifffile")
    noisy = photo_float[..., 0].copy()
    noisy[0, 0], noisy[0, 1] = -1e-4, 1.0 + 1e-4  # well below one 8-bit step
    tifffile.imwrite(tmp_path / "noisy.tif", noisy)
    back = read_image(tmp_path / "noisy.tif")
    assert back.min() == 0.0 and back.max() == 1.0


def test_float_tiff_with_nan_is_refused(tmp_path: Path, photo_float: np.ndarray) -> None:
    tifffile = pytest.importorskip("tifffile")
    bad = photo_float.copy()
    bad[3, 4, 1] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad, photometric="rgb")
    with pytest.raises(InputError, match=r"nan.tif holds 1 NaN values"):
        read_image(tmp_path / "nan.tif")


def test_half_float_tiff_is_refused_clearly(tmp_path: Path, photo_float: np.ndarray) -> None:
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "half.tif", photo_float.astype(np.float16), photometric="rgb")
    with pytest.raises(InputError, match="16-bit float samples are not supported; save it as 32-bit float"):
        read_image(tmp_path / "half.tif")


@pytest.mark.parametrize("gray", [False, True])
def test_float_image_written_to_tiff_stays_float32(tmp_path: Path, photo_float: np.ndarray, gray: bool) -> None:
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("cv2")
    image = np.ascontiguousarray(photo_float[..., 2]) if gray else photo_float
    path = write_image(tmp_path / "out.tiff", image)
    independent = tifffile.imread(path)
    assert independent.dtype == np.float32
    np.testing.assert_array_equal(independent, image)
    np.testing.assert_array_equal(read_image(path), image)


def test_float_rgba_tiff_round_trip(tmp_path: Path, photo_float: np.ndarray) -> None:
    pytest.importorskip("cv2")
    rgba = np.dstack([photo_float, photo_float[..., :1] * np.float32(0.5)])
    back = read_image(write_image(tmp_path / "rgba.tif", rgba))
    assert back.dtype == np.float32 and back.shape == rgba.shape
    np.testing.assert_array_equal(back, rgba)


def test_float_image_to_png_is_rounded_8_bit(tmp_path: Path, photo_float: np.ndarray) -> None:
    back = read_image(write_image(tmp_path / "out.png", photo_float))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, np.rint(photo_float * 255).astype(np.uint8))


@pytest.mark.parametrize("bad", [np.nan, np.inf, 3.0])
def test_writing_garbage_floats_is_refused(tmp_path: Path, photo_float: np.ndarray, bad: float) -> None:
    image = photo_float.copy()
    image[0, 0, 0] = bad
    for name in ("out.tif", "out.png"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no numpy RuntimeWarning on the way either
            with pytest.raises(InputError, match="image to write"):
                write_image(tmp_path / name, image)
        assert not (tmp_path / name).exists()


def test_float_tiff_through_the_upscaler(tmp_path: Path, espcn_x3_onnx: Path, photo_float: np.ndarray) -> None:
    """The CLI's path: a float TIFF in, a float32 TIFF out, the same picture as the 8-bit route."""
    tifffile = pytest.importorskip("tifffile")
    from srkit.runtime import Upscaler

    tifffile.imwrite(tmp_path / "in.tif", photo_float, photometric="rgb")
    loaded = load_image(tmp_path / "in.tif")
    with Upscaler(espcn_x3_onnx, backend="onnxruntime") as up:
        result = up.upscale(loaded.pixels)
        reference = up.upscale(np.rint(photo_float * 255).astype(np.uint8))
    out = tifffile.imread(write_image(tmp_path / "out.tif", result))
    assert out.dtype == np.float32 and out.shape == (120, 168, 3)
    assert abs(float(out.mean()) - float(reference.mean()) / 255.0) < 0.01  # not black, not white
    assert out.min() >= 0.0 and out.max() <= 1.0


# ---- item 8: decompression bombs -------------------------------------------------------------------
def test_bomb_is_refused_from_its_header_in_bounded_memory(tmp_path: Path) -> None:
    """The issue's file: 1.3 MB on disk, 13000x13000 16-bit RGBA (1.35 GB decoded). Refused before decoding:
    peak RSS stays near the interpreter's own, and the one line names the size, the limit and the way out."""
    path = bomb_png(tmp_path / "bomb.png", 13000, 13000)
    assert path.stat().st_size < 2_000_000
    script = (
        "import json, re, sys\n"
        "from srkit.imageio import load_image\n"
        "from srkit.errors import InputError\n"
        "try:\n"
        "    load_image(sys.argv[1])\n"
        "    message = None\n"
        "except InputError as exc:\n"
        "    message = str(exc)\n"
        # VmHWM: this process's own peak (ru_maxrss would carry over the forking pytest process's)
        "peak = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "print(json.dumps({'message': message, 'rss_mb': peak / 1024}))\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env=_env_without_limit())
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    result = json.loads(run.stdout)
    assert result["message"] == (
        f"{path} declares 13000x13000 pixels (169.0 MP), over the limit of 120 MP on decoding; "
        f"if the file is trusted, raise it with {MAX_MEGAPIXELS_ENV}=170"
    )
    assert result["rss_mb"] < 400, result


# Peak over the array returned: before bounded reading, 4.6 (8-bit RGB, Pillow) and 2.7 (16-bit RGBA, OpenCV);
# now 2.5 and 2.2 (OpenCV's decoder itself holds two images at its peak).
@pytest.mark.parametrize(("bit_depth", "colour_type", "most"), [(8, 2, 2.8), (16, 6, 2.45)])
def test_large_images_are_read_in_bounded_memory(tmp_path: Path, bit_depth: int, colour_type: int,
                                                 most: float) -> None:
    if bit_depth == 16:
        pytest.importorskip("cv2")
    path = bomb_png(tmp_path / "large.png", 4000, 3000, bit_depth=bit_depth, colour_type=colour_type)
    script = (
        "import json, re, sys\n"
        "from srkit.imageio import load_image\n"
        "def kb(key): return int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "open('/proc/self/clear_refs', 'w').write('5')  # resets VmHWM to the current RSS\n"
        "before = kb('VmRSS')\n"
        "pixels = load_image(sys.argv[1]).pixels\n"
        "print(json.dumps({'peak': (kb('VmHWM') - before) * 1024, 'bytes': pixels.nbytes,\n"
        "                  'shape': pixels.shape, 'dtype': str(pixels.dtype)}))\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env=_env_without_limit())
    if "clear_refs" in run.stderr:
        pytest.skip("this kernel cannot reset a process's peak RSS (/proc/self/clear_refs)")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["shape"] == [3000, 4000, 3 if colour_type == 2 else 4]
    assert result["dtype"] == ("uint8" if bit_depth == 8 else "uint16")
    assert result["peak"] <= most * result["bytes"], f"peak {result['peak'] / result['bytes']:.2f}x the array"


def test_an_image_that_cannot_fit_in_free_memory_is_refused_before_decoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = bomb_png(tmp_path / "large.png", 4000, 3000, bit_depth=8, colour_type=2)
    monkeypatch.setattr(imageio, "available_memory_bytes", lambda: 50 << 20)
    with pytest.raises(InputError, match=r"decoding 4000x3000 pixels needs about 0\.1 GiB of memory and "
                                         r"0\.0 GiB is free"):
        read_image(path)
    monkeypatch.setattr(imageio, "available_memory_bytes", lambda: None)  # unknown: no refusal
    assert read_image(path).shape == (3000, 4000, 3)


def _env_without_limit() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != MAX_MEGAPIXELS_ENV}
    env["PYTHONPATH"] = str(ROOT) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def test_bigger_than_pillows_own_limit_is_refused_in_srkits_words(tmp_path: Path) -> None:
    path = bomb_png(tmp_path / "huge.png", 20000, 20000, bit_depth=8, colour_type=0)
    with pytest.raises(InputError, match=r"declares 20000x20000 pixels \(400.0 MP\), over the limit of 120 MP"):
        load_image(path)


def test_limit_from_environment_and_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = bomb_png(tmp_path / "small.png", 300, 200, bit_depth=8, colour_type=2)
    monkeypatch.setenv(MAX_MEGAPIXELS_ENV, "0.05")
    assert pixel_limit() == 50_000
    with pytest.raises(InputError, match=r"\(0.1 MP\), over the limit of 0.05 MP.*SRKIT_MAX_MEGAPIXELS=2"):
        read_image(path)
    assert read_image(path, max_pixels=60_000).shape == (200, 300, 3)
    monkeypatch.setenv(MAX_MEGAPIXELS_ENV, "lots")
    with pytest.raises(InputError, match="SRKIT_MAX_MEGAPIXELS='lots' is not a positive number"):
        read_image(path)
    monkeypatch.delenv(MAX_MEGAPIXELS_ENV)
    assert pixel_limit() == 120_000_000


def test_float_colour_tiff_size_is_checked_before_opencv_decodes(tmp_path: Path, photo_float: np.ndarray) -> None:
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "f.tif", photo_float, photometric="rgb")
    with pytest.raises(InputError, match=r"declares 56x40 pixels"):
        read_image(tmp_path / "f.tif", max_pixels=1000)


def test_pillow_bomb_warning_never_reaches_the_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow warns above its MAX_IMAGE_PIXELS and raises above twice that; srkit's limit replaces both
    (scaled down here so that the test decodes small images)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warned = bomb_png(tmp_path / "warned.png", 40, 40, bit_depth=8, colour_type=0)  # 1600 > 1000: a warning
    raised = bomb_png(tmp_path / "raised.png", 60, 50, bit_depth=8, colour_type=0)  # 3000 > 2000: an error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(warned).shape == (40, 40)
        assert read_image(raised).shape == (50, 60)
        with pytest.raises(InputError, match=r"over the limit of 0\.0025 MP"):
            read_image(raised, max_pixels=2500)
    assert Image.MAX_IMAGE_PIXELS == 1000  # Pillow's setting is given back


# ---- item 12: non-finite input -------------------------------------------------------------------
def test_check_finite_names_what_is_wrong() -> None:
    image = np.full((8, 8, 3), 0.5, dtype=np.float32)
    check_finite(image)
    check_finite(np.zeros((4, 4), dtype=np.uint8))
    image[1, 1, 1], image[2, 2, 2], image[3, 3, 0] = np.nan, np.inf, -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="input image holds 1 NaN and 2 infinite values"):
            check_finite(image)


def test_check_finite_does_not_mistake_large_float64_for_inf() -> None:
    check_finite(np.full((4, 4), 1e308, dtype=np.float64))


def test_module_keeps_the_old_name_for_the_default_limit() -> None:
    assert imageio.MAX_PIXELS == 120_000_000
