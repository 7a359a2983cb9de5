"""Backend lifecycle (after Polygraphy's runners): cheap construction, `activate()` builds the session,
`infer()` checks the input and calls the subclass's `_infer`, `close()` frees it."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from srkit.errors import InputError
from srkit.meta import ModelInfo, Precision


@dataclass
class BackendOptions:
    device: str = "cpu"
    precision: Precision = Precision.FP32
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    name: ClassVar[str]
    title: ClassVar[str]
    module_name: ClassVar[str]  # the package whose presence makes the backend available

    def __init__(self, model_path: Path, info: ModelInfo, options: BackendOptions) -> None:
        self.model_path = Path(model_path)
        self.info = info
        self.options = options
        self.compile_s: float | None = None
        self.active = False

    # ---- what subclasses implement -------------------------------------------------------------
    @classmethod
    def is_available(cls) -> bool:
        from srkit._optional import is_available

        return is_available(cls.module_name)

    @classmethod
    def devices(cls) -> list[str]:
        """Devices this backend can run on, on this machine."""
        return ["cpu"]

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer(self, x: np.ndarray) -> np.ndarray: ...

    def _close(self) -> None:  # noqa: B027 - optional hook
        pass

    def describe(self) -> dict[str, Any]:
        """What actually ran (device, precision, provider...), for reports."""
        return {"backend": self.name, "device": self.options.device, "precision": self.options.precision.value}

    # ---- the template ---------------------------------------------------------------------------
    def activate(self) -> Backend:
        if not self.active:
            start = time.perf_counter()
            self._activate()
            self.compile_s = time.perf_counter() - start
            self.active = True
        return self

    def infer(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 in 0-1 -> NCHW float32 (scale x H, scale x W)."""
        if x.ndim != 4 or x.shape[1] != self.info.in_channels:
            raise InputError(f"model expects N x {self.info.in_channels} x H x W input, got {x.shape}")
        if x.dtype != np.float32:
            raise InputError(f"model input must be float32, got {x.dtype}")
        if not self.active:
            self.activate()
        return self._infer(np.ascontiguousarray(x))

    def close(self) -> None:
        if self.active:
            self._close()
            self.active = False

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.close()
