"""Roofline: how many FLOPs one model call costs, and how close a backend gets to the machine's peak.

The count comes from the ONNX graph itself with the input shape fixed and shapes inferred
(onnx.shape_inference), so it matches what the runtimes execute: Conv, ConvTranspose, MatMul and Gemm
count 2 x multiply-accumulates; element-wise ops (activations, adds, Resize) count one FLOP per output
element and are listed apart as minor. Data movement (DepthToSpace, Reshape, Transpose, Q/DQ) counts nothing.

The peak is measured, never assumed: a stack of 3x3 Convs and a square MatMul, built with onnx.helper, run on
the same backend at the same precision and thread count in the same process as the result they calibrate
(an int8 peak uses a QDQ model, which ONNX Runtime and OpenVINO turn into integer kernels). The faster of
the two is the peak, so `pct_of_peak` says how much speed a model leaves on the table on this machine,
under its current load.

Why a stack and static shapes: a single conv's call also pays for what happens at the model's edges (fp32 ->
u8 / bf16 conversion of the input, the reorder into the blocked layout, and back), which a real network pays
once for dozens of convs. On OpenVINO (2-core AVX-512 VNNI/BF16 EPYC) one int8 conv read 201 GFLOP/s against
312 for eight in a row; Real-ESRGAN x4plus int8 then read 187 % "of peak". Static shapes let OpenVINO pick its
shape-specialised kernels, as a bench of a fixed input size does (+10-15 % on that machine).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from srkit.errors import InputError

# one FLOP per output element: cheap next to the convolutions, reported apart
ELEMENTWISE = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "PRelu",
    "LeakyRelu",
    "Tanh",
    "Sigmoid",
    "Clip",
    "Sqrt",
    "Pow",
    "Exp",
    "Neg",
    "Abs",
    "Max",
    "Min",
    "Resize",
    "Upsample",
    "BatchNormalization",
    "HardSigmoid",
    "HardSwish",
    "Elu",
    "Selu",
    "Softplus",
    "Erf",
    "Gelu",
    "Sum",
    "Mean",
}
CONV_LIKE = {"Conv", "ConvInteger", "QLinearConv"}
# Input positions that carry shapes, pads or indices: small integer tensors computed from the input's shape
SHAPE_INPUTS: dict[str, set[int]] = {
    "Pad": {1, 2, 3}, "Slice": {1, 2, 3, 4}, "Reshape": {1}, "Expand": {1}, "Tile": {1}, "Resize": {1, 2, 3},
    "Upsample": {1}, "ConstantOfShape": {0}, "Range": {0, 1, 2}, "Split": {1}, "Squeeze": {1}, "Unsqueeze": {1},
}
MATMUL_LIKE = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"}


@dataclass
class FlopCount:
    """FLOPs of one model call at one input size (N=1)."""

    conv: float = 0.0  # Conv/ConvTranspose/MatMul/Gemm: 2 x MACs
    minor: float = 0.0  # element-wise ops
    by_op: dict[str, float] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # nodes whose shapes could not be inferred

    @property
    def total(self) -> float:
        return self.conv + self.minor

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    def add(self, op: str, flops: float, *, major: bool) -> None:
        if major:
            self.conv += flops
        else:
            self.minor += flops
        self.by_op[op] = self.by_op.get(op, 0.0) + flops


def _fix_input_shape(model: Any, shape: tuple[int, ...]) -> None:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise InputError(f"model input has rank {len(dims)}, not {len(shape)}")
    for dim, value in zip(dims, shape, strict=True):
        dim.Clear()
        dim.dim_value = int(value)


def _shapes(model: Any) -> dict[str, tuple[int, ...] | None]:
    """Tensor name -> static shape (None where inference left a symbolic or unknown dim)."""
    out: dict[str, tuple[int, ...] | None] = {}
    values = [*model.graph.input, *model.graph.value_info, *model.graph.output]
    for vi in values:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            out[vi.name] = None
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out[vi.name] = None if any(d is None for d in dims) else tuple(int(d or 0) for d in dims)
    for init in model.graph.initializer:
        out[init.name] = tuple(int(d) for d in init.dims)
    return out


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _weight_shape(
    node: Any, shapes: dict[str, tuple[int, ...] | None], producers: dict[str, Any]
) -> tuple[int, ...] | None:
    """The weight's shape, looking through a DequantizeLinear (QDQ models)."""
    index = 3 if node.op_type in ("QLinearConv", "QLinearMatMul") else 1
    name = node.input[index]
    shape = shapes.get(name)
    if shape is None and name in producers and producers[name].op_type == "DequantizeLinear":
        shape = shapes.get(producers[name].input[0])
    return shape


