"""`srkit export --io rgb8|gray8|rgb16`: wrap a tensor model in a pipeline graph (srkit.pipeline) and prove
that it gives the host path's pixels.

The pipeline gate runs the pipeline graph and srkit's host path (imaging.upscale_colour around the same
tensor model) in ONNX Runtime on crops of the bundled CC0 photos at unrelated odd sizes, and requires at least
99.9 % of the pixels within one level and PSNR >= 50 dB (the rest differ by float rounding at a .5 boundary).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from srkit import imaging, quality
from srkit._optional import require
from srkit.data import held_out_images
from srkit.errors import ParityError
from srkit.meta import Io, ModelInfo

MIN_WITHIN_ONE_LEVEL = quality.PIPELINE_MIN_WITHIN_ONE_LEVEL
MIN_PSNR_DB = quality.PIPELINE_GATE_DB
GATE_SIZES = ((37, 53), (48, 31), (71, 90))  # (H, W): odd, non-square, unrelated


@dataclass
class PipelineReport:
    io: str
    sizes: list[list[int]] = field(default_factory=list)
    within_one_level: float = 1.0  # the worst share over the sizes
    max_diff_levels: int = 0
    psnr_db: float = math.inf

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["psnr_db"] = None if math.isinf(self.psnr_db) else round(self.psnr_db, 2)
        data["within_one_level"] = round(self.within_one_level, 6)
        return data

    def summary(self) -> str:
        psnr = "identical" if math.isinf(self.psnr_db) else f"PSNR {self.psnr_db:.1f} dB"
        return (f"pipeline {self.io} vs the host path: {100 * self.within_one_level:.3f} % of pixels within one "
                f"level (max {self.max_diff_levels}), {psnr}, sizes "
                + ", ".join("x".join(map(str, s)) for s in self.sizes))


def gate_images(io: Io, sizes: tuple[tuple[int, int], ...] = GATE_SIZES) -> list[np.ndarray]:
    """Crops of the bundled photos in the pipeline's pixel format (NHWC batches of one)."""
    photos = list(held_out_images().values())
    images = []
    for i, (h, w) in enumerate(sizes):
        photo = photos[i % len(photos)][..., :3]
        top, left = (photo.shape[0] - h) // 3, (photo.shape[1] - w) // 2
        crop = photo[top : top + h, left : left + w]
        if io == Io.RGB16:  # 16-bit content with the low byte used too, not just 8-bit data shifted up
            crop = crop.astype(np.uint16) * 257 + np.uint16(i * 37)
        elif io in (Io.GRAY8, Io.Y8):
            crop = crop[..., 1:2]
        images.append(np.ascontiguousarray(crop[None]))
    return images


def host_reference(tensor_session: Any, info: ModelInfo, io: Io, image: np.ndarray) -> np.ndarray:
    """The host path (what Upscaler does without a pipeline) around an ONNX Runtime tensor session."""
    name = tensor_session.get_inputs()[0].name
    feed = np.float16 if tensor_session.get_inputs()[0].type == "tensor(float16)" else np.float32
    s, m = info.scale, info.size_multiple

    def run_planes(planes: np.ndarray) -> np.ndarray:
        padded, (h, w) = imaging.pad_to_multiple(planes.transpose(0, 3, 1, 2), m)
        out = tensor_session.run(None, {name: np.ascontiguousarray(padded).astype(feed)})[0]
        return np.asarray(out, np.float32)[:, :, : h * s, : w * s].transpose(0, 2, 3, 1)

    floats = imaging.to_float(image)
    if io == Io.Y8:
        out = run_planes(floats)
    else:
        out = imaging.upscale_colour(floats, scale=s, color=info.color, in_channels=info.in_channels,
                                     run_planes=run_planes)
    return imaging.from_float(out, image.dtype)


def run_pipeline_gate(pipeline: Any, tensor: Any, info: ModelInfo, io: Io) -> PipelineReport:
    """pipeline, tensor: onnx.ModelProto. Raises ParityError with the numbers when the gate fails."""
    ort = require("onnxruntime", extra="ort")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    piped = ort.InferenceSession(pipeline.SerializeToString(), options, providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(tensor.SerializeToString(), options, providers=["CPUExecutionProvider"])
    report = PipelineReport(io=io.value)
    peak = 65535.0 if io == Io.RGB16 else 255.0
    level = 257 if io == Io.RGB16 else 1  # one 8-bit level, in the pipeline's units
    worst_mse = 0.0
    sizes = GATE_SIZES if not info.static_shape else (info.static_shape,)
    for image in gate_images(io, sizes):
        got = piped.run(None, {piped.get_inputs()[0].name: image})[0]
        want = host_reference(plain, info, io, image)
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ParityError(f"pipeline output {got.dtype} {got.shape} != host path {want.dtype} {want.shape}")
        diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
        report.sizes.append(list(image.shape[1:3]))
        report.within_one_level = min(report.within_one_level, float((diff <= level).mean()))
        report.max_diff_levels = max(report.max_diff_levels, int(-(-diff.max() // level)))
        worst_mse = max(worst_mse, quality.mse(got / peak, want / peak))
    report.psnr_db = quality.psnr_from_mse(worst_mse)
    if report.within_one_level < MIN_WITHIN_ONE_LEVEL or report.psnr_db < MIN_PSNR_DB:
        raise ParityError(f"pipeline gate failed (>= {100 * MIN_WITHIN_ONE_LEVEL:g} % within one level and "
                          f">= {MIN_PSNR_DB:g} dB): {report.summary()}")
    return report
