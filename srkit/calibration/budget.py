"""The PSNR budget: measure fp32 and int8 on held-out photos, and find the layers to keep in float.

Two modes. GROUND_TRUTH (PSNR-trained models): PSNR-Y against the ground truth under the CONTRACT convention
(LR by srkit.imaging.downscale_uint8, Y of BT.601, border = scale), and the int8 drop must stay within
`max_drop_db`. PARITY (GAN-trained models, whose ground-truth PSNR is not the goal): PSNR-Y of the int8 output
against the fp32 output must reach `min_parity_db`.

Measurements run the ONNX files directly with onnxruntime or OpenVINO (calibration may not import runtime/);
the pre/post-processing mirrors srkit.runtime.Upscaler.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np

from srkit import imaging
from srkit.errors import InputError
from srkit.meta import DEFAULT_MAX_PSNR_DROP_DB, Io, ModelInfo, Precision, judged_by_parity
from srkit.quality import INT8_GATE_DB, psnr_y, y_planes

DEFAULT_MAX_DROP_DB = DEFAULT_MAX_PSNR_DROP_DB
DEFAULT_MIN_PARITY_DB = INT8_GATE_DB
VALIDATION_MAX_SIDE = 640  # HR side per photo: the whole of each held-out photo (they are <= 640 px)


class BudgetMode(str, Enum):
    GROUND_TRUTH = "drop"  # PSNR-Y vs ground truth, bounded drop
    PARITY = "parity"  # PSNR-Y of int8 vs fp32 output, lower bound


def default_mode(info: ModelInfo) -> BudgetMode:
    return BudgetMode.PARITY if judged_by_parity(info) else BudgetMode.GROUND_TRUTH


@dataclass(frozen=True)
class Budget:
    mode: BudgetMode
    max_drop_db: float = DEFAULT_MAX_DROP_DB
    min_parity_db: float = DEFAULT_MIN_PARITY_DB

    def describe(self) -> str:
        if self.mode == BudgetMode.PARITY:
            return f"parity with fp32 >= {self.min_parity_db:g} dB"
        return f"PSNR-Y drop <= {self.max_drop_db:g} dB"


@dataclass
class Measurement:
    fp32_psnr_y: float  # vs ground truth
    int8_psnr_y: float
    parity_db: float  # int8 vs fp32 output, Y channel
    # mean squared error of that Y (8-bit units) over the images: errors of separate layers add up in it
    parity_mse: float = math.nan

    @property
    def drop_db(self) -> float:
        return self.fp32_psnr_y - self.int8_psnr_y

    def holds(self, budget: Budget) -> bool:
        if budget.mode == BudgetMode.PARITY:
            return self.parity_db >= budget.min_parity_db
        return self.drop_db <= budget.max_drop_db

    def describe(self, budget: Budget) -> str:
        if budget.mode == BudgetMode.PARITY:
            return (f"parity {self.parity_db:.2f} dB "
                    f"(PSNR-Y fp32 {self.fp32_psnr_y:.2f}, int8 {self.int8_psnr_y:.2f})")
        return (f"PSNR-Y fp32 {self.fp32_psnr_y:.2f} dB, int8 {self.int8_psnr_y:.2f} dB, "
                f"drop {self.drop_db:+.3f} dB")


@dataclass(frozen=True)
class ValidationImage:
    name: str
    hr: np.ndarray  # uint8 RGB, cropped to a multiple of scale x size_multiple
    lr: np.ndarray


def validation_set(images: dict[str, np.ndarray], info: ModelInfo,
                   max_side: int = VALIDATION_MAX_SIDE) -> list[ValidationImage]:
    """HR centre crops and their LR under the CONTRACT convention."""
    step = info.scale * max(info.size_multiple, 1)
    out = []
    for name, image in images.items():
        if image.dtype == np.uint16:
            image = imaging.from_float(imaging.to_float(image), np.uint8)
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[..., :3]
        h, w = (min(s, max_side) // step * step for s in image.shape[:2])
        if h == 0 or w == 0:
            raise InputError(f"validation image {name} is smaller than {step}x{step}")
        top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
        hr = np.ascontiguousarray(image[top : top + h, left : left + w])
        out.append(ValidationImage(name, hr, imaging.downscale_uint8(hr, info.scale)))
    return out


# ---- running an ONNX file ------------------------------------------------------------------------
class OnnxRunner:
    """An ONNX model on srkit's runtime backend `engine` (ort or openvino: CPU, float layers at fp32, padded to
    the size multiple): the runtime's session factory, not a second one."""

    def __init__(self, path: Path, engine: str, info: ModelInfo) -> None:
        from srkit.runtime import registry
        from srkit.runtime.base import BackendOptions

        self.multiple, self.scale = info.size_multiple, info.scale
        tensor_info = replace(info, io=Io.TENSOR, precision=Precision.FP32, static_shape=None)
        backend = registry.backend_class(engine)(path, tensor_info, BackendOptions(precision=Precision.FP32))
        self.backend = backend.activate()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        padded, (h, w) = imaging.pad_to_multiple(np.ascontiguousarray(x, dtype=np.float32), self.multiple)
        return self.backend.infer(np.ascontiguousarray(padded))[:, :, : h * self.scale, : w * self.scale]


