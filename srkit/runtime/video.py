"""Video upscaling with PyAV: decode, upscale and encode in three overlapping stages with bounded queues.

- Decoding and encoding run in their own threads (FFmpeg releases the GIL while it works); the model runs in
  the caller's thread, so a backend never sees a second thread.
- Frame rate and timestamps are kept (each output frame carries its input frame's pts and time base); the
  audio track is copied packet by packet, unchanged, in its original order among the video frames.
- Memory is bounded: at most `queue_size` frames wait between two stages.
- An error in any stage stops the others and is raised in the caller; the output is written to a temp file
  in the target folder and renamed only when complete (srkit._fs.atomic_path), so no partial file is left.
- Y-channel models on yuv420p video take the fast path: the decoded Y plane (BT.601/709 video-range luma, the
  model's input convention) goes through the model and U/V are resized bicubically, with no RGB round trip.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from srkit import imaging
from srkit._fs import atomic_path
from srkit._optional import require
from srkit.errors import InputError, SrkitError
from srkit.meta import Color

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm"}
# codecs whose quality is set by a constant rate factor; others take their defaults
CRF_CODECS = {"libx264": 18, "libx265": 20, "libvpx-vp9": 30, "libsvtav1": 30, "libaom-av1": 30}
_POLL_S = 0.1
_END = object()  # end of stream marker between stages


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
class VideoOptions:
    codec: str = "libx264"
    crf: int | None = None  # None: the codec's srkit default (CRF_CODECS)
    preset: str | None = None  # encoder speed preset (x264/x265: ultrafast..veryslow)
    queue_size: int = 8
    yuv_fast_path: bool = True  # Y-channel models on yuv420p: Y through the model, U/V bicubic


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


@dataclass
class VideoResult:
    path: Path
    frames: int
    input_size: tuple[int, int]  # (W, H)
    output_size: tuple[int, int]
    rate: Fraction | None
    audio_copied: bool
    seconds: float
    path_taken: str  # Route value: "yuv", "rgb" or "rgb48"
    pix_fmt: str = "yuv420p"  # the output's (yuv420p10le for deeper input where the encoder has it)
    rotation: int = 0  # the input's display rotation, written on the output too

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


def _av() -> Any:
    return require("av", extra="video", purpose="video input")


def _open_input(src: Path) -> Any:
    av = _av()
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
    container = _open_input(Path(src))
    try:
        info = _probe_open(container)
    finally:
        container.close()
    info.rotation = _display_rotation(Path(src))
    return info


def _display_rotation(src: Path) -> int:
    """The rotation a player applies (the display matrix a phone writes for portrait video). FFmpeg hands it
    out with the decoded frames, so this opens the file once more and decodes the first one."""
    av = _av()
    try:
        with av.open(str(src), mode="r") as container:
            for frame in container.decode(video=0):
                return round(frame.rotation or 0) % 360
    except (av.error.FFmpegError, OSError, ValueError):
        pass  # the real decode reports what is wrong with the file
    return 0


def _probe_open(container: Any) -> VideoProbe:
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
    )


def check_encoder(codec: str, crf: int | None) -> dict[str, str]:
    """The encoder's options; an unknown codec or a CRF it cannot take is a user error."""
    av = _av()
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


class _Stop(Exception):
    """Raised inside a stage when another stage failed."""


