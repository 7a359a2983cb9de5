"""Native TensorRT backend (TensorRT 10/11 Python API).

Lower precision lives in the ONNX itself (fp16 weights/ops, or explicit Q/DQ for int8): TensorRT 11 removed
`BuilderFlag.FP16/INT8`, so the network is built *strongly typed* and runs the types the model declares.

Engines and timing caches are cached on disk by srkit.runtime.trt_cache (keys, profiles, sidecars). Everything
that decides something is a pure function, unit-tested without a GPU; only `TensorRTBackend._activate/_infer`
touch TensorRT and CUDA.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from srkit._optional import require
from srkit.errors import BackendUnavailableError, InputError
from srkit.meta import Io, Precision
from srkit.runtime.base import Backend
from srkit.runtime.trt_cache import (
    CachePaths,
    EngineKey,
    GpuIdentity,
    ShapeProfile,
    cache_paths,
    cached_engine,
    check_in_profile,
    compute_profile,
    default_cache_dir,
    engine_key,
    file_sha256,
    store_engine,
)

MIN_TRT_MAJOR = 10
DEFAULT_WORKSPACE_BYTES = 2 << 30


def check_trt_version(version: str) -> None:
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise BackendUnavailableError(f"cannot read the TensorRT version {version!r}") from None
    if major < MIN_TRT_MAJOR:
        raise BackendUnavailableError(
            f"TensorRT {version} is too old: srkit needs TensorRT {MIN_TRT_MAJOR} or newer; "
            "pip install 'srkit[trt]'"
        )


def check_device(device: str) -> int:
    """'cuda' or 'cuda:N' -> N. TensorRT runs on NVIDIA GPUs only: say so instead of falling back."""
    name = device.lower()
    if name in ("cuda", "gpu", "trt", "tensorrt"):
        return 0
    if name.startswith("cuda:") and name[5:].isdigit():
        return int(name[5:])
    raise BackendUnavailableError(
        f"the TensorRT backend runs on a CUDA GPU (--device cuda or cuda:N), not {device!r}; "
        "for the CPU use --backend openvino or ort"
    )


def check_precision(wanted: Precision, model: Precision) -> None:
    if wanted not in (model, Precision.AUTO):
        raise InputError(
            f"this model is {model.value}; a strongly typed TensorRT network runs the precision stored in "
            f"the model, so export or quantize a {wanted.value} model for --precision {wanted.value}"
        )


def parse_errors(parser: Any) -> str:
    return "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "unknown parser error"


# ---- the backend ------------------------------------------------------------------------------------
@dataclass
class TensorRTOptions:
    cache_dir: str | Path | None = None  # engines, their sidecars and the timing cache
    trt_max_shape: tuple[int, int] | None = None  # the largest (H, W) the optimisation profile takes
    trt_opt_shape: tuple[int, int] | None = None  # the (H, W) it is tuned for
    trt_rebuild: bool = True  # rebuild a stale cached engine (False: refuse it and say why)
    workspace: int = DEFAULT_WORKSPACE_BYTES  # the builder's workspace memory pool


class TensorRTBackend(Backend):
    name = "trt"
    title = "TensorRT"
    module_name = "tensorrt"
    Options = TensorRTOptions
    # The portable pipeline form (srkit.pipeline.Rounding.PORTABLE, no phase-space tail): uint8 is read and
    # written by a Cast at the network's ends only, as TensorRT requires; no uint16 in TensorRT, so no rgb16.
    runs_pipelines = True
    pipeline_phase_form = None
    pipeline_ios = frozenset({Io.RGB8, Io.GRAY8, Io.Y8})

    @classmethod
    def devices(cls) -> list[str]:
        from srkit._optional import is_available

        if not cls.is_available() or not is_available("torch"):
            return []
        import torch

        return [f"cuda:{i}" if i else "cuda" for i in range(torch.cuda.device_count())]

    def profile(self) -> ShapeProfile:
        """The optimisation profile: from the Upscaler's tile and the options' shapes."""
        tile = self.options.tile_shape
        return compute_profile(
            self.info,
            tile=tile if isinstance(tile, int | tuple) else None,
            max_hw=self.options.specific.trt_max_shape,
            opt_hw=self.options.specific.trt_opt_shape,
        )

    def _activate(self) -> None:  # pragma: no cover - needs TensorRT and a GPU
        trt = require("tensorrt", extra="trt")
        check_trt_version(trt.__version__)
        check_precision(self.options.precision, self.info.precision)
        index = check_device(self.options.device)
        torch = require("torch", extra="trt", purpose="CUDA buffers for TensorRT")
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise BackendUnavailableError(
                f"TensorRT needs a CUDA GPU; PyTorch sees {torch.cuda.device_count()} "
                f"(device {self.options.device})"
            )
        torch.cuda.set_device(index)
        self.torch = torch
        self.gpu = GpuIdentity(
            torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index))
        )
        self.trt_profile = self.profile()
        key = engine_key(self.source_sha256(), self.gpu, trt.__version__, self.trt_profile, self.info.precision)
        folder = Path(self.options.specific.cache_dir or default_cache_dir())
        folder.mkdir(parents=True, exist_ok=True)
        paths = cache_paths(folder, self.cache_stem(), key)
        self.logger = trt.Logger(trt.Logger.WARNING)
        engine_bytes = self._cached_engine(paths, key) or self._build(trt, paths, key)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise BackendUnavailableError(
                f"TensorRT could not deserialize {paths.engine}; delete it to rebuild"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_name, self.output_name = inputs[0], outputs[0]
        to_torch = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                    trt.DataType.UINT8: torch.uint8}
        if hasattr(trt.DataType, "BF16"):
            to_torch[trt.DataType.BF16] = torch.bfloat16
        self.in_dtype = to_torch[self.engine.get_tensor_dtype(self.input_name)]
        self.out_dtype = to_torch[self.engine.get_tensor_dtype(self.output_name)]
        self.stream = torch.cuda.Stream()
        self.engine_path = paths.engine

    def _cached_engine(self, paths: CachePaths, key: EngineKey) -> bytes | None:  # pragma: no cover - GPU
        data = cached_engine(paths, key, rebuild=self.options.specific.trt_rebuild is not False)
        if data is not None:
            self.engine_source = "cache"
        return data

    def _build(self, trt: Any, paths: CachePaths, key: EngineKey) -> bytes:  # pragma: no cover - GPU
        start = time.perf_counter()
        builder = trt.Builder(self.logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, self.logger)
        parsed = parser.parse(self.graph) if self.graph is not None else parser.parse_from_file(str(self.model_path))
        if not parsed:
            raise InputError(f"TensorRT cannot parse {self.model_path}: {parse_errors(parser)}")
        config = builder.create_builder_config()
        workspace = int(self.options.specific.workspace)
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        profile = builder.create_optimization_profile()
        p = key.profile
        profile.set_shape(network.get_input(0).name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
        timing_bytes = paths.timing_cache.read_bytes() if paths.timing_cache.is_file() else b""
        timing = config.create_timing_cache(timing_bytes)
        config.set_timing_cache(timing, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendUnavailableError(
                f"TensorRT failed to build an engine for {self.model_path} (see its log)"
            )
        data = bytes(serialized)
        store_engine(paths, key, data, build_s=time.perf_counter() - start,
                     timing_cache=bytes(config.get_timing_cache().serialize()))
        self.engine_source = "built"
        return data

    def source_sha256(self) -> str:
        """What the engine is built from: the composed pipeline graph when there is one, else the file."""
        return hashlib.sha256(self.graph).hexdigest() if self.graph is not None else file_sha256(self.model_path)

    def cache_stem(self) -> str:
        """The engine's file name stem: the model's, and the pipeline kind for a composed pipeline."""
        return self.model_path.stem if self.graph is None else f"{self.model_path.stem}-{self.info.io.value}"

    def probe_input(self, side: int = 8) -> np.ndarray:  # pragma: no cover - needs TensorRT and a GPU
        """The scale probe must lie inside the engine's optimization profile: its smallest shape."""
        if self.info.io != Io.TENSOR:
            return np.full(self.trt_profile.min, 128, np.uint8)
        return np.full(self.trt_profile.min, 0.5, np.float32)

    def _infer(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - needs TensorRT and a GPU
        torch = self.torch
        check_in_profile(self.trt_profile, x.shape)
        with torch.cuda.stream(self.stream):
            src = torch.from_numpy(x).to("cuda", non_blocking=True).to(self.in_dtype).contiguous()
            self.context.set_input_shape(self.input_name, tuple(src.shape))
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            dst = torch.empty(out_shape, dtype=self.out_dtype, device="cuda")
            self.context.set_tensor_address(self.input_name, src.data_ptr())
            self.context.set_tensor_address(self.output_name, dst.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendUnavailableError("TensorRT execution failed (see its log)")
            # a pipeline's uint8 image comes back as it is; a tensor model's output as float32
            result = dst.cpu() if self.info.io != Io.TENSOR else dst.float().cpu()
        self.stream.synchronize()
        return result.numpy()

    def _close(self) -> None:  # pragma: no cover - needs TensorRT and a GPU
        del self.context, self.engine, self.runtime

    def describe(self) -> dict[str, Any]:
        gpu = getattr(self, "gpu", None)
        return {
            **super().describe(),
            "precision": self.info.precision.value,
            "gpu": gpu.name if gpu else None,
            "engine": str(getattr(self, "engine_path", "")) or None,
            "engine_source": getattr(self, "engine_source", None),
        }