def _node_flops(
    node: Any, shapes: dict[str, tuple[int, ...] | None], producers: dict[str, Any]
) -> float | None:
    op = node.op_type
    out_shape = shapes.get(node.output[0]) if node.output else None
    if op in CONV_LIKE or op == "ConvTranspose":
        w = _weight_shape(node, shapes, producers)
        if w is None or out_shape is None:
            return None
        group = int(_attr(node, "group", 1))
        if op == "ConvTranspose":
            # every input pixel scatters Cout/group x k x k MACs; w is [Cin, Cout/group, k...]
            in_index = 0
            x = shapes.get(node.input[in_index])
            if x is None:
                return None
            return 2.0 * math.prod(x) * w[1] * math.prod(w[2:])
        # w is [Cout, Cin/group, k...]: each output element costs Cin/group x k x k MACs
        del group  # already folded into w[1]
        return 2.0 * math.prod(out_shape) * math.prod(w[1:])
    if op in MATMUL_LIKE:
        a = shapes.get(node.input[0])
        if a is None or out_shape is None:
            return None
        k = a[-1] if not (op == "Gemm" and int(_attr(node, "transA", 0))) else a[0]
        return 2.0 * math.prod(out_shape) * k
    if op in ELEMENTWISE:
        return None if out_shape is None else float(math.prod(out_shape))
    return 0.0


def _fold_shape_inputs(model: Any, input_shape: tuple[int, ...]) -> Any | None:
    """The model with its computed pads, crops and shapes replaced by their values at this input shape.

    Graphs that pad inside (Real-CUGAN, SwinIR, HAT, SAFMN, Omni-SR) compute the pad from Shape(input) through
    ops that onnx's data propagation does not follow (Mod), so inference loses every shape after the Pad. In
    rounds: every Shape whose input's shape is now known becomes a constant, and every shape-carrying input whose
    subgraph is then pure shape arithmetic (no convolution or matrix product) is evaluated with onnx's reference
    evaluator and put back as a constant; shape inference runs again. None when nothing could be folded: the count
    then lists the nodes it could not size, as before.
    """
    import onnx

    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    changed_any = False
    for _ in range(16):  # each round reaches one more Pad / Reshape deeper into the network
        shapes = _shapes(onnx.shape_inference.infer_shapes(folded, data_prop=True))
        changed = _constant_shapes(folded, shapes)
        changed = _evaluate_shape_inputs(folded, input_shape) or changed
        changed_any = changed_any or changed
        if not changed:
            break
    return folded if changed_any else None


def _constant_shapes(model: Any, shapes: dict[str, tuple[int, ...] | None]) -> bool:
    """Shape nodes whose input has a known static shape, replaced by that shape as an initializer."""
    import onnx

    done = []
    for node in model.graph.node:
        known = shapes.get(node.input[0]) if node.op_type == "Shape" else None
        if known is None:
            continue
        start, end = int(_attr(node, "start", 0)), _attr(node, "end", None)
        value = np.array(known[start : None if end is None else int(end)], dtype=np.int64)
        model.graph.initializer.append(onnx.numpy_helper.from_array(value, node.output[0]))
        done.append(node)
    for node in done:
        model.graph.node.remove(node)
    return bool(done)