class _Pipeline:
    """Bounded queues and a shared stop flag: a failing stage stops the others, never a hang."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(exc)
        self.stop.set()

    def put(self, q: queue.Queue[Any], item: Any) -> None:
        while True:
            if self.stop.is_set():
                raise _Stop
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def get(self, q: queue.Queue[Any]) -> Any:
        while True:
            if self.stop.is_set():
                raise _Stop
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        def body() -> None:
            try:
                target()
            except _Stop:
                pass
            except BaseException as exc:  # handed to the caller's thread, which raises it
                self.fail(exc)

        t = threading.Thread(target=body, name=f"srkit-video-{name}", daemon=True)
        t.start()
        return t


def upscale_video(
    up: Any,
    src: str | Path,
    dst: str | Path,
    *,
    options: VideoOptions | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> VideoResult:
    """Upscale every frame of `src` through `up` (an active srkit.runtime.Upscaler) into `dst`.

    `progress(frames_done, fps)` is called after each frame.
    """
    av = _av()
    options = options or VideoOptions()
    src, dst = Path(src), Path(dst)
    if not is_video_path(dst):
        raise InputError(f"unsupported video output {dst.suffix!r}; use one of {sorted(VIDEO_SUFFIXES)}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise InputError(f"refusing to overwrite the input {src}; choose another output with -o")
    encoder_options = check_encoder(options.codec, options.crf)
    if options.preset:
        encoder_options["preset"] = options.preset
    scale = up.scale
    start = time.perf_counter()
    source = _open_input(src)
    try:
        info = _probe_open(source)
        info.rotation = _display_rotation(src)
        in_video = source.streams.video[0]
        in_audio = source.streams.audio[0] if source.streams.audio else None
        in_video.thread_type = "AUTO"  # frame-threaded decoding
        route = _route(up, info, options)
        out_format = _output_format(options.codec, route)
        # 4:2:0 output needs even sides: an odd one loses its last row or column (a third of a source pixel at x3)
        out_w, out_h = _even(info.width * scale), _even(info.height * scale)
        with atomic_path(dst) as tmp:
            sink = av.open(str(tmp), mode="w", format=_muxer_for(dst))
            try:
                out_video = sink.add_stream(options.codec, rate=info.rate, options=encoder_options)
                out_video.width, out_video.height = out_w, out_h
                out_video.pix_fmt = out_format
                out_video.time_base = in_video.time_base
                if info.rotation:  # upscaled pixels are stored as decoded: players must turn them the same way
                    out_video.set_display_rotation(info.rotation)
                out_audio = _audio_stream(sink, in_audio, dst) if in_audio is not None else None
                frames = _run(
                    up,
                    source,
                    sink,
                    in_video,
                    in_audio,
                    out_video,
                    out_audio,
                    route,
                    options,
                    progress,
                    start,
                )
            except BaseException:
                with contextlib.suppress(Exception):  # closing a half-written file must not hide the cause
                    sink.close()
                raise
            sink.close()  # writes the trailer (the mp4 index): an error here is an error of the run
            if frames == 0:
                raise InputError(f"{src} has no decodable video frames")
    finally:
        source.close()
    return VideoResult(
        path=dst,
        frames=frames,
        input_size=(info.width, info.height),
        output_size=(out_w, out_h),
        rate=info.rate,
        audio_copied=in_audio is not None,
        seconds=time.perf_counter() - start,
        path_taken=route.value,
        pix_fmt=out_format,
        rotation=info.rotation,
    )


def _route(up: Any, info: VideoProbe, options: VideoOptions) -> Route:
    if _bit_depth(info.pix_fmt) > 8:
        return Route.RGB48
    yuv = (options.yuv_fast_path and up.info.color == Color.Y and info.pix_fmt == "yuv420p"
           and info.width % 2 == 0 and info.height % 2 == 0)
    return Route.YUV if yuv else Route.RGB


def _bit_depth(pix_fmt: str) -> int:
    try:
        return max(c.bits for c in _av().VideoFormat(pix_fmt).components)
    except (ValueError, TypeError):  # an unknown or empty name: FFmpeg decodes it to 8-bit RGB for us
        return 8


def _output_format(codec: str, route: Route) -> str:
    """4:2:0 (what every player takes), at 10 bits for deeper input where the encoder has it."""
    if route == Route.RGB48:
        formats = {f.name for f in _av().codec.Codec(codec, "w").video_formats or []}
        if "yuv420p10le" in formats:
            return "yuv420p10le"
    return "yuv420p"


def _even(n: int) -> int:
    return n - n % 2


def _audio_stream(sink: Any, in_audio: Any, dst: Path) -> Any:
    """The output twin of the input's audio stream (copied, never re-encoded)."""
    try:
        return sink.add_stream_from_template(in_audio)
    except ValueError as exc:  # the container cannot hold this codec (e.g. AAC in WebM)
        raise InputError(
            f"the audio track ({in_audio.codec_context.name}) cannot be copied into {dst.suffix}: {exc}; "
            "choose .mkv (holds any codec) or .mp4"
        ) from None


def _muxer_for(path: Path) -> str | None:
    # the temp file's name ends like the target's, but say it explicitly for the cases FFmpeg guesses badly
    return {".mkv": "matroska", ".webm": "webm", ".mov": "mov", ".mp4": "mp4", ".m4v": "mp4"}.get(
        path.suffix.lower()
    )


def _run(
    up: Any,
    source: Any,
    sink: Any,
    in_video: Any,
    in_audio: Any,
    out_video: Any,
    out_audio: Any,
    route: Route,
    options: VideoOptions,
    progress: Callable[[int, float], None] | None,
    start: float,
) -> int:
    av = _av()
    pipe = _Pipeline()
    decoded: queue.Queue[Any] = queue.Queue(maxsize=options.queue_size)
    upscaled: queue.Queue[Any] = queue.Queue(maxsize=options.queue_size)
    streams = [s for s in (in_video, in_audio) if s is not None]
    luma8 = route == Route.YUV and up.luma_pipeline_pays()

    def decode() -> None:
        try:
            for packet in source.demux(*streams):
                if packet.stream.type == "audio":
                    if packet.dts is not None:  # the demuxer's final empty packet carries nothing
                        pipe.put(decoded, ("audio", packet))
                    continue
                for frame in packet.decode():
                    pipe.put(decoded, ("video", _prepare(frame, route, up.scale, luma8=luma8)))
        except av.error.FFmpegError as exc:
            raise InputError(f"cannot decode {source.name}: {exc}") from None
        pipe.put(decoded, _END)

    def encode() -> None:
        try:
            while (item := pipe.get(upscaled)) is not _END:
                kind, payload = item
                if kind == "audio":
                    payload.stream = out_audio
                    sink.mux(payload)
                else:
                    sink.mux(out_video.encode(_finish(payload, route)))
            sink.mux(out_video.encode(None))
        except av.error.FFmpegError as exc:
            raise InputError(f"cannot write {sink.name}: {exc}") from None

    threads = [pipe.thread(decode, "decode"), pipe.thread(encode, "encode")]
    done = 0
    try:
        while (item := pipe.get(decoded)) is not _END:
            kind, payload = item
            if kind == "video":
                payload = _infer(up, payload, route)
                done += 1
            pipe.put(upscaled, (kind, payload))
            if progress is not None and kind == "video":
                progress(done, done / max(time.perf_counter() - start, 1e-9))
        pipe.put(upscaled, _END)
    except _Stop:
        pass
    except BaseException as exc:
        pipe.fail(exc)
    for t in threads:
        while t.is_alive():
            t.join(timeout=_POLL_S)
            if pipe.errors:
                pipe.stop.set()
    if pipe.errors:
        raise _first_error(pipe.errors)
    return done


