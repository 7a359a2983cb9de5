"""A video on a Ray cluster: cut at keyframes, segments upscaled by the actor pool in parallel, joined in order.

1. The driver reads the packet index (no decoding) and cuts the video at keyframes into about two segments per
   worker. A segment is decoded from its keyframe; it keeps the frames whose timestamps fall in
   [its keyframe, the next segment's keyframe), so open-GOP frames that precede a keyframe stay with the segment
   that can decode them: every frame is upscaled exactly once.
2. Each actor (one `Upscaler`, loaded once) upscales its segments exactly as srkit.runtime.video does on one
   machine (the same per-frame steps) and stores each frame as the encoder would receive it, losslessly
   (zlib-compressed arrays), in a hidden folder beside the output. A segment file is written atomically, so a rerun
   after a failure redoes only the missing segments.
3. The driver encodes the frames in order with the single-machine encoder settings, the source's timestamps and
   time base, and copies the audio and subtitles once from the source. No seam can appear at a segment boundary: the encoder
   sees one continuous stream of the same frames a single machine would produce.

The encode is one process (the upscale is the part that costs): the output has the frame count, rate and
timestamps of the single-machine run, and the same pixels before encoding.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from srkit._fs import atomic_path
from srkit.cluster._ray import ACTOR_CPUS, connect, disconnect, quiet_data_context, ray_module
from srkit.cluster.images import ClusterOptions, _worker_count, _worker_options
from srkit.cluster.workers import WorkerOptions, _LoadsUpscaler
from srkit.errors import InputError
from srkit.runtime import container
from srkit.runtime.video import VideoOptions, check_video_job

SEGMENTS_PER_WORKER = 2


@dataclass(frozen=True)
class Segment:
    index: int
    start_pts: int | None  # None: from the first frame
    end_pts: int | None  # None: to the last frame


@dataclass
class ClusterVideoResult:
    path: Path
    frames: int
    segments: int
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    rate: Fraction | None
    audio_copied: bool
    seconds: float
    nodes: dict[str, int]  # node id -> segments upscaled there
    copied: str = ""  # "audio copied", "audio and subtitles copied", ... (container.summary_of_copied)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


def keyframes(src: Path) -> list[int]:
    """Presentation timestamps of the video's keyframes, from the packet index (nothing is decoded)."""
    source = container.open_input(src)
    try:
        stream = source.streams.video[0]
        return sorted(p.pts for p in source.demux(stream) if p.is_keyframe and p.pts is not None)
    finally:
        source.close()


