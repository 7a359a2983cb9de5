"""Bundled CC0 images: a sample photo, the held-out photos the benchmark and the parity gate use, and the
built-in int8 calibration photos.

chelsea (CC0, Stefan van der Walt), coffee (CC0, Rachel Michetti), rocket (public domain, SpaceX), from
scikit-image's data folder; coast, tulips and blossom (CC0, wesaturate.com, 500 px versions from the JPEG XL
project's test data, `external/wesaturate/500px/`). None of them was used to train the bundled weights.
"""

from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

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
    rotation: int = 0, subtitles: tuple[str, ...] = (), keyframe_every: int | None = None,
) -> Path:
    """A short real-content video for trying srkit and for tests: `frames` H.264 frames of `size` (W, H) panning
    across the held-out CC0 photos, plus (with `audio`) a mono AAC tone as long as the video, (with `rotation`)
    the display matrix a phone writes for portrait video, and (with `subtitles`, in a .mkv) one SubRip track
    showing those lines one after another. `keyframe_every`: the encoder's GOP (its default puts one keyframe in
    a short clip). Needs PyAV (`pip install 'srkit[video]'`)."""
    from PIL import Image

    from srkit._optional import require

    av = require("av", extra="video", purpose="writing a sample clip")
    w, h = size
    photos = [np.asarray(Image.fromarray(p).resize((w * 2, h))) for p in held_out_images().values()]
    container = av.open(str(path), "w")
    try:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        if keyframe_every:
            video.codec_context.gop_size = keyframe_every
        if rotation:
            video.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=44100) if audio else None
        if sound is not None:
            sound.layout = "mono"
        cues = _subtitle_cues(av, subtitles, frames / fps, Path(path)) if subtitles else None
        text = container.add_stream_from_template(cues.streams.subtitles[0]) if cues is not None else None
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
        if cues is not None:
            for packet in cues.demux(cues.streams.subtitles[0]):
                if packet.dts is not None:
                    packet.stream = text
                    container.mux(packet)
            cues.close()
    finally:
        container.close()
    return Path(path)


def _subtitle_cues(av: Any, lines: tuple[str, ...], seconds: float, near: Path) -> Any:
    """An open SubRip input holding `lines` spread over `seconds` (PyAV encodes no text subtitles, but copies
    a demuxed SubRip stream into Matroska as it is)."""
    def stamp(t: float) -> str:
        ms = round(t * 1000)
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    step = seconds / len(lines)
    srt = "\n".join(f"{i + 1}\n{stamp(i * step)} --> {stamp((i + 0.9) * step)}\n{line}\n" for i, line in enumerate(lines))
    with tempfile.NamedTemporaryFile("w", suffix=".srt", dir=near.parent, delete=False, encoding="utf-8") as fh:
        fh.write(srt)
    try:
        return av.open(fh.name)
    finally:
        os.unlink(fh.name)  # the demuxer has read what it needs on open
