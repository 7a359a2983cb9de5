"""Classical upscalers (nearest, bilinear, bicubic, Lanczos) as baselines, under the benchmark's convention."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from srkit import imaging
from srkit.bench import baselines
from srkit.bench.dataset import load_pairs
from srkit.bench.report import render_markdown, render_summary
from srkit.data import held_out_images
from srkit.models import zoo


def _held_out_pairs(scale: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The zoo's convention: each held-out photo cropped to the scale, LR by imaging.downscale_uint8."""
    pairs = []
    for photo in held_out_images().values():
        hr = imaging.crop_to_multiple(photo, scale)
        pairs.append((imaging.downscale_uint8(hr, scale), hr))
    return pairs


def test_bicubic_baseline_is_the_benchmark_bicubic(sample_rgb: np.ndarray) -> None:
    lr = imaging.downscale_uint8(imaging.crop_to_multiple(sample_rgb, 3), 3)
    assert np.array_equal(baselines.upscale(lr, 3, "bicubic"), imaging.upscale_uint8(lr, 3))
    for method in baselines.FILTERS:
        out = baselines.upscale(lr, 3, method)
        assert out.shape == (lr.shape[0] * 3, lr.shape[1] * 3, 3) and out.dtype == np.uint8


def test_the_filters_rank_as_expected_on_real_photos() -> None:
    """On natural photos a wider interpolation kernel recovers more: nearest < bilinear < bicubic."""
    scores = baselines.baseline_psnr_y(_held_out_pairs(3), 3)
    assert list(scores) == ["nearest", "bilinear", "bicubic", "lanczos"]
    assert scores["nearest"] < scores["bilinear"] < scores["bicubic"]
    assert abs(scores["lanczos"] - scores["bicubic"]) < 1.0  # close relatives (both 2-3 lobe kernels)


@pytest.mark.parametrize("name", sorted(zoo.entries()))
def test_zoo_records_the_baselines_it_would_measure_now(name: str) -> None:
    entry = zoo.get(name)
    recorded = entry.baselines_psnr_y
    assert set(recorded) == set(baselines.FILTERS)
    assert recorded["bicubic"] == pytest.approx(entry.record["validation"]["bicubic_psnr_y"], abs=2e-3)
    if entry.scale == 3:  # re-measured for one scale (the others follow the same code)
        assert recorded == pytest.approx(baselines.baseline_psnr_y(_held_out_pairs(3), 3), abs=2e-3)


def test_bench_report_carries_the_baselines(espcn_x3_onnx: Path) -> None:
    from srkit.bench.runner import BenchConfig, run_bench

    report = run_bench(BenchConfig(model=espcn_x3_onnx, backends=["ort"], precision="fp32", input_size=(48, 32),
                                   min_time_s=0.05, peak_min_time_s=0.05, threads=1, isolate=False))
    report = json.loads(json.dumps(report, allow_nan=False))
    classical = report["settings"]["baselines_psnr_y"]
    (row,) = report["results"]
    assert classical["bicubic"] == pytest.approx(row["bicubic_psnr_y"], abs=1e-3)
    pairs = load_pairs(3)
    assert classical == pytest.approx(baselines.baseline_psnr_y([(p.lr, p.hr) for p in pairs], 3), abs=1e-3)
    assert "nearest" in render_summary(report) and "lanczos" in render_markdown(report)
