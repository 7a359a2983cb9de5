"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers, chosen explicitly (no silent fallback)."""

from __future__ import annotations

from typing import Any

import numpy as np

from srkit._optional import require
from srkit.errors import BackendUnavailableError, InputError
from srkit.meta import Precision
from srkit.runtime.base import Backend

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class OrtBackend(Backend):
    name = "ort"
    title = "ONNX Runtime"
    module_name = "onnxruntime"

    @classmethod
    def devices(cls) -> list[str]:
        ort = require("onnxruntime", extra="ort")
        have = set(ort.get_available_providers())
        return [device for device, provider in PROVIDERS.items() if provider in have]

    def _provider(self) -> tuple[str, dict[str, Any]]:
        device = self.options.device.lower()
        if device not in PROVIDERS:
            raise InputError(f"ONNX Runtime device must be one of {', '.join(PROVIDERS)}, not {device!r}")
        ort = require("onnxruntime", extra="ort")
        provider = PROVIDERS[device]
        if provider not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"ONNX Runtime has no {provider} here; available: {', '.join(ort.get_available_providers())}"
            )
        options: dict[str, Any] = {}
        if device == "cuda":
            # EXHAUSTIVE (the default) re-benchmarks cuDNN algorithms for every new shape (onnxruntime #11688)
            options = {"cudnn_conv_algo_search": "HEURISTIC"}
        return provider, options

    def _check_precision(self) -> None:
        wanted, have = self.options.precision, self.info.precision
        if wanted not in (have, Precision.AUTO):
            raise InputError(
                f"this model is {have.value}; ONNX Runtime runs the precision stored in the model, so export or "
                f"quantize a {wanted.value} model for --precision {wanted.value}"
            )

    def _activate(self) -> None:
        self._check_precision()
        ort = require("onnxruntime", extra="ort")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.options.threads:
            so.intra_op_num_threads = int(self.options.threads)
        so.log_severity_level = 3
        provider, provider_options = self._provider()
        self.session = ort.InferenceSession(
            str(self.model_path), sess_options=so, providers=[(provider, provider_options)]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.provider = provider

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)

    def _close(self) -> None:
        del self.session

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "provider": getattr(self, "provider", None),
                "precision": self.info.precision.value}
