"""ModelInfo: the self-description srkit writes into ONNX `metadata_props` (keys prefixed `srkit.`).

The runtime reads these and never guesses the scale or colour space from tensor shapes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from srkit.errors import InputError, UnsupportedModelError

PREFIX = "srkit."


# what a reduced precision of a PSNR-trained model may cost against ground truth (issue 6's budget)
DEFAULT_MAX_PSNR_DROP_DB = 0.3


class Color(str, Enum):
    RGB = "rgb"
    Y = "y"  # luma of BT.601 YCbCr; chroma is upscaled bicubically by the runtime


class Io(str, Enum):
    """What a model file takes and returns (`srkit.io`)."""

    TENSOR = "tensor"  # float32 NCHW in 0-1; the host converts colour, pads and rounds (srkit.runtime.Upscaler)
    RGB8 = "rgb8"  # uint8 [N,H,W,3] RGB in and out: a pipeline model (srkit.pipeline)
    GRAY8 = "gray8"  # uint8 [N,H,W,1]
    RGB16 = "rgb16"  # uint16 [N,H,W,3]
    Y8 = "y8"  # uint8 [N,H,W,1] BT.601 luma (a video's Y plane), Y-channel models only

    @classmethod
    def parse(cls, value: str | Io) -> Io:
        try:
            return cls(str(value.value if isinstance(value, Io) else value).lower())
        except ValueError:
            raise InputError(f"unknown --io {value!r}; choose one of: {', '.join(i.value for i in cls)}") from None

    @property
    def is_pipeline(self) -> bool:
        return self != Io.TENSOR


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    AUTO = "auto"

    @classmethod
    def parse(cls, value: str | Precision) -> Precision:
        try:
            return cls(str(value.value if isinstance(value, Precision) else value).lower())
        except ValueError:
            choices = ", ".join(p.value for p in cls)
            raise InputError(f"unknown precision {value!r}; choose one of: {choices}") from None


@dataclass
class ModelInfo:
    arch: str
    scale: int
    in_channels: int
    color: Color
    range: str = "0-1"
    size_multiple: int = 1
    precision: Precision = Precision.FP32
    opset: int = 17
    source: str = ""
    source_sha256: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    receptive_field: int = 8
    parity: dict[str, Any] = field(default_factory=dict)
    static_shape: tuple[int, int] | None = None  # (H, W) of the input when exported with --static
    version: str = ""
    io: Io = Io.TENSOR
    extra: dict[str, str] = field(default_factory=dict)  # later passes (fp16, int8) record facts here

    # ---- ONNX metadata_props <-> ModelInfo -------------------------------------------------------
    def to_props(self) -> dict[str, str]:
        props = {
            "arch": self.arch,
            "scale": str(self.scale),
            "in_channels": str(self.in_channels),
            "color": self.color.value,
            "range": self.range,
            "size_multiple": str(self.size_multiple),
            "precision": self.precision.value,
            "opset": str(self.opset),
            "source": self.source,
            "source_sha256": self.source_sha256,
            "params": json.dumps(self.params, sort_keys=True),
            "receptive_field": str(self.receptive_field),
            "parity": json.dumps(self.parity, sort_keys=True),
            "version": self.version,
            "io": self.io.value,
        }
        if self.static_shape:
            props["static_shape"] = f"{self.static_shape[0]}x{self.static_shape[1]}"
        props.update(self.extra)
        return {PREFIX + k: v for k, v in props.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], *, where: str = "model") -> ModelInfo:
        ours = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        _check_value_lengths(ours, where)
        missing = [k for k in ("arch", "scale", "in_channels", "color") if k not in ours]
        if missing:
            raise UnsupportedModelError(
                f"{where} has no srkit metadata ({', '.join(PREFIX + k for k in missing)} missing); "
                "export it with `srkit export` first"
            )
        try:
            static = ours.pop("static_shape", "")
            info = cls(
                arch=ours.pop("arch"),
                scale=int(ours.pop("scale")),
                in_channels=int(ours.pop("in_channels")),
                color=Color(ours.pop("color")),
                range=ours.pop("range", "0-1"),
                size_multiple=int(ours.pop("size_multiple", "1")),
                precision=Precision(ours.pop("precision", "fp32")),
                opset=int(ours.pop("opset", "17")),
                source=ours.pop("source", ""),
                source_sha256=ours.pop("source_sha256", ""),
                params=_json_object(ours.pop("params", "{}") or "{}", "params", where),
                receptive_field=int(ours.pop("receptive_field", "8")),
                parity=_json_object(ours.pop("parity", "{}") or "{}", "parity", where),
                static_shape=_parse_hw(static) if static else None,
                version=ours.pop("version", ""),
                io=Io(ours.pop("io", "tensor")),
            )
        except (ValueError, KeyError) as exc:
            raise UnsupportedModelError(f"{where} has malformed srkit metadata: {exc}") from None
        info.extra = ours
        check_metadata_values(info, where)
        return info

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["color"] = self.color.value
        data["precision"] = self.precision.value
        data["io"] = self.io.value
        return data


# ---- validation: metadata that cannot be true, and graphs that contradict it -----------------------------
MAX_SCALE = 16
MAX_SIZE_MULTIPLE = 1024
MAX_RECEPTIVE_FIELD = 4096
MAX_VALUE_CHARS = 1 << 20  # one metadata value (params, parity JSON included)
MAX_JSON_DEPTH = 16  # srkit writes depth 2-3; deeper is a hostile file (json's recursion, `srkit info`)
# the pixel format of a pipeline model's NHWC integer input (`srkit.io`) -> (ONNX element type, channels)
_PIPELINE_IO = {"rgb8": ("uint8", 3), "gray8": ("uint8", 1), "y8": ("uint8", 1), "rgb16": ("uint16", 3)}


def _check_value_lengths(ours: dict[str, str], where: str) -> None:
    for key, value in ours.items():
        if len(value) > MAX_VALUE_CHARS:
            raise UnsupportedModelError(
                f"{where}: metadata {PREFIX}{key} is {len(value)} characters long (at most {MAX_VALUE_CHARS})"
            )


def _json_object(text: str, key: str, where: str) -> dict[str, Any]:
    """A metadata value that must be a JSON object of bounded depth (no RecursionError, here or when printed)."""
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
        depth = MAX_JSON_DEPTH + 1
    except ValueError as exc:
        raise UnsupportedModelError(f"{where} has malformed srkit metadata: {PREFIX}{key} is not JSON ({exc})") from None
    else:
        depth = _json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise UnsupportedModelError(f"{where}: metadata {PREFIX}{key} nests deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(value, dict):
        raise UnsupportedModelError(f"{where}: metadata {PREFIX}{key} must be a JSON object")
    return value


def _json_depth(value: Any) -> int:
    """Nesting depth without recursion (a list of lists 900 deep must not raise here either)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_metadata_values(info: ModelInfo, where: str) -> None:
    """Values no srkit export writes and the runtime cannot honour (scale 0 divides by zero, a negative
    receptive field gives no tile overlap, another range would be fed 0-1 pixels anyway)."""
    problems = []
    if not 1 <= info.scale <= MAX_SCALE:
        problems.append(f"{PREFIX}scale {info.scale} is not in 1-{MAX_SCALE}")
    if info.in_channels not in (1, 3):
        problems.append(f"{PREFIX}in_channels {info.in_channels} is not 1 or 3")
    elif info.color == Color.Y and info.in_channels != 1:
        problems.append(f"{PREFIX}color y needs {PREFIX}in_channels 1, not {info.in_channels}")
    if not 1 <= info.size_multiple <= MAX_SIZE_MULTIPLE:
        problems.append(f"{PREFIX}size_multiple {info.size_multiple} is not in 1-{MAX_SIZE_MULTIPLE}")
    if not 0 <= info.receptive_field <= MAX_RECEPTIVE_FIELD:
        problems.append(f"{PREFIX}receptive_field {info.receptive_field} is not in 0-{MAX_RECEPTIVE_FIELD}")
    if info.range != "0-1":
        problems.append(f"{PREFIX}range {info.range!r} is not supported (srkit models take 0-1)")
    if info.static_shape and min(info.static_shape) < 1:
        problems.append(f"{PREFIX}static_shape {info.static_shape[0]}x{info.static_shape[1]} is not positive")
    if problems:
        raise UnsupportedModelError(f"{where}: invalid srkit metadata: {'; '.join(problems)}")


