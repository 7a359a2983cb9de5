"""OpenVINO int8 through NNCF post-training quantization.

NNCF quantizes the ONNX model itself (its ONNX backend) and the result is an ONNX file with Q/DQ nodes placed
for OpenVINO's CPU plugin, which OpenVINO runs as int8 (measured: the same speed as NNCF on the OpenVINO IR).
Keeping ONNX means the srkit metadata travels in `metadata_props`, so `srkit info`, the runtime and the bench
read the quantized model like any other; OpenVINO IR would need its own metadata reader.

Methods: `performance` (symmetric activations, NNCF's default for CNNs), `mixed` (asymmetric activations),
and `accuracy-control` (nncf.quantize_with_accuracy_control with a PSNR validation function and max drop).

Two NNCF defaults are overridden because SR networks regress pixel values, where a classifier only ranks logits:
- Activation ranges are the global min/max over the calibration set. NNCF's default averages each sample's
  extremes, which set ESPCN's input range to 0-0.67 on our photos: every highlight clipped, 2.5 dB lost.
- Bias correction is the full per-layer one, not the fast one: after quantization it re-estimates each
  layer's bias from the int8 model's own (already shifted) inputs. On ESPCN x3 that halves the PSNR cost
  (all layers int8: 0.56 dB with fast correction, 0.26 dB with full; measured on chelsea and coffee).

And one rewrite of NNCF's output works around OpenVINO: its CPU plugin (2026.4) computes an int8 Conv wrongly
when the Conv reads a Concat of signed int8 (zero point 0) tensors; ONNX Runtime and a float64 reference agree
with each other, OpenVINO is off by a third of the output range. Dense blocks (RRDBNet, RDN) are made of that
pattern: Real-ESRGAN x4plus int8 measured 5 dB parity on OpenVINO, 25 dB on ONNX Runtime. The same numbers
stored as uint8 with zero point 128 are exactly the same values, and OpenVINO computes those right (25.7 dB).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from srkit._optional import require
from srkit.calibration.dataset import CalibrationDataset
from srkit.errors import InputError


class NncfMethod(str, Enum):
    PERFORMANCE = "performance"
    MIXED = "mixed"
    ACCURACY_CONTROL = "accuracy-control"

    @classmethod
    def parse(cls, value: str | None) -> NncfMethod:
        try:
            return cls((value or "performance").lower())
        except ValueError:
            raise InputError(f"unknown OpenVINO (NNCF) method {value!r}; choose one of: "
                             + ", ".join(m.value for m in cls)) from None


def _common(nncf: Any, method: NncfMethod, dataset: CalibrationDataset, input_name: str,
            nodes_to_exclude: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    data = nncf.Dataset(list(dataset.get_data()), lambda x: {input_name: x})
    presets = nncf.QuantizationPreset
    preset = presets.MIXED if method == NncfMethod.MIXED else presets.PERFORMANCE
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    kwargs: dict[str, Any] = {
        "preset": preset, "target_device": nncf.TargetDevice.CPU, "subset_size": len(dataset),
        "fast_bias_correction": False,
        "advanced_parameters": AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX),
    }
    if nodes_to_exclude:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(nodes_to_exclude))
    return data, kwargs


def quantize_nncf(model: Path, output: Path, dataset: CalibrationDataset, *, method: NncfMethod,
                  nodes_to_exclude: Sequence[str] = ()) -> None:
    import onnx

    nncf = require("nncf", extra="quant", purpose="OpenVINO int8")
    proto = onnx.load(str(model))
    data, kwargs = _common(nncf, method, dataset, proto.graph.input[0].name, nodes_to_exclude)
    correction = "full"
    with quiet_unless_terminal():
        try:
            quantized = nncf.quantize(proto, data, **kwargs)
        except KeyError:
            # NNCF 3.x's ONNX bias correction cannot cut the subgraph around an unquantized conv that feeds
            # a residual or a concat (RRDBNet's conv_first, even with nothing kept in float: KeyError in
            # get_input_name); the fast correction cuts no subgraph. Recorded in the model, measured as usual.
            correction = "fast (NNCF's full bias correction failed on this graph)"
            quantized = nncf.quantize(proto, data, **{**kwargs, "fast_bias_correction": True})
    quantized.metadata_props.add(key="srkit.quant_bias_correction", value=correction)
    unsigned_concat_inputs(quantized)
    onnx.save(quantized, str(output))


def unsigned_concat_inputs(proto: Any) -> int:
    """Store each int8 activation quantizer (zero point 0) whose values reach a Concat as uint8 with zero point
    128: Q/DQ give exactly the same numbers (int8 [-128, 127] is uint8 [0, 255] shifted by 128), and OpenVINO's
    CPU plugin then computes the Conv after the Concat correctly (see the module docstring). Returns how many
    quantizers were rewritten."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    value_info = {info.name: info for info in graph.value_info}
    rewritten = 0
    for quant in [n for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) == 3]:
        zero = initializers.get(quant.input[2])
        if zero is None or zero.data_type != onnx.TensorProto.INT8 or numpy_helper.to_array(zero).ndim:
            continue
        dequants = [n for n in readers.get(quant.output[0], []) if n.op_type == "DequantizeLinear"]
        if not any(r.op_type == "Concat" for d in dequants for r in readers.get(d.output[0], [])):
            continue
        shifted = f"{quant.input[2]}_uint8"
        if shifted not in initializers:
            value = int(numpy_helper.to_array(zero)) + 128
            initializers[shifted] = numpy_helper.from_array(np.array(value, np.uint8), shifted)
            graph.initializer.append(initializers[shifted])
        for node in (quant, *dequants):
            node.input[2] = shifted
        if quant.output[0] in value_info:  # the recorded type of the quantized tensor changes with it
            value_info[quant.output[0]].type.tensor_type.elem_type = onnx.TensorProto.UINT8
        rewritten += 1
    used = {name for node in graph.node for name in node.input}
    stale = [init for init in graph.initializer if init.name not in used]  # the replaced int8 zero points
    for init in stale:  # ONNX Runtime would warn about each one on every load
        graph.initializer.remove(init)
    return rewritten


