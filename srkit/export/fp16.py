"""fp32 -> fp16 ONNX conversion that keeps overflowing nodes in fp32, found by measuring on real images.

srkit measures and plans; the conversion itself is onnxruntime's (`onnxruntime.transformers.float16`,
which ships with onnxruntime, so it adds no dependency):

1. Measure: run the fp32 graph in ONNX Runtime on crops of the bundled CC0 photos with an Abs/ReduceMax
   probe on every image-data tensor, and record each tensor's largest |value|.
2. Plan: a node computing image data stays fp32 when any of its data inputs or outputs reaches
   `headroom * 65504` (default half the fp16 range), when it reads a weight beyond the fp16 range, or when
   its op type is numerically unsafe in fp16. Half the range leaves one binade of margin for images
   brighter or busier than the calibration crops: an activation that peaks at 20k on our photos can
   plausibly double on another input, not go 2x further.
3. Convert: `convert_float_to_float16` with the plan as its `node_block_list`, fp32 (or, with `fp16_io`,
   fp16) graph inputs and outputs (`keep_io_types`), shape computations blocked too; then srkit removes the
   fp32 -> fp16 -> fp32 round trips the library puts between blocked nodes, sorts the graph topologically
   (`OnnxModel.topological_sort`) and runs the full ONNX checker. Its known pitfalls (Resize `scales`,
   `keep_io_types` breaking topological order: microsoft/onnxconverter-common #208, #306) are tested in
   tests/test_fp16.py.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from srkit import imaging
from srkit._optional import require
from srkit.data import held_out_images, sample_image_path
from srkit.errors import ExportError
from srkit.meta import ModelInfo

FP16_MAX = 65504.0
DEFAULT_HEADROOM = 0.5
# an architecture whose released weights are known to overflow in fp16 (ArchSpec.fp16_safe = False, written
# as srkit.fp16_safe) keeps two binades of margin instead of one
UNSAFE_ARCH_HEADROOM = 0.25
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


def headroom_for(info: ModelInfo) -> float:
    """The share of the fp16 range an activation may reach and still run in fp16."""
    return UNSAFE_ARCH_HEADROOM if info.extra.get("fp16_safe") == "false" else DEFAULT_HEADROOM


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
        if (node.op_type in UNSAFE_OPS or any(peaks.get(n, 0.0) > threshold for n in touched)
                or any(_beyond_fp16(facts.initializers[n]) for n in node.input if n in facts.initializers)):
            keep.append(node.name or f"#{index}")
    return keep


def _beyond_fp16(initializer: Any) -> bool:
    """A weight fp16 cannot hold (the converter would clamp it): its node stays fp32."""
    from onnx import numpy_helper

    array = numpy_helper.to_array(initializer)
    return bool(array.dtype == np.float32 and np.abs(array).max(initial=0.0) > FP16_MAX)


# ---- 3. convert -------------------------------------------------------------------------------------
def convert(model: Any, fp32_nodes: set[str], *, fp16_io: bool = False) -> Any:
    """A new ModelProto: data nodes in fp16 except `fp32_nodes`, with the Casts and weights to match.

    The conversion is onnxruntime's own (`onnxruntime.transformers.float16`, shipped with onnxruntime); srkit
    gives it the plan and repairs what it is known to get wrong for these graphs:
    - shape computations (float nodes that do not compute image data) are blocked, so they keep their types;
    - Resize keeps its fp32 `scales` (the library's ALWAYS_FLOAT_INPUTS; Constants become initializers first
      so that holds for them too);
    - the library joins two blocked nodes (and a kept-fp32 graph input to a blocked node) through a
      fp32 -> fp16 -> fp32 round trip, which would overflow exactly where a node was kept fp32 for its range:
      those Cast pairs are removed;
    - `keep_io_types` appends its Casts at the end of the node list (microsoft/onnxconverter-common #306):
      the graph is sorted topologically again (`OnnxModel.topological_sort`).
    """
    onnx = require("onnx")
    require("onnxruntime", extra="ort")
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    src = onnx.ModelProto()
    src.CopyFrom(model)
    _constants_to_initializers(src)
    _name_nodes(src)
    facts = _facts(src)
    data_nodes = set(facts.data_nodes)
    shape_nodes = {node.name for i, node in enumerate(src.graph.node)
                   if i not in data_nodes and any(out in facts.float_tensors for out in node.output)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the library warns about every value it rounds or clamps
        half = convert_float_to_float16(
            src,
            keep_io_types=not fp16_io,
            node_block_list=sorted(fp32_nodes | shape_nodes),
            op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | UNSAFE_OPS),
        )
    _remove_cast_round_trips(half)
    OnnxModel(half).topological_sort(is_deterministic=True)
    return half


def _name_nodes(model: Any) -> None:
    """Unnamed nodes get the name the plan calls them by (`#index`): the block list is by name."""
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"#{index}"


def _remove_cast_round_trips(model: Any) -> None:
    """Cast(fp16 -> fp32) of a Cast(fp32 -> fp16) reads the fp32 original instead; dead Casts are dropped."""
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    types.update({init.name: init.data_type for init in graph.initializer})
    producer = {out: node for node in graph.node for out in node.output}

    def cast_to(node: Any) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    for node in graph.node:
        first = producer.get(node.input[0]) if cast_to(node) == FLOAT and node.input else None
        if first is not None and cast_to(first) == FLOAT16 and types.get(first.input[0]) == FLOAT:
            node.input[0] = first.input[0]  # now an fp32 -> fp32 Cast: exact
            if node.output[0] not in outputs:  # a graph output keeps its name (and that no-op Cast)
                rename[node.output[0]] = first.input[0]
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
    while True:  # drop Casts whose output nobody reads any more
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in read for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    live = {name for node in graph.node for name in [*node.input, *node.output]} | outputs
    kept = [v for v in graph.value_info if v.name in live]
    del graph.value_info[:]
    graph.value_info.extend(kept)


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
