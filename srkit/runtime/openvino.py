"""OpenVINO backend. The inference precision is set explicitly and reported: on a CPU with AVX512-BF16/AMX,
OpenVINO otherwise runs bf16 by default (openvino #19355), which would silently change the numbers."""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from srkit._optional import require
from srkit.errors import BackendUnavailableError, InputError
from srkit.meta import Io, ModelInfo, Precision
from srkit.pipeline import INPUT_NAME as PIPELINE_INPUT
from srkit.pipeline import PhaseForm, Rounding
from srkit.runtime.base import Backend

HINTS = {Precision.FP32: "f32", Precision.FP16: "f16", Precision.BF16: "bf16"}


VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


@dataclass
class OpenVINOOptions:
    performance_hint: str = "LATENCY"  # LATENCY: one image at a time, all cores on it; THROUGHPUT: parallel requests
    cache_dir: str | Path | None = None  # compiled blobs reused across processes: the second start skips compiling


def performance_hint(options: OpenVINOOptions) -> str:
    """LATENCY (default: one image at a time, all cores on it) or THROUGHPUT (parallel requests, batches)."""
    hint = str(options.performance_hint or "LATENCY").upper()
    if hint not in PERFORMANCE_HINTS:
        choices = ", ".join(PERFORMANCE_HINTS)
        raise InputError(f"unknown OpenVINO performance hint {hint!r}; choose one of: {choices}")
    return hint


