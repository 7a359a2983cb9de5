"""Reading and writing image files (Pillow). Orientation from EXIF is applied; dtype is kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from srkit._fs import atomic_path
from srkit.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
MAX_PIXELS = 400_000_000  # a limit on decoding, to refuse decompression bombs with a clear message


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path) -> np.ndarray:
    """HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA) as uint8 or uint16."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input not found: {path}")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise InputError(f"{path} is {img.width}x{img.height}: too large to decode")
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_array(img)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def _to_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)
        return np.clip(arr, 0, 65535).astype(np.uint16)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA"):
        img = img.convert("RGBA")
    elif mode in ("1", "L"):
        img = img.convert("L")
    elif mode not in ("RGB", "RGBA"):
        img = img.convert("RGB")
    return np.asarray(img)


def write_image(path: str | Path, image: np.ndarray, *, quality: int = 95) -> Path:
    """Write atomically; the format comes from the extension."""
    path = Path(path)
    if not is_image_path(path):
        raise InputError(f"unsupported output extension {path.suffix!r}; use one of {sorted(IMAGE_SUFFIXES)}")
    img = _from_array(image, path)
    with atomic_path(path) as tmp:
        fmt = Image.registered_extensions()[path.suffix.lower()]
        kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
        img.save(tmp, format=fmt, **kwargs)
    return path


def _from_array(image: np.ndarray, path: Path) -> Image.Image:
    if image.dtype == np.uint16:
        if image.ndim == 2:
            return Image.fromarray(image)  # Pillow maps a 2-D uint16 array to mode I;16
        if path.suffix.lower() != ".png":
            image = (image >> 8).astype(np.uint8)  # only PNG carries 16-bit colour through Pillow
        else:
            return _png16(image)
    if image.dtype == np.float32:
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if path.suffix.lower() in (".jpg", ".jpeg", ".bmp") and image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]  # these formats have no alpha
    return Image.fromarray(image)


def _png16(image: np.ndarray) -> Image.Image:
    raise InputError("writing 16-bit colour PNG needs OpenCV; not available yet")