def _evaluate_shape_inputs(model: Any, input_shape: tuple[int, ...]) -> bool:
    """Shape-carrying inputs computed by shape arithmetic alone, evaluated and put back as initializers."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    made = {o: n for n in model.graph.node for o in n.output}
    targets = sorted({n.input[i] for n in model.graph.node for i in SHAPE_INPUTS.get(n.op_type, ())
                      if i < len(n.input) and n.input[i] in made})
    if not targets:
        return False
    heavy = CONV_LIKE | MATMUL_LIKE | {"ConvTranspose"}
    try:
        typed = onnx.shape_inference.infer_shapes(model)  # the extractor needs every target's value_info
        extractor = onnx.utils.Extractor(typed)
        feed = {model.graph.input[0].name: np.zeros(input_shape, np.float32)}
        values: dict[str, Any] = {}
        for name in targets:
            sub = extractor.extract_model([model.graph.input[0].name], [name])
            if any(n.op_type in heavy for n in sub.graph.node):
                continue  # depends on computed data, or on a Shape not known yet: a later round
            inputs = {i.name for i in sub.graph.input}
            outputs: Any = ReferenceEvaluator(sub).run([name], {k: v for k, v in feed.items() if k in inputs})
            values[name] = outputs[0]
    except Exception:  # any failure only means the count stays partial, as without folding
        return False
    for name, value in values.items():
        made[name].output[list(made[name].output).index(name)] = f"{name}__unused"
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
    return bool(values)


def count_flops(model_path: str | Path, input_hw: tuple[int, int], *, batch: int = 1) -> FlopCount:
    """FLOPs of one call of the model at a (H, W) input (already padded to the model's size multiple)."""
    import onnx

    model = onnx.load(str(model_path))
    channels = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value or 1
    _fix_input_shape(model, (batch, channels, *input_hw))
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = _shapes(inferred)
    if any(shapes.get(o) is None for n in inferred.graph.node if n.op_type in CONV_LIKE for o in n.output[:1]):
        folded = _fold_shape_inputs(model, (batch, channels, *input_hw))
        if folded is not None:
            inferred = onnx.shape_inference.infer_shapes(folded, data_prop=True)
            shapes = _shapes(inferred)
    producers = {o: n for n in inferred.graph.node for o in n.output}
    count = FlopCount()
    for node in inferred.graph.node:
        flops = _node_flops(node, shapes, producers)
        if flops is None:
            count.unknown.append(f"{node.op_type}:{node.name}")
            continue
        if flops:
            major = node.op_type in CONV_LIKE | MATMUL_LIKE | {"ConvTranspose"}
            count.add(node.op_type, flops, major=major)
    return count


# ---- the peak: micro-benchmarks built with onnx.helper -------------------------------------------------
@dataclass
class Probe:
    """A compute-bound ONNX model and the FLOPs of one call."""

    name: str
    path: Path
    flops: float
    input_shape: tuple[int, ...]


PEAK_CONV = (128, 64, 64)  # channels, H, W of each 3x3 Conv of the stack
PEAK_CONV_DEPTH = 8  # convs in the stack (about 19 GFLOP a call)
PEAK_MATMUL = 1024  # an n x n x n MatMul (about 2.1 GFLOP a call)


def _conv_model(channels: int, int8: bool, hw: tuple[int, int] = PEAK_CONV[1:],
                depth: int = PEAK_CONV_DEPTH) -> Any:
    """`depth` x (3x3 Conv -> Relu), static NCHW shape; int8: a U8S8 Q/DQ pair before each conv (ONNX Runtime's
    default CPU format, the VNNI u8 x s8 dot products; OpenVINO reads it as int8), as quantizers place them."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = channels
    inits = []
    nodes = []
    if int8:
        inits += [
            numpy_helper.from_array(np.array(1 / 255, np.float32), "xs"),
            numpy_helper.from_array(np.array(0, np.uint8), "xz"),
            numpy_helper.from_array(np.array(0.002, np.float32), "ws"),
            numpy_helper.from_array(np.array(0, np.int8), "wz"),
        ]
    x = "x"
    for i in range(depth):
        w = (rng.standard_normal((c, c, 3, 3)) * 0.05).astype(np.float32)
        if int8:
            inits.append(numpy_helper.from_array(np.clip(np.rint(w / 0.002), -127, 127).astype(np.int8), f"wq{i}"))
            nodes += [
                helper.make_node("QuantizeLinear", [x, "xs", "xz"], [f"xq{i}"]),
                helper.make_node("DequantizeLinear", [f"xq{i}", "xs", "xz"], [f"xd{i}"]),
                helper.make_node("DequantizeLinear", [f"wq{i}", "ws", "wz"], [f"w{i}"]),
            ]
            x = f"xd{i}"
        else:
            inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == depth - 1 else f"y{i}"
        nodes += [
            helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
            helper.make_node("Relu", [f"c{i}"], [out]),
        ]
        x = out
    shape = [1, c, *hw]
    graph = helper.make_graph(
        nodes,
        "peak_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _matmul_model(n: int, int8: bool) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = (rng.standard_normal((n, n)) * 0.03).astype(np.float32)
    if int8:
        inits = [
            numpy_helper.from_array(np.array(1 / 255, np.float32), "xs"),
            numpy_helper.from_array(np.array(0, np.uint8), "xz"),
            numpy_helper.from_array(np.clip(np.rint(w / 0.001), -127, 127).astype(np.int8), "wq"),
            numpy_helper.from_array(np.array(0.001, np.float32), "ws"),
            numpy_helper.from_array(np.array(0, np.int8), "wz"),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
            helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]),
            helper.make_node("MatMul", ["xd", "w"], ["y"]),
        ]
    else:
        inits = [numpy_helper.from_array(w, "w")]
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "peak_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def build_probes(folder: Path, *, int8: bool) -> list[Probe]:
    import onnx

    c, h, w = PEAK_CONV
    n = PEAK_MATMUL
    suffix = "int8" if int8 else "fp32"
    probes = [
        Probe(
            f"{PEAK_CONV_DEPTH}x conv3x3 {c}ch {w}x{h}",
            folder / f"peak_conv_{suffix}.onnx",
            2.0 * c * c * 9 * h * w * PEAK_CONV_DEPTH,
            (1, c, h, w),
        ),
        Probe(f"matmul {n}^3", folder / f"peak_matmul_{suffix}.onnx", 2.0 * n**3, (n, n)),
    ]
    onnx.save(_conv_model(c, int8), str(probes[0].path))
    onnx.save(_matmul_model(n, int8), str(probes[1].path))
    return probes


@dataclass
class Peak:
    gflops: float  # the best of the probes, GFLOP/s
    probe: str
    probes: dict[str, float]  # probe name -> GFLOP/s
    how: str

    def to_json(self) -> dict[str, Any]:
        return {
            "gflops": round(self.gflops, 1),
            "probe": self.probe,
            "probes": {k: round(v, 1) for k, v in self.probes.items()},
            "how": self.how,
        }


def _time_gflops(call: Callable[[], object], flops: float, min_time_s: float) -> float:
    from srkit.bench.timing import measure

    timing = measure(call, warmup=2, min_time_s=min_time_s, min_calls=5, max_calls=200)
    # the median call: a shared machine's stragglers should not pull the peak down
    return flops / (timing.p50 / 1000.0) / 1e9


def measure_peak(
    backend: str, precision: str, *, device: str = "cpu", threads: int | None = None, min_time_s: float = 0.5
) -> Peak:
    """Measured peak GFLOP/s of `backend` at `precision` (fp32, bf16, fp16 or int8) on this machine now."""
    int8 = precision.startswith("int8")
    float_precision = precision.split("+", 1)[1] if "+" in precision else ("fp32" if int8 else precision)
    from srkit.runtime import registry

    cls = registry.backend_class(backend)
    results: dict[str, float] = {}
    native = cls.native_peak_calls(float_precision, device, threads)
    if native is not None:  # a backend that runs no ONNX graphs brings its own probes
        results = {name: _time_gflops(call, flops, min_time_s) for name, (call, flops) in native.items()}
        how = f"{cls.title}'s own conv / matmul at {float_precision} on {device}"
    else:
        with tempfile.TemporaryDirectory(prefix="srkit-peak-") as tmp:
            for probe in build_probes(Path(tmp), int8=int8):
                x = np.random.default_rng(2).random(probe.input_shape, dtype=np.float32)
                call = cls.graph_call(probe.path, x, precision=float_precision, device=device, threads=threads)
                results[probe.name] = _time_gflops(call, probe.flops, min_time_s)
        how = (
            f"{'QDQ int8 ' if int8 else ''}ONNX Conv/MatMul on {backend} ({device}, "
            f"{float_precision} for float layers)"
        )
    best = max(results, key=lambda k: results[k])
    return Peak(results[best], best, results, how)


def roofline(model_flops: float, fps: float | None, peak: Peak | None) -> dict[str, float | None]:
    """The per-result keys: GFLOP per call, achieved GFLOP/s, the measured peak and the percentage of it."""
    gflops = model_flops / 1e9
    achieved = gflops * fps if fps else None
    peak_gflops = peak.gflops if peak else None
    pct = 100.0 * achieved / peak_gflops if achieved and peak_gflops else None
    return {
        "gflops": float(f"{gflops:.4g}"),
        "achieved_gflops": None if achieved is None else float(f"{achieved:.4g}"),
        "peak_gflops": None if peak_gflops is None else float(f"{peak_gflops:.4g}"),
        "pct_of_peak": None if pct is None else round(pct, 1),
    }