def quantize_nncf_accuracy_control(model: Path, output: Path, dataset: CalibrationDataset, *,
                                   validation: Sequence[Any], metric: Callable[[Path], float],
                                   max_drop: float, nodes_to_exclude: Sequence[str] = ()) -> None:
    """NNCF's accuracy-controlled mode: quantize, then return layers to float, most sensitive first (ranked
    by NNCF), until `metric` (higher is better, here PSNR in dB) drops by at most `max_drop`."""
    import onnx

    nncf = require("nncf", extra="quant", purpose="OpenVINO int8")
    proto = onnx.load(str(model))
    data, kwargs = _common(nncf, NncfMethod.PERFORMANCE, dataset, proto.graph.input[0].name, nodes_to_exclude)

    def validate(candidate: Any, _items: Any) -> tuple[float, None]:
        with tempfile.TemporaryDirectory(prefix="srkit-nncf-") as tmp:
            path = Path(tmp) / "candidate.onnx"
            onnx.save(candidate, str(path))
            return metric(path), None

    # the same calibration choices as quantize_nncf, under the name this entry point gives them
    kwargs["advanced_quantization_parameters"] = kwargs.pop("advanced_parameters")
    with quiet_unless_terminal():
        quantized = nncf.quantize_with_accuracy_control(
            proto, data, nncf.Dataset(list(validation)), validate, max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE, **kwargs,
        )
    onnx.save(quantized, str(output))


@contextlib.contextmanager
def quiet_unless_terminal() -> Iterator[None]:
    """NNCF draws its own progress bars on stdout; srkit shows progress only when stderr is a terminal."""
    if sys.stderr.isatty():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield
