"""`srkit export SOURCE -o model.param`: PyTorch -> ncnn through pnnx, gated against PyTorch, app-ready.

pnnx (Tencent's PyTorch -> ncnn converter, on the package index) takes a TorchScript file and two input shapes
(`inputshape`, `inputshape2`: two shapes make height and width dynamic) and writes `.param` + `.bin`. srkit then
makes the files what the ncnn upscaler apps expect:

- blob names `data` -> `output` (realesrgan-ncnn-vulkan feeds `data` and extracts `output`; Upscayl's build
  prefers those names too), RGB in 0-1, C x H x W, no batch axis (ncnn has none);
- a file name that carries the scale (Upscayl reads it from the name: "x2"/"2x" -> 2, "x3"/"3x" -> 3, else 4);
- fp16 weight storage by default, as ncnn's own tools write (half the file; ncnn computes in fp32 on the CPU
  unless told otherwise), fp32 storage on request;
- srkit's metadata in a sidecar `model.json` (the `.param` has no place for it), with the blob names and how
  to feed the model. One-channel (luma) models are labelled as such: the apps feed RGB, so they cannot run them.

The three files are written atomically together: temp files beside the targets, renamed into place only after
the parity gate passed, the `.param` last (a reader that finds the `.param` finds its `.bin` and sidecar).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from srkit._fs import atomic_path
from srkit._optional import require
from srkit.errors import ExportError, InputError
from srkit.export.exporter import ExportOptions, ExportResult, describe
from srkit.meta import Color, ModelInfo
from srkit.models.base import IMAGE_IN, IMAGE_OUT, ConversionPiece
from srkit.models.loader import LoadedModel, load_model
from srkit.ncnn_meta import INPUT_BLOB, MAGIC, OUTPUT_BLOB, parse_layers, sidecar_path, sidecar_text

PNNX_TIMEOUT_S = 600
# realesrgan-ncnn-vulkan / Upscayl overlap their tiles by this many input pixels ("prepadding")
APP_TILE_PADDING = 10
APP_SCALES = (2, 3, 4)  # the scales realesrgan-ncnn-vulkan (-s) and Upscayl's name rule know


@dataclass
class NcnnExportResult(ExportResult):
    bin_path: Path = Path()
    sidecar: Path = Path()
    storage: str = "fp16"
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        """What the CLI prints: the files, the graph, how to feed it, the gate."""
        info = self.info
        shape = f"static {info.static_shape[0]}x{info.static_shape[1]}" if info.static_shape else "dynamic height/width"
        lines = [
            f"wrote {self.path} + {self.bin_path.name} + {self.sidecar.name}  ({info.arch} x{info.scale}, "
            f"{info.color.value.upper()}, ncnn, {self.storage} weights, {shape})",
            "graph: " + ", ".join(f"{op} x{n}" for op, n in sorted(self.nodes.items())),
            f"feed: {info.extra['feed']}",
        ]
        if self.parity:
            p = self.parity
            psnr = "inf" if p.psnr_db == float("inf") else f"{p.psnr_db:.1f} dB"
            lines.append(f"parity vs PyTorch fp32 ({p.backend}): max abs {p.max_abs:.2e}, PSNR {psnr}, "
                         f"shapes {', '.join('x'.join(map(str, s)) for s in p.shapes)}  [gate {p.gate}: passed]")
        else:
            lines.append("parity: NOT verified (--no-verify)")
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"done in {self.seconds:.1f} s")
        return lines


# ---- names --------------------------------------------------------------------------------------------------
def upscayl_scale(name: str) -> int:
    """The scale Upscayl assumes for a model of this name (its rule: "x2"/"2x" -> 2, "x3"/"3x" -> 3, else 4)."""
    lower = name.lower()
    if "x2" in lower or "2x" in lower:
        return 2
    if "x3" in lower or "3x" in lower:
        return 3
    return 4


def app_stem(stem: str, scale: int) -> str:
    """`stem`, with `-xN` appended unless the name already says xN in a way Upscayl reads correctly."""
    lower = stem.lower()
    says_scale = f"x{scale}" in lower or f"{scale}x" in lower
    return stem if says_scale and upscayl_scale(stem) == scale else f"{stem}-x{scale}"


def default_ncnn_output(source: str, scale: int) -> Path:
    return Path(app_stem(Path(source).stem if Path(source).suffix else source, scale) + ".param")


def feed_instructions(info: ModelInfo) -> str:
    if info.color == Color.Y:
        return (
            f"luma only: blob '{INPUT_BLOB}' takes 1 x H x W float32 BT.601 Y in 16/255..235/255 "
            "(Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in 0-1); blob "
            f"'{OUTPUT_BLOB}' gives Y at x{info.scale}; upscale Cb and Cr bicubically and convert back. "
            "RGB upscaler apps (realesrgan-ncnn-vulkan, Upscayl) feed 3 channels and cannot run this model"
        )
    return (f"blob '{INPUT_BLOB}' takes {info.in_channels} x H x W float32 RGB in 0-1; blob '{OUTPUT_BLOB}' gives "
            f"{info.in_channels} x {info.scale}H x {info.scale}W RGB in 0-1 (clip before converting to 8 bits)")


def app_notes(path: Path, info: ModelInfo) -> list[str]:
    """What an ncnn upscaler app user needs to know about this file."""
    if info.color == Color.Y:
        return ["a luma (Y-channel) model: for srkit (`srkit upscale -m ... --backend ncnn`) and your own ncnn code, "
                "not for the RGB upscaler apps"]
    notes = []
    if info.scale not in APP_SCALES:
        notes.append(f"an x{info.scale} model: realesrgan-ncnn-vulkan and Upscayl handle x2, x3 and x4 models")
    elif upscayl_scale(path.stem) != info.scale:
        notes.append(f"Upscayl reads the scale from the file name and would take {path.name} for "
                     f"x{upscayl_scale(path.stem)}; name it {app_stem(path.stem, info.scale)}.param for Upscayl")
    if info.size_multiple > 1:
        notes.append(f"needs input sides that are multiples of {info.size_multiple} (srkit pads; the apps do not)")
    if info.receptive_field > APP_TILE_PADDING:
        notes.append(f"the apps overlap tiles by {APP_TILE_PADDING} pixels and this model sees "
                     f"{info.receptive_field}: their tile borders may differ slightly from a whole-image run "
                     "(srkit's own tiling overlaps by the receptive field)")
    return notes


# ---- the export ---------------------------------------------------------------------------------------------
def export_ncnn(
    source: str,
    output: str | Path | None,
    *,
    arch: str | None = None,
    scale: int | None = None,
    options: ExportOptions,
) -> NcnnExportResult:
    """SOURCE -> `.param` + `.bin` + `.json`, gated against PyTorch (fp32 storage: max abs; fp16: PSNR)."""
    if options.fp16_io:
        raise InputError("--fp16-io is for ONNX models; an ncnn model takes fp32 blobs (its weights are fp16)")
    if options.fp16 and options.ncnn_fp32:
        raise InputError("--fp16 and --ncnn-fp32 contradict each other (ncnn stores fp16 weights by default)")
    require("pnnx", extra="ncnn", purpose="exporting to ncnn")
    require("ncnn", extra="ncnn", purpose="checking the ncnn export")
    start = time.perf_counter()
    loaded = load_model(source, arch=arch, scale=scale)
    info = describe(loaded, options)
    info.opset = 0  # not an ONNX model
    out = Path(output) if output else default_ncnn_output(source, info.scale)
    if out.suffix.lower() != ".param":
        raise InputError(f"output {out} must end in .param (its .bin and .json are written beside it)")
    bin_out, json_out = out.with_suffix(".bin"), sidecar_path(out)
    _refuse_overwriting_source(source, loaded, (out, bin_out, json_out))
    if options.static is not None:
        multiple = info.size_multiple
        if any(v <= 0 or v % multiple for v in options.static):
            raise InputError(f"--static {options.static[0]}x{options.static[1]} must be positive multiples of {multiple}")
    storage = "fp32" if options.ncnn_fp32 else "fp16"
    info.extra.update({"format": "ncnn", "ncnn_input": INPUT_BLOB, "ncnn_output": OUTPUT_BLOB,
                       "ncnn_weights": storage, "feed": feed_instructions(info)})

    with ExitStack() as stack:
        # entered param, bin, json: renamed into place in the reverse order, so the .param appears last
        tmp_param = stack.enter_context(atomic_path(out))
        tmp_bin = stack.enter_context(atomic_path(bin_out))
        tmp_json = stack.enter_context(atomic_path(json_out))
        convert(loaded, info, tmp_param, tmp_bin, fp16=storage == "fp16", static=options.static)
        text = rename_blobs(tmp_param.read_text(encoding="utf-8"), str(out))
        tmp_param.write_text(text, encoding="utf-8")
        report = None
        if options.verify:
            from srkit.export.parity import run_ncnn_gate

            fp32 = storage == "fp32"
            report = run_ncnn_gate(
                tmp_param, tmp_bin, loaded.module, channels=info.in_channels, size_multiple=info.size_multiple,
                static=options.static, input_blob=INPUT_BLOB, output_blob=OUTPUT_BLOB,
                max_abs=options.max_abs if fp32 else None, min_psnr=None if fp32 else options.min_psnr_fp16,
            )
            info.parity = report.to_dict()
        tmp_json.write_text(sidecar_text(info), encoding="utf-8")
    nodes: dict[str, int] = {}
    for layer in parse_layers(text, str(out)):
        if layer.type not in ("Input", "Split"):
            nodes[layer.type] = nodes.get(layer.type, 0) + 1
    return NcnnExportResult(out, info, report, time.perf_counter() - start, nodes, {},
                            bin_path=bin_out, sidecar=json_out, storage=storage, notes=app_notes(out, info))


def _refuse_overwriting_source(source: str, loaded: LoadedModel, outputs: tuple[Path, ...]) -> None:
    if loaded.source.startswith("bundled:"):
        return
    src = Path(source)
    inputs = {src.resolve(), src.with_suffix(".bin").resolve()} if src.suffix.lower() == ".param" else {src.resolve()}
    for path in outputs:
        if path.resolve() in inputs:
            raise InputError(f"refusing to overwrite the input {path}; choose another output with -o")


def trace_shapes(info: ModelInfo, static: tuple[int, int] | None) -> list[tuple[int, int]]:
    """The input shapes pnnx sees: one (static) or two unrelated ones (height and width stay dynamic)."""
    if static is not None:
        return [static]
    m = info.size_multiple
    return [(32 * m, 24 * m), (24 * m, 40 * m)]


def convert(
    loaded: LoadedModel, info: ModelInfo, param: Path, weights: Path, *, fp16: bool,
    static: tuple[int, int] | None,
) -> None:
    """torch module -> TorchScript -> pnnx -> `param` + `weights` (pnnx's side files stay in a temp folder).

    A network whose architecture splits it for conversion (a deep RRDBNet: pnnx's memory grows exponentially
    with its depth) is converted piece by piece and the ncnn graphs are joined: blobs renamed so that each
    piece reads what the one before wrote, weights concatenated in layer order (ncnn reads them in that order).
    """
    split = loaded.spec.conversion_pieces
    pieces = (split(loaded.module, loaded.params) if split else []) or [
        ConversionPiece(loaded.module, (IMAGE_IN,), (IMAGE_OUT,), (info.in_channels,))]
    shapes = trace_shapes(info, static)
    with tempfile.TemporaryDirectory(prefix="srkit-pnnx-") as tmp:
        work = Path(tmp)
        outputs = [_convert_piece(piece, shapes, work / f"piece{i}", fp16=fp16, arch=info.arch)
                   for i, piece in enumerate(pieces)]
        texts = [piece_param.read_text(encoding="utf-8") for piece_param, _ in outputs]
        text = texts[0] if len(pieces) == 1 else join_pieces(texts, pieces, str(param))
        refuse_unconverted_layers(text, info.arch)
        param.write_text(text, encoding="utf-8")
        with weights.open("wb") as joined:
            for _, piece_bin in outputs:
                with piece_bin.open("rb") as part:
                    shutil.copyfileobj(part, joined)


def refuse_unconverted_layers(text: str, arch: str) -> None:
    """pnnx writes an operation it has no ncnn layer for under its PyTorch name (`torch.index_select`,
    `Tensor.reshape`, `pnnx.Expression` for shape arithmetic): ncnn would refuse to load the file."""
    left: dict[str, int] = {}
    for layer in parse_layers(text, arch):
        if "." in layer.type:
            left[layer.type] = left.get(layer.type, 0) + 1
    if left:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(left.items()))
        raise ExportError(f"pnnx could not convert {arch} to ncnn: ncnn has no layer for {ops}")


def _convert_piece(piece: ConversionPiece, shapes: list[tuple[int, int]], stem: Path, *, fp16: bool,
                   arch: str) -> tuple[Path, Path]:
    """One module -> `stem.param` + `stem.bin` through TorchScript and pnnx."""
    torch = require("torch", extra="export")
    pnnx = require("pnnx", extra="ncnn", purpose="exporting to ncnn")
    h, w = shapes[0]
    example = tuple(torch.zeros(1, c, h // piece.stride, w // piece.stride) for c in piece.channels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python code
        try:
            script = torch.jit.trace(piece.module, example, check_trace=False)
        except Exception as exc:
            raise ExportError(f"tracing {arch} to TorchScript for pnnx failed: {exc}") from None
    name = stem.name
    script.save(str(stem.with_suffix(".pt")))
    param, weights = stem.with_suffix(".param"), stem.with_suffix(".bin")
    command = [pnnx.EXEC_PATH, f"{name}.pt", *_shape_args(piece, shapes), f"fp16={int(fp16)}", "device=cpu",
               f"ncnnparam={param.name}", f"ncnnbin={weights.name}", f"pnnxparam={name}.pnnx.param",
               f"pnnxbin={name}.pnnx.bin", f"pnnxpy={name}_pnnx.py", f"pnnxonnx={name}.pnnx.onnx",
               f"ncnnpy={name}_ncnn.py"]
    try:
        done = subprocess.run(command, cwd=stem.parent, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ExportError(f"pnnx did not finish converting {arch} in {PNNX_TIMEOUT_S} s") from None
    if done.returncode != 0 or not _non_empty(param) or not _non_empty(weights):
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-4:])
        raise ExportError(f"pnnx could not convert {arch} to ncnn (exit {done.returncode}): {tail}")
    return param, weights


def _non_empty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _shape_args(piece: ConversionPiece, shapes: list[tuple[int, int]]) -> list[str]:
    """pnnx's `inputshape` / `inputshape2`: one `[1,C,H,W]f32` per input of the piece, comma-separated."""
    names = ["inputshape", "inputshape2"]
    return [name + "=" + ",".join(f"[1,{c},{h // piece.stride},{w // piece.stride}]f32" for c in piece.channels)
            for name, (h, w) in zip(names, shapes, strict=False)]


def join_pieces(texts: list[str], pieces: list[ConversionPiece], where: str) -> str:
    """The pnnx graphs of consecutive pieces as one ncnn graph, from `in0` (the image) to `out0` (the result).

    pnnx names a graph's inputs in0, in1, ... and its outputs out0, out1, ... in argument / tuple order; every
    other blob and every layer gets the piece's prefix, and the Input layers of the later pieces go (their
    blobs become the blobs an earlier piece wrote).
    """
    produced = {IMAGE_IN: "in0"}
    layers: list[str] = []
    for i, (text, piece) in enumerate(zip(texts, pieces, strict=True)):
        if any(value not in produced for value in piece.inputs):
            raise ExportError(f"{where}: piece {i} takes a value no earlier piece returns")
        rename = {f"in{k}": produced.pop(value) for k, value in enumerate(piece.inputs)}
        for k, value in enumerate(piece.outputs):
            produced[value] = rename[f"out{k}"] = "out0" if value == IMAGE_OUT else f"p{i}_out{k}"
        layers += _prefixed_layers(text, i, rename)
    if set(produced) != {IMAGE_OUT}:
        raise ExportError(f"{where}: the pieces leave {sorted(set(produced) - {IMAGE_OUT})} unused")
    blobs: set[str] = set()
    for layer in parse_layers("\n".join([MAGIC, "0 0", *layers]), where):
        blobs.update(layer.bottoms, layer.tops)
    return "\n".join([MAGIC, f"{len(layers)} {len(blobs)}", *layers]) + "\n"


def _prefixed_layers(text: str, index: int, rename: dict[str, str]) -> list[str]:
    """The layer lines of piece `index`, its blobs renamed or prefixed (the first piece keeps its own names)."""
    def blob_name(blob: str) -> str:
        return rename.get(blob, blob if index == 0 else f"p{index}_{blob}")

    lines = []
    for line in text.splitlines()[2:]:
        fields = line.split()
        if len(fields) < 4 or (index > 0 and fields[0] == "Input"):
            continue
        lines.append(_rewrite_blobs(fields, blob_name, layer_name=fields[1] if index == 0 else f"p{index}_{fields[1]}"))
    return lines


def _rewrite_blobs(fields: list[str], rename: Callable[[str], str], layer_name: str | None = None) -> str:
    """One .param layer line with its blob names (and optionally its layer name) replaced; params kept verbatim."""
    n_blobs = int(fields[2]) + int(fields[3])
    blobs = [rename(b) for b in fields[4 : 4 + n_blobs]]
    return " ".join([fields[0], layer_name or fields[1], *fields[2:4], *blobs, *fields[4 + n_blobs :]])


def rename_blobs(text: str, where: str) -> str:
    """pnnx names the input blob `in0` and the output `out0`; the apps feed `data` and extract `output`."""
    layers = parse_layers(text, where)
    inputs = [layer for layer in layers if layer.type == "Input"]
    if len(inputs) != 1 or inputs[0].tops != ("in0",) or "out0" not in layers[-1].tops:
        raise ExportError(f"pnnx wrote an unexpected graph ({len(inputs)} inputs, last layer {layers[-1].name}); "
                          "srkit exports single-input, single-output networks")
    blobs = {b for layer in layers for b in (*layer.bottoms, *layer.tops)}
    if {INPUT_BLOB, OUTPUT_BLOB} & blobs:
        raise ExportError(f"the pnnx graph already has a blob named {INPUT_BLOB!r} or {OUTPUT_BLOB!r}")
    renamed = {"in0": INPUT_BLOB, "out0": OUTPUT_BLOB}
    lines = text.splitlines()
    out = lines[:2] + [_rewrite_blobs(fields, lambda blob: renamed.get(blob, blob)) if len(fields) >= 4 else line
                       for line in lines[2:] for fields in [line.split()]]
    return "\n".join(out) + "\n"