def _first_error(errors: list[BaseException]) -> BaseException:
    # the root cause: a user-facing error wins over a consequence in another stage
    for exc in errors:
        if isinstance(exc, SrkitError):
            return exc
    return errors[0]


@dataclass
class _Frame:
    """One frame between the stages; the decoder and encoder threads do all the work but the model's."""

    pts: int | None
    time_base: Fraction | None
    signal: dict[str, Any]  # colorspace and range, carried to the output frame
    pixels: np.ndarray  # RGB uint8/uint16 (rgb paths); the Y plane, uint8 (y8 pipeline) or float32 0-1 (yuv path)
    chroma: np.ndarray | None = None  # yuv path: U and V already upscaled, packed as PyAV lays them out
    result: np.ndarray | None = None  # rgb paths: RGB as decoded; yuv path: the model's Y, uint8 or float32


def _prepare(frame: Any, route: Route, scale: int, *, luma8: bool = False) -> _Frame:
    """Decoder thread: the frame as arrays; on the yuv path U/V are upscaled here, off the model's thread."""
    signal = {}
    for attr in ("colorspace", "color_range"):
        with contextlib.suppress(AttributeError, ValueError):
            signal[attr] = getattr(frame, attr)
    if route != Route.YUV:
        return _Frame(frame.pts, frame.time_base, signal, frame.to_ndarray(format=route.frame_format))
    h, w = frame.height, frame.width
    y = np.ascontiguousarray(frame.to_ndarray(format="yuv420p")[:h])  # video-range luma: the model's Y convention
    if not luma8:  # the float model: to 0-1 here, in the decoder thread
        y = y.astype(np.float32)
        y *= np.float32(1 / 255)
    # U/V: FFmpeg's swscale scales the whole frame (bicubic, chroma siting honoured) in about 1.5 ms a 1080p
    # frame, four times less than resizing the two planes with Pillow in float; its Y plane is dropped.
    big = frame.reformat(width=w * scale, height=h * scale, format="yuv420p", interpolation="BICUBIC")
    chroma = big.to_ndarray(format="yuv420p")[h * scale :]
    return _Frame(frame.pts, frame.time_base, signal, y, chroma)


def _infer(up: Any, item: _Frame, route: Route) -> _Frame:
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


def _finish(item: _Frame, route: Route) -> Any:
    """Encoder thread: arrays -> a PyAV frame with the input frame's timestamp and signal description."""
    av = _av()
    assert item.result is not None
    if route == Route.YUV:
        assert item.chroma is not None
        luma = item.result if item.result.dtype == np.uint8 else imaging.from_float(item.result, np.dtype(np.uint8))
        out = av.VideoFrame.from_ndarray(np.concatenate([luma, item.chroma]), format="yuv420p")
    else:
        h, w = item.result.shape[:2]
        pixels = np.ascontiguousarray(item.result[: _even(h), : _even(w)])
        out = av.VideoFrame.from_ndarray(pixels, format=route.frame_format)
    out.pts, out.time_base = item.pts, item.time_base
    for attr, value in item.signal.items():
        with contextlib.suppress(AttributeError, ValueError):
            setattr(out, attr, value)
    return out


def synthesize_clip(
    path: str | Path, *, size: tuple[int, int] = (64, 48), frames: int = 12, fps: int = 12, audio: bool = True,
    rotation: int = 0,
) -> Path:
    """A real-content test clip: `frames` H.264 frames of `size` (W, H) panning across the bundled CC0 photos,
    plus (with `audio`) a mono AAC tone as long as the video, and (with `rotation`) the display matrix a phone
    writes for portrait video. For tests and the 1080p benchmark."""
    from PIL import Image

    from srkit.data import held_out_images

    av = _av()
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


def frames_of(path: str | Path) -> Iterator[np.ndarray]:
    """Decode every frame of a video as RGB uint8 (for tests and tools)."""
    container = _open_input(Path(path))
    try:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")
    finally:
        container.close()
