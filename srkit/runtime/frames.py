"""Frame sources and sinks for `Upscaler.upscale_frames`: frames in, frames out, as numpy arrays.

A source is any iterable of images (HxW or HxWxC, uint8 / uint16 / float32 RGB); a sink takes the upscaled
frames one at a time (`FrameSink`). Here: image files (`ImageFiles`, `ImageFileSink`) and videos through PyAV
(`VideoFrames`, `VideoSink`). A sink is a context manager: leaving it with an error discards what it was writing,
so no half-written file is left (srkit._fs.atomic_path); leaving it normally finishes it.

>>> with Upscaler("espcn-x3.onnx") as up, VideoSink("big.mp4", rate=VideoFrames("clip.mp4").probe.rate) as sink:
...     write_frames(up.upscale_frames(VideoFrames("clip.mp4")), sink)

For a whole video with its audio, timestamps, rotation and the luma route of Y-channel models, use
srkit.runtime.video.upscale_video; for a folder of images with per-file failures, srkit.runtime.files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from srkit._fs import atomic_path
from srkit.errors import InputError
from srkit.imageio import write_image
from srkit.jobs import load_input
from srkit.runtime import container


@runtime_checkable
class FrameSink(Protocol):
    """Where frames go. `write` takes one frame; `close` finishes the output; `abort` discards it."""

    def write(self, frame: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class _SinkContext:
    """`with sink:` finishes the output on success and discards it on an error."""

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self: Any, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_frames(frames: Iterable[np.ndarray], sink: FrameSink) -> int:
    """Every frame into `sink`, which is then closed (or aborted on an error); the number of frames."""
    count = 0
    try:
        for frame in frames:
            sink.write(frame)
            count += 1
    except BaseException:
        sink.abort()
        raise
    sink.close()
    return count


# ---- image files ---------------------------------------------------------------------------------
class ImageFiles:
    """Image files as frames, read one at a time as they are asked for (srkit.jobs.load_input: upright, 16 bits
    kept, the first frame of an animated file with a warning). Iterable more than once; `len()` is the count."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.paths:
            yield load_input(path).pixels


class ImageFileSink(_SinkContext):
    """Frames written to image files, each atomically: the n-th frame to the n-th of `paths`, or, with
    `ImageFileSink.numbered(folder)`, to `folder/000000.png`, `folder/000001.png`... The format comes from each
    name's suffix; `quality` is JPEG's and WebP's; `icc_profile` is written into every file."""

    def __init__(self, paths: Iterable[str | Path], *, quality: int = 95, icc_profile: bytes | None = None) -> None:
        self._paths = iter(paths)
        self.quality = quality
        self.icc_profile = icc_profile
        self.written: list[Path] = []

    @classmethod
    def numbered(cls, folder: str | Path, pattern: str = "{index:06d}.png", **kwargs: Any) -> ImageFileSink:
        root = Path(folder)
        return cls((root / pattern.format(index=i) for i in _count()), **kwargs)

    def write(self, frame: np.ndarray) -> None:
        path = next(self._paths, None)
        if path is None:
            raise InputError(f"more frames than output paths ({len(self.written)} written)")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.written.append(write_image(path, frame, quality=self.quality, icc_profile=self.icc_profile))

    def close(self) -> None:
        """Nothing to finish: each file was complete when `write` returned."""

    def abort(self) -> None:
        """The files already written are whole and stay (`written` lists them); nothing half-written exists."""


def _count() -> Iterator[int]:
    i = 0
    while True:
        yield i
        i += 1


