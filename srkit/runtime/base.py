"""Backend lifecycle (after Polygraphy's runners): cheap construction, `activate()` builds the session,
`infer()` checks the input and calls the subclass's `_infer`, `close()` frees it."""

from __future__ import annotations

import dataclasses
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from srkit.errors import InputError, SrkitError, UnsupportedModelError
from srkit.meta import Io, ModelInfo, Precision
from srkit.pipeline import PhaseForm, Rounding

# what each pipeline I/O kind takes: (dtype, channels); srkit.pipeline builds the graphs
PIPELINE_INPUTS: dict[Io, tuple[type, int]] = {
    Io.RGB8: (np.uint8, 3), Io.GRAY8: (np.uint8, 1), Io.RGB16: (np.uint16, 3), Io.Y8: (np.uint8, 1),
}


@dataclass
class NoOptions:
    """A backend that takes no options of its own."""


@dataclass
class BackendOptions:
    """What every backend takes, plus `specific`: the backend's own typed options (`Backend.Options`)."""

    device: str = "cpu"
    precision: Precision = Precision.FP32
    threads: int | None = None
    specific: Any = field(default_factory=NoOptions)
    # the Upscaler's tile (H, W) or side: compiled backends (TensorRT) build their shape profile from it
    tile_shape: int | tuple[int, int] | None = None


