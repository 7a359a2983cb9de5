"""`srkit bench`: speed, memory and quality of one model per backend and precision (CONTRACT report schema)."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from srkit import __version__, imaging
from srkit.bench import metrics
from srkit.bench.dataset import RESIZE_KERNEL, Pair, load_pairs
from srkit.bench.timing import measure, peak_rss_mb
from srkit.errors import BackendUnavailableError, SrkitError
from srkit.meta import ModelInfo, read_model_info
from srkit.runtime import Upscaler, registry


@dataclass
class BenchConfig:
    model: Path
    backends: list[str]
    precision: str = "fp32"
    input_size: tuple[int, int] = (640, 360)  # W, H of the low-resolution input
    dataset: Path | None = None
    threads: int | None = None
    min_time_s: float = 2.0
    quality: bool = True


@dataclass
class BenchResult:
    backend: str
    device: str
    precision: str
    input_size: list[int]
    fps: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    e2e_fps: float | None = None
    compile_s: float | None = None
    peak_rss_mb: float | None = None
    psnr_y: float | None = None
    ssim_y: float | None = None
    bicubic_psnr_y: float | None = None
    parity_psnr_db: float | None = None
    parity_max_abs: float | None = None
    nan_count: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def size_for_output(info: ModelInfo, preset: str) -> tuple[int, int]:
    """`720p`/`1080p`/`4k` name the output size; `WxH` names the input size."""
    presets = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
    if preset.lower() in presets:
        w, h = presets[preset.lower()]
        return max(1, round(w / info.scale)), max(1, round(h / info.scale))
    try:
        w, h = (int(v) for v in preset.lower().split("x"))
    except ValueError:
        raise SrkitError(f"--size must be 720p, 1080p, 4k or WxH, not {preset!r}") from None
    if w <= 0 or h <= 0:
        raise SrkitError(f"--size {preset} must be positive")
    return w, h


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for module in ("onnxruntime", "openvino", "torch", "numpy"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:
            continue
    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
            "srkit": __version__, "versions": versions}


def benchmark_input(info: ModelInfo, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A real photo resized to the input size: (uint8 RGB image, NCHW float32 model input)."""
    from srkit.data import held_out_images

    w, h = size
    photo = imaging.to_float(held_out_images()["coffee"])
    rgb = imaging.from_float(imaging.resize_bicubic(photo, h, w), np.uint8)
    planes = imaging.to_float(rgb)
    planes = imaging.rgb_to_y(planes)[..., None] if info.in_channels == 1 else planes
    return rgb, np.ascontiguousarray(planes.transpose(2, 0, 1)[None], dtype=np.float32)


class Reference:
    """PyTorch fp32 outputs for parity, computed once per input."""

    def __init__(self, model: Path, threads: int | None) -> None:
        self.upscaler: Upscaler | None = None
        self.error: str | None = None
        try:
            self.upscaler = Upscaler(model, backend="torch", precision="fp32", threads=threads)
            self.upscaler.backend.activate()
        except SrkitError as exc:
            self.error = str(exc)
        self._cache: dict[int, np.ndarray] = {}

    def output(self, x: np.ndarray) -> np.ndarray | None:
        if self.upscaler is None:
            return None
        key = id(x)
        if key not in self._cache:
            self._cache[key] = self.upscaler.run_model(x)
        return self._cache[key]


def run_bench(config: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    info = read_model_info(config.model)
    size = config.input_size
    rgb, x = benchmark_input(info, size)
    pairs = load_pairs(info.scale, config.dataset) if config.quality else []
    reference = Reference(config.model, config.threads)
    results = []
    for name in config.backends:
        if progress:
            progress(name)
        results.append(asdict(bench_one(name, config, info, rgb, x, pairs, reference)))
    return {
        "model": {**info.to_json(), "path": str(config.model)},
        "machine": machine_info(),
        "settings": {"precision": config.precision, "input_size": list(size),
                     "output_size": [size[0] * info.scale, size[1] * info.scale], "threads": config.threads,
                     "resize_kernel": RESIZE_KERNEL, "min_time_s": config.min_time_s,
                     "dataset": str(config.dataset) if config.dataset else "built-in CC0 photos: "
                     + ", ".join(p.name for p in pairs),
                     "reference": "PyTorch fp32" if reference.upscaler else f"unavailable: {reference.error}"},
        "results": results,
    }


def bench_one(name: str, config: BenchConfig, info: ModelInfo, rgb: np.ndarray, x: np.ndarray,
              pairs: list[Pair], reference: Reference) -> BenchResult:
    result = BenchResult(backend=name, device="cpu", precision=config.precision, input_size=list(config.input_size))
    try:
        up = Upscaler(config.model, backend=name, precision=config.precision, threads=config.threads)
        up.backend.activate()
    except (SrkitError, RuntimeError) as exc:
        result.error = " ".join(str(exc).split())[:300]
        return result
    try:
        described = up.describe()
        result.device, result.precision = described.get("device", "cpu"), described.get("precision", result.precision)
        result.detail = described
        result.compile_s = round(up.backend.compile_s or 0.0, 3)
        out = up.run_model(x)
        result.nan_count = int((~np.isfinite(out)).sum())
        ref = reference.output(x)
        if ref is not None:
            p, m = metrics.parity(out, ref)
            result.parity_psnr_db = None if math.isinf(p) else round(p, 2)
            result.parity_max_abs = m if math.isinf(m) else float(f"{m:.3g}")
        call = measure(lambda: up.run_model(x), min_time_s=config.min_time_s)
        result.fps, result.latency_ms = round(call.fps, 2), {"p50": round(call.p50, 3), "p95": round(call.p95, 3)}
        e2e = measure(lambda: up.upscale(rgb), min_time_s=config.min_time_s, min_calls=5)
        result.e2e_fps = round(e2e.fps, 2)
        if pairs:
            quality(up, pairs, info.scale, result)
        result.peak_rss_mb = round(peak_rss_mb(), 1)
    except BackendUnavailableError as exc:
        result.error = str(exc)
    finally:
        up.close()
    return result


def quality(up: Upscaler, pairs: list[Pair], scale: int, result: BenchResult) -> None:
    psnrs, ssims, bicubic = [], [], []
    for pair in pairs:
        sr = up.upscale(pair.lr)
        psnrs.append(metrics.psnr_y(sr, pair.hr, scale))
        ssims.append(metrics.ssim_y(sr, pair.hr, scale))
        bicubic.append(metrics.psnr_y(imaging.upscale_uint8(pair.lr, scale), pair.hr, scale))
    result.psnr_y = round(float(np.mean(psnrs)), 3)
    result.ssim_y = round(float(np.mean(ssims)), 4)
    result.bicubic_psnr_y = round(float(np.mean(bicubic)), 3)


def resolve_backends(choice: str) -> list[str]:
    if choice == "all":
        return registry.available()
    return [choice]
