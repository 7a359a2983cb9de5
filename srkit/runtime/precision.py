"""`--precision auto`: the fastest precision whose output stays within 40 dB PSNR of fp32, measured.

Which precisions are *candidates* depends on the backend and the device (OpenVINO on a CPU with AVX512-BF16
or AMX can run bf16; on a GPU f16; ONNX Runtime and strongly typed TensorRT run the precision stored in the
model, so they have no choice to make). Each candidate is then *measured* on real photo crops when the
backend is activated: speed against fp32, and parity (PSNR against the fp32 output). The decision itself is
a pure function of those numbers (`choose`), and the result is cached per model + backend + device for the
process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from srkit import imaging
from srkit.errors import InputError
from srkit.meta import Color, ModelInfo, Precision
from srkit.quality import FLOAT_GATE_DB, parity
from srkit.runtime.base import Backend, BackendOptions

# a candidate must beat fp32 by this factor: on a busy machine smaller differences are timing noise
MIN_SPEEDUP = 1.10
CROP = 96  # low-resolution pixels per side of each measurement crop
MIN_CALLS, MAX_CALLS, TIME_BUDGET_S = 3, 9, 0.5


@dataclass(frozen=True)
class Trial:
    precision: Precision
    seconds: float  # median seconds per model call
    parity_db: float  # PSNR against the fp32 output (inf for fp32 itself)
    finite: bool = True
    error: str | None = None  # why it could not run (the backend or device refused it)


@dataclass(frozen=True)
class PrecisionChoice:
    chosen: Precision
    trials: tuple[Trial, ...]
    reason: str
    gate_db: float = FLOAT_GATE_DB

    def summary(self) -> str:
        return f"precision auto -> {self.chosen.value}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen.value,
            "reason": self.reason,
            "gate_db": self.gate_db,
            "trials": [
                {
                    "precision": t.precision.value,
                    "ms": round(t.seconds * 1000, 3),
                    "parity_db": None if t.parity_db == float("inf") else round(t.parity_db, 2),
                    "finite": t.finite,
                    "error": t.error,
                }
                for t in self.trials
            ],
        }


# ---- the pure parts -------------------------------------------------------------------------------
def candidates(
    backend: str, device: str, model_precision: Precision, capabilities: Sequence[str] = ()
) -> list[Precision]:
    """The precisions worth measuring, fp32 (the reference) first: the backend's own answer
    (`Backend.precision_candidates`). `capabilities`: what the device says it computes natively."""
    from srkit.runtime import registry

    return registry.backend_class(backend).precision_candidates(device, model_precision, capabilities)


def choose(
    trials: Sequence[Trial], *, gate_db: float = FLOAT_GATE_DB, min_speedup: float = MIN_SPEEDUP
) -> PrecisionChoice:
    """The fastest trial that ran, produced finite output and kept parity >= gate_db; fp32 unless another is
    at least `min_speedup` times faster."""
    if not trials:
        raise InputError("no precision could be measured")
    reference = trials[0]
    if len(trials) == 1:
        return PrecisionChoice(
            reference.precision, tuple(trials), "the only precision this backend runs for this model", gate_db
        )
    if reference.error or reference.precision != Precision.FP32:
        raise InputError(f"precision auto needs an fp32 reference run ({reference.error or 'none'})")
    ok = [
        t
        for t in trials[1:]
        if t.error is None
        and t.finite
        and t.parity_db >= gate_db
        and t.seconds * min_speedup <= reference.seconds
    ]
    if not ok:
        rejected = "; ".join(_why_not(t, reference, gate_db, min_speedup) for t in trials[1:])
        return PrecisionChoice(Precision.FP32, tuple(trials), f"fp32 kept ({rejected})", gate_db)
    best = min(ok, key=lambda t: t.seconds)
    reason = (
        f"{reference.seconds / best.seconds:.2f}x the speed of fp32, parity {best.parity_db:.1f} dB "
        f">= {gate_db:g} dB"
    )
    return PrecisionChoice(best.precision, tuple(trials), reason, gate_db)


def _why_not(t: Trial, ref: Trial, gate_db: float, min_speedup: float) -> str:
    name = t.precision.value
    if t.error:
        return f"{name} unavailable: {t.error}"
    if not t.finite:
        return f"{name} gave non-finite output"
    if t.parity_db < gate_db:
        return f"{name} parity {t.parity_db:.1f} dB < {gate_db:g} dB"
    return f"{name} only {ref.seconds / t.seconds:.2f}x the speed of fp32 (needs {min_speedup:.2f}x)"


# ---- measuring -------------------------------------------------------------------------------------
def measurement_inputs(info: ModelInfo, side: int = CROP) -> list[np.ndarray]:
    """NCHW float32 crops of two bundled CC0 photos, in the model's colour convention and size."""
    from srkit.data import held_out_images, sample_image_path
    from srkit.imageio import read_image

    photos = [read_image(sample_image_path()), next(iter(held_out_images().values()))]
    m = max(1, info.size_multiple)
    h, w = info.static_shape or (side - side % m or m, side - side % m or m)
    crops = []
    for photo in photos:
        rgb = imaging.to_float(photo[..., :3] if photo.ndim == 3 else np.repeat(photo[..., None], 3, 2))
        top, left = max(0, (rgb.shape[0] - h) // 2), max(0, (rgb.shape[1] - w) // 2)
        crop = rgb[top : top + h, left : left + w]
        if crop.shape[:2] != (h, w):  # a static shape larger than the photo: reflect-pad up to it
            crop = np.pad(crop, ((0, h - crop.shape[0]), (0, w - crop.shape[1]), (0, 0)), mode="reflect")
        planes = imaging.rgb_to_y(crop)[..., None] if info.color == Color.Y else crop
        crops.append(np.ascontiguousarray(planes.transpose(2, 0, 1)[None], dtype=np.float32))
    return crops


def measure(backend: Backend, inputs: Sequence[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    """(median seconds per call on the first input, the outputs for every input). Activates the backend."""
    backend.activate()
    outputs = [backend.infer(x) for x in inputs]  # also the warm-up call
    times: list[float] = []
    budget_end = time.perf_counter() + TIME_BUDGET_S
    while len(times) < MIN_CALLS or (len(times) < MAX_CALLS and time.perf_counter() < budget_end):
        start = time.perf_counter()
        backend.infer(inputs[0])
        times.append(time.perf_counter() - start)
    return float(np.median(times)), outputs


def run_trials(
    make: Callable[[Precision], Backend], precisions: Sequence[Precision], inputs: Sequence[np.ndarray]
) -> list[Trial]:
    """Measure each precision; the first is the reference for parity."""
    from srkit.errors import SrkitError

    trials: list[Trial] = []
    reference: list[np.ndarray] | None = None
    for precision in precisions:
        backend = make(precision)
        try:
            seconds, outputs = measure(backend, inputs)
        except SrkitError as exc:
            if reference is None:
                raise
            trials.append(Trial(precision, float("inf"), float("-inf"), error=str(exc)))
            continue
        finally:
            backend.close()
        finite = all(bool(np.isfinite(o).all()) for o in outputs)
        if reference is None:
            reference = outputs
            parity_db = float("inf")
        else:
            # clipped to the displayable range first, as the images would be written
            worst = min(parity(o, r, clip=True)[0] for r, o in zip(reference, outputs, strict=True))
            parity_db = worst if finite else -1.0
        trials.append(Trial(precision, seconds, parity_db, finite))
    return trials


def device_capabilities(backend: str, device: str) -> list[str]:
    """What the device computes natively, as the backend reports it (`Backend.capabilities`)."""
    from srkit.runtime import registry

    return registry.backend_class(backend).capabilities(device)


_CACHE: dict[tuple[str, int, int, str, str, int | None], PrecisionChoice] = {}
_CACHE_LOCK = threading.Lock()


def _cache_key(
    model: Path, backend: str, options: BackendOptions
) -> tuple[str, int, int, str, str, int | None]:
    stat = model.stat()
    return (
        str(model.resolve()),
        stat.st_mtime_ns,
        stat.st_size,
        backend,
        options.device.lower(),
        options.threads,
    )


def resolve(cls: type[Backend], model: Path, info: ModelInfo, options: BackendOptions) -> PrecisionChoice:
    """Measure (once per model + backend + device in this process) and choose."""
    key = _cache_key(model, cls.name, options)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    precisions = candidates(
        cls.name, options.device, info.precision, device_capabilities(cls.name, options.device)
    )
    if len(precisions) == 1:
        choice = choose([Trial(precisions[0], 0.0, float("inf"))])
    else:
        inputs = measurement_inputs(info)
        choice = choose(
            run_trials(lambda p: cls(model, info, replace(options, precision=p)), precisions, inputs)
        )
    with _CACHE_LOCK:
        _CACHE[key] = choice
    return choice


class AutoPrecisionBackend(Backend):
    """Wraps a backend class: on activation, measures the candidates, then runs the chosen precision."""

    name = "auto"
    title = "auto precision"
    module_name = "numpy"

    def __init__(
        self, cls: type[Backend], model_path: Path, info: ModelInfo, options: BackendOptions
    ) -> None:
        super().__init__(model_path, info, options)
        self.inner_cls = cls
        self.name = cls.name  # type: ignore[misc]  # report as the backend that runs
        self.title = cls.title  # type: ignore[misc]
        self.choice: PrecisionChoice | None = None
        self.inner: Backend | None = None

    def _activate(self) -> None:
        self.choice = resolve(self.inner_cls, self.model_path, self.info, self.options)
        self.inner = self.inner_cls(
            self.model_path, self.info, replace(self.options, precision=self.choice.chosen)
        )
        self.inner.activate()

    def __getattr__(self, name: str) -> Any:
        # backend-specific attributes (an ORT session, a torch module) are the inner backend's
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        assert self.inner is not None
        return self.inner._infer(x)

    def _close(self) -> None:
        if self.inner is not None:
            self.inner.close()

    def timed_call(self, x: np.ndarray) -> tuple[Callable[[], object], str] | None:
        assert self.inner is not None
        return self.inner.timed_call(x)

    def describe(self) -> dict[str, Any]:
        if self.inner is None:
            return {**super().describe(), "precision": "auto"}
        data = self.inner.describe()
        if self.choice is not None:
            data["precision_choice"] = self.choice.to_json()
        return data
