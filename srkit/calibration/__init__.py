"""Calibration datasets and int8 quantizers (ONNX Runtime QDQ, OpenVINO via NNCF, TensorRT Q/DQ) under a
PSNR budget. Nothing heavy is imported here: each quantizer imports its backend when it runs."""

from __future__ import annotations

from srkit.calibration.budget import Budget, BudgetMode
from srkit.calibration.dataset import CalibrationDataset, calibration_dataset, make_patches
from srkit.calibration.quantize import QuantBackend, QuantizeResult, quantize

__all__ = ["Budget", "BudgetMode", "CalibrationDataset", "QuantBackend", "QuantizeResult",
           "calibration_dataset", "make_patches", "quantize"]
