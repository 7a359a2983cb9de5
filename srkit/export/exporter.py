"""`srkit export`: a bundled name or checkpoint -> a verified, self-describing ONNX file."""

from __future__ import annotations

import json
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
from srkit.export.pipeline import PipelineReport, run_pipeline_gate
from srkit.meta import Io, ModelInfo, Precision, read_model_info
from srkit.models.loader import LoadedModel, load_model
from srkit.quality import FP16_EXPORT_GATE_DB, FP32_EXPORT_MAX_ABS

DEFAULT_OPSET = 17
MIN_OPSET = 11  # DepthToSpace has no CRD mode before opset 11


@dataclass
class ExportOptions:
    opset: int = DEFAULT_OPSET
    static: tuple[int, int] | None = None  # (H, W) of the low-resolution input
    verify: bool = True
    max_abs: float = FP32_EXPORT_MAX_ABS
    simplify: bool = True
    fp16: bool = False  # fp16 graph, overflowing nodes kept fp32 (srkit.export.fp16)
    fp16_io: bool = False  # with fp16: fp16 inputs/outputs instead of fp32
    min_psnr_fp16: float = FP16_EXPORT_GATE_DB  # the fp16 gate against PyTorch fp32 (also ncnn's fp16 weights)
    io: Io = Io.TENSOR  # a pipeline model (srkit.pipeline): uint8/uint16 images in and out
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
    pipeline: PipelineReport | None = None  # --io rgb8...: the pipeline gate against the host path


def default_output(source: str, options: ExportOptions | None = None) -> Path:
    """NAME.onnx, with the precision and the I/O in the name when they are not the defaults, so an fp16 or a
    pipeline export never replaces the plain one."""
    stem = Path(source).stem
    if options is not None:
        if options.fp16 and "fp16" not in stem:
            stem += "-fp16-io" if options.fp16_io else "-fp16"
        if options.io != Io.TENSOR:
            stem += f"-{options.io.value}"
    return Path(stem + ".onnx")


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
    if Path(source).suffix.lower() == ".onnx":
        return export_pipeline(source, output, options)
    if not MIN_OPSET <= options.opset <= 23:
        raise InputError(f"--opset {options.opset} is outside the supported range {MIN_OPSET}-23")
    if options.fp16_io and not options.fp16:
        raise InputError("fp16 inputs/outputs (fp16_io) need an fp16 export (fp16=True)")
    start = time.perf_counter()
    loaded = load_model(source, arch=arch, scale=scale)
    out_path = Path(output) if output else default_output(source, options)
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
        pipeline_report = None
        if options.io != Io.TENSOR:
            model, pipeline_report = wrap_in_pipeline(model, info, options.io, verify=options.verify)
            info.io = options.io
            onnx = require("onnx")
            onnx.save(model, str(tmp))
            checks = graph.check_runtimes(tmp)
        nodes = count_ops(model)
    return ExportResult(out_path, info, report, time.perf_counter() - start, nodes, checks, pipeline_report)


def count_ops(model: Any) -> dict[str, int]:
    nodes: dict[str, int] = {}
    for op in graph.op_types(model):
        nodes[op] = nodes.get(op, 0) + 1
    return nodes


def wrap_in_pipeline(model: Any, info: ModelInfo, io: Io, *, verify: bool) -> tuple[Any, PipelineReport | None]:
    """tensor ModelProto (with its srkit metadata) -> the pipeline ModelProto, gated against the host path."""
    from srkit.pipeline import compose

    piped = compose(model, info, io)
    report = run_pipeline_gate(piped, model, info, io) if verify else None
    if report is not None:
        entry = piped.metadata_props.add()
        entry.key, entry.value = "srkit.pipeline_parity", json.dumps(report.to_dict(), sort_keys=True)
    return piped, report


def export_pipeline(source: str, output: str | Path | None, options: ExportOptions) -> ExportResult:
    """An exported (or quantized) srkit .onnx -> its pipeline model (`--io`); nothing is re-traced."""
    onnx = require("onnx")
    start = time.perf_counter()
    if options.io == Io.TENSOR:
        raise InputError(f"{source} is already an ONNX model; give --io rgb8, gray8 or rgb16 to make its pipeline")
    if options.fp16 or options.static is not None:
        raise InputError("--fp16 and --static apply when exporting from a checkpoint, not to an exported .onnx")
    info = read_model_info(source)
    out_path = Path(output) if output else default_output(source, options)
    if out_path.suffix.lower() != ".onnx":
        raise InputError(f"output {out_path} must end in .onnx")
    if out_path.resolve() == Path(source).resolve():
        raise InputError(f"refusing to overwrite the input {source}")
    model = onnx.load(str(source))
    with atomic_path(out_path) as tmp:
        piped, report = wrap_in_pipeline(model, info, options.io, verify=options.verify)
        onnx.save(piped, str(tmp))
        checks = graph.check_runtimes(tmp)
    info.io = options.io
    return ExportResult(out_path, info, None, time.perf_counter() - start, count_ops(piped), checks, report)


def to_fp16(model: Any, info: ModelInfo, options: ExportOptions) -> Any:
    """fp16 graph; records the precision and the nodes kept fp32 (srkit.fp32_nodes) in `info`."""
    from srkit.export import fp16

    batches = None
    if options.static is not None:  # a static graph takes exactly one shape: calibrate at it
        batches = fp16.calibration_batches(info.in_channels, info.size_multiple, size=options.static, batch=1)
    half, report = fp16.to_fp16(model, channels=info.in_channels, size_multiple=info.size_multiple,
                                fp16_io=options.fp16_io, batches=batches, headroom=fp16.headroom_for(info))
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
        size_multiple=spec.size_multiple(params),  # from the loaded weights' hyperparameters
        precision=Precision.FP32,
        opset=options.opset,
        source=loaded.source,
        source_sha256=loaded.source_sha256,
        params=params,
        receptive_field=spec.receptive_field,
        static_shape=options.static,
        version=__version__,
        extra=spec.facts(params),  # srkit.features, srkit.tiling, srkit.gan_trained, srkit.fp16_safe
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
