"""One entry point for int8: calibrate, quantize for a backend, measure the PSNR cost, keep sensitive layers
in float until the budget holds (or fail with the numbers), and write the model atomically with its facts
in the srkit metadata (`srkit.quant_*`, precision int8)."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from srkit._fs import atomic_path, refuse_overwriting_inputs
from srkit.calibration import budget as B
from srkit.calibration.dataset import (
    DEFAULT_PATCH,
    DEFAULT_SAMPLES,
    CalibrationDataset,
    calibration_dataset,
)
from srkit.calibration.mixed import SEARCH_LR_SIDE, BlockSearch, SearchStrategy, conv_macs, search_blocks
from srkit.calibration.mixed import float_convs as mixed_float_convs
from srkit.errors import InputError, ParityError
from srkit.meta import ModelInfo, Precision, read_model_info

# Bump when a change here or in a quantizer alters the int8 models srkit writes: it is recorded in each model
# (`srkit.quant_recipe`), so caches of int8 models (the benchmark suite's) know to quantize again.
QUANT_RECIPE = "6"  # 6: the block search for models with many convs (calibration/mixed.py)


class QuantBackend(str, Enum):
    ORT = "ort"
    OPENVINO = "openvino"
    TRT = "trt"

    @classmethod
    def parse(cls, value: str | QuantBackend) -> QuantBackend:
        try:
            return cls(str(value.value if isinstance(value, QuantBackend) else value).lower())
        except ValueError:
            raise InputError(f"unknown quantization backend {value!r}; choose one of: "
                             + ", ".join(b.value for b in cls)) from None

    @property
    def engine(self) -> str:
        """What runs the measurements: TensorRT needs a GPU, so its Q/DQ model is measured on ONNX Runtime."""
        return "openvino" if self == QuantBackend.OPENVINO else "ort"


@dataclass
class QuantizeResult:
    path: Path
    info: ModelInfo
    backend: QuantBackend
    method: str
    budget: B.Budget
    measurement: B.Measurement
    kept_float: list[str]
    calibration: str
    validation: list[str]
    log: B.SearchLog = field(default_factory=B.SearchLog)
    seconds: float = 0.0
    blocks: BlockSearch | None = None  # what the block search measured, when it ran


def _method_name(backend: QuantBackend, method: str | None) -> str:
    if backend == QuantBackend.OPENVINO:
        from srkit.calibration.openvino import NncfMethod

        return NncfMethod.parse(method).value
    from srkit.calibration.ort import CalibrationMethod

    return CalibrationMethod.parse(method).value


def _quantize_once(backend: QuantBackend, method: str, model: Path, out: Path, data: CalibrationDataset,
                   kept: list[str]) -> None:
    if backend == QuantBackend.OPENVINO:
        from srkit.calibration.openvino import NncfMethod, quantize_nncf

        quantize_nncf(model, out, data, method=NncfMethod(method), nodes_to_exclude=kept)
    elif backend == QuantBackend.TRT:
        from srkit.calibration.ort import CalibrationMethod
        from srkit.calibration.tensorrt import quantize_trt

        quantize_trt(model, out, data, method=CalibrationMethod(method), nodes_to_exclude=kept)
    else:
        from srkit.calibration.ort import CalibrationMethod, quantize_ort

        quantize_ort(model, out, data, method=CalibrationMethod(method), nodes_to_exclude=kept)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """NNCF logs INFO lines and ORT's quantizer a pre-processing hint for every attempt; the search prints
    its own summary. Raise their loggers' levels for the duration only, and restore them."""
    loggers = [logging.getLogger("nncf"), logging.getLogger()]
    saved = [lg.level for lg in loggers]
    drop_info = logging.Filter("srkit-quiet")  # never matches a library record name: drops them all
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    loggers[0].addFilter(drop_info)  # NNCF resets its logger's level while it runs; a filter stays
    try:
        yield
    finally:
        loggers[0].removeFilter(drop_info)
        for lg, level in zip(loggers, saved, strict=True):
            lg.setLevel(level)


