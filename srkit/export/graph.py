"""Graph passes and checks on an ONNX ModelProto: simplify, DepthToSpace mode, no training-only ops."""

from __future__ import annotations

from typing import Any

from srkit._optional import require
from srkit.errors import ExportError

TRAINING_ONLY_OPS = {"BatchNormalization", "Dropout"}


def simplify(model: Any) -> Any:
    """onnxslim: constant folding, dead-node removal, shape-op cleanup. Keeps dynamic axes dynamic."""
    onnxslim = require("onnxslim", extra="export", purpose="simplifying the exported graph")
    try:
        return onnxslim.slim(model)
    except Exception as exc:  # onnxslim wraps many failure types; the unsimplified graph is still valid
        raise ExportError(f"onnxslim could not simplify the graph: {exc}") from None


def op_types(model: Any) -> list[str]:
    return [node.op_type for node in model.graph.node]


def check_graph(model: Any, *, expects_depth_to_space: bool) -> None:
    """Raise ExportError for a graph srkit must not ship."""
    onnx = require("onnx")
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the ONNX checker rejected the graph: {exc}") from None
    leftovers = sorted(TRAINING_ONLY_OPS.intersection(op_types(model)))
    if leftovers:
        raise ExportError(f"training-only ops left in the graph: {', '.join(leftovers)}")
    d2s = [n for n in model.graph.node if n.op_type == "DepthToSpace"]
    if expects_depth_to_space and not d2s:
        raise ExportError("PixelShuffle did not become DepthToSpace")
    for node in d2s:
        mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "DCR")
        if mode != "CRD":
            # PixelShuffle's channel order is CRD; DCR (the ONNX default) scrambles colours and sub-pixels
            raise ExportError(f"DepthToSpace node {node.name!r} has mode {mode}; PixelShuffle needs CRD")
