"""One Upscaler API over ONNX Runtime, OpenVINO, TensorRT and PyTorch."""

from __future__ import annotations

from srkit.runtime.upscaler import Upscaler

__all__ = ["Upscaler"]