def write_int8(src: Path, output: Path, info: ModelInfo, result_facts: dict[str, str]) -> ModelInfo:
    """`src` (a candidate in a temp dir) -> `output`, atomically, with `info` plus the facts as int8 metadata."""
    import onnx

    proto = onnx.load(str(src))
    qinfo = ModelInfo.from_props({p.key: p.value for p in proto.metadata_props} | info.to_props())
    qinfo.precision = Precision.INT8
    # facts a quantizer recorded in the candidate itself (e.g. which bias correction NNCF could apply)
    recorded = {p.key.removeprefix("srkit."): p.value for p in proto.metadata_props
                if p.key.startswith("srkit.quant_")}
    qinfo.extra = {**{k: v for k, v in info.extra.items() if not k.startswith("quant_")}, **recorded,
                   **result_facts}
    del proto.metadata_props[:]
    for key, value in qinfo.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    with atomic_path(output) as tmp:
        onnx.save(proto, str(tmp))
    return qinfo


def quantize(model: str | Path, output: str | Path | None = None, *, calibration: str | Path | None = None,
             backend: str | QuantBackend = QuantBackend.ORT, method: str | None = None,
             max_psnr_drop: float | None = None, min_parity_db: float | None = None,
             budget_mode: str | B.BudgetMode | None = None, samples: int = DEFAULT_SAMPLES,
             patch: int = DEFAULT_PATCH, seed: int = 0, max_float_layers: int = 4,
             search: str | SearchStrategy = SearchStrategy.AUTO,
             progress: Callable[[str], None] | None = None) -> QuantizeResult:
    """Quantize an fp32 srkit ONNX model to int8 for `backend`, within a PSNR budget.

    `calibration`: a folder of images (None: the built-in CC0 calibration photos). The budget is measured on
    the six held-out photos (srkit.data.HELD_OUT). `search`: how convs are chosen to stay float when all-int8
    misses the budget (srkit.calibration.mixed: `greedy` re-quantizes per attempt, `blocks`/`layers` derive
    every attempt from one quantized model; `auto` picks by the number of convs). Raises ParityError with both
    PSNRs and the layers tried when the budget cannot be met; nothing is written then.
    """
    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    model = Path(model)
    info = read_model_info(model)
    if info.precision != Precision.FP32:
        raise InputError(f"{model} is {info.precision.value}; quantize the fp32 model")
    qbackend = QuantBackend.parse(backend)
    method_name = _method_name(qbackend, method)
    # the default name is where `srkit bench` looks for a model's int8 sibling
    out = Path(output) if output else model.with_name(f"{model.stem}-int8-{qbackend.value}.onnx")
    refuse_overwriting_inputs(out, [model])
    from srkit._fs import check_writable

    check_writable(out)
    budget = B.resolve_budget(info, budget_mode, max_psnr_drop, min_parity_db)
    asked = SearchStrategy.parse(search)
    if method_name == "accuracy-control" and asked != SearchStrategy.AUTO:
        raise InputError("--method accuracy-control is NNCF's own search; leave --search out")
    strategy = asked.resolve(_count_convs(model))

    data = calibration_dataset(calibration, info, samples=samples, patch=patch, seed=seed)
    say(f"calibration: {data.description}")
    from srkit.data import held_out_images

    valid = B.validation_set(held_out_images(), info)  # no held-out photo calibrates the built-in run
    ref = B.reference(model, valid, info, qbackend.engine)
    log = B.SearchLog()
    blocks: BlockSearch | None = None
    with tempfile.TemporaryDirectory(prefix="srkit-quant-") as tmp, quiet_libraries():
        if method_name == "accuracy-control":
            candidate = Path(tmp) / "int8.onnx"
            _, measurement = _accuracy_control(model, candidate, data, ref, info, budget, log)
        elif strategy in (SearchStrategy.BLOCKS, SearchStrategy.LAYERS):
            measurement, candidate, blocks = _search_groups(qbackend, method_name, model, Path(tmp), data, ref,
                                                            info, budget, log, strategy, say)
        else:
            _, measurement, candidate = _search(qbackend, method_name, model, Path(tmp), data, ref, info,
                                                budget, log, max_float_layers, say)
        import onnx

        float_convs = mixed_float_convs(onnx.load(str(candidate), load_external_data=False))
        if len(float_convs) >= _count_convs(model):
            raise ParityError(f"int8 cannot meet the budget ({budget.describe()}) with any conv quantized: every "
                              "conv had to stay float, which is the fp32 model; no model written")
        facts = {
            "quant_recipe": QUANT_RECIPE,
            "quant_backend": qbackend.value,
            "quant_method": method_name,
            "quant_samples": str(len(data)),
            "quant_calibration": data.description,
            "quant_float_layers": json.dumps(float_convs),
            "quant_budget": budget.describe(),
            "quant_fp32_psnr_y": f"{measurement.fp32_psnr_y:.3f}",
            "quant_int8_psnr_y": f"{measurement.int8_psnr_y:.3f}",
            "quant_psnr_drop_db": f"{measurement.drop_db:.3f}",
            "quant_parity_db": f"{measurement.parity_db:.2f}",
            "quant_validation": ",".join(v.name for v in valid),
            "quant_search": strategy.value if method_name != "accuracy-control" else "nncf",
            "quant_int8_work": f"{_int8_work_share(model, float_convs):.3f}",
        }
        if blocks is not None:
            facts["quant_float_groups"] = json.dumps(blocks.float_groups)
        qinfo = write_int8(candidate, out, info, facts)
    return QuantizeResult(out, qinfo, qbackend, method_name, budget, measurement, float_convs,
                          data.description, [v.name for v in valid], log, time.perf_counter() - start, blocks)


