"""Reading and writing image files: PNG, JPEG, WebP, TIFF, BMP.

- The bit depth is decided by the dtype: 16-bit files come in as uint16 and go out as 16-bit where the format
  has it (PNG, TIFF); JPEG, WebP and BMP get 8 bits, rounded (not truncated).
- Pillow decodes 16-bit colour PNG/TIFF as 8-bit, and cannot write 16-bit colour at all, so those go through
  OpenCV (`pip install 'srkit[images]'`); 16-bit gray stays with Pillow (mode I;16).
- Gray stays gray (HxW), palette images become RGB (RGBA when they have transparency), gray+alpha RGBA.
- The EXIF orientation is applied on reading, so what comes out is upright and carries no orientation tag.
- The ICC profile is read and can be written back (`ImageFile.icc_profile` -> `write_image(icc_profile=)`);
  for 16-bit colour PNG the iCCP chunk is added to OpenCV's output.
- Float TIFFs (32- or 64-bit samples) come in as float32 in 0-1, srkit's float convention; a file whose values
  leave 0-1 by more than one 8-bit step (0-255 data, HDR) or hold NaN/inf is refused, never clipped or scaled by
  a guess. A float32 image written to .tif/.tiff stays a float32 TIFF; to other formats it becomes 8 bits.
- The declared size is checked before anything is decoded: more than `SRKIT_MAX_MEGAPIXELS` (default 120)
  megapixels is refused in one line, so a small "bomb" file cannot take gigabytes of memory first; so is an
  image whose decoding would not fit in the memory free now.
- Reading is bounded: the peak is the decoder's own image plus the array returned (Pillow's pixels are copied
  out a band of rows at a time; OpenCV's channel swap is done in place), about 2.5 times the array for 8-bit
  RGB and 2.2 times for 16-bit colour (OpenCV's own peak), measured by tests/test_image_limits.py.
- Writes are atomic: a temp file beside the target, renamed into place only when complete. `encode_image`
  gives the same bytes in memory.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, TiffImagePlugin

from srkit._fs import atomic_path
from srkit._system import available_memory_bytes
from srkit.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
LOSSY_SUFFIXES = {".jpg", ".jpeg", ".webp"}
SIXTEEN_BIT_SUFFIXES = {".png", ".tif", ".tiff"}
FLOAT_SUFFIXES = {".tif", ".tiff"}  # float32 in, float32 out
# A limit on decoding, checked against the size a file declares before any pixel is decoded, so a small
# "decompression bomb" is refused in one line instead of costing gigabytes first. 120 MP is above every camera
# but the largest medium-format backs; SRKIT_MAX_MEGAPIXELS raises (or lowers) it for trusted files.
MAX_MEGAPIXELS_ENV = "SRKIT_MAX_MEGAPIXELS"
DEFAULT_MAX_MEGAPIXELS = 120.0
MAX_PIXELS = int(DEFAULT_MAX_MEGAPIXELS * 1_000_000)
# Float samples beyond 0-1 by less than one 8-bit step are rounding noise and clipped; further out is refused.
FLOAT_TOLERANCE = 1.0 / 255.0
ORIENTATION_TAG = 0x0112
# Peak bytes per pixel while decoding, checked against the free memory before decoding: Pillow keeps 4 bytes a
# pixel and srkit's array takes up to 4 more; OpenCV's decoder holds two images at its peak (measured).
_PILLOW_BYTES_PER_PIXEL = 8
_OPENCV_COPIES = 2
_OPENCV_BYTES_PER_SAMPLE = 2 * _OPENCV_COPIES  # 16-bit samples
_BAND_BYTES = 2 << 20  # Pillow -> numpy conversion in bands of about this much


@dataclass
class ImageFile:
    """Pixels plus what should travel from the input file to the output file."""

    pixels: np.ndarray  # HxW, HxWx3 or HxWx4; uint8, uint16 or (float TIFF) float32 in 0-1
    icc_profile: bytes | None = None
    format: str = ""  # Pillow's name of the format read, e.g. "PNG"
    frames: int = 1  # animated PNG/GIF/WebP and multi-page TIFF hold more; `pixels` is the first one


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA) as uint8, uint16 or float32 (float TIFF), upright."""
    return load_image(path, max_pixels=max_pixels).pixels


