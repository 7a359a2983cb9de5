"""The PyTorch reference backend: the source network itself, on CPU or CUDA, fp32/fp16/bf16.

It needs the weights the ONNX model was exported from: a bundled model is found by name; for a checkpoint,
pass `checkpoint=` (its sha256 must match `srkit.source_sha256`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from srkit._optional import require
from srkit._system import cpu_flags
from srkit.errors import BackendUnavailableError, InputError
from srkit.meta import ModelInfo, Precision
from srkit.runtime.base import Backend


@dataclass
class TorchOptions:
    checkpoint: str | Path | None = None  # the weights the ONNX model was exported from (a bundled one is found)


class TorchBackend(Backend):
    name = "torch"
    title = "PyTorch (eager)"
    module_name = "torch"
    Options = TorchOptions
    is_reference = True  # eager PyTorch fp32: what every export is checked against

    @classmethod
    def devices(cls) -> list[str]:
        torch = require("torch", extra="export")
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    @classmethod
    def capabilities(cls, device: str) -> list[str]:
        if device.lower() != "cpu":
            return []
        return ["BF16"] if cpu_flags() & {"avx512_bf16", "amx_bf16"} else []

    @classmethod
    def precision_candidates(
        cls, device: str, model_precision: Precision, capabilities: Sequence[str] = ()
    ) -> list[Precision]:
        if model_precision != Precision.FP32:
            return [model_precision]
        if device.lower().startswith("cuda"):
            return [Precision.FP32, Precision.FP16, Precision.BF16]
        return [Precision.FP32, Precision.BF16] if "BF16" in {c.upper() for c in capabilities} else [Precision.FP32]

    @classmethod
    def bench_precisions(
        cls, device: str, info: ModelInfo, int8: Path | None, capabilities: set[str]
    ) -> list[tuple[str, Path | None]]:
        """The PyTorch reference: fp32, and the half precision of the device (eager bf16 on a CPU that computes
        it: without avx512_bf16 / AMX PyTorch emulates bf16, measured 0.1 fps against 4.4 for fp32 on ESPCN x3 at
        1080p, a row that says nothing about deployment and costs a minute)."""
        half = "fp16" if device == "cuda" else "bf16" if "BF16" in capabilities else None
        pairs: list[tuple[str, Path | None]] = [("fp32", None)]
        return [*pairs, (half, None)] if half else pairs

    @classmethod
    def native_peak_calls(
        cls, precision: str, device: str, threads: int | None
    ) -> dict[str, tuple[Callable[[], object], float]] | None:
        """A large 3x3 convolution and a large matmul in eager PyTorch at `precision`."""
        torch = require("torch", extra="export")
        if threads:
            torch.set_num_threads(int(threads))
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        dev = torch.device(device)
        c, h, w, n = 128, 128, 128, 1024  # the size of the roofline's ONNX probes (bench/roofline.py)
        x = torch.rand(1, c, h, w, device=dev, dtype=dtype)
        wt = torch.randn(c, c, 3, 3, device=dev, dtype=dtype) * 0.05
        a = torch.rand(n, n, device=dev, dtype=dtype)
        b = torch.rand(n, n, device=dev, dtype=dtype)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

        def conv() -> None:
            with torch.inference_mode():
                torch.nn.functional.conv2d(x, wt, padding=1)
            sync()

        def matmul() -> None:
            with torch.inference_mode():
                torch.matmul(a, b)
            sync()

        return {f"conv3x3 {c}ch {w}x{h}": (conv, 2.0 * c * c * 9 * h * w), f"matmul {n}^3": (matmul, 2.0 * n**3)}

    def timed_call(self, x: np.ndarray) -> tuple[Callable[[], object], str] | None:
        if self.device.type != "cuda":
            return None
        torch = require("torch", extra="export")
        t = torch.from_numpy(x).to(self.device, self.dtype)

        def on_device() -> None:
            with torch.inference_mode():
                self.module(t)
            torch.cuda.synchronize()

        return on_device, "torch tensor on the GPU, torch.cuda.synchronize() after each call"

    def _load_module(self) -> Any:
        from srkit.models.loader import load_model

        source = self.info.source
        checkpoint = self.options.specific.checkpoint
        if not checkpoint and source and not source.startswith("bundled:") and Path(source).is_file():
            checkpoint = source  # exported from a file that is still where it was
        if checkpoint:
            loaded = load_model(str(checkpoint), arch=self.info.arch, scale=self.info.scale)
            if self.info.source_sha256 and loaded.source_sha256 != self.info.source_sha256:
                raise InputError(f"{checkpoint} is not the checkpoint {self.model_path.name} was exported from")
            return loaded.module
        if source.startswith("bundled:"):
            loaded = load_model(source.split(":", 1)[1])
            if self.info.source_sha256 and loaded.source_sha256 != self.info.source_sha256:
                # a reference from other weights would report a parity failure that is not one
                raise InputError(
                    f"the bundled {source.split(':', 1)[1]} weights changed since {self.model_path.name} was exported; "
                    "export it again"
                )
            return loaded.module
        raise InputError(
            f"the torch backend needs the PyTorch weights of {self.model_path.name} (exported from {source!r}); "
            "pass the checkpoint (Upscaler(..., checkpoint=PATH))"
        )

    def _activate(self) -> None:
        torch = require("torch", extra="export")
        device = self.options.device.lower()
        if device.split(":")[0] not in self.devices():  # "cuda:1" names a GPU of the "cuda" device type
            raise BackendUnavailableError(
                f"PyTorch has no device {device!r} here; available: {', '.join(self.devices())}"
            )
        precision = self.options.precision
        if precision == Precision.AUTO:
            precision = Precision.FP32
        dtypes = {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}
        if precision not in dtypes:
            raise InputError(f"the torch backend runs fp32, fp16 or bf16, not {precision.value}")
        if self.options.threads:
            torch.set_num_threads(int(self.options.threads))
        self.dtype = dtypes[precision]
        self.device = torch.device(device)
        module = self._load_module().to(self.device, self.dtype).eval()
        if self.device.type == "cuda":  # NHWC is what cuDNN's fp16/bf16 tensor-core kernels want
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.ran_precision = precision

    def _infer(self, x: np.ndarray) -> np.ndarray:
        torch = require("torch")
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device, self.dtype)
            if self.device.type == "cuda":
                t = t.contiguous(memory_format=torch.channels_last)
            out = self.module(t)
            return out.float().cpu().numpy()

    def _close(self) -> None:
        del self.module

    def describe(self) -> dict[str, Any]:
        ran = getattr(self, "ran_precision", self.options.precision)
        return {**super().describe(), "precision": ran.value}
