"""Pipeline models (issue 12): ESPCN x3, 640x360 -> 1920x1080, uint8 RGB in and out.

    pytest bench/test_pipeline.py --benchmark-json pipeline.json -s

One row per backend x weights x precision. Each row times, interleaved in one process so that the ratios compare
like with like on a shared machine: the model call alone (NCHW float in and out), `Upscaler.upscale` through the
pipeline graph, and `Upscaler.upscale` on the host path. The targets (end to end >= 0.8 x the model call, and
>= 30 fps) are recorded with each row, not asserted; the pixel target (the pipeline equals the host path to
within one level on >= 99.9 % of pixels and >= 50 dB, odd sizes too) is asserted.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from _suite import CASES, model_for, prepare, why_missing

from srkit import imaging, quality
from srkit.runtime import Upscaler, registry

TARGET_RATIO, TARGET_FPS = 0.8, 30.0
ROWS = [("ort", "fp32", "fp32"), ("ort", "int8", "int8"), ("ort", "int8-qat", "int8"), ("openvino", "fp32", "fp32"),
        ("openvino", "fp32", "bf16"), ("openvino", "int8", "fp32"), ("openvino", "int8", "bf16"),
        ("openvino", "int8-qat", "fp32")]
ROUNDS = 12


def _frame(size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    from srkit.data import held_out_images

    photo = list(held_out_images().values())[1][..., :3]
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BICUBIC))


def _interleaved(calls: dict[str, Any], rounds: int) -> dict[str, float]:
    """Median seconds per call of each, measured in turns (warm-up first)."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def _match(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
    return float((diff <= 1).mean()), quality.psnr(a, b, peak=255.0)


@pytest.mark.parametrize(("backend", "weights", "precision"), ROWS,
                         ids=[f"{b}-{w}+{p}" if w != p else f"{b}-{p}" for b, w, p in ROWS])
def test_pipeline_1080p(benchmark: Any, backend: str, weights: str, precision: str) -> None:
    if backend not in Upscaler.available_backends():
        pytest.skip(f"{backend} is not installed")
    if precision == "bf16" and "BF16" not in registry.backend_class(backend).capabilities("cpu"):
        pytest.skip("this CPU has no bf16 arithmetic")
    prepared = prepare(next(c for c in CASES if c.name == "espcn-x3"))
    model = model_for(prepared, backend, weights)
    if model is None:
        pytest.skip(f"no {weights} model of espcn-x3 for {backend}: {why_missing(prepared, backend, weights)}")
    rgb = _frame((640, 360))
    x = np.ascontiguousarray(imaging.rgb_to_y(imaging.to_float(rgb))[None, None], dtype=np.float32)
    with Upscaler(model, backend=backend, precision=precision) as up:
        assert up.route(rgb) == "pipeline"
        for size in ((640, 360), (641, 359)):  # the pixel target, at an odd size too
            frame = _frame(size)
            within, psnr = _match(up.upscale(frame), up.upscale(frame, pipeline=False))
            assert within >= quality.PIPELINE_MIN_WITHIN_ONE_LEVEL and psnr >= quality.PIPELINE_GATE_DB, (size, psnr)
        seconds = _interleaved({"model": lambda: up.run_model(x), "pipeline": lambda: up.upscale(rgb),
                                "host": lambda: up.upscale(rgb, pipeline=False)}, ROUNDS)
        benchmark.pedantic(up.upscale, args=(rgb,), rounds=3, iterations=1)
        described = up.describe()
    fps = {name: 1.0 / s for name, s in seconds.items()}
    benchmark.group = "pipeline 640x360 -> 1920x1080 (espcn-x3)"
    benchmark.extra_info.update({
        "backend": backend, "weights": weights, "precision": described["precision"], "model_fps": fps["model"],
        "e2e_fps": fps["pipeline"], "host_e2e_fps": fps["host"], "e2e_ratio": fps["pipeline"] / fps["model"],
        "host_e2e_ratio": fps["host"] / fps["model"], "target_ratio": TARGET_RATIO, "target_fps": TARGET_FPS,
        "pixels_within_one_level": within, "pixels_psnr_db": psnr,
    })
    print(f"\n{backend} {described['precision']} ({weights} weights): model {fps['model']:.1f} fps, "
          f"pipeline {fps['pipeline']:.1f} fps "
          f"({fps['pipeline'] / fps['model']:.2f} of the model call), host {fps['host']:.1f} fps "
          f"({fps['host'] / fps['model']:.2f})")