def plan_segments(keys: list[int], wanted: int) -> list[Segment]:
    """About `wanted` segments starting at evenly spaced keyframes (fewer when the video has fewer keyframes)."""
    if len(keys) <= 1 or wanted <= 1:
        return [Segment(0, None, None)]
    step = max(1, round(len(keys) / wanted))
    starts = keys[step::step]
    bounds: list[int | None] = [None, *starts, None]
    return [Segment(i, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


# ---- the segment file: one record per frame ------------------------------------------------------
def _write_record(fh: BinaryIO, meta: dict[str, Any], pixels: np.ndarray) -> None:
    head = json.dumps({**meta, "shape": pixels.shape, "dtype": pixels.dtype.str}).encode()
    body = zlib.compress(np.ascontiguousarray(pixels).tobytes(), 1)
    fh.write(struct.pack("<II", len(head), len(body)) + head + body)


def _read_records(path: Path) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    with path.open("rb") as fh:
        while sizes := fh.read(8):
            head_len, body_len = struct.unpack("<II", sizes)
            meta = json.loads(fh.read(head_len))
            raw = zlib.decompress(fh.read(body_len))
            yield meta, np.frombuffer(raw, dtype=np.dtype(meta["dtype"])).reshape(meta["shape"])


# ---- on the workers ------------------------------------------------------------------------------
class SegmentUpscaler(_LoadsUpscaler):
    """Rows (src, folder, index, start, end, route) -> rows (index, frames, node, status)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        frames, nodes = [], []
        for i in range(len(batch["index"])):
            segment = Segment(int(batch["index"][i]), _pts(batch["start"][i]), _pts(batch["end"][i]))
            frames.append(self.segment(Path(str(batch["src"][i])), Path(str(batch["folder"][i])), segment,
                                       container.Route(str(batch["route"][i]))))
            nodes.append(self.node_id)
        return {"index": batch["index"], "frames": np.array(frames), "node": np.array(nodes)}

    def segment(self, src: Path, folder: Path, segment: Segment, route: container.Route) -> int:
        path = folder / f"{segment.index:06d}.seg"
        if path.exists():  # complete (atomic): done by an earlier attempt
            return sum(1 for _ in _read_records(path))
        count = 0
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            for frame in _frames_from(src, segment.start_pts):
                if segment.start_pts is not None and frame.pts < segment.start_pts:
                    continue  # belongs to the segment before (decoded there)
                if segment.end_pts is not None and frame.pts >= segment.end_pts:
                    break  # frames come out in presentation order: the rest is the next segment's
                # the same luma route as one machine (the y8 pipeline where it pays), so the pixels are the same
                luma8 = container.uses_luma8(self.upscaler, route)
                prepared = container.prepare_frame(frame, route, self.upscaler.scale, luma8=luma8)
                item = container.infer_frame(self.upscaler, prepared, route)
                pixels, fmt = _encoder_input(item, route)
                _write_record(fh, {"pts": item.pts, "tb": str(item.time_base), "format": fmt,
                                   "signal": {k: int(v) for k, v in item.signal.items()}}, pixels)
                count += 1
        return count


def _frames_from(src: Path, start_pts: int | None) -> Iterator[Any]:
    """The decoded frames (with timestamps) from the keyframe at `start_pts` on. A container whose index makes
    the seek land past that keyframe is decoded from its start instead: slower, never a frame lost."""
    for seek in ((True, False) if start_pts is not None else (False,)):
        source = container.open_input(src)
        try:
            stream = source.streams.video[0]
            stream.thread_type = "AUTO"
            if seek:
                source.seek(start_pts, stream=stream, backward=True, any_frame=False)
            first = True
            for frame in source.decode(stream):
                if frame.pts is None:
                    continue
                if first and seek and start_pts is not None and frame.pts > start_pts:
                    break  # overshot: try again from the start
                first = False
                yield frame
            if not first or not seek:
                return
        finally:
            source.close()


def _pts(value: Any) -> int | None:
    number = int(value)
    return None if number < 0 else number


def _encoder_input(item: Any, route: container.Route) -> tuple[np.ndarray, str]:
    """What srkit.runtime.video hands the encoder for this frame, as (array, PyAV format)."""
    out = container.finish_frame(item, route)
    fmt = out.format.name
    return out.to_ndarray(format=fmt), fmt


# ---- the driver ----------------------------------------------------------------------------------
def upscale_video_on_ray(src: str | Path, dst: str | Path, model: str | Path, options: ClusterOptions | None = None,
                         *, video_options: VideoOptions | None = None,
                         segments: int | None = None) -> ClusterVideoResult:
    """Upscale `src` into `dst` on the Ray cluster at RAY_ADDRESS (else a local Ray): segments in parallel, one
    encode, audio and subtitles copied once. `segments`: how many to cut (default: two per worker, at keyframes)."""
    options = options or ClusterOptions()
    video_options = video_options or VideoOptions()
    src, dst = Path(src), Path(dst)
    encoder = check_video_job(src, dst, video_options)
    info = container.probe(src)
    start = time.perf_counter()
    from srkit.meta import read_model_info

    model_info = read_model_info(model)
    route = container.route_for(model_info, info, yuv_fast_path=video_options.yuv_fast_path)
    folder = dst.parent / f".{dst.name}.segments"
    folder.mkdir(parents=True, exist_ok=True)
    connection = connect()
    try:
        quiet_data_context()
        count = _worker_count(options, connection)
        plan = plan_segments(keyframes(src), segments or count * SEGMENTS_PER_WORKER)
        nodes = _upscale_segments(src.resolve(), folder.resolve(), plan, route, Path(model), options,
                                  _worker_options(options), min(count, len(plan)))
    finally:
        disconnect(connection)
    spec = container.VideoStreamSpec(codec=video_options.codec, options=encoder, rate=info.rate,
                                     size=container.output_size(info.width, info.height, model_info.scale),
                                     pix_fmt=container.output_format(video_options.codec, route),
                                     rotation=info.rotation)
    frames, copied = _join(src, dst, [folder / f"{s.index:06d}.seg" for s in plan], spec)
    shutil.rmtree(folder, ignore_errors=True)
    return ClusterVideoResult(path=dst, frames=frames, segments=len(plan), input_size=(info.width, info.height),
                              output_size=spec.size, rate=info.rate,
                              audio_copied="audio" in copied,
                              copied=container.summary_of_copied(copied), seconds=time.perf_counter() - start,
                              nodes=nodes)


def _upscale_segments(src: Path, folder: Path, plan: list[Segment], route: container.Route, model: Path,
                      options: ClusterOptions, worker_options: WorkerOptions, workers: int) -> dict[str, int]:
    ray = ray_module()
    rows = [{"src": str(src), "folder": str(folder), "index": s.index, "route": route.value,
             "start": -1 if s.start_pts is None else s.start_pts, "end": -1 if s.end_pts is None else s.end_pts}
            for s in plan]
    args: dict[str, Any] = {
        "fn_constructor_kwargs": {"model_name": model.name, "model_ref": [ray.put(model.read_bytes())],
                                  "options": worker_options},
        "compute": ray.data.ActorPoolStrategy(size=workers), "num_cpus": ACTOR_CPUS, "batch_size": 1,
        "batch_format": "numpy",
    }
    if options.gpus_per_worker > 0:
        args["num_gpus"] = options.gpus_per_worker
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(SegmentUpscaler, **args)
    nodes: dict[str, int] = {}
    for row in ds.iter_rows():
        nodes[str(row["node"])] = nodes.get(str(row["node"]), 0) + 1
    return nodes


def _join(src: Path, dst: Path, segment_files: list[Path], spec: container.VideoStreamSpec) -> tuple[int, list[str]]:
    """Encode the segments' frames in order with the single-machine settings (`spec`, with the source's time
    base); every audio and subtitle stream copied from `src`, interleaved by time as one machine writes them."""
    av = container.av_module()
    source = container.open_input(src)
    frames = 0
    try:
        in_video = source.streams.video[0]
        in_copied = container.copied_streams(source)
        kinds = [st.type for st in in_copied]  # read now: a closed container's streams cannot be asked
        packets = (p for p in source.demux(*in_copied) if p.dts is not None) if in_copied else iter(())
        with atomic_path(dst) as tmp:
            sink = container.open_output(tmp, dst)
            try:
                out_video = container.add_video_stream(sink, replace(spec, time_base=in_video.time_base))
                twins = container.copy_streams(sink, in_copied, dst)
                pending = next(packets, None)

                def mux_copied_until(limit: float) -> None:
                    nonlocal pending
                    while pending is not None and _seconds(pending) <= limit:
                        pending.stream = twins[pending.stream.index]
                        sink.mux(pending)
                        pending = next(packets, None)

                for path in segment_files:
                    for meta, pixels in _read_records(path):
                        frame = av.VideoFrame.from_ndarray(pixels, format=meta["format"])
                        frame.pts, frame.time_base = meta["pts"], Fraction(meta["tb"])
                        for attr, value in meta["signal"].items():
                            with contextlib.suppress(AttributeError, ValueError):
                                setattr(frame, attr, value)
                        mux_copied_until(_seconds_of(frame))  # what plays before this frame goes first
                        sink.mux(out_video.encode(frame))
                        frames += 1
                sink.mux(out_video.encode(None))
                mux_copied_until(float("inf"))
            except BaseException:
                container.close_quietly(sink)
                raise
            sink.close()
            if frames == 0:
                raise InputError(f"{src} has no decodable video frames")
    finally:
        source.close()
    return frames, kinds


def _seconds(packet: Any) -> float:
    return float(packet.dts * packet.time_base)


def _seconds_of(frame: Any) -> float:
    return float(frame.pts * frame.time_base)
