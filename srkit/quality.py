"""Quality numbers, each defined once: PSNR, max abs error, parity against a reference, and the parity gates.

Two kinds of PSNR are in use and both live here:

- parity: a model's float output (0-1) against a reference run of the same model (PyTorch fp32, or another
  runtime), peak 1.0; what the export gate, `--precision auto`, the benchmark and the int8 budget for GAN models
  measure;
- quality under the SR convention (CONTRACT "Metrics"): PSNR on the BT.601 Y channel (MATLAB rgb2ycbcr) of uint8
  images, a border of `scale` pixels cropped, so numbers compare with papers (cross-checked against scikit-image
  in tests/test_metrics.py).

The gates are the thresholds a result must reach to count as the same model. They are named constants and `Gate`
values, so export, runtime, benchmark, calibration and the tests cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from srkit import imaging
from srkit.errors import InputError

# ---- the gates ------------------------------------------------------------------------------------------
FP32_EXPORT_MAX_ABS = 1e-4
"""Export, fp32: ONNX Runtime against PyTorch fp32, largest absolute difference (0-1 range)."""
FP16_EXPORT_GATE_DB = 45.0
"""Export, fp16 (`--fp16`): PSNR against PyTorch fp32."""
FLOAT_GATE_DB = 40.0
"""A reduced float precision (bf16, fp16) at run time, against fp32: `--precision auto`, the benchmark."""
INT8_GATE_DB = 35.0
"""An int8 model (and int8 + float layers) against fp32: the benchmark, and the quantizer's parity budget."""
PIPELINE_GATE_DB = 50.0
"""A pipeline model (`--io rgb8`...) against srkit's host path around the same model: PSNR of the pixels..."""
PIPELINE_MIN_WITHIN_ONE_LEVEL = 0.999
"""...and the share of pixel values that may differ by at most one 8-bit level (float rounding at a .5)."""


@dataclass(frozen=True)
class Gate:
    """A parity gate: the PSNR (dB, peak 1.0) and/or the max abs error a result must reach, with no
    non-finite value."""

    min_psnr_db: float | None = None
    max_abs: float | None = None

    def passes(self, psnr_db: float, max_abs: float, nonfinite: int = 0) -> bool:
        return (
            nonfinite == 0
            and (self.max_abs is None or max_abs <= self.max_abs)
            and (self.min_psnr_db is None or psnr_db >= self.min_psnr_db)
        )

    def __str__(self) -> str:
        parts = []
        if self.max_abs is not None:
            parts.append(f"max_abs<={self.max_abs:g}")
        if self.min_psnr_db is not None:
            parts.append(f"psnr>={self.min_psnr_db:g}dB")
        return " and ".join(parts)


FP32_EXPORT_GATE = Gate(max_abs=FP32_EXPORT_MAX_ABS)
FP16_EXPORT_GATE = Gate(min_psnr_db=FP16_EXPORT_GATE_DB)
FLOAT_GATE = Gate(min_psnr_db=FLOAT_GATE_DB)
INT8_GATE = Gate(min_psnr_db=INT8_GATE_DB)

PARITY_GATES_DB: dict[str, float] = {"float": FLOAT_GATE_DB, "int8": INT8_GATE_DB}
"""The run-time gates by family, as a benchmark report stores them in its settings."""


def gate_family(precision: str) -> str:
    """'int8' for int8 and int8+float precisions, else 'float'."""
    return "int8" if precision.startswith("int8") else "float"


def parity_gate_db(precision: str) -> float:
    """The run-time parity gate (dB) a result at `precision` must reach."""
    return PARITY_GATES_DB[gate_family(precision)]


# ---- PSNR and parity ------------------------------------------------------------------------------------
def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference in float64 (NaN where either holds NaN)."""
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def psnr_from_mse(mean_squared_error: float, peak: float = 1.0) -> float:
    """PSNR in dB; infinite for identical inputs."""
    if mean_squared_error == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mean_squared_error)


def psnr(a: np.ndarray, b: np.ndarray, *, peak: float) -> float:
    """PSNR in dB of two arrays of the same shape, `peak` the largest possible value (1.0 or 255.0)."""
    return psnr_from_mse(mse(a, b), peak)


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference (0.0 for empty arrays)."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(diff.max()) if diff.size else 0.0


def parity(out: np.ndarray, ref: np.ndarray, *, clip: bool = False) -> tuple[float, float]:
    """(PSNR in dB with peak 1.0, max abs error) of a float output against a float reference.

    A non-finite output fails outright: (-inf, inf). `clip` compares the displayable 0-1 range only, as the
    images would be written (what `--precision auto` judges)."""
    if not np.isfinite(out).all() or not np.isfinite(ref).all():
        return -math.inf, math.inf
    a, b = out.astype(np.float64), ref.astype(np.float64)
    if clip:
        a, b = np.clip(a, 0.0, 1.0), np.clip(b, 0.0, 1.0)
    return psnr(a, b, peak=1.0), max_abs(a, b)


# ---- quality under the SR convention --------------------------------------------------------------------
def y_channel_u8(image: np.ndarray) -> np.ndarray:
    """uint8 RGB (or gray) -> the luma plane as MATLAB gives it: float64 holding rounded 0-255 values."""
    if image.dtype != np.uint8:
        raise InputError(f"metrics expect uint8 images, got {image.dtype}")
    as_float = imaging.to_float(image)
    if as_float.ndim == 3 and as_float.shape[2] >= 3:
        y = imaging.rgb_to_y(as_float[..., :3])
    else:
        y = imaging.gray_to_y(as_float.reshape(as_float.shape[:2]))
    return np.rint(y.astype(np.float64) * 255.0)


def y_planes(sr: np.ndarray, hr: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    """The two Y planes the SR metrics compare, `border` pixels cropped on every side."""
    if sr.shape != hr.shape:
        raise InputError(f"shape mismatch: {sr.shape} vs {hr.shape}")
    a, b = y_channel_u8(sr), y_channel_u8(hr)
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    return a, b


def psnr_y(sr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    """PSNR-Y under the SR convention: uint8 images, BT.601 luma, `scale` pixels of border cropped."""
    a, b = y_planes(sr, hr, scale)
    return psnr(a, b, peak=255.0)
