"""Lazy imports of heavy optional packages with an actionable error."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from srkit.errors import BackendUnavailableError

# module name -> the srkit extra that installs it
EXTRAS: dict[str, str] = {
    "torch": "export",
    "onnx": "ort",
    "onnxslim": "export",
    "onnxruntime": "ort",
    "openvino": "openvino",
    "tensorrt": "trt",
    "safetensors": "export",
    "nncf": "quant",
    "av": "video",
    "matplotlib": "bench",
}


def is_available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, *, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """Import `module` or raise BackendUnavailableError naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = extra or EXTRAS.get(module.split(".")[0], module)
        why = f" (needed for {purpose})" if purpose else ""
        raise BackendUnavailableError(
            f"{module} is not installed{why}; install it with: pip install 'srkit[{extra}]'"
        ) from exc
