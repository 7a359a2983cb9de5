"""ONNX Runtime static quantization: QDQ format, per-channel int8 weights, MinMax / Entropy / Percentile.

Only convolutions are quantized: SR nets are convs plus cheap element-wise ops, and integer DepthToSpace
kernels are missing in several runtimes (docs/background.md 9), so the upsampler stays float and the Q/DQ pair on
the tensor that feeds it is removed (the output of the last conv then stays full precision too).

`symmetric=True` gives the TensorRT flavour: int8 activations and weights, zero points 0.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from srkit._optional import require
from srkit.calibration.dataset import CalibrationDataset
from srkit.errors import InputError

QUANTIZED_OPS = ["Conv", "ConvTranspose"]
FLOAT_UPSAMPLERS = ("DepthToSpace", "Resize")


class CalibrationMethod(str, Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"

    @classmethod
    def parse(cls, value: str | None) -> CalibrationMethod:
        try:
            return cls((value or "minmax").lower())
        except ValueError:
            raise InputError(f"unknown ONNX Runtime calibration method {value!r}; choose one of: "
                             + ", ".join(m.value for m in cls)) from None


def _reader(dataset: CalibrationDataset, input_name: str) -> Any:
    quant = require("onnxruntime.quantization", extra="ort")

    class Reader(quant.CalibrationDataReader):  # type: ignore[name-defined]
        def __init__(self) -> None:
            self._it = iter(dataset.with_transform(lambda x: {input_name: x}))

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

    return Reader()


def quantize_ort(model: Path, output: Path, dataset: CalibrationDataset, *, method: CalibrationMethod,
                 symmetric: bool = False, nodes_to_exclude: Sequence[str] = ()) -> None:
    """Write a QDQ model to `output` (a path the caller owns; atomic placement is the caller's job)."""
    import onnx

    quant = require("onnxruntime.quantization", extra="ort")
    calibrate = {
        CalibrationMethod.MINMAX: quant.CalibrationMethod.MinMax,
        CalibrationMethod.ENTROPY: quant.CalibrationMethod.Entropy,
        CalibrationMethod.PERCENTILE: quant.CalibrationMethod.Percentile,
    }[method]
    input_name = onnx.load(str(model), load_external_data=False).graph.input[0].name
    extra: dict[str, Any] = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
    if method == CalibrationMethod.PERCENTILE:
        extra["CalibPercentile"] = 99.999
    extra["CalibTensorRangeSymmetric"] = symmetric
    # the augmented model ORT calibrates with goes to its own temp dir (ORT >= 1.16), not the working dir;
    # the caller passes an `output` inside a temp dir too
    # the histogram calibrators print() their progress; keep stdout for srkit's report
    with contextlib.redirect_stdout(io.StringIO()):
        _quantize_static(quant, model, output, _reader(dataset, input_name), calibrate, symmetric,
                         nodes_to_exclude, extra)
    qmodel = onnx.load(str(output))
    unquantize_upsampler_inputs(qmodel)
    onnx.save(qmodel, str(output))


def _quantize_static(quant: Any, model: Path, output: Path, reader: Any, calibrate: Any, symmetric: bool,
                     nodes_to_exclude: Sequence[str], extra: dict[str, Any]) -> None:
    quant.quantize_static(
        str(model), str(output), reader,
        quant_format=quant.QuantFormat.QDQ,
        op_types_to_quantize=QUANTIZED_OPS,
        per_channel=True,
        activation_type=quant.QuantType.QInt8 if symmetric else quant.QuantType.QUInt8,
        weight_type=quant.QuantType.QInt8,
        calibrate_method=calibrate,
        nodes_to_exclude=list(nodes_to_exclude),
        extra_options=extra,
        calibration_providers=["CPUExecutionProvider"],
    )


def unquantize_upsampler_inputs(model: Any) -> int:
    """Remove Q->DQ pairs on tensors that feed DepthToSpace/Resize: the upsampler then sees the float
    output of the conv before it. Returns how many pairs were removed."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    removed = 0
    for node in list(graph.node):
        if node.op_type not in FLOAT_UPSAMPLERS or not node.input:
            continue
        dq = producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in {i.name for i in graph.initializer}:
            continue
        # rewire the upsampler only: other consumers of the same tensor (a conv) keep their int8 input
        node.input[0] = q.input[0]
        consumers[dq.output[0]].remove(node)
        if not consumers[dq.output[0]] and dq.output[0] not in {o.name for o in graph.output}:
            graph.node.remove(dq)
            consumers[q.output[0]].remove(dq)
            if not consumers[q.output[0]]:
                graph.node.remove(q)
        removed += 1
    return removed