# ---- video (PyAV) --------------------------------------------------------------------------------
class VideoFrames:
    """The frames of a video, decoded one at a time: RGB uint8 (`rgb24`), or uint16 for `format="rgb48le"`.
    Iterable more than once; `probe` says what the container declares (size, frame count, rate, audio)."""

    def __init__(self, path: str | Path, *, format: str = "rgb24") -> None:
        self.path = Path(path)
        self.format = format
        self._probe: container.VideoProbe | None = None

    @property
    def probe(self) -> container.VideoProbe:
        if self._probe is None:
            self._probe = container.probe(self.path)
        return self._probe

    def __iter__(self) -> Iterator[np.ndarray]:
        av = container.av_module()
        source = container.open_input(self.path)
        try:
            source.streams.video[0].thread_type = "AUTO"
            for frame in source.decode(video=0):
                yield frame.to_ndarray(format=self.format)
        except av.error.FFmpegError as exc:
            raise InputError(f"cannot decode {self.path}: {exc}") from None
        finally:
            source.close()


class VideoSink(_SinkContext):
    """RGB frames (uint8, or uint16 for 10-bit output where the codec has it) encoded into a video file, 4:2:0,
    at `rate` frames a second; the size is the first frame's, cut to even sides. Written to a temp file and
    renamed into place by `close` (srkit._fs.atomic_path). No audio: srkit.runtime.video copies it."""

    def __init__(self, path: str | Path, *, rate: Fraction | int | None = 25, codec: str = "libx264",
                 crf: int | None = None, preset: str | None = None, rotation: int = 0) -> None:
        self.path = Path(path)
        container.check_video_output(self.path, codec)
        self._spec = container.VideoStreamSpec(codec=codec, options=container.encoder_options(codec, crf, preset),
                                               rate=rate or 25, size=(0, 0), pix_fmt="yuv420p", rotation=rotation)
        self._exit: contextlib.ExitStack | None = None
        self._sink: Any = None
        self._stream: Any = None
        self._format = "rgb24"
        self._first_shape: tuple[int, ...] = ()
        self.frames = 0

    def _open(self, frame: np.ndarray) -> None:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype not in (np.uint8, np.uint16):
            raise InputError(f"VideoSink takes RGB uint8 or uint16 frames (HxWx3), not {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        self._first_shape = frame.shape
        deep = frame.dtype == np.uint16
        route = container.Route.RGB48 if deep else container.Route.RGB
        self._format = route.frame_format
        spec = container.VideoStreamSpec(
            codec=self._spec.codec, options=self._spec.options, rate=self._spec.rate,
            size=(container.even(w), container.even(h)), pix_fmt=container.output_format(self._spec.codec, route),
            rotation=self._spec.rotation)
        stack = contextlib.ExitStack()
        tmp = stack.enter_context(atomic_path(self.path))
        self._sink = container.open_output(tmp, self.path)
        self._exit = stack
        self._stream = container.add_video_stream(self._sink, spec)
        self._spec = spec

    def write(self, frame: np.ndarray) -> None:
        if self._sink is None:
            self._open(frame)
        elif frame.shape != self._first_shape:
            raise InputError(f"frame {self.frames} is {frame.shape[1]}x{frame.shape[0]}; the first was "
                             f"{self._first_shape[1]}x{self._first_shape[0]}")
        av = container.av_module()
        out = av.VideoFrame.from_ndarray(container.crop_even(frame), format=self._format)
        out.pts = self.frames  # one tick a frame: the stream's time base is 1/rate
        self._sink.mux(self._stream.encode(out))
        self.frames += 1

    def close(self) -> None:
        if self._sink is None:
            if self.frames:
                return  # closed already
            raise InputError(f"{self.path}: no frames to write")
        assert self._exit is not None
        try:
            self._sink.mux(self._stream.encode(None))
            self._sink.close()
        except BaseException:
            self.abort()
            raise
        self._sink = None
        self._exit.close()  # renames the complete file into place

    def abort(self) -> None:
        if self._sink is not None:
            container.close_quietly(self._sink)
            self._sink = None
        if self._exit is not None:
            exit_stack, self._exit = self._exit, None
            with contextlib.suppress(_Aborted):
                exit_stack.__exit__(_Aborted, _Aborted(), None)  # atomic_path removes its temp file


class _Aborted(Exception):
    """Handed to atomic_path so that it discards the temp file."""
