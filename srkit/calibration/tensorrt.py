"""The TensorRT int8 route: an explicit, symmetric Q/DQ ONNX model.

TensorRT 10 deprecated and 11 removed the implicit INT8 calibrators (docs/background.md 7): int8 now lives in the
ONNX as QuantizeLinear/DequantizeLinear pairs with zero point 0, and TensorRT fuses them into int8 kernels.
This module produces that model (ONNX Runtime's QDQ quantizer in its symmetric flavour, upsampler left in
float) and checks its structure. Building an engine from it is GPU-only (srkit/runtime/tensorrt.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srkit.calibration.dataset import CalibrationDataset
from srkit.calibration.ort import FLOAT_UPSAMPLERS, CalibrationMethod, quantize_ort


def quantize_trt(model: Path, output: Path, dataset: CalibrationDataset, *, method: CalibrationMethod,
                 nodes_to_exclude: Sequence[str] = ()) -> None:
    quantize_ort(model, output, dataset, method=method, symmetric=True, nodes_to_exclude=nodes_to_exclude)
    problems = check_qdq(output).problems
    if problems:  # a bug in the quantizer settings, not a user error: fail loudly
        raise RuntimeError("Q/DQ model for TensorRT is malformed: " + "; ".join(problems))


@dataclass
class QdqReport:
    quantized_convs: list[str] = field(default_factory=list)
    float_convs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_qdq(model: str | Path | Any) -> QdqReport:
    """Structure TensorRT needs: int8 Q/DQ with zero points 0, convs fed by DQ on input and weight, and no
    Q/DQ on a tensor entering DepthToSpace/Resize."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    graph = proto.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    report = QdqReport()
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            # activations and weights must be signed int8; biases are int32 (also zero point 0)
            if zp is not None and (zp.dtype not in (np.int8, np.int32) or np.any(zp != 0)):
                report.problems.append(f"{node.name}: zero point {zp.dtype}, not symmetric int8 (all 0)")
        elif node.op_type == "Conv":
            fed = [producer.get(name) for name in node.input[:2]]
            if all(p is not None and p.op_type == "DequantizeLinear" for p in fed):
                report.quantized_convs.append(node.name)
            else:
                report.float_convs.append(node.name)
        elif node.op_type in FLOAT_UPSAMPLERS:
            src = producer.get(node.input[0])
            if src is not None and src.op_type in ("QuantizeLinear", "DequantizeLinear"):
                report.problems.append(f"{node.name} ({node.op_type}) is fed by {src.op_type}")
    if not report.quantized_convs:
        report.problems.append("no convolution is quantized")
    return report
