"""The parity gate: ONNX Runtime against PyTorch fp32 on real image content at unrelated shapes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from srkit import imaging
from srkit._optional import require
from srkit.data import held_out_images
from srkit.errors import ParityError
from srkit.quality import FP32_EXPORT_MAX_ABS, Gate, psnr_from_mse

# (batch, height, width) before rounding to the model's size multiple: non-square, odd, unrelated
DEFAULT_SHAPES = ((1, 37, 53), (2, 48, 31), (1, 71, 90))


@dataclass
class ParityReport:
    backend: str
    shapes: list[list[int]] = field(default_factory=list)
    max_abs: float = 0.0
    psnr_db: float = math.inf
    nonfinite: int = 0
    gate: str = ""
    passed: bool = True

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["psnr_db"] = None if math.isinf(self.psnr_db) else round(self.psnr_db, 2)
        data["max_abs"] = float(f"{self.max_abs:.3g}")
        return data


def round_to(value: int, multiple: int) -> int:
    return max(multiple, value - value % multiple)


def gate_shapes(size_multiple: int, static: tuple[int, int] | None) -> list[tuple[int, int, int]]:
    if static is not None:
        return [(1, *static)]
    return [(b, round_to(h, size_multiple), round_to(w, size_multiple)) for b, h, w in DEFAULT_SHAPES]


def real_inputs(shape: tuple[int, int, int], channels: int, seed: int) -> np.ndarray:
    """NCHW float32 crops of the bundled CC0 photos, in the colour space the model expects."""
    rng = np.random.default_rng(seed)
    photos = list(held_out_images().values())
    batch, h, w = shape
    crops = []
    for i in range(batch):
        photo = imaging.to_float(photos[(seed + i) % len(photos)])
        y0 = rng.integers(0, max(1, photo.shape[0] - h))
        x0 = rng.integers(0, max(1, photo.shape[1] - w))
        crop = photo[y0 : y0 + h, x0 : x0 + w, :3]
        if crop.shape[:2] != (h, w):  # larger than the photo: resample instead of cropping
            crop = imaging.resize_bicubic(photo[..., :3], h, w)
        crops.append(imaging.rgb_to_y(crop)[None] if channels == 1 else crop.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(crops), dtype=np.float32)


def compare_with_torch(
    run: Callable[[np.ndarray], np.ndarray], torch_module: Any, *, runtime: str, channels: int,
    size_multiple: int, static: tuple[int, int] | None, gate: Gate,
) -> ParityReport:
    """`run` (NCHW float32 -> NCHW float32 on the exported file) against the torch module on real image content
    at the gate's shapes; raise ParityError with the numbers if the gate fails."""
    torch = require("torch")
    report = ParityReport(backend=runtime, gate=str(gate))
    worst_mse = 0.0
    for i, shape in enumerate(gate_shapes(size_multiple, static)):
        x = real_inputs(shape, channels, seed=i)
        with torch.no_grad():
            ref = torch_module(torch.from_numpy(x)).numpy()
        out = run(x)
        if out.shape != ref.shape:
            raise ParityError(f"{runtime} output shape {out.shape} != PyTorch {ref.shape} for input {x.shape}")
        report.shapes.append(list(x.shape))
        report.nonfinite += int((~np.isfinite(out)).sum())
        diff = np.abs(out.astype(np.float64) - ref)
        report.max_abs = max(report.max_abs, float(np.nanmax(diff)) if diff.size else 0.0)
        worst_mse = max(worst_mse, float(np.nanmean(diff**2)))
    report.psnr_db = psnr_from_mse(worst_mse)
    report.passed = gate.passes(report.psnr_db, report.max_abs, report.nonfinite)
    if not report.passed:
        raise ParityError(
            f"parity gate failed ({gate}): max abs error {report.max_abs:.3g}, PSNR {report.psnr_db:.2f} dB, "
            f"{report.nonfinite} non-finite values, shapes {report.shapes}"
        )
    return report


def run_gate(
    onnx_path: Path,
    torch_module: Any,
    *,
    channels: int,
    size_multiple: int,
    static: tuple[int, int] | None,
    max_abs: float | None = FP32_EXPORT_MAX_ABS,
    min_psnr: float | None = None,
) -> ParityReport:
    """Compare ORT (CPU EP) with the torch module; raise ParityError with the numbers if the gate fails."""
    ort = require("onnxruntime", extra="ort")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    # an fp16-I/O model (export --fp16-io) takes float16; the reference still sees the fp32 crop
    feed = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: x.astype(feed)})[0], dtype=np.float32)

    return compare_with_torch(run, torch_module, runtime=f"onnxruntime {ort.__version__} CPU", channels=channels,
                              size_multiple=size_multiple, static=static,
                              gate=Gate(min_psnr_db=min_psnr, max_abs=max_abs))


def run_ncnn_gate(
    param_path: Path,
    bin_path: Path,
    torch_module: Any,
    *,
    channels: int,
    size_multiple: int,
    static: tuple[int, int] | None,
    input_blob: str,
    output_blob: str,
    max_abs: float | None = FP32_EXPORT_MAX_ABS,
    min_psnr: float | None = None,
) -> ParityReport:
    """The `ncnn` package on the CPU, in fp32 arithmetic, against the torch module at the same shapes as the ONNX
    gate (one image per extractor: ncnn has no batch axis); raise ParityError with the numbers if it fails."""
    ncnn = require("ncnn", extra="ncnn")
    net = ncnn.Net()
    # fp32 arithmetic: the gate measures the file (its fp16 or fp32 weights), not a reduced-precision run
    for option in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                   "use_bf16_packed", "use_vulkan_compute"):
        if hasattr(net.opt, option):
            setattr(net.opt, option, False)
    if net.load_param(str(param_path)) != 0 or net.load_model(str(bin_path)) != 0:
        raise ParityError(f"ncnn could not load the exported {param_path.name} / {bin_path.name}")

    def run(x: np.ndarray) -> np.ndarray:
        return np.stack([ncnn_forward(net, item, input_blob, output_blob) for item in x])

    try:
        return compare_with_torch(run, torch_module, runtime=f"ncnn {ncnn.__version__} CPU fp32", channels=channels,
                                  size_multiple=size_multiple, static=static,
                                  gate=Gate(min_psnr_db=min_psnr, max_abs=max_abs))
    finally:
        net.clear()


def ncnn_forward(net: Any, chw: np.ndarray, input_blob: str, output_blob: str) -> np.ndarray:
    """One C x H x W image through an ncnn net, on a fresh extractor; the result is a copy, so nothing from the
    net's allocator outlives this call (ncnn aborts when a net is freed while one of its Mats is alive)."""
    ncnn = require("ncnn", extra="ncnn")
    data = np.ascontiguousarray(chw, dtype=np.float32)  # ncnn.Mat borrows this memory: alive until extract
    extractor = net.create_extractor()
    extractor.input(input_blob, ncnn.Mat(data))
    status, mat = extractor.extract(output_blob)
    if status != 0:
        raise ParityError(f"ncnn could not compute blob {output_blob!r} (status {status})")
    return np.array(mat, dtype=np.float32, copy=True)
