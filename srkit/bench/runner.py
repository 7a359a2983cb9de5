"""`srkit bench`: speed, memory and quality of one model per backend and precision (CONTRACT report schema).

Each backend x precision ("variant") runs in its own fresh process (multiprocessing spawn), so its
`peak_rss_mb` is the peak resident memory of a process that loaded only that backend and ran only that
variant, not the cumulative high-water mark of everything benchmarked before it. The parent computes the
PyTorch fp32 reference once (also in its own process) and hands it to every variant for the parity numbers.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import platform
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from srkit import __version__, imaging
from srkit._system import cpu_flags, cpu_model
from srkit.bench import baselines, metrics
from srkit.bench.dataset import RESIZE_KERNEL, Pair, load_pairs
from srkit.bench.timing import measure, peak_rss_mb, rss_now_mb
from srkit.errors import BackendUnavailableError, InputError, SrkitError
from srkit.meta import DEFAULT_MAX_PSNR_DROP_DB, ModelInfo, Precision, judged_by_parity, read_model_info
from srkit.quality import PARITY_GATES_DB
from srkit.runtime import Upscaler, registry

# parity gates the recommendation and the bench suite apply (dB against PyTorch fp32)


@dataclass
class BenchConfig:
    model: Path
    backends: list[str]
    precision: str = "fp32"  # or "all": every precision each backend can run this model at
    input_size: tuple[int, int] = (640, 360)  # W, H of the low-resolution input
    dataset: Path | None = None
    threads: int | None = None
    min_time_s: float = 2.0
    quality: bool = True
    int8_model: Path | None = None  # a quantized sibling of `model`; found beside it when not given
    isolate: bool = True  # one spawned process per variant (honest per-variant peak RSS)
    roofline: bool = True  # measure the peak per backend/precision and report % of it
    peak_min_time_s: float = 0.5
    devices: list[str] | None = None  # None: every device each backend has here
    checkpoint: Path | None = None  # PyTorch weights of a model not bundled with srkit (torch rows, parity)
    # a model file per backend that runs its own format (`--ncnn-model`: {"ncnn": path}), instead of the one
    # its Backend.bench_model finds beside `model` (ncnn: STEM.param or STEM-xN.param of the same weights)
    backend_models: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    """One row of the report: a backend on a device at a precision, running one model file."""

    backend: str
    device: str
    precision: str
    model: Path

    @property
    def label(self) -> str:
        device = "" if self.device == "cpu" else f"/{self.device}"
        return f"{self.backend}{device} {self.precision}"


@dataclass
class BenchResult:
    backend: str
    device: str
    precision: str
    input_size: list[int]
    fps: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    e2e_fps: float | None = None
    e2e_latency_ms: dict[str, float] = field(default_factory=dict)
    e2e_path: str | None = None  # "pipeline" (colour and rounding in the graph) or "host" (numpy around it)
    e2e_ratio: float | None = None  # e2e_fps / fps: how close end to end gets to the model call
    e2e_host_fps: float | None = None  # the host path in the same run, when e2e went through the pipeline
    compile_s: float | None = None
    peak_rss_mb: float | None = None
    psnr_y: float | None = None
    ssim_y: float | None = None
    bicubic_psnr_y: float | None = None
    parity_psnr_db: float | None = None
    parity_max_abs: float | None = None
    nan_count: int = 0
    gflops: float | None = None  # GFLOP per model call, counted from the ONNX graph
    achieved_gflops: float | None = None
    peak_gflops: float | None = None  # measured in the same process on the same backend and precision
    pct_of_peak: float | None = None
    model_file: str = ""
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
        raise InputError(f"--size must be 720p, 1080p, 4k or WxH, not {preset!r}") from None
    if w <= 0 or h <= 0:
        raise InputError(f"--size {preset} must be positive")
    return w, h


def machine_info() -> dict[str, Any]:
    have = cpu_flags()
    cpu = cpu_model()
    flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in have]
    versions = {}
    for module in ("onnxruntime", "openvino", "torch", "numpy"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:
            continue
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_flags": flags,
        "load_avg": load,
        "os": platform.platform(),
        "python": platform.python_version(),
        "srkit": __version__,
        "versions": versions,
    }


def benchmark_input(info: ModelInfo, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A real photo resized to the input size: (uint8 RGB image, NCHW float32 model input)."""
    from srkit.data import held_out_images

    w, h = size
    photo = imaging.to_float(held_out_images()["coffee"])
    rgb = imaging.from_float(imaging.resize_bicubic(photo, h, w), np.uint8)
    planes = imaging.to_float(rgb)
    planes = imaging.rgb_to_y(planes)[..., None] if info.in_channels == 1 else planes
    return rgb, np.ascontiguousarray(planes.transpose(2, 0, 1)[None], dtype=np.float32)


