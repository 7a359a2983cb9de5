"""Backend registry: names -> classes, imported lazily so listing backends imports no heavy package."""

from __future__ import annotations

import importlib

from srkit.errors import BackendUnavailableError, InputError
from srkit.runtime.base import Backend

# name -> "module:Class"; the order is the preference of `auto` on a CPU
_BACKENDS: dict[str, str] = {
    "openvino": "srkit.runtime.openvino:OpenVINOBackend",
    "ort": "srkit.runtime.ort:OrtBackend",
    "trt": "srkit.runtime.tensorrt:TensorRTBackend",
    "torch": "srkit.runtime.torch:TorchBackend",
    "ncnn": "srkit.runtime.ncnn:NcnnBackend",
}
ALIASES = {"onnxruntime": "ort", "ov": "openvino", "tensorrt": "trt", "pytorch": "torch"}


def names() -> list[str]:
    return list(_BACKENDS)


def backend_class(name: str) -> type[Backend]:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in _BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose one of: auto, {', '.join(_BACKENDS)}")
    module_name, cls_name = _BACKENDS[key].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise BackendUnavailableError(f"backend {key} is not implemented in this build ({exc.name})") from None
    cls: type[Backend] = getattr(module, cls_name)
    return cls


def model_suffixes() -> dict[str, str | None]:
    """File suffix -> the backend that runs only that format (None: the ONNX backends)."""
    suffixes: dict[str, str | None] = {".onnx": None}
    for name in _BACKENDS:
        try:
            suffix = backend_class(name).model_suffix
        except BackendUnavailableError:
            continue
        if suffix != ".onnx":
            suffixes[suffix] = name
    return suffixes


def reference() -> str:
    """The backend whose fp32 output the others are compared with (`Backend.is_reference`: PyTorch)."""
    return next(name for name in _BACKENDS if _reference_flag(name))


def _reference_flag(name: str) -> bool:
    try:
        return backend_class(name).is_reference
    except BackendUnavailableError:
        return False


def available() -> list[str]:
    found = []
    for name in _BACKENDS:
        try:
            if backend_class(name).is_available():
                found.append(name)
        except BackendUnavailableError:
            continue
    return found


def pick(name: str, device: str) -> type[Backend]:
    """`auto` -> the first installed backend that has the device; anything else must be installed."""
    if name.lower() == "auto":
        for candidate in available():
            cls = backend_class(candidate)
            if candidate != "torch" and device in cls.devices():
                return cls
        raise BackendUnavailableError(
            f"no installed backend runs on device {device!r}; installed: {', '.join(available()) or 'none'}"
        )
    cls = backend_class(name)
    if not cls.is_available():
        from srkit._optional import EXTRAS

        extra = EXTRAS.get(cls.module_name, cls.name)
        raise BackendUnavailableError(
            f"backend {cls.name} needs {cls.module_name}, which is not installed; "
            f"pip install 'srkit[{extra}]' (installed backends: {', '.join(available()) or 'none'})"
        )
    return cls
