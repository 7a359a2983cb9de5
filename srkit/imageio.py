"""Reading and writing image files: PNG, JPEG, WebP, TIFF, BMP.

- The bit depth is decided by the dtype: 16-bit files come in as uint16 and go out as 16-bit where the format
  has it (PNG, TIFF); JPEG, WebP and BMP get 8 bits, rounded (not truncated).
- Pillow decodes 16-bit colour PNG/TIFF as 8-bit, and cannot write 16-bit colour at all, so those go through
  OpenCV (`pip install 'srkit[images]'`); 16-bit gray stays with Pillow (mode I;16).
- Gray stays gray (HxW), palette images become RGB (RGBA when they have transparency), gray+alpha RGBA.
- The EXIF orientation is applied on reading, so what comes out is upright and carries no orientation tag.
- The ICC profile is read and can be written back (`ImageFile.icc_profile` -> `write_image(icc_profile=)`);
  for 16-bit colour PNG the iCCP chunk is added to OpenCV's output.
- Writes are atomic: a temp file beside the target, renamed into place only when complete.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from srkit._fs import atomic_path
from srkit.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
LOSSY_SUFFIXES = {".jpg", ".jpeg", ".webp"}
SIXTEEN_BIT_SUFFIXES = {".png", ".tif", ".tiff"}
MAX_PIXELS = 400_000_000  # a limit on decoding, to refuse decompression bombs with a clear message
ORIENTATION_TAG = 0x0112


@dataclass
class ImageFile:
    """Pixels plus what should travel from the input file to the output file."""

    pixels: np.ndarray  # HxW, HxWx3 or HxWx4; uint8 or uint16
    icc_profile: bytes | None = None
    format: str = ""  # Pillow's name of the format read, e.g. "PNG"
    frames: int = 1  # animated PNG/GIF/WebP and multi-page TIFF hold more; `pixels` is the first one


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path) -> np.ndarray:
    """HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA) as uint8 or uint16, upright."""
    return load_image(path).pixels


def load_image(path: str | Path) -> ImageFile:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input not found: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"cannot read image {path}: the file is empty")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise InputError(f"{path} is {img.width}x{img.height}: too large to decode")
            icc = img.info.get("icc_profile") or None
            fmt = img.format or ""
            frames = int(getattr(img, "n_frames", 1) or 1)
            if _is_16bit_colour(img):
                orientation = int(img.getexif().get(ORIENTATION_TAG, 1) or 1)
                pixels = _orient(_read_16bit_colour(path), orientation)
            else:
                img.load()
                pixels = _to_array(ImageOps.exif_transpose(img))
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, zlib.error... for bad data
        raise InputError(f"cannot read image {path}: {_first_line(exc)}") from None
    return ImageFile(pixels, icc, fmt, frames)


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
    from srkit._optional import require

    cv2 = require("cv2", extra="images", purpose="16-bit colour images")
    data = np.fromfile(str(path), dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise InputError(f"cannot read image {path}: OpenCV could not decode it (truncated or corrupt?)")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[..., ::-1]
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., [2, 1, 0, 3]]
    return np.ascontiguousarray(arr.astype(np.uint16, copy=False))


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


def _to_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
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
    (WebP at 100 is written lossless)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not is_image_path(path):
        raise InputError(f"unsupported output extension {path.suffix!r}; use one of {sorted(IMAGE_SUFFIXES)}")
    if not 1 <= quality <= 100:
        raise InputError(f"quality must be 1-100, not {quality}")
    image = _normalise_for(image, suffix)
    if image.dtype == np.uint16 and image.ndim == 3:
        data = _encode_16bit_colour(image, suffix, icc_profile)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return path
    img = Image.fromarray(image)
    fmt = Image.registered_extensions()[suffix]
    kwargs: dict[str, Any] = {}
    if fmt == "JPEG":
        kwargs = {"quality": quality, "subsampling": "4:4:4" if quality >= 90 else "4:2:0"}
    elif fmt == "WEBP":
        kwargs = {"quality": quality, "lossless": quality == 100}
    if icc_profile and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        kwargs["icc_profile"] = icc_profile
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **kwargs)
    return path


def _normalise_for(image: np.ndarray, suffix: str) -> np.ndarray:
    """The array the target format can hold: 8 bits where it has no 16, no alpha in JPEG, HxW for gray."""
    if image.dtype == np.float32:
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
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


def _png_with_icc(png: bytes, icc_profile: bytes) -> bytes:
    """Insert an iCCP chunk right after IHDR (where the PNG spec wants it, before PLTE and IDAT)."""
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR's length, type, 13 bytes of data, CRC
    if png[12:16] != b"IHDR":
        raise InputError("unexpected PNG layout from the encoder; cannot add the ICC profile")
    body = b"ICC Profile\x00\x00" + zlib.compress(icc_profile)  # name, NUL, compression method 0
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    return png[:ihdr_end] + chunk + png[ihdr_end:]
