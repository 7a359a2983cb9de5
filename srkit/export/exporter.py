"""`srkit export`: a bundled name or checkpoint -> a verified, self-describing ONNX file."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srkit import __version__
from srkit._fs import atomic_path
from srkit._optional import require
from srkit.errors import ExportError, InputError
from srkit.export import graph
from srkit.export.parity import ParityReport, run_gate
from srkit.meta import ModelInfo, Precision
from srkit.models.loader import LoadedModel, load_model

DEFAULT_OPSET = 17
MIN_OPSET = 11  # DepthToSpace has no CRD mode before opset 11


@dataclass
class ExportOptions:
    opset: int = DEFAULT_OPSET
    static: tuple[int, int] | None = None  # (H, W) of the low-resolution input
    verify: bool = True
    max_abs: float = 1e-4
    simplify: bool = True
    fp16: bool = False  # fp16 graph, overflowing nodes kept fp32 (srkit.export.fp16)
    fp16_io: bool = False  # with fp16: fp16 inputs/outputs instead of fp32
    min_psnr_fp16: float = 45.0  # the fp16 gate against PyTorch fp32 (also ncnn's fp16 weights)
    format: str | None = None  # "onnx" or "ncnn"; None: from the output's suffix (.param -> ncnn)
    ncnn_fp32: bool = False  # ncnn: fp32 weight storage instead of fp16 (srkit.export.ncnn)


@dataclass
class ExportResult:
    path: Path
    info: ModelInfo
    parity: ParityReport | None
    seconds: float
    nodes: dict[str, int] = field(default_factory=dict)
    # runtime -> "ok (...)" or "skipped: why": the op-support check (graph.check_runtimes)
    checks: dict[str, str] = field(default_factory=dict)


def default_output(source: str) -> Path:
    return Path(Path(source).stem + ".onnx")


def output_format(output: str | Path | None, requested: str | None) -> str:
    """onnx or ncnn: the output's suffix decides; `requested` (--format) must agree with it or stand alone."""
    by_suffix = {".onnx": "onnx", ".param": "ncnn"}.get(Path(output).suffix.lower()) if output else None
    wanted = requested.lower() if requested else None
    if wanted not in (None, "onnx", "ncnn"):
        raise InputError(f"--format must be onnx or ncnn, not {requested!r}")
    if by_suffix and wanted and by_suffix != wanted:
        raise InputError(f"--format {wanted} does not match the output {output} (.onnx: onnx, .param: ncnn)")
    return by_suffix or wanted or "onnx"


def export_model(
    source: str,
    output: str | Path | None = None,
    *,
    arch: str | None = None,
    scale: int | None = None,
    options: ExportOptions | None = None,
) -> ExportResult:
    options = options or ExportOptions()
    if output_format(output, options.format) == "ncnn":
        from srkit.export.ncnn import export_ncnn

        return export_ncnn(source, output, arch=arch, scale=scale, options=options)
    if not MIN_OPSET <= options.opset <= 23:
        raise InputError(f"--opset {options.opset} is outside the supported range {MIN_OPSET}-23")
    if options.fp16_io and not options.fp16:
        raise InputError("fp16 inputs/outputs (fp16_io) need an fp16 export (fp16=True)")
    start = time.perf_counter()
    loaded = load_model(source, arch=arch, scale=scale)
    out_path = Path(output) if output else default_output(source)
    if out_path.suffix.lower() != ".onnx":
        raise InputError(f"output {out_path} must end in .onnx")
    if not loaded.source.startswith("bundled:") and out_path.resolve() == Path(source).resolve():
        raise InputError(f"refusing to overwrite the input {source}")
    info = describe(loaded, options)
    if options.static is not None:
        multiple = info.size_multiple
        if any(v <= 0 or v % multiple for v in options.static):
            raise InputError(f"--static {options.static[0]}x{options.static[1]} must be positive multiples of {multiple}")

    with atomic_path(out_path) as tmp:
        model = trace(loaded, info, options)
        graph.check_graph(model, expects_depth_to_space=_uses_pixel_shuffle(loaded.module))
        if options.fp16:
            model = to_fp16(model, info, options)
            graph.check_graph(model, expects_depth_to_space=_uses_pixel_shuffle(loaded.module))
        write_with_metadata(model, info, tmp)
        checks = graph.check_runtimes(tmp)
        report = None
        if options.verify:
            report = run_gate(
                tmp, loaded.module, channels=info.in_channels, size_multiple=info.size_multiple,
                static=options.static, max_abs=None if options.fp16 else options.max_abs,
                min_psnr=options.min_psnr_fp16 if options.fp16 else None,
            )
            info.parity = report.to_dict()
            write_with_metadata(model, info, tmp)  # the parity result is part of the artifact
        nodes: dict[str, int] = {}
        for op in graph.op_types(model):
            nodes[op] = nodes.get(op, 0) + 1
    return ExportResult(out_path, info, report, time.perf_counter() - start, nodes, checks)


