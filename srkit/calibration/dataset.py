"""Calibration data: low-resolution patches made with exactly the deployment preprocessing of the model.

The images in a calibration folder are what a user would hand to `srkit upscale`, so each one goes through
the runtime's preprocessing (dtype -> 0-1 by dtype, alpha dropped, BT.601 luma for Y models, gray -> RGB for
RGB models) before patches are cut at seeded random places. The result has NNCF's `Dataset(source,
transform)` shape, so every quantizer consumes the same samples through its own transform.

Decisions on unusual folders: 16-bit images are accepted (converted by dtype, as the runtime does) and gray
images are accepted for Y models (their luma is exact). A folder of gray images only is refused for an RGB
model: its activation ranges would be calibrated on colourless content that deployment never sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from srkit import imaging
from srkit.data import CALIBRATION, HELD_OUT, calibration_image_paths
from srkit.errors import InputError
from srkit.meta import Color, ModelInfo

DEFAULT_SAMPLES = 64
DEFAULT_PATCH = 64
# Built-in CC0 sets (srkit.data): the sample photo and eight scikit-image crops calibrate; the budget is measured
# on the six held-out photos, none of which calibrates. Two photos (the first version) calibrated too narrowly:
# ESPCN x3 needed conv3 in float as well (measured: 0.33 dB with only conv1 float, 0.29 with these ten).
BUILTIN_CALIBRATION = ("sample", *CALIBRATION)
BUILTIN_VALIDATION = HELD_OUT


class CalibrationDataset:
    """An iterable of model inputs (NCHW float32) plus a transform, as `nncf.Dataset(source, transform)`."""

    def __init__(self, source: Sequence[np.ndarray], transform: Callable[[np.ndarray], Any] | None = None,
                 *, description: str = "") -> None:
        self._source = source
        self._transform = transform or (lambda item: item)
        self.description = description

    def __len__(self) -> int:
        return len(self._source)

    def __iter__(self) -> Iterator[Any]:
        return (self._transform(item) for item in self._source)

    def get_data(self) -> Iterable[np.ndarray]:
        """The untransformed samples."""
        return iter(self._source)

    def get_inference_data(self) -> Iterable[Any]:
        return iter(self)

    def with_transform(self, transform: Callable[[np.ndarray], Any]) -> CalibrationDataset:
        return CalibrationDataset(self._source, transform, description=self.description)


@dataclass(frozen=True)
class SourceImage:
    name: str
    pixels: np.ndarray  # HxW uint8/uint16 or HxWxC, as read


def model_planes(image: np.ndarray, info: ModelInfo) -> np.ndarray:
    """An image as read -> the HxWxC float32 planes the model sees (the runtime's preprocessing)."""
    layout = imaging.describe(image)
    pixels = imaging.to_float(image)
    if layout.gray:
        pixels = pixels[..., None]
    colour = pixels[..., :3] if layout.channels >= 3 else pixels[..., :1]
    if info.color == Color.Y:
        y = imaging.rgb_to_y(colour) if colour.shape[2] == 3 else imaging.gray_to_y(colour[..., 0])
        return y[..., None].astype(np.float32)
    if info.in_channels == 3:
        return (colour if colour.shape[2] == 3 else np.repeat(colour, 3, axis=2)).astype(np.float32)
    raise InputError(f"cannot calibrate a {info.in_channels}-channel {info.color.value} model")


def read_folder(folder: str | Path) -> list[SourceImage]:
    """Every image in `folder` (recursively), or an InputError that says what is wrong with the folder."""
    from srkit.imageio import is_image_path, read_image

    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"calibration folder not found: {folder}")
    if not folder.is_dir():
        raise InputError(f"--calib {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise InputError(f"calibration folder {folder} is empty")
    images = [p for p in files if is_image_path(p)]
    if not images:
        raise InputError(f"calibration folder {folder} holds no images ({len(files)} other files)")
    out = []
    for path in images:
        try:
            pixels = read_image(path)
        except InputError as exc:
            raise InputError(f"calibration image unreadable: {exc}") from None
        out.append(SourceImage(str(path.relative_to(folder)), pixels))
    return out


def builtin_images() -> list[SourceImage]:
    from srkit.imageio import read_image

    return [SourceImage(path.stem, read_image(path)) for path in calibration_image_paths()]


def patch_size_for(info: ModelInfo, patch: int) -> tuple[int, int]:
    """A model exported with a static shape gets exactly that shape; otherwise `patch` rounded up to
    the model's size multiple."""
    if info.static_shape:
        return info.static_shape
    if patch < 1:
        raise InputError(f"patch size must be positive, got {patch}")
    m = max(info.size_multiple, 1)
    side = -(-patch // m) * m
    return side, side


def _check_colour(images: Sequence[SourceImage], info: ModelInfo) -> None:
    if info.color == Color.RGB and all(img.pixels.ndim == 2 or img.pixels.shape[2] < 3 for img in images):
        raise InputError(
            f"all {len(images)} calibration images are gray; an RGB model needs colour images to "
            "calibrate its activation ranges (gray images are only accepted next to colour ones)"
        )


def _cut(planes: np.ndarray, ph: int, pw: int, rng: np.random.Generator) -> np.ndarray:
    h, w = planes.shape[:2]
    if h < ph or w < pw:  # a small image is padded as the runtime pads to a size multiple
        planes = imaging.pad_hw(planes, max(h, ph), max(w, pw))
        h, w = planes.shape[:2]
    top = int(rng.integers(0, h - ph + 1))
    left = int(rng.integers(0, w - pw + 1))
    return np.ascontiguousarray(planes[top : top + ph, left : left + pw].transpose(2, 0, 1)[None])


def make_patches(images: Sequence[SourceImage], info: ModelInfo, *, samples: int = DEFAULT_SAMPLES,
                 patch: int = DEFAULT_PATCH, seed: int = 0) -> CalibrationDataset:
    """`samples` patches (1 x C x ph x pw float32), spread evenly over the images, at seeded places."""
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    if not images:
        raise InputError("no calibration images")
    _check_colour(images, info)
    ph, pw = patch_size_for(info, patch)
    rng = np.random.default_rng(seed)
    planes = [model_planes(img.pixels, info) for img in images]
    order = rng.permutation(len(images))
    out = [_cut(planes[order[i % len(images)]], ph, pw, rng) for i in range(samples)]
    n16 = sum(img.pixels.dtype == np.uint16 for img in images)
    ngray = sum(img.pixels.ndim == 2 or img.pixels.shape[2] < 3 for img in images)
    notes = [f"{n16} 16-bit (converted by dtype)"] * bool(n16) + [f"{ngray} gray"] * bool(ngray)
    description = (f"{samples} patches of {ph}x{pw} from {len(images)} images"
                   + (f" ({', '.join(notes)})" if notes else "") + f", seed {seed}")
    return CalibrationDataset(out, description=description)


def calibration_dataset(folder: str | Path | None, info: ModelInfo, *, samples: int = DEFAULT_SAMPLES,
                        patch: int = DEFAULT_PATCH, seed: int = 0) -> CalibrationDataset:
    """Patches from `folder`, or from the built-in CC0 calibration photos when `folder` is None."""
    images = builtin_images() if folder is None else read_folder(folder)
    dataset = make_patches(images, info, samples=samples, patch=patch, seed=seed)
    where = f"built-in photos ({', '.join(BUILTIN_CALIBRATION)})" if folder is None else str(folder)
    dataset.description = f"{dataset.description}; from {where}"
    return dataset
