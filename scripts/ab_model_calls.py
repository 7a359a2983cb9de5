"""Model-call latency of several models / precisions in ONE process, interleaved round by round, so that the
ratios between them hold on a shared machine whose load moves between `srkit bench`'s per-row processes.

    python scripts/ab_model_calls.py --size 128x128 x4plus.onnx:bf16 x4plus-int8-openvino.onnx:bf16 \\
        x4plus-int8-openvino.onnx:fp32 x4plus.onnx:torch

Each argument is MODEL:PRECISION, run on OpenVINO (CPU, LATENCY hint, static shape, the precision as the
inference precision hint: the float layers of an int8 model) or, for `torch`, on PyTorch eager fp32 through
srkit's torch backend. Prints the median of the rounds per entry, in ms.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def _openvino_call(model: str, precision: str, x: np.ndarray) -> Callable[[], object]:
    import openvino as ov

    core = ov.Core()
    m = core.read_model(model)
    m.reshape(list(x.shape))
    request = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": HINTS[precision],
                                            "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
    return lambda: request.infer({0: x})


def _torch_call(model: str, x: np.ndarray) -> Callable[[], object]:
    from srkit.runtime import Upscaler

    up = Upscaler(model, backend="torch", precision="fp32").__enter__()
    return lambda: up.run_model(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("entries", nargs="+", help="MODEL:PRECISION (fp32, bf16, fp16 on OpenVINO; torch)")
    parser.add_argument("--size", default="128x128", help="input WxH")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    calls = {}
    for entry in args.entries:
        model, precision = entry.rsplit(":", 1)
        calls[entry] = _torch_call(model, x) if precision == "torch" else _openvino_call(model, precision, x)
        calls[entry]()  # warm-up
    times: dict[str, list[float]] = {entry: [] for entry in calls}
    for _ in range(args.rounds):
        for entry, call in calls.items():
            start = time.perf_counter()
            call()
            times[entry].append(time.perf_counter() - start)
    for entry, values in times.items():
        print(f"{entry}: median {1000 * np.median(values):.0f} ms  ({', '.join(f'{1000 * v:.0f}' for v in values)})")


if __name__ == "__main__":
    main()
