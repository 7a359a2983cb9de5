"""The TensorRT engine cache: optimisation profiles, cache keys, file names and the JSON sidecar.

Engines and timing caches are tied to the GPU model and the TensorRT version (docs/background.md 7), so both are
cached under a key of model sha256 + GPU name + compute capability + TensorRT version + optimization
profile, with a JSON sidecar that says what an engine was built for. A cached engine whose sidecar disagrees
with the current key is stale: it is rebuilt, or refused with a clear message when rebuilding is disabled
(`trt_rebuild=False`).

Everything here is pure (no TensorRT, no GPU) and unit-tested. Two users: the native TensorRT backend
(srkit/runtime/tensorrt.py) and ONNX Runtime's TensorRT execution provider (srkit/runtime/ort.py), which takes
its profile and cache folder from here rather than from another backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from srkit import __version__
from srkit._fs import atomic_path, sha256_file
from srkit.errors import BackendUnavailableError, InputError
from srkit.meta import Io, ModelInfo, Precision

SIDECAR_FORMAT = 1
# Without a tile size or a static shape, the profile covers frames up to 1080p (video), tuned for 720p.
DEFAULT_MAX_HW = (1088, 1920)
DEFAULT_OPT_HW = (720, 1280)

Shape = tuple[int, int, int, int]


# ---- the optimization profile ---------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeProfile:
    """min/opt/max shapes of the model input, as TensorRT's optimization profile takes them: NCHW for a tensor
    model, NHWC for a pipeline (uint8 images)."""

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
    A pipeline (`info.io` rgb8, gray8, y8) is profiled NHWC with its image channels, from its smallest side.
    """
    if batch < 1:
        raise InputError(f"TensorRT batch must be >= 1, got {batch}")
    if info.io != Io.TENSOR:
        return _pipeline_profile(info, tile=tile, max_hw=max_hw, opt_hw=opt_hw, batch=batch)
    c, m = info.in_channels, max(1, info.size_multiple)
    if info.static_shape:
        h, w = info.static_shape
        shape = (1, c, h, w)
        return ShapeProfile(shape, shape, shape)
    hi, opt = _profile_sides(tile, max_hw, opt_hw, m)
    max_h, max_w = round_up(hi[0], m), round_up(hi[1], m)
    opt_h, opt_w = min(round_up(opt[0], m), max_h), min(round_up(opt[1], m), max_w)
    return ShapeProfile((1, c, m, m), (batch, c, opt_h, opt_w), (batch, c, max_h, max_w))


def _profile_sides(tile: int | tuple[int, int] | None, max_hw: tuple[int, int] | None,
                   opt_hw: tuple[int, int] | None, multiple: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(largest, tuned-for) (H, W) before rounding to the size multiple."""
    if tile is not None:
        th, tw = (tile, tile) if isinstance(tile, int) else tile
        if min(th, tw) < multiple:
            raise InputError(f"tile size {th}x{tw} is smaller than the model's size multiple {multiple}")
        hi: tuple[int, int] = (th, tw)
        opt: tuple[int, int] = hi
    else:
        hi = max_hw or DEFAULT_MAX_HW
        opt = opt_hw or (min(DEFAULT_OPT_HW[0], hi[0]), min(DEFAULT_OPT_HW[1], hi[1]))
    if any(v < 1 for v in (*hi, *opt)):
        raise InputError(f"TensorRT profile shapes must be positive, got max {hi} and opt {opt}")
    return hi, opt


def _pipeline_profile(info: ModelInfo, *, tile: int | tuple[int, int] | None, max_hw: tuple[int, int] | None,
                      opt_hw: tuple[int, int] | None, batch: int) -> ShapeProfile:
    """A pipeline graph (srkit.pipeline) takes NHWC images and pads them to the size multiple itself, so its
    sides need no rounding; the smallest is what its reflection padding needs."""
    from srkit.pipeline import io_channels, min_side

    c = io_channels(info.io)
    if info.static_shape:
        h, w = info.static_shape
        shape = (1, h, w, c)
        return ShapeProfile(shape, shape, shape)
    (max_h, max_w), (opt_h, opt_w) = _profile_sides(tile, max_hw, opt_hw, min_side(info))
    low = min_side(info)
    return ShapeProfile((1, low, low, c), (batch, min(opt_h, max_h), min(opt_w, max_w), c), (batch, max_h, max_w, c))


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


# ---- reading and writing the cache ------------------------------------------------------------------
def cached_engine(paths: CachePaths, key: EngineKey, *, rebuild: bool) -> bytes | None:
    """The cached engine's bytes when its sidecar matches `key`; None when there is none or it is stale and may
    be rebuilt; a stale engine with rebuilding disabled is refused, with the reasons."""
    if not paths.engine.is_file():
        return None
    data = paths.engine.read_bytes()
    reasons = stale_reasons(read_sidecar(paths.sidecar), key, hashlib.sha256(data).hexdigest())
    if not reasons:
        return data
    if not rebuild:
        raise BackendUnavailableError(stale_engine_message(paths.engine, reasons))
    return None


def store_engine(paths: CachePaths, key: EngineKey, engine: bytes, *, build_s: float, timing_cache: bytes) -> None:
    """Write the engine, its sidecar and the timing cache, each atomically (the sidecar after the engine, so a
    sidecar never describes an engine that is not there)."""
    with atomic_path(paths.engine) as tmp:
        tmp.write_bytes(engine)
    record = sidecar_record(key, build_s=build_s, engine_sha256=hashlib.sha256(engine).hexdigest())
    with atomic_path(paths.sidecar) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    with atomic_path(paths.timing_cache) as tmp:
        tmp.write_bytes(timing_cache)