class Backend(ABC):
    name: ClassVar[str]
    title: ClassVar[str]
    module_name: ClassVar[str]  # the package whose presence makes the backend available
    # Whether one session may be called from several threads at once. When False, `infer` serialises the
    # calls with a lock (correct, never faster); True means the subclass made `_infer` safe itself.
    # The backend's own options, a dataclass: Upscaler(..., **options) is checked against its fields, so a
    # misspelt option is an error naming the ones there are, never silently ignored.
    Options: ClassVar[type] = NoOptions
    thread_safe: ClassVar[bool] = False
    # Whether this backend runs srkit pipeline graphs (uint8/uint16 NHWC in and out, srkit.pipeline) given as
    # serialized ONNX (`graph=`). Backends that run something else (the PyTorch module) say False.
    runs_pipelines: ClassVar[bool] = False
    # How the pipelines srkit composes for this backend round to pixels (same pixels either way; the fastest
    # form this backend runs, measured: srkit.pipeline.Rounding).
    pipeline_rounding: ClassVar[Rounding] = Rounding.PORTABLE
    # How those pipelines hold a Y model's output phases before they become pixels (same pixels; the faster
    # form on this backend, measured: srkit.pipeline.PhaseForm); None: no phase-space tail (8-bit DepthToSpace),
    # the model's own float one stays.
    pipeline_phase_form: ClassVar[PhaseForm | None] = PhaseForm.PLANES
    # The pipeline kinds this backend runs (its types); other images take the host path.
    pipeline_ios: ClassVar[frozenset[Io]] = frozenset({Io.RGB8, Io.GRAY8, Io.Y8, Io.RGB16})
    # The model file this backend runs (ncnn: a .param with its .bin; the others: an exported ONNX model).
    model_suffix: ClassVar[str] = ".onnx"
    # The backend whose fp32 CPU output is the parity reference and whose fp32 CPU row is the bench's "x eager
    # fp32" baseline (PyTorch eager); its rows are never recommended.
    is_reference: ClassVar[bool] = False
    # Whether its fp32 rows are held to the bench's "% of fp32 peak" target (its peak probe runs the same
    # kernels as its model calls).
    judged_by_peak: ClassVar[bool] = False

    def __init__(
        self, model_path: Path, info: ModelInfo, options: BackendOptions, *, graph: bytes | None = None
    ) -> None:
        """`graph`: a serialized ONNX model to run instead of the file (a pipeline srkit composed in
        memory); `model_path` then still names the model in messages and caches."""
        self.model_path = Path(model_path)
        self.info = info
        if isinstance(options.specific, NoOptions) and self.Options is not NoOptions:
            options = dataclasses.replace(options, specific=self.Options())  # this backend's defaults
        self.options = options
        self.graph = graph
        self.compile_s: float | None = None
        self.active = False
        self._activation_lock = threading.Lock()
        self._call_lock = threading.Lock()

    # ---- what subclasses implement -------------------------------------------------------------
    @classmethod
    def is_available(cls) -> bool:
        from srkit._optional import is_available

        return is_available(cls.module_name)

    @classmethod
    def devices(cls) -> list[str]:
        """Devices this backend can run on, on this machine."""
        return ["cpu"]

    # ---- what the backend knows about itself (the only place that knows it) ----------------------
    @classmethod
    def parse_options(cls, given: dict[str, Any]) -> Any:
        """Keyword options -> this backend's Options, refusing the ones it does not have."""
        names = {f.name for f in dataclasses.fields(cls.Options)} if dataclasses.is_dataclass(cls.Options) else set()
        unknown = sorted(set(given) - names)
        if unknown:
            takes = ", ".join(sorted(names)) or "none"
            raise InputError(f"backend {cls.name} has no option {', '.join(unknown)} (its options: {takes})")
        return cls.Options(**given)

    @classmethod
    def capabilities(cls, device: str) -> list[str]:
        """What the device computes natively, as this backend reports it (e.g. ["FP32", "BF16", "INT8"])."""
        return []

    @classmethod
    def precision_candidates(
        cls, device: str, model_precision: Precision, capabilities: Sequence[str] = ()
    ) -> list[Precision]:
        """The precisions `--precision auto` measures, the reference (fp32) first. By default the model file
        fixes its precision and there is nothing to choose."""
        return [model_precision]

    @classmethod
    def bench_devices(cls) -> list[str]:
        """The devices `srkit bench --backend all` tries."""
        return cls.devices()

    @classmethod
    def bench_precisions(
        cls, device: str, info: ModelInfo, int8: Path | None, capabilities: set[str]
    ) -> list[tuple[str, Path | None]]:
        """(precision, model file: None = the fp32 model) pairs a benchmark runs on this device. By default the
        precision stored in the model, and the int8 sibling when there is one."""
        pairs: list[tuple[str, Path | None]] = [(info.precision.value, None)]
        return [*pairs, ("int8", int8)] if int8 else pairs

    @classmethod
    def bench_model(cls, model: Path, info: ModelInfo, given: Path | None = None, *, required: bool = False
                    ) -> Path | None:
        """The file this backend's bench rows run for the ONNX `model`: the model itself by default. A backend
        with its own format checks `given` or finds its export of the same network, and returns None when there
        is none (an InputError saying how to make one when `required`)."""
        if given is not None:
            raise InputError(f"backend {cls.name} runs the ONNX model itself; it takes no separate model file")
        return model

    @classmethod
    def peak_precision(cls, asked: str, ran: str) -> str:
        """The precision whose peak a bench row is compared with: the one asked for, by default (OpenVINO: the
        one it ran, e.g. int8 with bf16 float layers)."""
        return asked

    @classmethod
    def graph_call(
        cls, path: Path, x: np.ndarray, *, precision: str, device: str, threads: int | None
    ) -> Callable[[], object]:
        """A call that runs a plain ONNX graph (one input) on this backend, for the roofline's peak probes."""
        raise InputError(f"backend {cls.name} runs no plain ONNX graphs (no peak probe)")

    @classmethod
    def native_peak_calls(
        cls, precision: str, device: str, threads: int | None
    ) -> dict[str, tuple[Callable[[], object], float]] | None:
        """Peak probes of a backend that does not run ONNX graphs: name -> (call, FLOPs a call); None means
        the roofline's ONNX probes through `graph_call`."""
        return None

    @classmethod
    def splits_pipelines(cls, precision: Precision, model_precision: Precision) -> bool:
        """Whether this backend runs a pipeline graph in stages at this precision (to keep colour in fp32)."""
        return False

    def timed_call(self, x: np.ndarray) -> tuple[Callable[[], object], str] | None:
        """A model call for timing that keeps input and output on the device (None: the host call is it).
        `x` is padded to the size multiple. Backends whose device is not the host override this."""
        return None

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
        with self._activation_lock:  # two threads' first calls must not build two sessions
            if not self.active:
                start = time.perf_counter()
                try:
                    self._activate()
                except SrkitError:
                    raise
                except Exception as exc:  # the runtime refused the file: a user's model, not srkit's bug
                    first = " ".join(str(exc).split())[:240]
                    raise UnsupportedModelError(
                        f"{self.model_path}: {self.title} cannot load this model ({type(exc).__name__}: {first})"
                    ) from None
                self.compile_s = time.perf_counter() - start
                self._check_scale()
                self.active = True
        return self

    def _check_scale(self) -> None:
        """Run one small probe and compare the output size with srkit.scale: metadata that lies about the
        scale would otherwise give a silently cropped or padded picture. Networks that reflect-pad their
        input need a few dozen pixels (Real-CUGAN: 19-29), so a probe too small for the graph is retried
        larger before the model is called unloadable."""
        last: Exception | None = None
        for side in (8, 32, 64):
            probe = self.probe_input(side)
            try:
                out = self._infer(probe)
            except Exception as exc:  # the graph refused this size: try a larger one
                last = exc
                if self.info.static_shape:
                    break
                continue
            h, w = self.input_hw(probe)
            expected = (h * self.info.scale, w * self.info.scale)
            got = self.input_hw(out)
            if got != expected:
                raise UnsupportedModelError(
                    f"{self.model_path}: its metadata says x{self.info.scale}, but the graph turns a {h}x{w} "
                    f"input into {got[0]}x{got[1]}; re-export it with srkit export"
                )
            return
        first = " ".join(str(last).split())[:240]
        raise UnsupportedModelError(f"{self.model_path}: {self.title} cannot run this model ({first})")

    def probe_input(self, side: int = 8) -> np.ndarray:
        """A small input that still shows the model's scale (its static shape if it has one)."""
        m = max(1, self.info.size_multiple)
        h, w = self.info.static_shape or (m * max(1, side // m), m * max(1, side // m))
        if self.info.io == Io.TENSOR:
            return np.full((1, self.info.in_channels, h, w), 0.5, np.float32)
        dtype, channels = PIPELINE_INPUTS[self.info.io]
        return np.full((1, h, w, channels), 128, dtype)

    def input_hw(self, x: np.ndarray) -> tuple[int, int]:
        """(H, W) of a batch in this model's layout (NCHW tensors, NHWC pipeline images)."""
        return (int(x.shape[2]), int(x.shape[3])) if self.info.io == Io.TENSOR else (int(x.shape[1]), int(x.shape[2]))

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Tensor models: NCHW float32 in 0-1 -> NCHW float32 (scale x H, scale x W).
        Pipeline models (srkit.io rgb8...): NHWC uint8/uint16 -> NHWC of the same dtype, scaled."""
        self._check_input(x)
        if not self.active:
            self.activate()
        x = np.ascontiguousarray(x)
        try:
            if self.thread_safe:
                return self._infer(x)
            with self._call_lock:
                return self._infer(x)
        except SrkitError:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # the runtime refused this input (e.g. smaller than the model's own padding)
            h, w = self.input_hw(x)
            first = " ".join(str(exc).split())[:200]
            raise InputError(f"{self.model_path.name}: {self.title} failed on a {w}x{h} input ({first})") from None

    def _check_input(self, x: np.ndarray) -> None:
        if self.info.io == Io.TENSOR:
            if x.ndim != 4 or x.shape[1] != self.info.in_channels:
                raise InputError(f"model expects N x {self.info.in_channels} x H x W input, got {x.shape}")
            if x.dtype != np.float32:
                raise InputError(f"model input must be float32, got {x.dtype}")
            return
        dtype, channels = PIPELINE_INPUTS[self.info.io]
        if x.ndim != 4 or x.shape[3] != channels or x.dtype != dtype:
            raise InputError(f"this {self.info.io.value} model takes {np.dtype(dtype).name} N x H x W x {channels} "
                             f"images, got {x.dtype} {x.shape}")

    def close(self) -> None:
        if self.active:
            self._close()
            self.active = False

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.close()
