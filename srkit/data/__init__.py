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


def write_sample_clip(
    path: str | Path, *, size: tuple[int, int] = (64, 48), frames: int = 12, fps: int = 12, audio: bool = True,
    rotation: int = 0,
) -> Path:
    """A short real-content video for trying srkit and for tests: `frames` H.264 frames of `size` (W, H) panning
    across the held-out CC0 photos, plus (with `audio`) a mono AAC tone as long as the video, and (with
    `rotation`) the display matrix a phone writes for portrait video. Needs PyAV (`pip install 'srkit[video]'`)."""
    from PIL import Image

    from srkit._optional import require

    av = require("av", extra="video", purpose="writing a sample clip")
    w, h = size
    photos = [np.asarray(Image.fromarray(p).resize((w * 2, h))) for p in held_out_images().values()]
    container = av.open(str(path), "w")
    try:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        if rotation:
            video.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=44100) if audio else None
        if sound is not None:
            sound.layout = "mono"
        for i in range(frames):
            photo = photos[i * len(photos) // frames]
            x = (i * 4) % (w + 1)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(photo[:, x : x + w]), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            t = np.arange(44100 * frames // fps) / 44100
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for k in range(0, tone.shape[1], 1024):
                chunk = np.ascontiguousarray(tone[:, k : k + 1024])
                samples = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                samples.sample_rate = 44100
                container.mux(sound.encode(samples))
            container.mux(sound.encode(None))
    finally:
        container.close()
    return Path(path)