def load_image(path: str | Path, *, max_pixels: int | None = None) -> ImageFile:
    """`max_pixels`: refuse a file declaring more pixels than this (default: `pixel_limit()`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input not found: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"cannot read image {path}: the file is empty")
    limit = pixel_limit() if max_pixels is None else max_pixels
    try:
        float_tiff = _float_tiff_needing_opencv(path, limit)
        if float_tiff is not None:
            return float_tiff
        with _open_header(path, limit) as img:
            icc = img.info.get("icc_profile") or None
            fmt = img.format or ""
            frames = int(getattr(img, "n_frames", 1) or 1)
            if _is_16bit_colour(img):
                orientation = _orientation_without_decoding(img, path)
                check_decode_memory(path, img.width, img.height, _OPENCV_BYTES_PER_SAMPLE * len(img.mode))
                pixels = _read_16bit_colour(path)
            else:
                check_decode_memory(path, img.width, img.height, _PILLOW_BYTES_PER_PIXEL)
                img.load()
                orientation = int(img.getexif().get(ORIENTATION_TAG, 1) or 1)
                pixels = _pillow_pixels(img)
                img.close()  # frees Pillow's copy before orienting, which may take one more
            pixels = _orient(pixels, orientation)
            if pixels.dtype.kind == "f":
                pixels = unit_float(pixels, path)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, zlib.error... for bad data
        raise InputError(f"cannot read image {path}: {_first_line(exc)}") from None
    return ImageFile(pixels, icc, fmt, frames)


def pixel_limit() -> int:
    """The most pixels srkit decodes from one file: SRKIT_MAX_MEGAPIXELS megapixels (default 120)."""
    text = os.environ.get(MAX_MEGAPIXELS_ENV, "").strip()
    if not text:
        return MAX_PIXELS
    try:
        megapixels = float(text)
    except ValueError:
        megapixels = -1.0
    if not megapixels > 0 or megapixels == float("inf"):
        raise InputError(f"{MAX_MEGAPIXELS_ENV}={text!r} is not a positive number of megapixels")
    return max(1, int(megapixels * 1_000_000))


def check_declared_size(path: Path, width: int, height: int, limit: int) -> None:
    """Refuse, before decoding, a file whose header declares more than `limit` pixels."""
    if width * height > limit:
        raise InputError(
            f"{path} declares {width}x{height} pixels ({width * height / 1e6:.1f} MP), over the limit of "
            f"{limit / 1e6:g} MP on decoding; if the file is trusted, raise it with {MAX_MEGAPIXELS_ENV}="
            f"{_suggested_megapixels(width * height)}"
        )


def check_decode_memory(path: Path, width: int, height: int, bytes_per_pixel: int) -> None:
    """Refuse, before decoding, an image whose decoding would not fit in the memory free now: one line
    naming the need, instead of swapping or the OOM killer."""
    need = width * height * bytes_per_pixel
    free = available_memory_bytes()
    if free is not None and need > free:
        raise InputError(
            f"{path}: decoding {width}x{height} pixels needs about {need / 2**30:.1f} GiB of memory and "
            f"{free / 2**30:.1f} GiB is free"
        )


def _suggested_megapixels(pixels: int) -> int:
    return int(-(-pixels // 1_000_000)) + 1


_PILLOW_LIMIT_LOCK = threading.Lock()


@contextmanager
def _open_header(path: Path, limit: int) -> Iterator[Image.Image]:
    """Image.open (which reads the header only) and srkit's size check, before any decoding.

    Pillow's own bomb check warns on stderr (DecompressionBombWarning) above 89 MP and raises above 179 MP;
    srkit's limit replaces it: the warning is silenced, and where the limit is above Pillow's threshold the
    check is lifted for this one call."""
    pillow_max = Image.MAX_IMAGE_PIXELS
    try:
        img = _pillow_open(path, lift_pillow_check=pillow_max is not None and limit > 2 * pillow_max)
    except Image.DecompressionBombError:
        img = _pillow_open(path, lift_pillow_check=True)  # the header only, to refuse in srkit's words below
    with img:
        check_declared_size(path, img.width, img.height, limit)
        yield img


def _pillow_open(path: Path, *, lift_pillow_check: bool) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if not lift_pillow_check:
            return Image.open(path)
        with _PILLOW_LIMIT_LOCK:  # Pillow's threshold is a module global
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                return Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved


@dataclass(frozen=True)
class _TiffHeader:
    width: int
    height: int
    samples: int
    bits: int
    is_float: bool
    orientation: int
    icc_profile: bytes | None


def _tiff_header(path: Path) -> _TiffHeader | None:
    """The first IFD's tags, read without decoding pixels; None when the file is not a (classic) TIFF."""
    with open(path, "rb") as fp:
        prefix = fp.read(8)
        if prefix[:4] not in (b"II*\x00", b"MM\x00*"):
            return None
        ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix)
        fp.seek(ifd.next)
        ifd.load(fp)

    def first(tag: int, default: int) -> int:
        value = ifd.get(tag, default)
        return int(value[0] if isinstance(value, tuple) and value else value)

    icc = ifd.get(34675)
    return _TiffHeader(
        width=first(256, 0), height=first(257, 0), samples=first(277, 1), bits=first(258, 1),
        is_float=first(339, 1) == 3, orientation=first(ORIENTATION_TAG, 1),
        icc_profile=bytes(icc) if isinstance(icc, (bytes, bytearray)) and icc else None,
    )