# ---- which variants ------------------------------------------------------------------------------
def resolve_backends(choice: str) -> list[str]:
    if choice == "all":
        return registry.available()
    return [registry.ALIASES.get(choice, choice)]


def find_int8_model(model: Path, backend: str | None = None) -> Path | None:
    """A quantized sibling of an fp32 model: `srkit quantize` writes STEM-int8-BACKEND.onnx (one per backend,
    each calibrated for it); STEM-int8.onnx serves every backend."""
    stem = model.stem
    names = ([f"{stem}-int8-{backend}.onnx"] if backend else []) + [f"{stem}-int8.onnx", f"{stem}_int8.onnx"]
    for name in names:
        candidate = model.with_name(name)
        if candidate.is_file():
            return candidate
    return None


def backend_devices(backend: str) -> list[str]:
    """The compute devices worth benchmarking: the backend's own answer (`Backend.bench_devices`)."""
    try:
        return registry.backend_class(backend).bench_devices()
    except SrkitError:
        return []


def precisions_for(
    backend: str, device: str, info: ModelInfo, int8: Path | None, caps: set[str]
) -> list[tuple[str, Path | None]]:
    """(precision, model file: None = the fp32 model) pairs this backend runs on this device
    (`Backend.bench_precisions`)."""
    return registry.backend_class(backend).bench_precisions(device, info, int8, caps)


def plan_variants(config: BenchConfig, info: ModelInfo) -> list[Variant]:
    if config.int8_model is not None and not Path(config.int8_model).is_file():
        raise InputError(f"--int8-model {config.int8_model} not found")
    want_all = config.precision.lower() == "all"
    variants: list[Variant] = []
    for backend in config.backends:
        cls = registry.backend_class(backend)
        # a backend with its own format runs its export of the same network (ncnn: the .param), else the model
        base = cls.bench_model(config.model, info, _given_model(config, backend),
                               required=config.backends == [backend])
        if base is None:
            continue  # --backend all: no file in this backend's format, no rows for it
        int8 = None
        if base == config.model:
            int8 = Path(config.int8_model) if config.int8_model else find_int8_model(config.model, backend)
        devices = config.devices or backend_devices(backend) or ["cpu"]
        for device in devices:
            if not want_all:
                wanted = config.precision.lower()
                use_int8 = wanted == "int8" and int8 is not None and info.precision != Precision.INT8
                variants.append(Variant(backend, device, wanted, int8 if use_int8 and int8 else base))
                continue
            caps = set(cls.capabilities(device))
            for precision, model in precisions_for(backend, device, info, int8, caps):
                variants.append(Variant(backend, device, precision, model or base))
    return variants


def _given_model(config: BenchConfig, backend: str) -> Path | None:
    given = config.backend_models.get(backend)
    return Path(given) if given is not None else None


# ---- the reference -------------------------------------------------------------------------------
def reference_output(
    model: Path, x: np.ndarray, threads: int | None, checkpoint: Path | None = None
) -> tuple[np.ndarray | None, str | None]:
    """The reference backend's fp32 output on x (PyTorch eager), or (None, why not)."""
    try:
        with Upscaler(model, backend=registry.reference(), precision="fp32", threads=threads,
                      checkpoint=checkpoint) as up:
            return up.run_model(x), None
    except SrkitError as exc:
        return None, str(exc)


def _in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn(*args) in a new spawned interpreter (no memory or threads inherited from this one)."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


