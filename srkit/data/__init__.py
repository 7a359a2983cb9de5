"""Bundled CC0 images: a sample photo, the held-out photos the benchmark and the parity gate use, and the
built-in int8 calibration photos.

chelsea (CC0, Stefan van der Walt), coffee (CC0, Rachel Michetti), rocket (public domain, SpaceX), from
scikit-image's data folder; coast, tulips and blossom (CC0, wesaturate.com, 500 px versions from the JPEG XL
project's test data, `external/wesaturate/500px/`). None of them was used to train the bundled weights.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

HELD_OUT = ("chelsea", "coffee", "rocket", "coast", "tulips", "blossom")
# int8 calibration photos (calibration/*.png): 256x256 centre crops of scikit-image images, all CC0 or public
# domain per scikit-image's docstrings (astronaut: NASA; camera: Lav Varshney; brick, grass, gravel:
# CC0Textures; coins, immunohistochemistry: no known restrictions; clock: Stefan van der Walt). Never held out,
# so a built-in calibration is validated on every held-out photo.
CALIBRATION = ("astronaut", "camera", "brick", "grass", "gravel", "coins", "immunohistochemistry", "clock")


def data_path(name: str) -> Path:
    return Path(str(resources.files(__name__).joinpath(name)))


def sample_image_path() -> Path:
    return data_path("sample.png")


def calibration_image_paths() -> list[Path]:
    return [sample_image_path(), *(data_path(f"calibration/{name}.png") for name in CALIBRATION)]


def held_out_images() -> dict[str, np.ndarray]:
    from srkit.imageio import read_image

    return {name: read_image(data_path(f"{name}.png")) for name in HELD_OUT}