def upscale_u8(run: OnnxRunner, lr: np.ndarray, info: ModelInfo) -> np.ndarray:
    """uint8 RGB -> uint8 RGB through the runtime's one colour pipeline (imaging.upscale_colour)."""

    def run_planes(planes: np.ndarray) -> np.ndarray:
        return run(planes.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)

    out = imaging.upscale_colour(imaging.to_float(lr)[None], scale=info.scale, color=info.color,
                                 in_channels=info.in_channels, run_planes=run_planes)
    return imaging.from_float(out[0], np.uint8)


@dataclass
class Reference:
    """fp32 outputs on the validation set, computed once per quantize call."""

    images: list[ValidationImage]
    outputs: list[np.ndarray]
    psnr_y: float


def reference(model: Path, images: list[ValidationImage], info: ModelInfo, engine: str) -> Reference:
    run = OnnxRunner(model, engine, info)
    outputs = [upscale_u8(run, v.lr, info) for v in images]
    psnr = float(np.mean([psnr_y(o, v.hr, info.scale) for o, v in zip(outputs, images, strict=True)]))
    return Reference(images, outputs, psnr)


def measure(model: Path, ref: Reference, info: ModelInfo, engine: str) -> Measurement:
    run = OnnxRunner(model, engine, info)
    outs = [upscale_u8(run, v.lr, info) for v in ref.images]
    psnr = float(np.mean([psnr_y(o, v.hr, info.scale) for o, v in zip(outs, ref.images, strict=True)]))
    # parity with border 0: every pixel counts; inf (identical) is capped so the mean stays finite
    parity = [min(psnr_y(o, r, 0), 99.0) for o, r in zip(outs, ref.outputs, strict=True)]
    if not all(math.isfinite(p) for p in parity):
        parity = [0.0]
    mse = float(np.mean([np.mean(np.subtract(*y_planes(o, r, 0)) ** 2) for o, r in zip(outs, ref.outputs, strict=True)]))
    return Measurement(ref.psnr_y, psnr, float(np.mean(parity)), mse if math.isfinite(mse) else math.inf)


def allowed_mse(budget: Budget, ref: Reference) -> float:
    """The budget as a parity error (Y, 8-bit units): PARITY directly; GROUND_TRUTH through the fp32 model's
    own error against the ground truth, to which an independent quantization error adds."""
    peak = 255.0**2
    if budget.mode == BudgetMode.PARITY:
        return peak * 10 ** (-budget.min_parity_db / 10)
    fp32_mse = peak * 10 ** (-ref.psnr_y / 10)
    return fp32_mse * (10 ** (budget.max_drop_db / 10) - 1)


# ---- which layers to keep in float ---------------------------------------------------------------
@dataclass
class Attempt:
    kept_float: list[str]
    measurement: Measurement
    held: bool
    label: str = ""  # what was tried, where `kept_float` does not say it (the block search)

    def describe_kept(self) -> str:
        return self.label or f"float [{summary(self.kept_float)}]"


@dataclass
class SearchLog:
    attempts: list[Attempt] = field(default_factory=list)

    def describe(self, budget: Budget) -> str:
        return "; ".join(f"{a.describe_kept()}: {a.measurement.describe(budget)}" for a in self.attempts)


def sensitive_candidates(model: Path, limit: int = 4) -> list[str]:
    """Conv node names in the order they are usually most sensitive in SR nets: the conv feeding the
    upsampler (DepthToSpace / Resize) or the output, then the first conv, then the other convs nearest
    the output. The search measures each addition; this only orders what it tries."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    if not convs:
        return []
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    outputs = {o.name for o in graph.output}
    before_up = [c.name for c in convs
                 if any(op in ("DepthToSpace", "Resize") for op in consumers.get(c.output[0], []))
                 or c.output[0] in outputs]
    order = [*reversed(before_up), convs[0].name, *(c.name for c in reversed(convs))]
    seen: list[str] = []
    for name in order:
        if name not in seen:
            seen.append(name)
    return seen[:limit]


def resolve_budget(info: ModelInfo, mode: BudgetMode | str | None, max_drop_db: float | None,
                   min_parity_db: float | None) -> Budget:
    chosen = BudgetMode(mode) if mode else default_mode(info)
    return Budget(chosen, DEFAULT_MAX_DROP_DB if max_drop_db is None else float(max_drop_db),
                  DEFAULT_MIN_PARITY_DB if min_parity_db is None else float(min_parity_db))


def summary(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"