class _Compiled:
    """A compiled model and a pool of its idle infer requests. An InferRequest runs one call at a time
    ("Infer Request is busy", or another thread's output): each call takes an idle request, or makes one
    when all are busy in other threads, and gives it back afterwards."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.idle.put(compiled.create_infer_request())
        self.outputs = len(compiled.outputs)
        self.input_names = [i.get_any_name() for i in compiled.inputs]

    def run(self, inputs: dict[Any, np.ndarray]) -> list[np.ndarray]:
        try:
            request = self.idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            request.infer(inputs)
            # copied before the request goes back to the pool, where the next call overwrites its buffers
            return [np.array(request.get_output_tensor(i).data, copy=True) for i in range(self.outputs)]
        finally:
            self.idle.put(request)


class OpenVINOBackend(Backend):
    name = "openvino"
    title = "OpenVINO"
    module_name = "openvino"
    Options = OpenVINOOptions
    thread_safe = True  # a pool of infer requests (_Compiled)
    runs_pipelines = True
    judged_by_peak = True
    # ESPCN x3 at 1080p, the post stage of the bf16 route: 48.1 ms in the PLANES form with Round/Clip/Cast,
    # 36.6 in the CHANNELS form with QuantizeLinear (no 5-D reorder; the u8 convert fused into the last
    # element-wise pass instead of a reference-kernel Convert), 28.3 with its 6-D Transpose placement
    pipeline_rounding = Rounding.QUANTIZE
    pipeline_phase_form = PhaseForm.CHANNELS

    @classmethod
    def peak_precision(cls, asked: str, ran: str) -> str:
        return ran  # an int8 model runs its float layers at the hint (int8+bf16): that peak is the fair one

    @classmethod
    def devices(cls) -> list[str]:
        ov = require("openvino", extra="openvino")
        return [d.lower() for d in ov.Core().available_devices] + ["auto"]

    @classmethod
    def capabilities(cls, device: str) -> list[str]:
        ov = require("openvino", extra="openvino")
        core = ov.Core()
        name = device.upper().split(".")[0]
        if name.startswith("AUTO"):  # AUTO / AUTO:CPU run on the CPU here; AUTO:GPU,... names its first
            name = (name.partition(":")[2].split(",")[0] or "CPU").split(".")[0]
        if name not in {d.split(".")[0] for d in core.available_devices}:
            return []
        return [str(c) for c in core.get_property(name, "OPTIMIZATION_CAPABILITIES")]

    @classmethod
    def precision_candidates(
        cls, device: str, model_precision: Precision, capabilities: Sequence[str] = ()
    ) -> list[Precision]:
        """fp32, then bf16/f16 where the CPU computes them natively (GPUs and NPUs compute f16)."""
        if model_precision != Precision.FP32:
            return [model_precision]
        caps = {c.upper() for c in capabilities}
        found = [Precision.FP32]
        if device.lower().startswith(("cpu", "auto")):
            return found + [p for p, cap in ((Precision.BF16, "BF16"), (Precision.FP16, "FP16")) if cap in caps]
        return [*found, Precision.FP16]

    @classmethod
    def graph_call(
        cls, path: Path, x: np.ndarray, *, precision: str, device: str, threads: int | None
    ) -> Callable[[], object]:
        ov = require("openvino", extra="openvino")
        hints = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hints.get(precision, "f32")}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        request = ov.Core().compile_model(str(path), device.upper(), config).create_infer_request()
        return lambda: request.infer({0: x})

    @classmethod
    def splits_pipelines(cls, precision: Precision, model_precision: Precision) -> bool:
        """A lowered inference precision (bf16/f16, also for an int8 model's float layers) runs a pipeline as
        pre (fp32), the model, post (fp32): see _compile_in_stages."""
        return precision in (Precision.BF16, Precision.FP16, Precision.AUTO)

    @classmethod
    def bench_devices(cls) -> list[str]:
        return [d for d in cls.devices() if d.split(".")[0] in ("cpu", "gpu")]  # AUTO is left to explicit runs

    @classmethod
    def bench_precisions(
        cls, device: str, info: ModelInfo, int8: Path | None, capabilities: set[str]
    ) -> list[tuple[str, Path | None]]:
        """fp32 and the inference precisions the device offers; the int8 model, with its float layers at bf16
        too where the CPU has it (reported as int8+bf16)."""
        out: list[tuple[str, Path | None]] = [("fp32", None)]
        if device == "cpu":
            out += [(p, None) for p, cap in (("bf16", "BF16"), ("fp16", "FP16")) if cap in capabilities]
        else:
            out.append(("fp16", None))
        if int8:
            out.append(("int8", int8))
            if device == "cpu" and "BF16" in capabilities:
                out.append(("bf16", int8))
        return out

    def _device(self, core: Any) -> str:
        device = self.options.device.upper()
        have = list(core.available_devices)
        kinds = {d.split(".")[0] for d in have}
        # AUTO, AUTO:GPU,CPU, MULTI:..., HETERO:...: every device named after the colon must exist
        virtual, _, listed = device.partition(":")
        named = [d for d in listed.split(",") if d] if virtual in VIRTUAL_DEVICES else [device]
        for name in named:
            if name.split(".")[0] not in kinds:
                raise BackendUnavailableError(f"OpenVINO has no device {name}; available: {', '.join(have)}")
        return device

    def _config(self, core: Any, device: str) -> dict[str, Any]:
        config: dict[str, Any] = {"PERFORMANCE_HINT": performance_hint(self.options.specific)}
        precision = self.options.precision
        if self.info.precision == Precision.INT8:
            # a quantized model carries its own int8 layers; the hint governs the layers left in float
            precision = Precision.FP32 if precision in (Precision.INT8, Precision.AUTO) else precision
        if precision == Precision.AUTO:
            precision = Precision.FP32
        if precision == Precision.INT8:  # int8 lives in the model (Q/DQ), not in a compile hint
            raise InputError(f"this model is {self.info.precision.value}; make an int8 one for --precision "
                             f"int8 with: srkit quantize {self.model_path} --backend openvino")
        if precision not in HINTS:
            raise InputError(f"OpenVINO cannot run an {self.info.precision.value} model at {precision.value}")
        if device.startswith("CPU") and precision == Precision.FP16:
            supported = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if "FP16" not in supported:
                raise InputError(f"this CPU has no fp16 arithmetic (it offers {', '.join(supported)}); try bf16")
        config["INFERENCE_PRECISION_HINT"] = HINTS[precision]
        if self.options.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.options.threads)
        if cache := self.options.specific.cache_dir:
            # compiled blobs are reused across processes: the second start skips compilation
            Path(cache).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache)
        return config

    def _activate(self) -> None:
        ov = require("openvino", extra="openvino")
        core = ov.Core()
        device = self._device(core)
        config = self._config(core, device)
        self.stages: list[_Compiled] = []
        if self.info.io != Io.TENSOR and config["INFERENCE_PRECISION_HINT"] != "f32":
            self.stages = self._compile_in_stages(core, device, config)
            self.compiled = self.stages[1].compiled
        else:
            model = core.read_model(self.graph if self.graph is not None else str(self.model_path))
            self.compiled = core.compile_model(model, device, config)
            self.stages = [_Compiled(self.compiled)]
        self.ran_device = device
        self.ran_precision = self._compiled_property("INFERENCE_PRECISION_HINT", config)
        self.ran_hint = self._compiled_property("PERFORMANCE_HINT", config).upper()
        self.execution_devices = [str(d) for d in self.compiled.get_property("EXECUTION_DEVICES")]

    def _compile_in_stages(self, core: Any, device: str, config: dict[str, Any]) -> list[_Compiled]:
        """A pipeline at a lowered precision: the bf16/f16 hint would lower the colour matrices and the chroma
        filter too (every Convolution; this CPU plugin honours no per-node opt-out), costing ~35 dB of match
        with the host path. So pre and post run as their own fp32 models and only the model at the hint."""
        from srkit.pipeline import split

        if self.graph is None:
            raise InputError("a pipeline model file runs at fp32 on OpenVINO; for bf16 give the tensor model")
        import onnx

        stages = split(onnx.load_from_string(self.graph))
        self.model_output_name = stages.model_output  # what post takes from the model stage
        fp32 = {**config, "INFERENCE_PRECISION_HINT": "f32"}
        compiled = []
        for part, part_config in ((stages.pre, fp32), (stages.model, config), (stages.post, fp32)):
            model = core.read_model(part.SerializeToString())
            compiled.append(_Compiled(core.compile_model(model, device, part_config)))
        return compiled

    def _compiled_property(self, name: str, config: dict[str, Any]) -> str:
        """What the compiled model reports; AUTO/MULTI do not expose every property, so then what was set."""
        try:
            value = self.compiled.get_property(name)
        except RuntimeError:
            value = config[name]
        text = value.to_string() if hasattr(value, "to_string") else str(value)
        return text.split(".")[-1].lower() if name == "INFERENCE_PRECISION_HINT" else text.split(".")[-1]

    def _infer(self, x: np.ndarray) -> np.ndarray:
        if len(self.stages) == 3:
            pre, model, post = self.stages
            (model_in,) = pre.run({0: x})
            (model_out,) = model.run({0: model_in})
            # post takes the model's output and, where it needs it (chroma, the crop's size), the image
            feeds = {self.model_output_name: model_out, PIPELINE_INPUT: x}
            return post.run({name: feeds[name] for name in post.input_names})[0]
        out = self.stages[0].run({0: x})[0]
        return out.astype(np.float32, copy=False) if self.info.io == Io.TENSOR else out

    def _close(self) -> None:
        del self.stages, self.compiled

    def describe(self) -> dict[str, Any]:
        ran = getattr(self, "ran_precision", None)
        names = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}
        precision = names.get(ran, ran) if ran else self.options.precision.value
        if self.info.precision == Precision.INT8:
            precision = f"int8+{precision}"
        return {**super().describe(), "device": getattr(self, "ran_device", self.options.device).lower(),
                "precision": precision, "inference_precision_hint": ran,
                "performance_hint": getattr(self, "ran_hint", None),
                "execution_devices": getattr(self, "execution_devices", None)}
