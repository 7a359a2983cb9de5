"""Training pairs for quantization-aware fine-tuning: (LR, HR) planes under the CONTRACT convention.

Each training image goes through the same steps as a budget image (srkit.calibration.budget.validation_set):
uint8 RGB or gray, cropped to a multiple of the scale, LR by Pillow's antialiased bicubic
(imaging.downscale_uint8); then both sides become the planes the model sees (the runtime's preprocessing,
srkit.calibration.dataset.model_planes: BT.601 luma for Y models). Fine-tuning on exactly that degradation is
what makes the gain show up in the budget measurement.

The budget is measured on the built-in held-out photos (srkit.data.HELD_OUT); a training folder that contains
one of them would grade the model on its own training data, so such a folder is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from srkit import imaging
from srkit.calibration.dataset import SourceImage, builtin_images, model_planes, read_folder
from srkit.errors import InputError
from srkit.meta import ModelInfo


@dataclass(frozen=True)
class Pair:
    lr: np.ndarray  # h x w x C float32 planes
    hr: np.ndarray  # (scale*h) x (scale*w) x C


@dataclass(frozen=True)
class TrainingSet:
    pairs: list[Pair]
    description: str


def random_dihedral(lr: np.ndarray, hr: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same one of the 8 rotations / mirrorings applied to a LR patch and its HR patch (views, no copy)."""
    k = int(rng.integers(4))
    lr, hr = np.rot90(lr, k), np.rot90(hr, k)
    if rng.random() < 0.5:
        lr, hr = lr[:, ::-1], hr[:, ::-1]
    return lr, hr


def _as_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint16:
        pixels = imaging.from_float(imaging.to_float(pixels), np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] in (2, 4):  # alpha: the runtime upscales it apart from the model
        pixels = pixels[..., : pixels.shape[2] - 1]
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    return np.ascontiguousarray(pixels)


def _fingerprint(pixels: np.ndarray) -> str:
    pixels = _as_uint8(pixels)
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()


def refuse_validation_images(images: Sequence[SourceImage], validation: dict[str, np.ndarray]) -> None:
    """The budget photos must not be training data: compare decoded pixels, not file names."""
    held = {_fingerprint(pixels): name for name, pixels in validation.items()}
    for image in images:
        name = held.get(_fingerprint(image.pixels))
        if name is not None:
            raise InputError(f"training image {image.name} is the held-out photo {name!r} the PSNR budget is "
                             "measured on; train on other images")


def make_pairs(images: Sequence[SourceImage], info: ModelInfo, patch: int) -> list[Pair]:
    s = info.scale
    pairs = []
    for image in images:
        hr = imaging.crop_to_multiple(_as_uint8(image.pixels), s)
        if min(hr.shape[:2]) < patch * s:  # too small for one training patch
            continue
        lr = imaging.downscale_uint8(hr, s)
        pairs.append(Pair(model_planes(lr, info), model_planes(hr, info)))
    return pairs


def training_set(folder: str | None, info: ModelInfo, *, patch: int,
                 validation: dict[str, np.ndarray]) -> TrainingSet:
    """Pairs from the images in `folder` (None: srkit's built-in calibration photos, none of them held out)."""
    images = builtin_images() if folder is None else read_folder(folder)
    refuse_validation_images(images, validation)
    pairs = make_pairs(images, info, patch)
    if not pairs:
        raise InputError(f"no training image is at least {patch * info.scale}x{patch * info.scale} pixels "
                         f"(one {patch}x{patch} LR patch at x{info.scale})")
    where = "built-in calibration photos" if folder is None else str(folder)
    skipped = len(images) - len(pairs)
    return TrainingSet(pairs, f"{len(pairs)} images from {where}" + (f" ({skipped} too small)" if skipped else ""))


class PatchSampler:
    """Seeded random aligned LR/HR patches with flips and 90-degree rotations (as scripts/train_bundled.py),
    each image drawn in proportion to its area up to 512x512 HR pixels, so one large photo does not take
    over the steps (the bundled ESPCN x3's recipe: without the cap retina and hubble_deep_field took over
    half the patches)."""

    def __init__(self, pairs: Sequence[Pair], scale: int, patch: int, seed: int) -> None:
        self.pairs, self.scale, self.patch = list(pairs), scale, patch
        self.rng = np.random.default_rng(seed)
        sizes = np.array([min(p.lr.shape[0] * p.lr.shape[1], (512 // scale) ** 2) for p in self.pairs],
                         dtype=np.float64)
        self.weights = sizes / sizes.sum()

    def one(self) -> tuple[np.ndarray, np.ndarray]:
        s, n = self.scale, self.patch
        pair = self.pairs[int(self.rng.choice(len(self.pairs), p=self.weights))]
        y = int(self.rng.integers(0, pair.lr.shape[0] - n + 1))
        x = int(self.rng.integers(0, pair.lr.shape[1] - n + 1))
        lr, hr = pair.lr[y : y + n, x : x + n], pair.hr[y * s : (y + n) * s, x * s : (x + n) * s]
        return random_dihedral(lr, hr, self.rng)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """NCHW float32 arrays."""
        lrs, hrs = zip(*(self.one() for _ in range(size)), strict=True)
        return (np.ascontiguousarray(np.stack(lrs).transpose(0, 3, 1, 2), dtype=np.float32),
                np.ascontiguousarray(np.stack(hrs).transpose(0, 3, 1, 2), dtype=np.float32))
