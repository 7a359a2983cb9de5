"""Video upscaling with PyAV: decode, upscale and encode in three overlapping stages with bounded queues.

- Decoding and encoding run in their own threads (FFmpeg releases the GIL while it works); the model runs in
  the caller's thread, so a backend never sees a second thread.
- Frame rate and timestamps are kept (each output frame carries its input frame's pts and time base); the
  audio and subtitle tracks are copied packet by packet, unchanged, in their original order among the video frames.
- Memory is bounded: at most `queue_size` frames wait between two stages.
- An error in any stage stops the others and is raised in the caller; the output is written to a temp file
  in the target folder and renamed only when complete (srkit._fs.atomic_path), so no partial file is left.
- Y-channel models on yuv420p video take the fast path: the decoded Y plane (BT.601/709 video-range luma, the
  model's input convention) goes through the model and U/V are resized bicubically, with no RGB round trip.

Containers, the encoder and the per-frame steps are srkit.runtime.container's; frames as plain arrays (any
source, any sink) are srkit.runtime.frames' and `Upscaler.upscale_frames`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from srkit._fs import atomic_path
from srkit.errors import InputError, SrkitError
from srkit.runtime.container import (
    COPIED_TYPES,
    Route,
    VideoStreamSpec,
    add_video_stream,
    check_video_output,
    close_quietly,
    copied_streams,
    copy_streams,
    display_rotation,
    encoder_options,
    finish_frame,
    infer_frame,
    open_input,
    open_output,
    output_format,
    output_size,
    prepare_frame,
    probe_open,
    route_for,
    summary_of_copied,
    uses_luma8,
)
from srkit.runtime.container import av_module as _av

_POLL_S = 0.1
_END = object()  # end of stream marker between stages


@dataclass
class VideoOptions:
    codec: str = "libx264"
    crf: int | None = None  # None: the codec's srkit default (CRF_CODECS)
    preset: str | None = None  # encoder speed preset (x264/x265: ultrafast..veryslow)
    queue_size: int = 8
    yuv_fast_path: bool = True  # Y-channel models on yuv420p: Y through the model, U/V bicubic


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
    copied: str = ""  # what else went through unchanged: "audio copied", "audio and subtitles copied", ...

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


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
    options = options or VideoOptions()
    src, dst = Path(src), Path(dst)
    encoder = check_video_job(src, dst, options)
    start = time.perf_counter()
    source = open_input(src)
    try:
        info = probe_open(source)
        info.rotation = display_rotation(src)
        in_video = source.streams.video[0]
        in_copied = copied_streams(source)
        kinds = [st.type for st in in_copied]  # read now: a closed container's streams cannot be asked
        in_video.thread_type = "AUTO"  # frame-threaded decoding
        route = route_for(up.info, info, yuv_fast_path=options.yuv_fast_path)
        spec = VideoStreamSpec(codec=options.codec, options=encoder, rate=info.rate,
                               size=output_size(info.width, info.height, up.scale),
                               pix_fmt=output_format(options.codec, route), time_base=in_video.time_base,
                               rotation=info.rotation)
        with atomic_path(dst) as tmp:
            sink = open_output(tmp, dst)
            try:
                out_video = add_video_stream(sink, spec)
                out_copied = copy_streams(sink, in_copied, dst)
                job = _Transcode(up=up, source=source, sink=sink, in_video=in_video, in_copied=in_copied,
                                 out_video=out_video, out_copied=out_copied, route=route,
                                 queue_size=options.queue_size, progress=progress, start=start)
                frames = job.run()
            except BaseException:
                close_quietly(sink)
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
        output_size=spec.size,
        rate=info.rate,
        audio_copied="audio" in kinds,
        copied=summary_of_copied(kinds),
        seconds=time.perf_counter() - start,
        path_taken=route.value,
        pix_fmt=spec.pix_fmt,
        rotation=info.rotation,
    )


def check_video_job(src: Path, dst: Path, options: VideoOptions) -> dict[str, str]:
    """The encoder's options, after the checks made before any frame (one machine and a cluster alike): a video
    suffix, the input not overwritten, an encoder that exists and a CRF it takes."""
    check_video_output(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise InputError(f"refusing to overwrite the input {src}; choose another output with -o")
    return encoder_options(options.codec, options.crf, options.preset)


def default_output(src: Path, output: str | Path | None, scale: int) -> Path:
    """Where a video's result goes: `output`, or `NAME_xS.mp4` beside the input (or in `output`, a folder)."""
    dst = Path(output) if output else src.with_name(f"{src.stem}_x{scale}.mp4")
    return dst / f"{src.stem}_x{scale}.mp4" if dst.is_dir() else dst


