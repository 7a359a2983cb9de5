"""Video containers with PyAV: opening and probing inputs, the encoder and its output stream, the copy of every
audio and subtitle stream, and the per-frame steps of the video path (decoder thread, model thread, encoder thread).

Shared by srkit.runtime.video (one machine), srkit.runtime.frames (VideoFrames, VideoSink) and
srkit.cluster.video (segments on a Ray cluster, which must produce the pixels one machine produces).

- Y-channel models on yuv420p video take the luma route: the decoded Y plane (BT.601/709 video-range luma, the
  model's input convention) goes through the model and U/V are resized bicubically, with no RGB round trip.
- 4:2:0 output needs even sides: an odd one loses its last row or column (a third of a source pixel at x3).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from srkit import imaging
from srkit._optional import require
from srkit.errors import InputError
from srkit.meta import Color, ModelInfo

MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mkv": "matroska", ".mov": "mov", ".avi": "avi", ".webm": "webm"}
VIDEO_SUFFIXES = set(MUXERS)
# codecs whose quality is set by a constant rate factor; others take their defaults
CRF_CODECS = {"libx264": 18, "libx265": 20, "libvpx-vp9": 30, "libsvtav1": 30, "libaom-av1": 30}


class Route(str, Enum):
    """How frames go through the model."""

    YUV = "yuv"  # Y-channel model on 8-bit 4:2:0: Y plane through the model, U/V scaled by swscale
    RGB = "rgb"  # 8-bit RGB frames through Upscaler.upscale
    RGB48 = "rgb48"  # more than 8 bits a sample (10/12-bit video): 16-bit RGB frames, encoded at 10 bits

    @property
    def frame_format(self) -> str:
        return {Route.RGB: "rgb24", Route.RGB48: "rgb48le"}.get(self, "yuv420p")


def is_video_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class VideoProbe:
    width: int
    height: int
    frames: int | None  # None when the container does not say
    rate: Fraction | None
    duration_s: float | None
    pix_fmt: str
    has_audio: bool
    audio_codec: str | None
    rotation: int = 0  # display rotation, degrees counter-clockwise (phone videos), kept on the output
    subtitle_codecs: tuple[str, ...] = ()  # one per subtitle stream


def av_module() -> Any:
    return require("av", extra="video", purpose="video input")


# ---- inputs ----------------------------------------------------------------------------------------
def open_input(src: Path) -> Any:
    """An open PyAV container with a video stream, or a one-line InputError."""
    av = av_module()
    if not src.is_file():
        raise InputError(f"input not found: {src}")
    try:
        container = av.open(str(src), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"cannot read video {src}: {exc}") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{src} has no video stream")
    return container


def probe(src: str | Path) -> VideoProbe:
    container = open_input(Path(src))
    try:
        info = probe_open(container)
    finally:
        container.close()
    info.rotation = display_rotation(Path(src))
    return info


def display_rotation(src: Path) -> int:
    """The rotation a player applies (the display matrix a phone writes for portrait video). FFmpeg hands it
    out with the decoded frames, so this opens the file once more and decodes the first one."""
    av = av_module()
    try:
        with av.open(str(src), mode="r") as container:
            for frame in container.decode(video=0):
                return round(frame.rotation or 0) % 360
    except (av.error.FFmpegError, OSError, ValueError):
        pass  # the real decode reports what is wrong with the file
    return 0


def probe_open(container: Any) -> VideoProbe:
    """What the container says of itself (the rotation is `display_rotation`'s: it needs a decoded frame)."""
    video = container.streams.video[0]
    audio = container.streams.audio[0] if container.streams.audio else None
    duration = None
    if video.duration is not None and video.time_base is not None:
        duration = float(video.duration * video.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    return VideoProbe(
        width=video.codec_context.width,
        height=video.codec_context.height,
        frames=video.frames or None,
        rate=video.average_rate,
        duration_s=duration,
        pix_fmt=video.codec_context.pix_fmt or "",
        has_audio=audio is not None,
        audio_codec=audio.codec_context.name if audio is not None else None,
        subtitle_codecs=tuple(st.codec_context.name for st in container.streams.subtitles),
    )


# ---- outputs ---------------------------------------------------------------------------------------
def check_encoder(codec: str, crf: int | None) -> dict[str, str]:
    """The encoder's options; an unknown codec or a CRF it cannot take is a user error."""
    av = av_module()
    try:
        av.codec.Codec(codec, "w")
    except Exception:  # PyAV raises UnknownCodecError or ValueError depending on the version
        known = ", ".join(sorted(c for c in CRF_CODECS if c in av.codecs_available))
        raise InputError(f"no video encoder {codec!r} in this FFmpeg; try one of: {known}, mpeg4") from None
    if codec not in CRF_CODECS:
        if crf is not None:
            raise InputError(f"--crf applies to {', '.join(CRF_CODECS)}; {codec} has no constant rate factor")
        return {}
    value = CRF_CODECS[codec] if crf is None else crf
    if not 0 <= value <= 63:
        raise InputError(f"--crf {value} is out of range (0-51 for x264/x265, 0-63 for VP9/AV1)")
    options = {"crf": str(value)}
    if codec == "libx265":
        options["x265-params"] = "log-level=error"  # x265 prints its settings to stderr itself otherwise
    if codec == "libvpx-vp9":
        options["b"] = "0"  # constant quality mode, not a bitrate cap
    return options


def encoder_options(codec: str, crf: int | None, preset: str | None) -> dict[str, str]:
    """`check_encoder`'s options plus the speed preset, if any."""
    options = check_encoder(codec, crf)
    if preset:
        options["preset"] = preset
    return options


def check_video_output(dst: Path, codec: str | None = None) -> None:
    """A video suffix and, with `codec`, a video encoder in a container that can hold it: checked on an in-memory
    muxer before any frame is decoded."""
    if not is_video_path(dst):
        raise InputError(f"unsupported video output {dst.suffix!r}; use one of {sorted(VIDEO_SUFFIXES)}")
    if codec is None:
        return
    av = av_module()
    kind = av.codec.Codec(codec, "w").type
    if kind != "video":
        raise InputError(f"--codec {codec} encodes {kind}, not video; use a video encoder such as libx264, libx265, "
                         "libvpx-vp9")
    try:
        with av.open(io.BytesIO(), "w", format=muxer_for(dst)) as probe_sink:
            probe_sink.add_stream(codec, rate=25)
    except ValueError as exc:
        raise InputError(f"{dst}: a {dst.suffix} file cannot hold {codec} video ({exc}); choose another --codec "
                         "(.webm: libvpx-vp9) or .mkv, which holds any codec") from None


@dataclass(frozen=True)
class VideoStreamSpec:
    """The output video stream: the same settings on one machine, on a cluster and in VideoSink."""

    codec: str
    options: dict[str, str]  # the encoder's (encoder_options)
    rate: Fraction | int | None
    size: tuple[int, int]  # (W, H), even
    pix_fmt: str
    time_base: Fraction | None = None  # the input's, so that its timestamps are kept
    rotation: int = 0  # display rotation, written as the display matrix


def open_output(path: Path, dst: Path) -> Any:
    """A PyAV container writing to `path` (a temp file) in the format `dst`'s suffix names."""
    return av_module().open(str(path), mode="w", format=muxer_for(dst))


def add_video_stream(sink: Any, spec: VideoStreamSpec) -> Any:
    stream = sink.add_stream(spec.codec, rate=spec.rate, options=dict(spec.options))
    stream.width, stream.height = spec.size
    stream.pix_fmt = spec.pix_fmt
    if spec.time_base is not None:
        stream.time_base = spec.time_base
    if spec.rotation:  # upscaled pixels are stored as decoded: players must turn them the same way
        stream.set_display_rotation(spec.rotation)
    return stream


# stream types copied packet by packet from the input, never re-encoded
COPIED_TYPES = ("audio", "subtitle")


def copied_streams(source: Any) -> list[Any]:
    """Every audio and subtitle stream of the input, in the input's order."""
    return [st for st in source.streams if st.type in COPIED_TYPES]


def copy_streams(sink: Any, streams: list[Any], dst: Path) -> dict[int, Any]:
    """The output twin of each copied input stream, by the input stream's index."""
    twins = {}
    for stream in streams:
        try:
            twins[stream.index] = sink.add_stream_from_template(stream)
        except ValueError as exc:  # the container cannot hold this codec (AAC in WebM, SubRip in MP4)
            raise InputError(
                f"the {stream.type} track ({stream.codec_context.name}) cannot be copied into {dst.suffix}: {exc}; "
                "choose .mkv (holds any codec)" + (" or .mp4" if stream.type == "audio" else "")
            ) from None
    return twins


def summary_of_copied(kinds: list[str]) -> str:
    """`audio copied`, `audio and 2 subtitle tracks copied`, or '' (for the CLI's result line), from the copied
    streams' types (read while the container is open: a closed one's streams cannot be asked)."""
    audio, subtitles = kinds.count("audio"), kinds.count("subtitle")
    parts = ([("audio" if audio == 1 else f"{audio} audio tracks")] if audio else []) + (
        [("subtitles" if subtitles == 1 else f"{subtitles} subtitle tracks")] if subtitles else [])
    return " and ".join(parts) + " copied" if parts else ""


def close_quietly(sink: Any) -> None:
    """Close a half-written output after a failure: an error while closing must not hide the cause."""
    with contextlib.suppress(Exception):
        sink.close()


def muxer_for(path: Path) -> str | None:
    # the temp file's name ends like the target's, but say it explicitly (FFmpeg guesses some badly, and an
    # in-memory output has no name to guess from)
    return MUXERS.get(path.suffix.lower())


def output_format(codec: str, route: Route) -> str:
    """4:2:0 (what every player takes), at 10 bits for deeper input where the encoder has it."""
    if route == Route.RGB48:
        formats = {f.name for f in av_module().codec.Codec(codec, "w").video_formats or []}
        if "yuv420p10le" in formats:
            return "yuv420p10le"
    return "yuv420p"


def even(n: int) -> int:
    return n - n % 2


def output_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """(W, H) of the upscaled video: 4:2:0 needs even sides."""
    return even(width * scale), even(height * scale)


# ---- the route and the per-frame steps -------------------------------------------------------------
def route_for(model: ModelInfo, info: VideoProbe, *, yuv_fast_path: bool = True) -> Route:
    """The route a video takes through a model: decided from the model's metadata and the video's header, so
    that a cluster's driver (which loads no model) decides as one machine does."""
    if bit_depth(info.pix_fmt) > 8:
        return Route.RGB48
    yuv = (yuv_fast_path and model.color == Color.Y and info.pix_fmt == "yuv420p"
           and info.width % 2 == 0 and info.height % 2 == 0)
    return Route.YUV if yuv else Route.RGB


def bit_depth(pix_fmt: str) -> int:
    try:
        return max(c.bits for c in av_module().VideoFormat(pix_fmt).components)
    except (ValueError, TypeError):  # an unknown or empty name: FFmpeg decodes it to 8-bit RGB for us
        return 8


@dataclass
class StagedFrame:
    """One frame between the stages; the decoder and encoder threads do all the work but the model's."""

    pts: int | None
    time_base: Fraction | None
    signal: dict[str, Any]  # colorspace and range, carried to the output frame
    pixels: np.ndarray  # RGB uint8/uint16 (rgb paths); the Y plane, uint8 (y8 pipeline) or float32 0-1 (yuv path)
    chroma: np.ndarray | None = None  # yuv path: U and V already upscaled, packed as PyAV lays them out
    result: np.ndarray | None = None  # rgb paths: RGB as decoded; yuv path: the model's Y, uint8 or float32


def uses_luma8(up: Any, route: Route) -> bool:
    """Whether the luma route feeds uint8 planes to the y8 pipeline (where it pays) or float planes."""
    return route == Route.YUV and bool(up.luma_pipeline_pays())


def prepare_frame(frame: Any, route: Route, scale: int, *, luma8: bool = False) -> StagedFrame:
    """Decoder thread: the frame as arrays; on the yuv path U/V are upscaled here, off the model's thread."""
    signal = {}
    for attr in ("colorspace", "color_range"):
        with contextlib.suppress(AttributeError, ValueError):
            signal[attr] = getattr(frame, attr)
    if route != Route.YUV:
        return StagedFrame(frame.pts, frame.time_base, signal, frame.to_ndarray(format=route.frame_format))
    h, w = frame.height, frame.width
    y = np.ascontiguousarray(frame.to_ndarray(format="yuv420p")[:h])  # video-range luma: the model's Y convention
    if not luma8:  # the float model: to 0-1 here, in the decoder thread
        y = y.astype(np.float32)
        y *= np.float32(1 / 255)
    # U/V: FFmpeg's swscale scales the whole frame (bicubic, chroma siting honoured) in about 1.5 ms a 1080p
    # frame, four times less than resizing the two planes with Pillow in float; its Y plane is dropped.
    big = frame.reformat(width=w * scale, height=h * scale, format="yuv420p", interpolation="BICUBIC")
    chroma = big.to_ndarray(format="yuv420p")[h * scale :]
    return StagedFrame(frame.pts, frame.time_base, signal, y, chroma)


def infer_frame(up: Any, item: StagedFrame, route: Route) -> StagedFrame:
    """The caller's thread: only the model (and what Upscaler does around it on the rgb path)."""
    if route == Route.YUV:
        if item.pixels.dtype == np.uint8:  # the y8 pipeline: uint8 luma in and out, rounding in the graph
            item.result = up.upscale_luma(item.pixels)
        else:  # the float model alone; the encoder thread rounds
            item.result = up.run_model(item.pixels[None, None])[0, 0]
    else:
        item.result = up.upscale(item.pixels)
    item.pixels = item.pixels[:0]  # free the input early: memory stays bounded by the queues
    return item


def finish_frame(item: StagedFrame, route: Route) -> Any:
    """Encoder thread: arrays -> a PyAV frame with the input frame's timestamp and signal description."""
    av = av_module()
    assert item.result is not None
    if route == Route.YUV:
        assert item.chroma is not None
        luma = item.result if item.result.dtype == np.uint8 else imaging.from_float(item.result, np.dtype(np.uint8))
        out = av.VideoFrame.from_ndarray(np.concatenate([luma, item.chroma]), format="yuv420p")
    else:
        out = av.VideoFrame.from_ndarray(crop_even(item.result), format=route.frame_format)
    out.pts, out.time_base = item.pts, item.time_base
    for attr, value in item.signal.items():
        with contextlib.suppress(AttributeError, ValueError):
            setattr(out, attr, value)
    return out


def crop_even(pixels: np.ndarray) -> np.ndarray:
    """An RGB frame cut to even sides (4:2:0), contiguous as PyAV wants it."""
    h, w = pixels.shape[:2]
    return np.ascontiguousarray(pixels[: even(h), : even(w)])
