"""Native TensorRT backend (TensorRT 10/11 Python API).

Lower precision lives in the ONNX itself (fp16 weights/ops, or explicit Q/DQ for int8): TensorRT 11 removed
`BuilderFlag.FP16/INT8`, so the network is built *strongly typed* and runs the types the model declares.

Engines and timing caches are tied to the GPU model and the TensorRT version (docs/background.md 7), so both are
cached under a key of model sha256 + GPU name + compute capability + TensorRT version + optimization
profile, with a JSON sidecar that says what an engine was built for. A cached engine whose sidecar disagrees
with the current key is stale: it is rebuilt, or refused with a clear message when rebuilding is disabled
(`trt_rebuild=False`).

Everything that decides something (keys, profiles, sidecar validation, messages) is a pure function,
unit-tested without a GPU; only `TensorRTBackend._activate/_infer` touch TensorRT and CUDA.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from srkit import __version__
from srkit._fs import atomic_path, sha256_file
from srkit._optional import require
from srkit.errors import BackendUnavailableError, InputError
from srkit.meta import ModelInfo, Precision
from srkit.runtime.base import Backend

SIDECAR_FORMAT = 1
MIN_TRT_MAJOR = 10
# Without a tile size or a static shape, the profile covers frames up to 1080p (video), tuned for 720p.
DEFAULT_MAX_HW = (1088, 1920)
DEFAULT_OPT_HW = (720, 1280)
DEFAULT_WORKSPACE_BYTES = 2 << 30

Shape = tuple[int, int, int, int]


# ---- the optimization profile ---------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeProfile:
    """min/opt/max NCHW shapes of the model input, as TensorRT's optimization profile takes them."""

    min: Shape
    opt: Shape
    max: Shape

    def tag(self) -> str:
        """A short, file-name-safe name for this profile."""
        dims = "_".join("x".join(map(str, s)) for s in (self.min, self.opt, self.max))
        return hashlib.sha256(dims.encode()).hexdigest()[:10]

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: dict[str, list[int]]) -> ShapeProfile:
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))  # type: ignore[arg-type]


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def compute_profile(
    info: ModelInfo,
    *,
    tile: int | tuple[int, int] | None = None,
    max_hw: tuple[int, int] | None = None,
    opt_hw: tuple[int, int] | None = None,
    batch: int = 1,
) -> ShapeProfile:
    """The profile for the shapes the runtime will feed.

    - a model exported with a static shape: exactly that shape, batch 1;
    - with tiling (`tile` = the largest tile fed to the model, overlap included): every tile fits, and the
      full tile is the shape TensorRT tunes for (tiles are fixed-size; only small images differ);
    - otherwise up to `max_hw` (default 1080p, for video frames), tuned for `opt_hw`.
    H and W honour the model's size multiple (the runtime pads to it), so each bound is rounded up to it.
    """
    if batch < 1:
        raise InputError(f"TensorRT batch must be >= 1, got {batch}")
    c, m = info.in_channels, max(1, info.size_multiple)
    if info.static_shape:
        h, w = info.static_shape
        shape = (1, c, h, w)
        return ShapeProfile(shape, shape, shape)
    if tile is not None:
        th, tw = (tile, tile) if isinstance(tile, int) else tile
        if min(th, tw) < m:
            raise InputError(f"tile size {th}x{tw} is smaller than the model's size multiple {m}")
        hi: tuple[int, int] = (round_up(th, m), round_up(tw, m))
        opt: tuple[int, int] = hi
    else:
        hi = max_hw or DEFAULT_MAX_HW
        opt = opt_hw or (min(DEFAULT_OPT_HW[0], hi[0]), min(DEFAULT_OPT_HW[1], hi[1]))
    if any(v < 1 for v in (*hi, *opt)):
        raise InputError(f"TensorRT profile shapes must be positive, got max {hi} and opt {opt}")
    max_h, max_w = round_up(hi[0], m), round_up(hi[1], m)
    opt_h, opt_w = min(round_up(opt[0], m), max_h), min(round_up(opt[1], m), max_w)
    return ShapeProfile((1, c, m, m), (batch, c, opt_h, opt_w), (batch, c, max_h, max_w))


def check_in_profile(profile: ShapeProfile, shape: tuple[int, ...]) -> None:
    """Refuse, with what to do, an input the engine was not built for (TensorRT would fail less clearly)."""
    if len(shape) != 4 or any(
        not lo <= v <= hi for v, lo, hi in zip(shape, profile.min, profile.max, strict=True)
    ):
        lo = "x".join(map(str, profile.min))
        hi = "x".join(map(str, profile.max))
        raise InputError(
            f"input {'x'.join(map(str, shape))} is outside the TensorRT engine's profile ({lo} .. {hi}); "
            "use tiling (--tile) or build the engine for larger inputs (trt_max_shape=(H, W))"
        )


# ---- the cache key ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; any difference means the engine cannot be reused."""

    model_sha256: str
    gpu_name: str
    compute_capability: str
    trt_version: str
    profile: ShapeProfile
    precision: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["profile"] = self.profile.to_json()
        return data

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()


def engine_key(
    model_sha256: str, gpu: GpuIdentity, trt_version: str, profile: ShapeProfile, precision: Precision | str
) -> EngineKey:
    return EngineKey(
        model_sha256=model_sha256,
        gpu_name=gpu.name,
        compute_capability=gpu.sm,
        trt_version=trt_version,
        profile=profile,
        precision=Precision.parse(precision).value,
    )