def _io_of(info: ModelInfo) -> str:
    io = getattr(info, "io", None) or info.extra.get("io", "tensor")
    return str(getattr(io, "value", io))


def check_graph(model: Any, info: ModelInfo, path: Path) -> None:
    """The graph must be what its metadata says: one image in, one image out, of the declared channels and
    element type; a static output must be `scale` times a static input. `model` is an onnx.ModelProto."""
    import onnx

    where = str(path)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]  # IR < 4 lists weights as inputs
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise UnsupportedModelError(
            f"{where}: an srkit model has one input and one output; this graph has {len(inputs)} and "
            f"{len(model.graph.output)}"
        )
    io = _io_of(info)
    want_channels: int | None
    if io == "tensor":
        allowed = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
        layout, channel_axis, want_channels = "NCHW float", 1, info.in_channels
    else:
        if io not in _PIPELINE_IO:
            return  # a pixel format newer than this check: the runtime that knows it validates it
        element, want = _PIPELINE_IO[io]
        allowed = {getattr(onnx.TensorProto, element.upper())}
        layout, channel_axis, want_channels = f"NHWC {element}", 3, want
    in_type, in_dims = _tensor_type(inputs[0], "input", where)
    out_type, out_dims = _tensor_type(model.graph.output[0], "output", where)
    for role, elem, dims in (("input", in_type, in_dims), ("output", out_type, out_dims)):
        if len(dims) != 4 or elem not in allowed:
            raise UnsupportedModelError(
                f"{where}: {role} is {_describe_type(elem, dims)}; an srkit model ({PREFIX}io {io}) takes and "
                f"gives rank-4 {layout} images ({', '.join(_type_name(e) for e in sorted(allowed))})"
            )
        channels = dims[channel_axis]
        if want_channels is not None and channels is not None and channels != want_channels:
            raise UnsupportedModelError(
                f"{where}: the graph's {role} has {channels} channels but the metadata says "
                f"{PREFIX}in_channels {info.in_channels} ({PREFIX}color {info.color.value}, {PREFIX}io {io})"
            )
    spatial = (2, 3) if io == "tensor" else (1, 2)
    for axis in spatial:
        h_in, h_out = in_dims[axis], out_dims[axis]
        if h_in is not None and h_out is not None and h_out != h_in * info.scale:
            raise UnsupportedModelError(
                f"{where}: the graph maps {in_dims} to {out_dims}, not x{info.scale} as {PREFIX}scale says"
            )


