"""`srkit quantize SOURCE --qat`: fine-tune a copy of the float weights with fake quantization, export the
all-int8 symmetric Q/DQ model, and let it through only within the same PSNR budget as post-training int8.

The budget compares the int8 model with the ORIGINAL fp32 model (exported from the same weights before any
fine-tuning) on the same held-out photos as `srkit quantize` without --qat, none of which may be training data.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from srkit._fs import atomic_path, check_writable, refuse_overwriting_inputs
from srkit.calibration import budget as B
from srkit.calibration.quantize import QUANT_RECIPE, QuantBackend, QuantizeResult, quiet_libraries, write_int8
from srkit.calibration.tensorrt import check_qdq
from srkit.data import held_out_images
from srkit.errors import InputError, ParityError
from srkit.qat.data import PatchSampler, training_set
from srkit.qat.settings import QatSettings

METHOD = "qat"
PROGRESS_EVERY = 50  # steps


def default_output(source: str, backend: QuantBackend) -> Path:
    """Beside a checkpoint, or in the working folder for a bundled name (as `srkit quantize`)."""
    path = Path(source)
    name = f"{path.stem}-int8-{backend.value}.onnx"
    return path.with_name(name) if path.is_file() else Path(name)


def _saturation_note(backend: QuantBackend) -> str:
    """Without VNNI/AMX, OpenVINO's int8 convolutions saturate in int16, so its measurement is this CPU's, not the
    model's (docs/measurements.md, int8): say so where that can be why the budget failed."""
    from srkit._system import has_int8_dot_product

    if backend != QuantBackend.OPENVINO or has_int8_dot_product():
        return ""
    return ("; this CPU has no int8 dot product (VNNI/AMX), where OpenVINO's int8 convolutions saturate: "
            "--backend ort measures the model's exact Q/DQ arithmetic")


def _check(source: str, settings: QatSettings) -> None:
    if Path(source).suffix.lower() == ".onnx":
        raise InputError(f"--qat fine-tunes PyTorch weights; {source} is an exported model: give its checkpoint "
                         "(.pt, .pth, .safetensors) or a bundled name")
    if settings.steps < 0 or settings.batch < 1 or settings.patch < 4 or not settings.lr > 0:
        raise InputError("--steps must be >= 0, --batch >= 1, --patch >= 4 and --lr > 0")


def quantize_aware(source: str, output: str | Path | None = None, *, data: str | None = None,
                   backend: str | QuantBackend = QuantBackend.ORT, settings: QatSettings | None = None,
                   max_psnr_drop: float | None = None, min_parity_db: float | None = None,
                   budget_mode: str | B.BudgetMode | None = None,
                   progress: Callable[[str], None] | None = None) -> QuantizeResult:
    """All-int8 model of `source` (a bundled name or checkpoint) by quantization-aware fine-tuning on the
    images in `data` (None: the built-in calibration photos). Raises ParityError, writing nothing, when the
    int8 model misses the budget against the original fp32 model."""
    start = time.perf_counter()
    settings = settings or QatSettings()
    say = progress or (lambda _msg: None)
    _check(source, settings)
    qbackend = QuantBackend.parse(backend)
    out = Path(output) if output else default_output(source, qbackend)
    refuse_overwriting_inputs(out, [Path(source)] if Path(source).is_file() else [])
    check_writable(out)
    from srkit.export import export_model
    from srkit.export.exporter import write_with_metadata
    from srkit.models.loader import load_model
    from srkit.qat.train import export_qdq, fine_tune

    with tempfile.TemporaryDirectory(prefix="srkit-qat-") as tmp:
        say(f"exporting the fp32 reference of {source}")
        fp32 = export_model(source, Path(tmp) / "fp32.onnx")
        info = fp32.info
        budget = B.resolve_budget(info, budget_mode, max_psnr_drop, min_parity_db)
        held = held_out_images()
        train = training_set(data, info, patch=settings.patch, validation=held)
        valid = B.validation_set(held, info)
        ref = B.reference(fp32.path, valid, info, qbackend.engine)
        say(f"training data: {train.description}")

        def step_done(step: int, loss: float) -> None:
            if step % PROGRESS_EVERY == 0 or step == settings.steps:
                say(f"QAT step {step}/{settings.steps}, loss {loss:.6f}")

        sampler = PatchSampler(train.pairs, info.scale, settings.patch, settings.seed)
        loaded = load_model(source)
        with quiet_libraries():
            model = fine_tune(loaded.module, sampler, settings, step_done)
            proto = export_qdq(model, loaded, info, info.opset)
        candidate = Path(tmp) / "int8.onnx"
        with atomic_path(candidate) as path:
            write_with_metadata(proto, info, path)
        structure = check_qdq(candidate)
        if structure.problems or structure.float_convs:  # the recipe's own guarantee: a bug if broken
            raise RuntimeError(f"QAT Q/DQ model is malformed: {structure.problems}, float convs "
                               f"{structure.float_convs}")
        m = B.measure(candidate, ref, info, qbackend.engine)
        held_ok = m.holds(budget)
        log = B.SearchLog([B.Attempt([], m, held_ok)])
        if not held_ok:
            raise ParityError(f"int8 after QAT misses the budget ({budget.describe()}): {m.describe(budget)} "
                              f"against the original fp32 model; {settings.describe()}; no model written "
                              "(more --steps or more training images may help)" + _saturation_note(qbackend))
        facts = {
            "quant_recipe": QUANT_RECIPE,
            "quant_backend": qbackend.value,
            "quant_method": METHOD,
            "quant_samples": str(settings.steps * settings.batch),
            "quant_calibration": f"{train.description}; {settings.describe()}",
            "quant_qat": json.dumps({"steps": settings.steps, "lr": settings.lr, "batch": settings.batch,
                                     "patch": settings.patch, "seed": settings.seed, "library": "nncf"}),
            "quant_float_layers": json.dumps([]),
            "quant_budget": budget.describe(),
            "quant_fp32_psnr_y": f"{m.fp32_psnr_y:.3f}",
            "quant_int8_psnr_y": f"{m.int8_psnr_y:.3f}",
            "quant_psnr_drop_db": f"{m.drop_db:.3f}",
            "quant_parity_db": f"{m.parity_db:.2f}",
            "quant_validation": ",".join(v.name for v in valid),
        }
        qinfo = write_int8(candidate, out, info, facts)
    return QuantizeResult(out, qinfo, qbackend, METHOD, budget, m, [], f"{train.description}; "
                          f"{settings.describe()}", [v.name for v in valid], log, time.perf_counter() - start)
