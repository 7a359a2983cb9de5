"""Classical upscalers as quality baselines: what a model's PSNR-Y gain is measured against.

Nearest, bilinear, bicubic and Lanczos, all Pillow's on uint8, under the same convention as the models
(the same low-resolution images, PSNR-Y on BT.601 luma, `scale` pixels of border cropped). Bicubic is the
one the SR literature reports; the others show how far apart the classical filters already are.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

from srkit.quality import psnr_y

FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,  # = imaging.upscale_uint8, the bench's `bicubic` column
    "lanczos": Image.Resampling.LANCZOS,
}


def upscale(lr: np.ndarray, scale: int, method: str) -> np.ndarray:
    """uint8 RGB or gray -> the same, `scale` times larger, with Pillow's `method` filter."""
    h, w = lr.shape[0] * scale, lr.shape[1] * scale
    return np.asarray(Image.fromarray(lr).resize((w, h), FILTERS[method]))


def baseline_psnr_y(pairs: Iterable[tuple[np.ndarray, np.ndarray]], scale: int) -> dict[str, float]:
    """Mean PSNR-Y of each classical upscaler over (low-resolution, ground truth) uint8 pairs."""
    scores: dict[str, list[float]] = {name: [] for name in FILTERS}
    for lr, hr in pairs:
        for name in FILTERS:
            scores[name].append(psnr_y(upscale(lr, scale, name), hr, scale))
    return {name: round(float(np.mean(values)), 3) for name, values in scores.items() if values}


def describe(baselines: dict[str, float]) -> str:
    """One line: 'nearest 29.10, bilinear 30.40, bicubic 32.35, lanczos 32.51 dB'."""
    return ", ".join(f"{name} {value:.2f}" for name, value in baselines.items()) + " dB"