def _float_tiff_needing_opencv(path: Path, limit: int) -> ImageFile | None:
    """Float TIFFs Pillow cannot read (colour, or 64-bit samples) via OpenCV, as float32 in 0-1.

    Gray 32-bit float stays with Pillow (mode F); everything else returns None and takes the usual route."""
    header = _tiff_header(path)
    if header is None or not header.is_float or (header.samples == 1 and header.bits == 32):
        return None
    check_declared_size(path, header.width, header.height, limit)
    if header.bits not in (32, 64):
        raise InputError(
            f"cannot read image {path}: {header.bits}-bit float samples are not supported; save it as 32-bit float"
        )
    check_decode_memory(path, header.width, header.height, header.samples * header.bits // 8 * _OPENCV_COPIES)
    arr = _opencv_decode(path, purpose="float colour TIFF images")
    if arr.ndim == 3 and arr.shape[2] not in (3, 4):
        raise InputError(f"cannot read image {path}: {arr.shape[2]} float channels (expected 1, 3 or 4)")
    pixels = unit_float(_orient(arr, header.orientation), path)
    return ImageFile(pixels, header.icc_profile, "TIFF")


def unit_float(pixels: np.ndarray, where: str | Path) -> np.ndarray:
    """Float samples -> contiguous float32 in 0-1, or a one-line InputError.

    srkit's float convention is 0-1. NaN/inf are refused; values beyond 0-1 by less than one 8-bit step are
    clipped as rounding noise; anything further out (0-255 or 0-65535 data, HDR) is refused rather than clipped
    or rescaled by a guess, since either would silently change the picture."""
    from srkit.imaging import check_finite

    check_finite(pixels, str(where))
    low, high = float(pixels.min()), float(pixels.max())
    if low < -FLOAT_TOLERANCE or high > 1.0 + FLOAT_TOLERANCE:
        hint = "divide by 255 first" if high <= 255.0 + FLOAT_TOLERANCE and low >= 0 else "map it into 0-1 first"
        raise InputError(
            f"{where}: float pixel values span {low:g} to {high:g}; srkit reads float images as 0-1 ({hint})"
        )
    out = pixels.astype(np.float32, copy=False)
    if low < 0.0 or high > 1.0:
        out = np.clip(out, 0.0, 1.0)
    return np.ascontiguousarray(out)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _tile_rawmode(img: Image.Image) -> str:
    tiles = getattr(img, "tile", None)  # set by file decoders before load(), not on every Image
    if not tiles:
        return ""
    args = tiles[0].args if hasattr(tiles[0], "args") else tiles[0][3]
    raw = args[0] if isinstance(args, tuple) and args else args
    return raw if isinstance(raw, str) else ""


def _is_16bit_colour(img: Image.Image) -> bool:
    """16 bits per colour sample, which Pillow would silently decode to 8."""
    return img.mode in ("RGB", "RGBA") and ";16" in _tile_rawmode(img)


def _read_16bit_colour(path: Path) -> np.ndarray:
    arr = _opencv_decode(path, purpose="16-bit colour images")
    return np.ascontiguousarray(arr.astype(np.uint16, copy=False))


def _opencv_decode(path: Path, *, purpose: str) -> np.ndarray:
    """OpenCV's decoding, channels in RGB(A) order. Bounded: the file's bytes are dropped before the channels
    are swapped, and the swap is done in place, so the peak is the file plus one decoded image."""
    from srkit._optional import require

    cv2 = require("cv2", extra="images", purpose=purpose)
    data = np.fromfile(str(path), dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    del data
    if arr is None:
        raise InputError(f"cannot read image {path}: OpenCV could not decode it (truncated or corrupt?)")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        _swap_red_blue_in_place(arr)
    return arr


def _swap_red_blue_in_place(arr: np.ndarray) -> None:
    # By bands: a whole-image fancy index (or cv2.cvtColor, even with dst=src) allocates a second image.
    rows = max(1, _BAND_BYTES // max(1, arr.strides[0]))
    for top in range(0, arr.shape[0], rows):
        band = arr[top : top + rows]
        band[..., [0, 2]] = band[..., [2, 0]]


def _orientation_without_decoding(img: Image.Image, path: Path) -> int:
    """The EXIF orientation of an image OpenCV will decode. Pillow's PNG getexif() decodes the whole image
    (as 8 bits) when the eXIf chunk is not before the pixels; walking the chunks finds it without that."""
    if img.format != "PNG" or "exif" in img.info:
        return int(img.getexif().get(ORIENTATION_TAG, 1) or 1)
    exif = Image.Exif()
    data = _png_chunk(path, b"eXIf")
    if data:
        exif.load(data)
    return int(exif.get(ORIENTATION_TAG, 1) or 1)


def _png_chunk(path: Path, kind: bytes) -> bytes | None:
    """The data of the first chunk of this type, seeking past the others (IDAT included)."""
    with open(path, "rb") as fp:
        fp.seek(8)  # the signature
        while header := fp.read(8):
            if len(header) < 8:
                return None
            length, chunk = struct.unpack(">I4s", header)
            if chunk == kind:
                return fp.read(length)
            if chunk == b"IEND":
                return None
            fp.seek(length + 4, os.SEEK_CUR)  # data and CRC
    return None


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """The numpy equivalent of ImageOps.exif_transpose for EXIF orientations 1-8."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr


def _pillow_pixels(img: Image.Image) -> np.ndarray:
    """A loaded Pillow image as an array, converted a band of rows at a time.

    Bounded: `np.asarray` of a whole image builds the bytes twice (Pillow's tobytes chunks, then their join)
    beside Pillow's own 4-bytes-a-pixel copy, 4.6 times the result for an 8-bit RGB PNG; by bands, the peak is
    Pillow's copy plus the result."""
    width, height = img.size
    rows = max(1, _BAND_BYTES // max(1, 4 * width))
    first = _to_array(img.crop((0, 0, width, min(rows, height))))
    out = np.empty((height, *first.shape[1:]), dtype=first.dtype)
    out[: first.shape[0]] = first
    for top in range(first.shape[0], height, rows):
        out[top : top + rows] = _to_array(img.crop((0, top, width, min(top + rows, height))))
    return out


def _to_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "F":  # 32-bit float (gray TIFF): checked against 0-1 by the caller
        return np.asarray(img, dtype=np.float32)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        return np.clip(arr, 0, 65535).astype(np.uint16)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    elif mode in ("1", "L"):
        img = img.convert("L")
    elif mode not in ("RGB", "RGBA"):
        img = img.convert("RGB")
    return np.asarray(img)


# ---- writing -------------------------------------------------------------------------------------------
def write_image(
    path: str | Path, image: np.ndarray, *, quality: int = 95, icc_profile: bytes | None = None
) -> Path:
    """Write atomically; the format comes from the extension. `quality` (1-100) applies to JPEG and WebP
    (WebP at 100 is written lossless). The bytes are `encode_image`'s."""
    path = Path(path)
    if not is_image_path(path):
        raise InputError(f"unsupported output extension {path.suffix!r}; use one of {sorted(IMAGE_SUFFIXES)}")
    data = encode_image(image, path.suffix, quality=quality, icc_profile=icc_profile)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def encode_image(
    image: np.ndarray, format: str, *, quality: int = 95, icc_profile: bytes | None = None
) -> bytes:
    """The bytes of an image file, in memory: what `write_image` writes, for senders that are not files (an
    HTTP response, an object store). `format`: a suffix or a name, "png", ".jpg", "JPEG", "webp", "tiff", "bmp".
    The bit depth, gray, alpha and float rules are `write_image`'s (see the module docstring)."""
    suffix = _suffix_for(format)
    if not 1 <= quality <= 100:
        raise InputError(f"quality must be 1-100, not {quality}")
    image = _normalise_for(image, suffix)
    if image.dtype == np.float32 and image.ndim == 3:
        return _encode_float_colour_tiff(image)
    if image.dtype == np.uint16 and image.ndim == 3:
        return _encode_16bit_colour(image, suffix, icc_profile)
    img = Image.fromarray(image)
    fmt = Image.registered_extensions()[suffix]
    kwargs: dict[str, Any] = {}
    if fmt == "JPEG":
        kwargs = {"quality": quality, "subsampling": "4:4:4" if quality >= 90 else "4:2:0"}
    elif fmt == "WEBP":
        kwargs = {"quality": quality, "lossless": quality == 100}
    if icc_profile and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        kwargs["icc_profile"] = icc_profile
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _suffix_for(format: str) -> str:
    """".png" from "png", ".PNG", "PNG"; an unknown format is a user error naming the ones there are."""
    suffix = "." + format.strip().lower().lstrip(".")
    if suffix not in IMAGE_SUFFIXES:
        known = ", ".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
        raise InputError(f"unsupported image format {format!r}; use one of {known}")
    return suffix


def _normalise_for(image: np.ndarray, suffix: str) -> np.ndarray:
    """The array the target format can hold: float32 only in TIFF, 8 bits where it has no 16, no alpha in JPEG,
    HxW for gray. Float input must be finite and in 0-1 (`unit_float`)."""
    if image.dtype == np.float32:
        image = unit_float(image, "image to write")
        if suffix not in FLOAT_SUFFIXES:
            image = np.rint(image * np.float32(255.0)).astype(np.uint8)
    elif image.dtype == np.uint16 and suffix not in SIXTEEN_BIT_SUFFIXES:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif image.dtype not in (np.uint8, np.uint16):
        raise InputError(f"cannot write a {image.dtype} image; use uint8, uint16 or float32")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if suffix in (".jpg", ".jpeg") and image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]  # JPEG has no alpha
    return np.ascontiguousarray(image)


def _encode_16bit_colour(image: np.ndarray, suffix: str, icc_profile: bytes | None) -> bytes:
    from srkit._optional import require

    cv2 = require("cv2", extra="images", purpose="writing 16-bit colour images")
    bgr = image[..., ::-1] if image.shape[2] == 3 else image[..., [2, 1, 0, 3]]
    ok, buffer = cv2.imencode(".png" if suffix == ".png" else ".tiff", np.ascontiguousarray(bgr))
    if not ok:
        raise InputError(f"OpenCV could not encode a {image.shape} 16-bit image as {suffix}")
    data = buffer.tobytes()
    if icc_profile and suffix == ".png":
        data = _png_with_icc(data, icc_profile)
    return data


def _encode_float_colour_tiff(image: np.ndarray) -> bytes:
    """HxWx3/4 float32 as a 32-bit float TIFF (Pillow has no float colour mode; gray goes through Pillow's F)."""
    from srkit._optional import require

    cv2 = require("cv2", extra="images", purpose="writing float colour TIFF images")
    bgr = image[..., ::-1] if image.shape[2] == 3 else image[..., [2, 1, 0, 3]]
    ok, buffer = cv2.imencode(".tiff", np.ascontiguousarray(bgr))
    if not ok:
        raise InputError(f"OpenCV could not encode a {image.shape} float32 image as TIFF")
    return bytes(buffer.tobytes())


def _png_with_icc(png: bytes, icc_profile: bytes) -> bytes:
    """Insert an iCCP chunk right after IHDR (where the PNG spec wants it, before PLTE and IDAT)."""
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR's length, type, 13 bytes of data, CRC
    if png[12:16] != b"IHDR":
        raise InputError("unexpected PNG layout from the encoder; cannot add the ICC profile")
    body = b"ICC Profile\x00\x00" + zlib.compress(icc_profile)  # name, NUL, compression method 0
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    return png[:ihdr_end] + chunk + png[ihdr_end:]