def _tensor_type(value: Any, role: str, where: str) -> tuple[int, list[int | None]]:
    if not value.type.HasField("tensor_type"):
        raise UnsupportedModelError(f"{where}: the graph's {role} is not a tensor")
    tensor = value.type.tensor_type
    dims: list[int | None] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return tensor.elem_type, dims


def _type_name(elem: int) -> str:
    import onnx

    return str(onnx.TensorProto.DataType.Name(elem)).lower() if elem else "undefined"


def _describe_type(elem: int, dims: list[int | None]) -> str:
    shape = "x".join("?" if d is None else str(d) for d in dims) or "a scalar"
    return f"{_type_name(elem)} {shape}"


def check_external_data(model: Any, path: Path) -> None:
    """Every tensor stored outside the .onnx file must live in the model's folder (no `../`, no absolute
    path, no symlink out) and hold at least the bytes it declares: the runtimes otherwise fail with pages
    of their own errors, or read a file the user never meant to give."""
    import onnx
    from onnx import helper

    folder = path.resolve().parent
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        name = tensor.name or "(unnamed)"
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise UnsupportedModelError(
                f"{path}: tensor {name}'s external data {location!r} is outside the model's folder {folder}"
            )
        if not target.is_file():
            raise UnsupportedModelError(f"{path}: tensor {name}'s external data file {location} is missing")
        try:
            offset, length = int(entries.get("offset", "0")), entries.get("length")
            declared = int(length) if length is not None else None
        except ValueError:
            raise UnsupportedModelError(f"{path}: tensor {name} has a malformed external data offset or length") from None
        needed = _tensor_bytes(tensor, helper)
        if declared is not None and needed is not None and declared != needed:
            raise UnsupportedModelError(
                f"{path}: tensor {name} declares {declared} bytes of external data but its shape needs {needed}"
            )
        size = target.stat().st_size
        span = declared if declared is not None else needed
        if offset < 0 or (span is not None and (span < 0 or offset + span > size)):
            raise UnsupportedModelError(
                f"{path}: tensor {name} wants bytes {offset}-{offset + (span or 0)} of {location}, "
                f"which holds {size} (truncated or wrong file?)"
            )