@dataclass
class _Transcode:
    """One run of the three stages: the open input and output, their streams, and how frames go through."""

    up: Any  # an active Upscaler
    source: Any  # the input container
    sink: Any  # the output container
    in_video: Any
    in_copied: list[Any]  # audio and subtitle streams, copied packet by packet
    out_video: Any
    out_copied: dict[int, Any]  # their twins in the output, by input stream index
    route: Route
    queue_size: int
    progress: Callable[[int, float], None] | None
    start: float  # perf_counter() when the run began, for the frames/s it reports

    def run(self) -> int:
        """Decode, upscale and encode every frame; the number of frames."""
        pipe = _Pipeline()
        decoded: queue.Queue[Any] = queue.Queue(maxsize=self.queue_size)
        upscaled: queue.Queue[Any] = queue.Queue(maxsize=self.queue_size)
        luma8 = uses_luma8(self.up, self.route)  # decided here, in the model's thread
        threads = [pipe.thread(lambda: self._decode(pipe, decoded, luma8), "decode"),
                   pipe.thread(lambda: self._encode(pipe, upscaled), "encode")]
        done = 0
        try:
            while (item := pipe.get(decoded)) is not _END:
                kind, payload = item
                if kind == "video":
                    payload = infer_frame(self.up, payload, self.route)
                    done += 1
                pipe.put(upscaled, (kind, payload))
                if self.progress is not None and kind == "video":
                    self.progress(done, done / max(time.perf_counter() - self.start, 1e-9))
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

    def _decode(self, pipe: _Pipeline, decoded: queue.Queue[Any], luma8: bool) -> None:
        av = _av()
        try:
            for packet in self.source.demux(self.in_video, *self.in_copied):
                if packet.stream.type in COPIED_TYPES:
                    if packet.dts is not None:  # the demuxer's final empty packet carries nothing
                        pipe.put(decoded, ("copy", packet))
                    continue
                for frame in packet.decode():
                    pipe.put(decoded, ("video", prepare_frame(frame, self.route, self.up.scale, luma8=luma8)))
        except av.error.FFmpegError as exc:
            raise InputError(f"cannot decode {self.source.name}: {exc}") from None
        pipe.put(decoded, _END)

    def _encode(self, pipe: _Pipeline, upscaled: queue.Queue[Any]) -> None:
        av = _av()
        try:
            while (item := pipe.get(upscaled)) is not _END:
                kind, payload = item
                if kind == "copy":
                    payload.stream = self.out_copied[payload.stream.index]
                    self.sink.mux(payload)
                else:
                    self.sink.mux(self.out_video.encode(finish_frame(payload, self.route)))
            self.sink.mux(self.out_video.encode(None))
        except av.error.FFmpegError as exc:
            raise InputError(f"cannot write {self.sink.name}: {exc}") from None


def _first_error(errors: list[BaseException]) -> BaseException:
    # the root cause: a user-facing error wins over a consequence in another stage
    for exc in errors:
        if isinstance(exc, SrkitError):
            return exc
    return errors[0]


def frames_of(path: str | Path) -> Iterator[np.ndarray]:
    """Decode every frame of a video as RGB uint8 (srkit.runtime.frames.VideoFrames)."""
    from srkit.runtime.frames import VideoFrames

    return iter(VideoFrames(path))