# ---- the run -------------------------------------------------------------------------------------
def run_bench(config: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    info = read_model_info(config.model)
    size = config.input_size
    rgb, x = benchmark_input(info, size)
    pairs = load_pairs(info.scale, config.dataset) if config.quality else []
    variants = plan_variants(config, info)
    # the rows that run a backend's own format (ncnn's .param) rather than the ONNX model or its int8 sibling
    own_models = {v.backend: v.model for v in variants if v.model.suffix.lower() != ".onnx"}
    machine = machine_info()  # the load average as the run starts; the end's is added below
    if progress:
        progress(f"{registry.reference()} fp32 reference")
    if config.isolate:
        try:
            ref, ref_error = _in_fresh_process(
                reference_output, config.model, x, config.threads, config.checkpoint
            )
        except BrokenProcessPool:
            ref, ref_error = None, "the PyTorch process died (crash or out of memory)"
    else:
        ref, ref_error = reference_output(config.model, x, config.threads, config.checkpoint)
    results = []
    for variant in variants:
        if progress:
            progress(variant.label)
        if config.isolate:
            try:
                result = _in_fresh_process(bench_variant, variant, config, rgb, x, pairs, ref)
            except BrokenProcessPool:  # the backend crashed its process (or ran out of memory)
                result = asdict(
                    BenchResult(
                        variant.backend,
                        variant.device,
                        variant.precision,
                        list(size),
                        error="the benchmark process died (crash or out of memory)",
                    )
                )
        else:
            result = bench_variant(variant, config, rgb, x, pairs, ref)
        results.append(result)
    padded_hw = imaging.pad_to_multiple(x, info.size_multiple)[0].shape[2:]
    return {
        "model": {**info.to_json(), "path": str(config.model)},
        "machine": {**machine, "load_avg_end": machine_info()["load_avg"]},
        "settings": {
            "precision": config.precision,
            "input_size": list(size),
            "padded_input_hw": list(padded_hw),
            "output_size": [size[0] * info.scale, size[1] * info.scale],
            "threads": config.threads,
            "resize_kernel": RESIZE_KERNEL,
            "min_time_s": config.min_time_s,
            "isolated_processes": config.isolate,
            "int8_models": sorted({str(v.model) for v in variants
                                   if v.model != config.model and v.model != own_models.get(v.backend)}),
            "backend_models": {name: str(path) for name, path in own_models.items()},
            "dataset": str(config.dataset)
            if config.dataset
            else "built-in CC0 photos: " + ", ".join(p.name for p in pairs),
            "reference": "PyTorch fp32" if ref is not None else f"unavailable: {ref_error}",
            "parity_gates_db": PARITY_GATES_DB,
            # model-independent: the classical upscalers on the same pairs, under the same convention
            "baselines_psnr_y": baselines.baseline_psnr_y(((p.lr, p.hr) for p in pairs), info.scale)
            if pairs else None,
            # a PSNR-trained model's reduced precisions must also keep their PSNR-Y within this of fp32
            "max_psnr_drop_db": None if judged_by_parity(info) else DEFAULT_MAX_PSNR_DROP_DB,
        },
        "results": results,
    }


def bench_variant(
    variant: Variant,
    config: BenchConfig,
    rgb: np.ndarray,
    x: np.ndarray,
    pairs: list[Pair],
    ref: np.ndarray | None,
) -> dict[str, Any]:
    """One report row as a JSON-ready dict (module level so a spawned process can run it)."""
    info = read_model_info(variant.model)
    result = BenchResult(
        backend=variant.backend,
        device=variant.device,
        precision=variant.precision,
        input_size=list(config.input_size),
        model_file=str(variant.model),
    )
    rss_before = rss_now_mb()
    try:
        up = Upscaler(
            variant.model,
            backend=variant.backend,
            device=variant.device,
            precision=variant.precision,
            threads=config.threads,
            checkpoint=config.checkpoint if registry.backend_class(variant.backend).is_reference else None,
        )
        up.backend.activate()
    except (SrkitError, RuntimeError) as exc:
        result.error = " ".join(str(exc).split())[:300]
        return asdict(result)
    try:
        run(up, result, config, rgb, x, pairs, ref)
        if config.roofline:
            add_roofline(result, variant, info, x, config)
        result.peak_rss_mb = round(peak_rss_mb(), 1)
        result.detail["rss_before_backend_mb"] = round(rss_before, 1)
    except (BackendUnavailableError, InputError, RuntimeError) as exc:
        result.error = " ".join(str(exc).split())[:300]
    finally:
        up.close()
    return asdict(result)


def run(
    up: Upscaler,
    result: BenchResult,
    config: BenchConfig,
    rgb: np.ndarray,
    x: np.ndarray,
    pairs: list[Pair],
    ref: np.ndarray | None,
) -> None:
    described = up.describe()
    result.device, result.precision = (
        described.get("device", result.device),
        described.get("precision", result.precision),
    )
    result.detail = dict(described)
    result.compile_s = round(up.backend.compile_s or 0.0, 3)
    out = up.run_model(x)  # also the first warm-up call at this shape
    result.nan_count = int((~np.isfinite(out)).sum())
    if ref is not None:
        p, m = metrics.parity(out, ref)
        # identical outputs (PSNR +inf) and non-finite ones (-inf, counted in nan_count) both become null,
        # which strict JSON can hold; parity_identical tells the two apart
        result.parity_psnr_db = None if math.isinf(p) else round(p, 2)
        result.parity_max_abs = None if math.isinf(m) else float(f"{m:.3g}")
        result.detail["parity_identical"] = m == 0.0
    call, how = model_call(up, x)
    result.detail["timing"] = how
    timed = measure(call, min_time_s=config.min_time_s)
    result.fps = round(timed.fps, 2)
    result.latency_ms = {"p50": round(timed.p50, 3), "p95": round(timed.p95, 3)}
    result.detail["calls"] = len(timed.samples_ms)
    e2e = measure(lambda: up.upscale(rgb), warmup=1, min_time_s=config.min_time_s, min_calls=5)
    result.e2e_fps = round(e2e.fps, 2)
    result.e2e_latency_ms = {"p50": round(e2e.p50, 3), "p95": round(e2e.p95, 3)}
    result.e2e_path = up.route(rgb)
    result.e2e_ratio = round(e2e.fps / timed.fps, 3) if timed.fps else None
    if result.e2e_path == "pipeline":
        host = measure(lambda: up.upscale(rgb, pipeline=False), warmup=1, min_time_s=config.min_time_s,
                       min_calls=5)
        result.e2e_host_fps = round(host.fps, 2)
    if pairs:
        quality(up, pairs, up.info.scale, result)


def model_call(up: Upscaler, x: np.ndarray) -> tuple[Callable[[], object], str]:
    """The timed model call: the backend's on-device call where it has one (`Backend.timed_call`: on a GPU,
    input and output stay on the device and the device is synchronised), else the host call."""
    padded, _ = imaging.pad_to_multiple(x, up.info.size_multiple)
    on_device = up.backend.timed_call(np.ascontiguousarray(padded, dtype=np.float32))
    if on_device is not None:
        return on_device
    return (lambda: up.run_model(x)), "host arrays in and out (Upscaler.run_model)"


def add_roofline(
    result: BenchResult, variant: Variant, info: ModelInfo, x: np.ndarray, config: BenchConfig
) -> None:
    from srkit.bench.roofline import count_flops, measure_peak, roofline

    hw = imaging.pad_to_multiple(x, info.size_multiple)[0].shape[2:]
    # an ncnn row runs the same network as the ONNX model: its FLOPs are counted on the ONNX graph
    counted = variant.model if variant.model.suffix.lower() == ".onnx" else config.model
    count = count_flops(counted, (int(hw[0]), int(hw[1])))
    precision = registry.backend_class(variant.backend).peak_precision(variant.precision, result.precision)
    try:
        peak = measure_peak(
            variant.backend,
            precision,
            device=variant.device,
            threads=config.threads,
            min_time_s=config.peak_min_time_s,
        )
    except (SrkitError, RuntimeError) as exc:  # e.g. no probe for this backend: the count still stands
        peak = None
        result.detail["peak_error"] = " ".join(str(exc).split())[:200]
    for key, value in roofline(count.total, result.fps, peak).items():
        setattr(result, key, value)
    result.detail["flops"] = {
        "conv_gflops": round(count.conv / 1e9, 3),
        "minor_gflops": round(count.minor / 1e9, 3),
        "uncounted_nodes": count.unknown[:10],
    }
    if peak:
        result.detail["peak"] = peak.to_json()


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



