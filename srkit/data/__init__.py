"""Bundled CC0 images: a sample photo and the held-out photos the benchmark and the parity gate use.

chelsea (CC0, Stefan van der Walt), coffee (CC0, Rachel Michetti), rocket (public domain, SpaceX), from
scikit-image's data folder; coast, tulips and blossom (CC0, wesaturate.com, 500 px versions from the JPEG XL
project's test data, `external/wesaturate/500px/`). None of them was used to train the bundled weights.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

HELD_OUT = ("chelsea", "coffee", "rocket", "coast", "tulips", "blossom")


def data_path(name: str) -> Path:
    return Path(str(resources.files(__name__).joinpath(name)))


def sample_image_path() -> Path:
    return data_path("sample.png")


def held_out_images() -> dict[str, np.ndarray]:
    from srkit.imageio import read_image

    return {name: read_image(data_path(f"{name}.png")) for name in HELD_OUT}