def _search_groups(backend: QuantBackend, method: str, model: Path, tmp: Path, data: CalibrationDataset,
                   ref: B.Reference, info: ModelInfo, budget: B.Budget, log: B.SearchLog,
                   strategy: SearchStrategy, say: Callable[[str], None]) -> tuple[B.Measurement, Path, BlockSearch]:
    """Quantize once; if all-int8 misses the budget, the block search of srkit.calibration.mixed on centre
    crops of the validation photos, its result checked on the whole photos."""
    from srkit.data import held_out_images

    quantized = tmp / "int8.onnx"
    say("quantizing every conv once")
    _quantize_once(backend, method, model, quantized, data, [])
    m = B.measure(quantized, ref, info, backend.engine)
    held = m.holds(budget)
    log.attempts.append(B.Attempt([], m, held))
    say(f"all int8: {m.describe(budget)}" + ("" if held else " - over budget"))
    if held:
        return m, quantized, BlockSearch()
    crops = B.reference(model, B.validation_set(held_out_images(), info, max_side=SEARCH_LR_SIDE * info.scale),
                        info, backend.engine)
    return search_blocks(quantized, model, tmp, info=info, engine=backend.engine, budget=budget, crops=crops,
                         full=ref, blocks=strategy == SearchStrategy.BLOCKS, log=log, say=say)


def _int8_work_share(model: Path, float_convs: list[str]) -> float:
    """The share of the convs' multiply-accumulates that run in int8."""
    import onnx

    macs = conv_macs(onnx.load(str(model), load_external_data=False))
    total = sum(macs.values())
    return 1.0 - sum(macs.get(c, 0) for c in float_convs) / total if total else 0.0