@dataclass(frozen=True)
class CachePaths:
    engine: Path
    sidecar: Path
    timing_cache: Path


def cache_paths(cache_dir: Path, model_stem: str, key: EngineKey) -> CachePaths:
    """One engine per model and profile. GPU and TensorRT version live in the sidecar, not the name, so an
    engine left by another GPU or TensorRT is *found* and recognised as stale (then rebuilt or refused),
    instead of piling up beside the new one. The timing cache is model-independent: GPU + TensorRT only."""
    stem = f"{model_stem}-{key.model_sha256[:12]}-{key.profile.tag()}"
    gpu_tag = hashlib.sha256(
        f"{key.gpu_name}|{key.compute_capability}|{key.trt_version}".encode()
    ).hexdigest()
    return CachePaths(
        engine=cache_dir / f"{stem}.engine",
        sidecar=cache_dir / f"{stem}.engine.json",
        timing_cache=cache_dir / f"timing-{gpu_tag[:16]}.cache",
    )


def default_cache_dir() -> Path:
    root = os.environ.get("SRKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "srkit"
    )
    return Path(root) / "tensorrt"


file_sha256 = sha256_file  # the engine cache keys on the ONNX file's identity


# ---- the sidecar ------------------------------------------------------------------------------------
def sidecar_record(key: EngineKey, *, build_s: float, engine_sha256: str) -> dict[str, Any]:
    return {
        "format": SIDECAR_FORMAT,
        "key": key.to_json(),
        "digest": key.digest(),
        "engine_sha256": engine_sha256,
        "build_s": round(build_s, 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "srkit_version": __version__,
    }


_KEY_WORDS = {
    "model_sha256": "model sha256",
    "gpu_name": "GPU",
    "compute_capability": "compute capability",
    "trt_version": "TensorRT version",
    "profile": "optimization profile",
    "precision": "precision",
}


def stale_reasons(
    record: dict[str, Any] | None, key: EngineKey, engine_sha256: str | None = None
) -> list[str]:
    """Why a cached engine cannot serve `key` (empty: it can). `record` is the parsed sidecar or None."""
    if record is None:
        return ["it has no readable metadata sidecar"]
    if record.get("format") != SIDECAR_FORMAT:
        return [f"its sidecar format is {record.get('format')!r}, expected {SIDECAR_FORMAT}"]
    found = record.get("key")
    if not isinstance(found, dict):
        return ["its sidecar has no key"]
    expected = key.to_json()
    reasons = [
        f"{_KEY_WORDS[name]} {_short(found.get(name))} != {_short(want)}"
        for name, want in expected.items()
        if found.get(name) != want
    ]
    if not reasons and engine_sha256 is not None and record.get("engine_sha256") != engine_sha256:
        reasons.append("the engine file does not match its sidecar (modified or truncated)")
    return reasons


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(ch in "0123456789abcdef" for ch in value):
        return value[:12]
    if isinstance(value, dict):
        return " .. ".join("x".join(map(str, value.get(k, []))) for k in ("min", "max"))
    return str(value)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stale_engine_message(engine: Path, reasons: list[str]) -> str:
    return (
        f"the cached TensorRT engine {engine} is stale ({'; '.join(reasons)}) and rebuilding is disabled; "
        "allow rebuilding (trt_rebuild=True) or delete the file"
    )


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
        key = engine_key(
            file_sha256(self.model_path), self.gpu, trt.__version__, self.trt_profile, self.info.precision
        )
        folder = Path(self.options.specific.cache_dir or default_cache_dir())
        folder.mkdir(parents=True, exist_ok=True)
        paths = cache_paths(folder, self.model_path.stem, key)
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
        to_torch = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        if hasattr(trt.DataType, "BF16"):
            to_torch[trt.DataType.BF16] = torch.bfloat16
        self.in_dtype = to_torch[self.engine.get_tensor_dtype(self.input_name)]
        self.out_dtype = to_torch[self.engine.get_tensor_dtype(self.output_name)]
        self.stream = torch.cuda.Stream()
        self.engine_path = paths.engine

    def _cached_engine(self, paths: CachePaths, key: EngineKey) -> bytes | None:  # pragma: no cover - GPU
        if not paths.engine.is_file():
            return None
        data = paths.engine.read_bytes()
        reasons = stale_reasons(read_sidecar(paths.sidecar), key, hashlib.sha256(data).hexdigest())
        if not reasons:
            self.engine_source = "cache"
            return data
        if self.options.specific.trt_rebuild is False:
            raise BackendUnavailableError(stale_engine_message(paths.engine, reasons))
        return None

    def _build(self, trt: Any, paths: CachePaths, key: EngineKey) -> bytes:  # pragma: no cover - GPU
        start = time.perf_counter()
        builder = trt.Builder(self.logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(self.model_path)):
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
        with atomic_path(paths.engine) as tmp:
            tmp.write_bytes(data)
        record = sidecar_record(
            key, build_s=time.perf_counter() - start, engine_sha256=hashlib.sha256(data).hexdigest()
        )
        with atomic_path(paths.sidecar) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        with atomic_path(paths.timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        self.engine_source = "built"
        return data

    def probe_input(self, side: int = 8) -> np.ndarray:  # pragma: no cover - needs TensorRT and a GPU
        """The scale probe must lie inside the engine's optimization profile: its smallest shape."""
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
            result = dst.float().cpu()
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