def _tensor_bytes(tensor: Any, helper: Any) -> int | None:
    try:
        itemsize = int(helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)
    except (KeyError, ValueError, TypeError):
        return None
    if tensor.data_type == 8:  # STRING: variable length
        return None
    count = 1
    for dim in tensor.dims:
        count *= int(dim)
    return count * itemsize


def _all_tensors(graph: Any) -> list[Any]:
    """Initializers and tensor attributes, subgraphs (If, Loop, Scan) included, without recursion."""
    found, graphs = [], [graph]
    while graphs:
        g = graphs.pop()
        found.extend(g.initializer)
        found.extend(s.values for s in g.sparse_initializer)
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    found.append(attr.t)
                found.extend(attr.tensors)
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
    return found

# ---- facts the export records from the architecture's descriptor (srkit.models.base.ArchSpec.facts) ----
# Models exported before these keys existed: what their architecture's descriptor says today.
_LEGACY_GAN_TRAINED = frozenset({"rrdbnet", "srvgg"})
_LEGACY_APPROXIMATE_TILING = frozenset({"rcan"})


def judged_by_parity(info: ModelInfo) -> bool:
    """A GAN-trained model (Real-ESRGAN): its ground-truth PSNR is not the goal, so a reduced precision is
    judged by parity with fp32, not by the PSNR it loses (quantize budgets, bench recommendation)."""
    if "gan_trained" in info.extra:
        return info.extra["gan_trained"] == "true"
    return info.arch.lower() in _LEGACY_GAN_TRAINED


def tiling_is_exact(info: ModelInfo) -> bool:
    """False when an op sees the whole image (RCAN's channel attention): tiled output only approximates."""
    if "tiling" in info.extra:
        return info.extra["tiling"] != "approximate"
    return info.arch.lower() not in _LEGACY_APPROXIMATE_TILING


def feature_width(info: ModelInfo) -> int | None:
    """Feature maps at the network's widest point (srkit.features), None for models exported before."""
    value = info.extra.get("features")
    return int(value) if value and value.isdigit() else None


def _parse_hw(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def read_model_info(path: str | Path) -> ModelInfo:
    """Read ModelInfo from an ONNX file without loading its weights into memory twice (or from an ncnn
    `.param`: its srkit sidecar, else its graph; srkit.ncnn_meta)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    if path.suffix.lower() == ".param":
        from srkit.ncnn_meta import read_ncnn_info

        return read_ncnn_info(path)
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a core dependency
        from srkit._optional import require

        onnx = require("onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types for a corrupt file
        raise InputError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    props = {p.key: p.value for p in model.metadata_props}
    info = ModelInfo.from_props(props, where=str(path))
    check_graph(model, info, path)
    check_external_data(model, path)
    return info