def _search(backend: QuantBackend, method: str, model: Path, tmp: Path, data: CalibrationDataset,
            ref: B.Reference, info: ModelInfo, budget: B.Budget, log: B.SearchLog, max_float_layers: int,
            say: Callable[[str], None]) -> tuple[list[str], B.Measurement, Path]:
    """Quantize everything. If the budget fails, measure each candidate conv kept alone in float; then grow the
    set of float convs greedily from the best single one, each round adding the candidate that measures best
    together with those already kept, until the budget holds. (Layers interact through bias correction: on
    ESPCN x3, conv1 + conv2 in float measured worse than conv1 alone, conv1 + conv3 better.) Of the sets that
    meet the budget in a round, the one with the least work left in float wins, not the most accurate one."""

    def attempt(kept: list[str]) -> tuple[B.Measurement, Path]:
        path = tmp / f"attempt-{len(log.attempts)}.onnx"
        _quantize_once(backend, method, model, path, data, kept)
        m = B.measure(path, ref, info, backend.engine)
        held = m.holds(budget)
        log.attempts.append(B.Attempt(list(kept), m, held))
        say(f"float [{B.summary(kept)}]: {m.describe(budget)}" + ("" if held else " - over budget"))
        return m, path

    def score(m: B.Measurement) -> float:
        return m.parity_db if budget.mode == B.BudgetMode.PARITY else -m.drop_db

    m, path = attempt([])
    if m.holds(budget):
        return [], m, path
    # keeping every conv in float would give an fp32 model labelled int8: at least one conv must stay int8
    weights = _conv_weight_sizes(model)
    most_float = len(weights) - 1
    candidates = B.sensitive_candidates(model, limit=max_float_layers)
    tried: dict[tuple[str, ...], tuple[B.Measurement, Path]] = (
        {(name,): attempt([name]) for name in candidates} if most_float >= 1 else {})
    while tried:
        held = [names for names, (m, _) in tried.items() if m.holds(budget)]
        if held:
            kept = min(held, key=lambda names: (sum(weights.get(n, 0) for n in names), -score(tried[names][0])))
            m, path = tried[kept]
            return list(kept), m, path
        kept = max(tried, key=lambda names: score(tried[names][0]))
        if len(kept) >= most_float:
            break
        tried = {(*kept, name): attempt([*kept, name]) for name in candidates if name not in kept}
    raise ParityError(f"int8 cannot meet the budget ({budget.describe()}); tried "
                      + log.describe(budget) + "; no model written")


def _conv_weight_sizes(model: Path) -> dict[str, int]:
    """Conv node name -> weight element count: at a conv's own resolution, its share of the work."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    sizes = {init.name: int(np.prod(init.dims)) for init in graph.initializer}
    return {n.name: sizes.get(n.input[1], 0) for n in graph.node
            if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1}


def _count_convs(model: Path) -> int:
    import onnx

    return sum(n.op_type in ("Conv", "ConvTranspose") for n in onnx.load(str(model), load_external_data=False).graph.node)


def _accuracy_control(model: Path, candidate: Path, data: CalibrationDataset, ref: B.Reference,
                      info: ModelInfo, budget: B.Budget, log: B.SearchLog) -> tuple[list[str], B.Measurement]:
    from srkit.calibration.openvino import quantize_nncf_accuracy_control

    def metric(path: Path) -> float:
        m = B.measure(path, ref, info, "openvino")
        return m.parity_db if budget.mode == B.BudgetMode.PARITY else m.int8_psnr_y

    # NNCF bounds a drop from the fp32 metric; fp32 parity with itself is capped at 99 dB by measure()
    parity = budget.mode == B.BudgetMode.PARITY
    max_drop = 99.0 - budget.min_parity_db if parity else budget.max_drop_db
    quantize_nncf_accuracy_control(model, candidate, data, validation=ref.images, metric=metric,
                                   max_drop=max_drop)
    m = B.measure(candidate, ref, info, "openvino")
    held = m.holds(budget)
    log.attempts.append(B.Attempt(["(chosen by NNCF)"], m, held))
    if not held:
        raise ParityError(f"int8 cannot meet the budget ({budget.describe()}): {m.describe(budget)}; "
                          "no model written")
    return [], m
