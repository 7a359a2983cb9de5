"""Benchmark data: high-resolution ground truth and the low-resolution inputs made from it by the
CONTRACT convention (Pillow bicubic, antialiased, on uint8)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from srkit import imaging
from srkit.data import held_out_images
from srkit.errors import InputError
from srkit.imageio import is_image_path, read_image

RESIZE_KERNEL = "Pillow BICUBIC (a=-0.5), antialiased, on uint8"


@dataclass
class Pair:
    name: str
    hr: np.ndarray  # uint8 RGB, cropped to a multiple of the scale
    lr: np.ndarray


def load_pairs(scale: int, dataset: Path | None = None, max_side: int = 1024) -> list[Pair]:
    images = held_out_images() if dataset is None else _read_folder(dataset)
    pairs = []
    for name, image in images.items():
        if image.dtype != np.uint8:
            image = (image >> 8).astype(np.uint8) if image.dtype == np.uint16 else image
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[..., :3]
        if max(image.shape[:2]) > max_side:  # keep the torch reference affordable on a small machine
            f = max_side / max(image.shape[:2])
            image = imaging.from_float(
                imaging.resize_bicubic(imaging.to_float(image), round(image.shape[0] * f), round(image.shape[1] * f)),
                np.uint8,
            )
        hr = imaging.crop_to_multiple(image, scale)
        pairs.append(Pair(name, hr, imaging.downscale_uint8(hr, scale)))
    return pairs


def _read_folder(folder: Path) -> dict[str, np.ndarray]:
    if not folder.is_dir():
        raise InputError(f"--dataset {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p))
    if not files:
        raise InputError(f"--dataset {folder} holds no images")
    return {str(p.relative_to(folder)): read_image(p) for p in files}
