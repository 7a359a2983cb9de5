"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers, chosen explicitly (no silent fallback)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from srkit._optional import require
from srkit.errors import BackendUnavailableError, InputError
from srkit.meta import Io, ModelInfo, Precision
from srkit.pipeline import INPUT_NAME as PIPELINE_INPUT
from srkit.pipeline import Rounding
from srkit.runtime.base import Backend

ORT_DTYPES: dict[str, type] = {"tensor(float16)": np.float16, "tensor(float)": np.float32,
                               "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16}

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


@dataclass
class OrtOptions:
    """ONNX Runtime's own options (the TensorRT execution provider's; CPU and CUDA take none)."""

    cache_dir: str | Path | None = None  # TensorRT EP: engines and timing caches
    trt_max_shape: tuple[int, int] | None = None  # TensorRT EP: the largest (H, W) the engine's profile takes
    trt_opt_shape: tuple[int, int] | None = None  # TensorRT EP: the (H, W) it is tuned for


def provider_options(
    device: str, info: ModelInfo, options: OrtOptions | None = None, *, tile_shape: object = None,
    input_name: str = "input",
) -> dict[str, Any]:
    """Execution provider options, each set on purpose (ORT's defaults suit neither SR nor tiles)."""
    options = options or OrtOptions()
    if device == "cuda":
        # EXHAUSTIVE (the default) re-benchmarks cuDNN algorithms for every new shape (onnxruntime #11688)
        return {"cudnn_conv_algo_search": "HEURISTIC"}
    if device == "tensorrt":
        from srkit.runtime.trt_cache import compute_profile, default_cache_dir

        cache = str(Path(options.cache_dir or default_cache_dir()) / "ort-trt")
        profile = compute_profile(info, tile=tile_shape if isinstance(tile_shape, int | tuple) else None,
                                  max_hw=options.trt_max_shape, opt_hw=options.trt_opt_shape)
        shape = lambda dims: f"{input_name}:{'x'.join(map(str, dims))}"  # noqa: E731
        return {
            # an fp16 model: let TensorRT pick fp16 kernels for it (an fp32 model keeps fp32 numbers)
            "trt_fp16_enable": info.precision == Precision.FP16,
            # engines take seconds to minutes to build: cache them, and the kernel timings, on disk
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
            # one explicit profile, so a new tile or frame size does not trigger an engine rebuild
            "trt_profile_min_shapes": shape(profile.min),
            "trt_profile_opt_shapes": shape(profile.opt),
            "trt_profile_max_shapes": shape(profile.max),
        }
    return {}


def session_options(threads: int | None) -> Any:
    """The SessionOptions of every srkit session (runtime, peak probe, calibration): all graph optimisations,
    the thread count asked for, ORT's own log quiet."""
    ort = require("onnxruntime", extra="ort")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 4  # errors reach srkit as exceptions; ORT printing them too would be a second line
    # ORT's threads spin after each run by default; an Upscaler holds several sessions (the model, its
    # pipelines) and the video path runs a decoder and an encoder beside it, so spinning threads would take
    # the cores the next call needs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OrtBackend(Backend):
    name = "ort"
    title = "ONNX Runtime"
    module_name = "onnxruntime"
    Options = OrtOptions
    thread_safe = True  # InferenceSession.run may be called from several threads at once
    runs_pipelines = True
    judged_by_peak = True
    # one QuantizeLinear instead of Mul, Round, Clip, Cast: 3-4x less time for that step on the CPU EP
    pipeline_rounding = Rounding.QUANTIZE

    @classmethod
    def devices(cls) -> list[str]:
        ort = require("onnxruntime", extra="ort")
        have = set(ort.get_available_providers())
        return [device for device, provider in PROVIDERS.items() if provider in have]

    @classmethod
    def bench_devices(cls) -> list[str]:
        return [d for d in cls.devices() if d in ("cpu", "cuda")]  # TensorRT EP: explicit runs only

    @classmethod
    def graph_call(
        cls, path: Path, x: np.ndarray, *, precision: str, device: str, threads: int | None
    ) -> Callable[[], object]:
        """ONNX Runtime runs the precision stored in the graph; on CUDA the input and output stay on the GPU."""
        ort = require("onnxruntime", extra="ort")
        provider = PROVIDERS.get(device, device)
        session = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=[provider])
        name = session.get_inputs()[0].name
        if device != "cuda":
            return lambda: session.run(None, {name: x})
        binding = session.io_binding()
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        binding.bind_output(session.get_outputs()[0].name, "cuda", 0)

        def run_bound() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return run_bound

    def timed_call(self, x: np.ndarray) -> tuple[Callable[[], object], str] | None:
        """On CUDA: IO binding, input and output stay on the GPU and the call is synchronised."""
        if self.provider != PROVIDERS["cuda"]:
            return None
        ort = require("onnxruntime", extra="ort")
        x_dev = ort.OrtValue.ortvalue_from_numpy(x.astype(self.input_dtype, copy=False), "cuda", 0)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, x_dev)
        binding.bind_output(self.session.get_outputs()[0].name, "cuda", 0)

        def bound() -> None:
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return bound, "ORT IO binding, input and output on the GPU, synchronised"

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
        # the profile names the graph's input: srkit's tensor models take "input", its pipelines "image"
        input_name = "input" if self.info.io == Io.TENSOR else PIPELINE_INPUT
        return provider, provider_options(device, self.info, self.options.specific,
                                          tile_shape=self.options.tile_shape, input_name=input_name)

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
        so = session_options(self.options.threads)
        provider, options = self._provider()
        providers: list[tuple[str, dict[str, Any]]] = [(provider, options)]
        if provider == PROVIDERS["tensorrt"]:
            Path(options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
            if PROVIDERS["cuda"] in ort.get_available_providers():
                # nodes TensorRT cannot take run on CUDA (ORT partitions the graph), not on the CPU
                providers.append((PROVIDERS["cuda"], provider_options("cuda", self.info)))
        source = self.graph if self.graph is not None else str(self.model_path)
        self.session = ort.InferenceSession(source, sess_options=so, providers=providers)
        if self.session.get_providers()[0] != provider:  # ORT falls back quietly when a GPU EP cannot load
            raise BackendUnavailableError(
                f"ONNX Runtime could not start {provider} (its libraries failed to load) and would run on "
                f"{', '.join(self.session.get_providers())}; check the CUDA/TensorRT installation"
            )
        self.input_name = self.session.get_inputs()[0].name
        # an `--fp16-io` model takes float16, a pipeline model uint8/uint16, everything else float32
        self.input_dtype = ORT_DTYPES.get(self.session.get_inputs()[0].type, np.float32)
        self.provider = provider

    def _infer(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})[0]
        return np.asarray(out, dtype=np.float32) if self.info.io == Io.TENSOR else np.asarray(out)

    def _close(self) -> None:
        del self.session

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "provider": getattr(self, "provider", None),
                "precision": self.info.precision.value}
