"""One benchmark per model x backend x precision: model-call time (pytest-benchmark) and the parity gate.

    pytest bench/ --benchmark-json bench.json            # everything installed
    pytest bench/ -k "espcn and openvino"                # a subset
    SRKIT_BENCH_ROUNDS=50 pytest bench/ -k espcn         # more rounds
    pytest bench/test_speed.py -m heavy                  # only the heavy models (SPAN, Real-CUGAN)

Each row also records fps, end-to-end fps (uint8 image in and out through `Upscaler.upscale`), parity, GFLOP per
call and achieved GFLOP/s in the benchmark's `extra_info` (`srkit bench` adds the measured peak); int8 rows also
what the quantizer measured against its budget, and a skipped int8 row says why the quantizer refused.
"""

from __future__ import annotations

from typing import Any

import pytest
from _suite import CASES, Case, model_for, prepare, reference, rounds, why_missing

from srkit.bench import metrics
from srkit.bench.roofline import count_flops
from srkit.bench.runner import benchmark_input
from srkit.bench.timing import measure
from srkit.quality import FLOAT_GATE_DB, INT8_GATE_DB
from srkit.runtime import Upscaler, registry

ROWS = [
    ("ort", "fp32"),
    ("ort", "int8"),
    ("ort", "int8-qat"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
    ("openvino", "int8-qat"),
    ("torch", "fp32"),
    ("torch", "bf16"),
]


def gate_db(case: Case, precision: str) -> float:
    return INT8_GATE_DB if case.gan or precision.startswith("int8") else FLOAT_GATE_DB


CASE_PARAMS = [pytest.param(c, id=c.name, marks=pytest.mark.heavy if c.heavy else ()) for c in CASES]


@pytest.mark.parametrize(("backend", "precision"), ROWS, ids=[f"{b}-{p}" for b, p in ROWS])
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_speed_and_parity(benchmark: Any, case: Case, backend: str, precision: str) -> None:
    if backend not in Upscaler.available_backends():
        pytest.skip(f"{backend} is not installed")
    has_bf16 = "BF16" in registry.backend_class(backend).capabilities("cpu")
    if precision == "bf16" and backend == "openvino" and not has_bf16:
        pytest.skip("this CPU has no bf16 arithmetic")
    if precision == "bf16" and case.heavy and not has_bf16:
        # PyTorch emulates bf16 without avx512_bf16 / AMX: SPAN x4 at 64x36 took 5.7 s against 0.29 s in fp32,
        # Real-CUGAN x2 5.4 s against 0.20 s (AMD EPYC, AVX2 only): a row of a quarter of an hour
        pytest.skip("this CPU has no bf16 arithmetic (PyTorch emulates it, ~20x slower than fp32)")
    prepared = prepare(case)
    model = model_for(prepared, backend, "fp32" if not precision.startswith("int8") else precision)
    if model is None:
        pytest.skip(f"no {precision} model of {case.name} for {backend}: {why_missing(prepared, backend, precision)}")
    run_precision = "int8" if precision.startswith("int8") else precision  # the weights carry the rest
    extra = {"checkpoint": prepared.checkpoint} if backend == "torch" and prepared.checkpoint else {}
    with Upscaler(model, backend=backend, precision=run_precision, **extra) as up:
        rgb, x = benchmark_input(up.info, case.input_size)
        out = up.run_model(x)  # warm-up at this shape, and the output the gate judges
        parity_db, max_abs = metrics.parity(out, reference(prepared, x))
        hw = out.shape[2] // up.scale, out.shape[3] // up.scale
        gflops = count_flops(
            model, (hw[0] + (-hw[0]) % up.info.size_multiple, hw[1] + (-hw[1]) % up.info.size_multiple)
        ).gflops
        benchmark.group = case.name
        benchmark.extra_info.update(
            {
                "backend": backend,
                "precision": up.describe()["precision"],
                "input_size": list(case.input_size),
                "parity_psnr_db": parity_db,
                "parity_max_abs": max_abs,
                "gflops": gflops,
                "note": case.note,
                **({"int8_quantizer": prepared.int8_notes.get(backend, "")} if precision == "int8" else {}),
                **({"int8_quantizer": "all-int8 by QAT (srkit quantize --qat)"} if precision == "int8-qat" else {}),
            }
        )
        benchmark.pedantic(up.run_model, args=(x,), warmup_rounds=1, rounds=rounds(case), iterations=1)
        e2e = measure(lambda: up.upscale(rgb), warmup=0, min_time_s=0.0, min_calls=rounds(case))  # warm: same shape
        benchmark.extra_info["e2e_fps"] = e2e.fps
    stats = benchmark.stats.stats if benchmark.stats else None
    if stats is not None:
        benchmark.extra_info["fps"] = 1.0 / stats.mean
        benchmark.extra_info["achieved_gflops"] = gflops / stats.mean
    gate = gate_db(case, precision)
    known = next((w for b, p, w in case.below_gate if (b, p) == (backend, precision)), None)
    if known is not None:
        assert parity_db < gate, f"{case.name} {backend} {precision} now meets the gate: drop its below_gate entry"
        pytest.xfail(f"{known}: parity {parity_db:.2f} dB < gate {gate} dB")
    assert parity_db >= gate, f"{case.name} {backend} {precision}: parity {parity_db:.2f} dB < gate {gate} dB"
