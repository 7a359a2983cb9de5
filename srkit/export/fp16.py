"""fp32 -> fp16 ONNX conversion that keeps overflowing nodes in fp32, found by measuring on real images.

Why not onnxconverter-common: it is not a dependency, and its known pitfalls (Resize `scales` converted,
`keep_io_types` breaking topological order: microsoft/onnxconverter-common #208, #306) are exactly what this
module must avoid. The pass is small when written against the onnx API directly:

1. Measure: run the fp32 graph in ONNX Runtime on crops of the bundled CC0 photos with an Abs/ReduceMax
   probe on every image-data tensor, and record each tensor's largest |value|.
2. Plan: a node computing image data stays fp32 when any of its data inputs or outputs reaches
   `headroom * 65504` (default half the fp16 range), or when its op type is numerically unsafe in fp16.
   Half the range leaves one binade of margin for images brighter or busier than the calibration crops:
   an activation that peaks at 20k on our photos can plausibly double on another input, not go 2x further.
3. Convert: fp16 copies of the initializers the fp16 nodes read, Cast nodes where an fp32 tensor meets an
   fp16 node (and back), fp32 (or, with `fp16_io`, fp16) graph inputs and outputs. Shape computations
   (anything fed by Shape/Size) and the non-data inputs of Resize & co. (`roi`, `scales`, `sizes`...) keep
   their types. The node list is re-sorted topologically at the end.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from srkit import imaging
from srkit._optional import require
from srkit.data import held_out_images, sample_image_path
from srkit.errors import ExportError

FP16_MAX = 65504.0
DEFAULT_HEADROOM = 0.5
# Input positions that carry shapes, scales or indices, never image data: their type is left alone.
NON_DATA_INPUTS: dict[str, set[int]] = {
    "Resize": {1, 2, 3}, "Upsample": {1}, "Reshape": {1}, "Expand": {1}, "Tile": {1}, "Slice": {1, 2, 3, 4},
    "Pad": {1, 3}, "Squeeze": {1}, "Unsqueeze": {1}, "ReduceMean": {1}, "ReduceSum": {1}, "Gather": {1},
    "Split": {1}, "TopK": {1},
}
SHAPE_OPS = {"Shape", "Size"}  # consume data of any type, produce int64: never a reason for a Cast
# Kept fp32 whatever the measurement says: exponentials and long reductions lose too much in fp16.
UNSAFE_OPS = {"Exp", "Log", "Pow", "Softmax", "LogSoftmax", "ReduceSum", "ReduceSumSquare", "ReduceProd",
              "CumSum", "Range", "RandomNormal", "RandomUniform"}
FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto element types
CALIB_SIZE = 48  # LR crop side: room for the activations to build up, at a bounded cost for 23-block RRDBNet


@dataclass
class Fp16Report:
    fp32_nodes: list[str] = field(default_factory=list)
    threshold: float = DEFAULT_HEADROOM * FP16_MAX
    activation_max: float = 0.0  # the largest |activation| the fp32 graph produced on the calibration crops
    hottest_tensor: str = ""  # the tensor where it was seen
    calibration: list[list[int]] = field(default_factory=list)  # NCHW shapes measured
    fp16_io: bool = False

    def to_extra(self) -> dict[str, str]:
        """ModelInfo.extra entries (written as srkit.fp32_nodes, srkit.fp16)."""
        summary = {"threshold": round(self.threshold, 1), "activation_max": round(self.activation_max, 2),
                   "hottest_tensor": self.hottest_tensor, "calibration": self.calibration,
                   "fp16_io": self.fp16_io}
        return {"fp32_nodes": json.dumps(self.fp32_nodes), "fp16": json.dumps(summary, sort_keys=True)}


# ---- calibration images ----------------------------------------------------------------------------
def calibration_batches(
    channels: int, size_multiple: int, size: int | tuple[int, int] = CALIB_SIZE, batch: int = 4
) -> list[np.ndarray]:
    """NCHW float32 batches from the bundled photos, biased to the extremes that overflow fp16:
    per photo its brightest and its busiest window (`size` is the side or (H, W), rounded to the multiple)."""
    from srkit.imageio import read_image

    h, w = (size, size) if isinstance(size, int) else size
    h, w = (max(size_multiple, v - v % size_multiple) for v in (h, w))
    photos = [*held_out_images().values(), read_image(sample_image_path())]
    crops = []
    for photo in photos:
        rgb = imaging.to_float(photo)
        rgb = rgb.reshape(*rgb.shape[:2], -1)
        rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb[..., :3]
        crops += [_window(rgb, h, w, np.mean), _window(rgb, h, w, np.std)]
    planes = [imaging.rgb_to_y(c)[None] if channels == 1 else c.transpose(2, 0, 1) for c in crops]
    stacked = np.clip(np.stack(planes), 0.0, 1.0).astype(np.float32)
    return [np.ascontiguousarray(stacked[i : i + batch]) for i in range(0, len(stacked), batch)]


def _window(rgb: np.ndarray, h: int, w: int, score: Any) -> np.ndarray:
    """The h x w window (on a half-window grid) where `score` is highest; the photo resized if smaller."""
    height, width = rgb.shape[:2]
    if height < h or width < w:
        return imaging.resize_bicubic(rgb, h, w)
    windows = ((float(score(rgb[y : y + h, x : x + w])), y, x)
               for y in range(0, height - h + 1, max(1, h // 2))
               for x in range(0, width - w + 1, max(1, w // 2)))
    _, y, x = max(windows)
    return rgb[y : y + h, x : x + w]


# ---- graph facts ------------------------------------------------------------------------------------
@dataclass
class _Facts:
    float_tensors: set[str]  # every tensor whose inferred type is float32
    data_tensors: set[str]  # float tensors computed from the graph input (image data)
    data_nodes: list[int]  # indices of nodes that compute image data
    initializers: dict[str, Any]


def _is_data_input(op: str, position: int) -> bool:
    return position not in NON_DATA_INPUTS.get(op, set())


def _facts(model: Any) -> _Facts:
    onnx = require("onnx")
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    initializers = {init.name: init for init in model.graph.initializer}
    types.update({name: init.data_type for name, init in initializers.items()})
    float_tensors = {name for name, t in types.items() if t == FLOAT}
    data = {i.name for i in model.graph.input if types.get(i.name) == FLOAT and i.name not in initializers}
    data_nodes = []
    for index, node in enumerate(model.graph.node):  # exported graphs are topologically sorted
        if node.op_type in SHAPE_OPS:
            continue
        if any(name in data and _is_data_input(node.op_type, pos) for pos, name in enumerate(node.input)):
            data_nodes.append(index)
            data.update(out for out in node.output if types.get(out, FLOAT) == FLOAT)
    return _Facts(float_tensors | data, data, data_nodes, initializers)


# ---- 1. measure --------------------------------------------------------------------------------------
def measure_activations(model: Any, batches: list[np.ndarray]) -> dict[str, float]:
    """Largest |value| of every image-data tensor of the fp32 graph over the batches (inf if non-finite).

    Each tensor gets an Abs -> ReduceMax probe whose scalar is a graph output, so one ORT run per batch
    measures everything without copying hundreds of full-size intermediates out of the session.
    """
    onnx = require("onnx")
    ort = require("onnxruntime", extra="ort")
    from onnx import helper

    facts = _facts(model)
    names = [out for i in facts.data_nodes for out in model.graph.node[i].output if out in facts.data_tensors]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {}
    for index, name in enumerate(names):
        outputs[f"__absmax_{index}"] = name
        probe.graph.node.extend([
            helper.make_node("Abs", [name], [f"__abs_{index}"], name=f"__abs_{index}"),
            helper.make_node("ReduceMax", [f"__abs_{index}"], [f"__absmax_{index}"], keepdims=0,
                             name=f"__absmax_{index}"),
        ])
        probe.graph.output.append(helper.make_tensor_value_info(f"__absmax_{index}", FLOAT, []))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    input_name = model.graph.input[0].name
    peaks: dict[str, float] = defaultdict(float)
    wanted = list(outputs)
    for batch in batches:
        for key, value in zip(wanted, session.run(wanted, {input_name: batch}), strict=True):
            peak = float(value)
            peaks[outputs[key]] = max(peaks[outputs[key]], peak if np.isfinite(peak) else float("inf"))
    return dict(peaks)


# ---- 2. plan ----------------------------------------------------------------------------------------
def plan_fp32_nodes(model: Any, peaks: dict[str, float], threshold: float) -> list[str]:
    """Names of the data nodes that must stay fp32."""
    facts = _facts(model)
    keep = []
    for index in facts.data_nodes:
        node = model.graph.node[index]
        inputs = [n for pos, n in enumerate(node.input)
                  if n in facts.data_tensors and _is_data_input(node.op_type, pos)]
        touched = inputs + [n for n in node.output if n in facts.data_tensors]
        if node.op_type in UNSAFE_OPS or any(peaks.get(n, 0.0) > threshold for n in touched):
            keep.append(node.name or f"#{index}")
    return keep


# ---- 3. convert -------------------------------------------------------------------------------------
def convert(model: Any, fp32_nodes: set[str], *, fp16_io: bool = False) -> Any:
    """A new ModelProto: data nodes in fp16 except `fp32_nodes`, with the Casts and weights to match."""
    onnx = require("onnx")
    from onnx import helper, numpy_helper

    src = onnx.ModelProto()
    src.CopyFrom(model)
    _constants_to_initializers(src)
    facts = _facts(src)
    graph = src.graph
    nodes = list(graph.node)
    half = {i for i in facts.data_nodes if (nodes[i].name or f"#{i}") not in fp32_nodes}
    # the type each data tensor has after conversion
    now: dict[str, int] = {}
    for inp in graph.input:
        if inp.name in facts.data_tensors:
            now[inp.name] = FLOAT16 if fp16_io else FLOAT
            if fp16_io:
                inp.type.tensor_type.elem_type = FLOAT16
    for i in facts.data_nodes:
        for out in nodes[i].output:
            if out in facts.data_tensors:
                now[out] = FLOAT16 if i in half else FLOAT

    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[Any] = []
    fp16_inits: dict[str, str] = {}
    used_as_fp32: set[str] = set()

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}__to_{'fp16' if to == FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=to,
                                              name=f"{name}__cast_{'fp16' if to == FLOAT16 else 'fp32'}"))
        return casts[key]

    def half_initializer(name: str) -> str:
        if name not in fp16_inits:
            array = numpy_helper.to_array(facts.initializers[name])
            if np.abs(array).max(initial=0.0) > FP16_MAX:
                raise ExportError(f"initializer {name} holds values beyond the fp16 range")
            fp16_inits[name] = f"{name}__fp16"
            graph.initializer.append(numpy_helper.from_array(array.astype(np.float16), fp16_inits[name]))
        return fp16_inits[name]

    data_nodes = set(facts.data_nodes)
    for i, node in enumerate(nodes):
        if i not in data_nodes:
            used_as_fp32.update(n for n in node.input if n in facts.initializers)
            continue
        want = FLOAT16 if i in half else FLOAT
        for pos, name in enumerate(node.input):
            if not name or not _is_data_input(node.op_type, pos) or name not in facts.float_tensors:
                if name in facts.initializers:
                    used_as_fp32.add(name)
                continue
            if name in facts.initializers:
                if want == FLOAT16:
                    node.input[pos] = half_initializer(name)
                else:
                    used_as_fp32.add(name)
            elif now.get(name, FLOAT) != want:
                node.input[pos] = cast(name, want)
        if node.op_type == "Cast" and want == FLOAT16:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == FLOAT:
                    attr.i = FLOAT16
    # graph outputs: rename the producer's tensor and cast it into the declared name and type
    for out in graph.output:
        want = FLOAT16 if fp16_io else FLOAT
        have = now.get(out.name, FLOAT)
        if out.name in facts.data_tensors:
            out.type.tensor_type.elem_type = want
        if out.name not in facts.data_tensors or have == want:
            continue
        inner = f"{out.name}__{'fp16' if have == FLOAT16 else 'fp32'}"
        for node in nodes:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if o == out.name else o for o in node.input]
        for node in new_nodes:
            node.input[:] = [inner if o == out.name else o for o in node.input]
        new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=want, name=f"{out.name}__cast_out"))
    # drop fp32 originals nobody reads any more
    keep_inits = [init for init in graph.initializer
                  if init.name not in fp16_inits or init.name in used_as_fp32]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    del graph.value_info[:]  # stale types; ORT and the checker infer them again
    del graph.node[:]
    graph.node.extend(_topological(nodes + new_nodes, graph))
    return src


def _constants_to_initializers(model: Any) -> None:
    """Constant nodes holding a tensor become initializers, so they are converted like weights."""
    from onnx import numpy_helper

    kept = []
    for node in model.graph.node:
        value = None
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
        if value is not None and len(node.output) == 1:
            tensor = numpy_helper.from_array(numpy_helper.to_array(value), node.output[0])
            model.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _topological(nodes: list[Any], graph: Any) -> list[Any]:
    """Kahn's algorithm, stable in the original order (the Casts added at the end move up)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    producer = {out: index for index, node in enumerate(nodes) for out in node.output}
    waiting: dict[int, set[int]] = {}
    consumers: dict[int, list[int]] = defaultdict(list)
    for index, node in enumerate(nodes):
        deps = {producer[n] for n in node.input if n not in available and n in producer}
        missing = [n for n in node.input if n not in available and n not in producer]
        if missing:
            raise ExportError(f"fp16 conversion left {node.name or node.op_type} reading unknown {missing}")
        waiting[index] = deps
        for dep in deps:
            consumers[dep].append(index)
    ready = deque(sorted(i for i, deps in waiting.items() if not deps))
    order = []
    while ready:
        index = ready.popleft()
        order.append(index)
        for nxt in consumers[index]:
            waiting[nxt].discard(index)
            if not waiting[nxt]:
                ready.append(nxt)
        ready = deque(sorted(ready))
    if len(order) != len(nodes):
        raise ExportError("fp16 conversion produced a cycle in the graph")
    return [nodes[i] for i in order]


# ---- the pass ---------------------------------------------------------------------------------------
def to_fp16(
    model: Any,
    *,
    channels: int,
    size_multiple: int = 1,
    fp16_io: bool = False,
    headroom: float = DEFAULT_HEADROOM,
    batches: list[np.ndarray] | None = None,
) -> tuple[Any, Fp16Report]:
    """The fp16 ModelProto (checked by the ONNX checker) and what was kept fp32 and why."""
    onnx = require("onnx")
    if not 0.0 < headroom <= 1.0:
        raise ExportError(f"fp16 headroom must be in (0, 1], not {headroom}")
    batches = batches if batches is not None else calibration_batches(channels, size_multiple)
    peaks = measure_activations(model, batches)
    report = Fp16Report(threshold=headroom * FP16_MAX, fp16_io=fp16_io,
                        calibration=[list(b.shape) for b in batches])
    if peaks:
        report.hottest_tensor, report.activation_max = max(peaks.items(), key=lambda kv: kv[1])
    report.fp32_nodes = plan_fp32_nodes(model, peaks, report.threshold)
    converted = convert(model, set(report.fp32_nodes), fp16_io=fp16_io)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the fp16 graph failed the ONNX checker: {exc}") from None
    return converted, report
