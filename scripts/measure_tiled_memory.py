"""Peak resident memory of upscaling one large photo, tiled or not (run each case in its own process).

    python scripts/measure_tiled_memory.py --size 4000x3000 --tile 512
    python scripts/measure_tiled_memory.py --size 4000x3000 --tile 0      # the default path (no --tile)
    python scripts/measure_tiled_memory.py --model x4plus.onnx --backend openvino --precision bf16 --tile auto

The input is a real CC0 photo (srkit.data) resized to the size asked for; the model is the bundled
espcn-x3 unless --model names another exported .onnx.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb / 1024 if sys.platform != "darwin" else kb / (1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="exported .onnx (default: export the bundled espcn-x3)")
    parser.add_argument("--size", default="4000x3000", help="WxH of the low-resolution input")
    parser.add_argument("--tile", default="512", help="tile size, 'auto', or 0: the default path")
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 (OpenVINO on a bf16 CPU: half the time)")
    args = parser.parse_args()

    from srkit.data import data_path
    from srkit.imageio import read_image
    from srkit.runtime import Upscaler

    w, h = (int(v) for v in args.size.lower().split("x"))
    photo = read_image(data_path("coffee.png"))
    image = np.asarray(Image.fromarray(photo).resize((w, h), Image.Resampling.BICUBIC))
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from srkit.export import export_model

            model = str(Path(tmp) / "espcn-x3.onnx")
            export_model("espcn-x3", model)
        before = peak_rss_mb()
        tile = None if args.tile == "0" else args.tile
        start = time.perf_counter()
        with Upscaler(model, backend=args.backend, precision=args.precision, tile=tile) as up:
            out = up.upscale(image)
            info = {"tile": up.tile, "overlap": up.tile_overlap, "precision": up.describe()["precision"]}
        seconds = time.perf_counter() - start
    print(json.dumps({
        "input": [w, h], "output": [out.shape[1], out.shape[0]], "backend": args.backend, **info,
        "output_mb": round(out.nbytes / (1 << 20), 1), "seconds": round(seconds, 1),
        "peak_rss_mb_before_upscale": round(before, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
    }))


if __name__ == "__main__":
    main()
