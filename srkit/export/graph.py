"""Graph passes and checks on an ONNX ModelProto: simplify, DepthToSpace mode, no training-only ops, and
op support (the graph loads in ONNX Runtime and compiles in OpenVINO)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from srkit._optional import is_available, require
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


def check_runtimes(path: Path) -> dict[str, str]:
    """Every op must load in ONNX Runtime and, if installed, compile on OpenVINO's CPU plugin.

    Returns {runtime: "ok ..." or "skipped: ..."}; raises ExportError naming the runtime that refused
    the graph.
    OpenVINO is optional for export: without it the check is skipped and the result says so.
    """
    results = {"onnxruntime": _check_onnxruntime(path)}
    if is_available("openvino"):
        results["openvino"] = _check_openvino(path)
    else:
        results["openvino"] = "skipped: openvino is not installed (pip install 'srkit[openvino]')"
    return results


def _check_onnxruntime(path: Path) -> str:
    ort = require("onnxruntime", extra="ort", purpose="checking the exported graph")
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        raise ExportError(f"ONNX Runtime cannot load the exported graph: {_first_line(exc)}") from None
    return f"ok (onnxruntime {ort.__version__}, CPU)"


def _check_openvino(path: Path) -> str:
    ov = require("openvino", extra="openvino", purpose="checking the exported graph")
    try:
        core = ov.Core()
        core.compile_model(core.read_model(str(path)), "CPU")
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses with multi-line messages
        raise ExportError(f"OpenVINO cannot compile the exported graph on CPU: {_first_line(exc)}") from None
    return f"ok (openvino {ov.__version__}, CPU)"


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