def to_fp16(model: Any, info: ModelInfo, options: ExportOptions) -> Any:
    """fp16 graph; records the precision and the nodes kept fp32 (srkit.fp32_nodes) in `info`."""
    from srkit.export import fp16

    batches = None
    if options.static is not None:  # a static graph takes exactly one shape: calibrate at it
        batches = fp16.calibration_batches(info.in_channels, info.size_multiple, size=options.static, batch=1)
    half, report = fp16.to_fp16(model, channels=info.in_channels, size_multiple=info.size_multiple,
                                fp16_io=options.fp16_io, batches=batches)
    info.precision = Precision.FP16
    info.extra.update(report.to_extra())
    return half


def describe(loaded: LoadedModel, options: ExportOptions) -> ModelInfo:
    spec, params = loaded.spec, loaded.params
    return ModelInfo(
        arch=spec.name,
        scale=int(params["scale"]),
        in_channels=int(params.get("in_channels", 1 if spec.color.value == "y" else 3)),
        color=spec.color,
        # a module may need more than its architecture's default (RRDBNet x2/x1: pixel-unshuffle by 2/4)
        size_multiple=int(getattr(loaded.module, "size_multiple", spec.size_multiple)),
        precision=Precision.FP32,
        opset=options.opset,
        source=loaded.source,
        source_sha256=loaded.source_sha256,
        params=params,
        receptive_field=spec.receptive_field,
        static_shape=options.static,
        version=__version__,
    )


def _uses_pixel_shuffle(module: Any) -> bool:
    torch = require("torch")
    return any(isinstance(m, torch.nn.PixelShuffle) for m in module.modules())


def trace(loaded: LoadedModel, info: ModelInfo, options: ExportOptions) -> Any:
    """torch -> ONNX ModelProto with dynamic batch/height/width (unless static), then onnxslim."""
    torch = require("torch", extra="export")
    onnx = require("onnx")
    h, w = options.static or (4 * info.size_multiple * 8, 3 * info.size_multiple * 8)
    dummy = torch.zeros(1, info.in_channels, h, w)
    dynamic = None
    if options.static is None:
        dynamic = {"input": {0: "batch", 2: "height", 3: "width"},
                   "output": {0: "batch", 2: "out_height", 3: "out_width"}}
    import io

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, but it handles dynamic H/W of
        # these conv nets directly, in a fraction of the time, and emits DepthToSpace(CRD) for PixelShuffle.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            torch.onnx.export(
                loaded.module, (dummy,), buffer, dynamo=False, opset_version=options.opset,
                input_names=["input"], output_names=["output"], dynamic_axes=dynamic,
                do_constant_folding=True,
            )
        except Exception as exc:
            raise ExportError(f"tracing {info.arch} to ONNX failed: {exc}") from None
    model = onnx.load_from_string(buffer.getvalue())
    if options.simplify:
        model = graph.simplify(model)
    return model


def write_with_metadata(model: Any, info: ModelInfo, path: Path) -> None:
    onnx = require("onnx")
    del model.metadata_props[:]
    for key, value in info.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "srkit", __version__
    onnx.save(model, str(path))
