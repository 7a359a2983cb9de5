"""Fake-quantized fine-tuning with NNCF's PyTorch backend, and the export of the result as symmetric Q/DQ ONNX.

Recipe, and why:
- `nncf.quantize` on the float module (min/max activation ranges, as srkit's ONNX quantizers: SR nets regress
  pixel values, so clipping highlights costs more than a coarse step) inserts fake quantizers: per-channel
  symmetric int8 weights, per-tensor symmetric activations in front of each conv. The tensor entering
  PixelShuffle gets none: DepthToSpace stays float (docs/background.md 9), as in the post-training models.
- NNCF makes a non-negative activation (the 0-1 input) unsigned, uint8 with zero point 0. TensorRT takes only
  signed int8 Q/DQ (docs/background.md 7), so those quantizers are switched to signed before fine-tuning, with
  the same range: 0-1 in 128 steps, exactly what ONNX Runtime's symmetric quantizer does. Fine-tuning then
  learns with the step the deployed model has.
- NNCF's CPU overflow fix (7-bit weights in the first layer, for pre-VNNI x86) is off: TensorRT and ONNX Runtime
  run 8-bit weights, and NNCF cannot export a 7-bit quantizer as an ONNX Q/DQ pair.
- Weights, biases and quantizer scales then train with Adam on MSE against the ground truth, cosine learning
  rate. The budget compares the int8 model with the ORIGINAL fp32 model, so the fine-tuning may recover
  what quantization costs and no more is claimed.

Two NNCF run-time defaults are replaced while srkit trains (and restored after): NNCF compiles a C++ extension
for its CPU fake-quantize kernels on first use (a compiler at run time, and it timed out at NNCF's 60 s on a
loaded two-core machine), and wraps its torch-native fallback in torch.compile (about 50 s on the first step,
recompiled per shape). For a network of this size the eager torch-native functions (NNCF's own fallback,
`ReferenceQuantizedFunctions`) are faster end to end and need no compiler.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from srkit._optional import require
from srkit.export.exporter import ExportOptions, trace
from srkit.meta import ModelInfo
from srkit.models.loader import LoadedModel
from srkit.qat.data import PatchSampler
from srkit.qat.settings import INIT_SAMPLES, QatSettings


@contextlib.contextmanager
def _eager_nncf_kernels() -> Iterator[None]:
    """NNCF's torch-native fake-quantize functions, uncompiled, for the duration (see the module docstring)."""
    from nncf.torch.quantization import reference
    from nncf.torch.quantization.extensions import QuantizedFunctionsCPU

    saved_namespace = QuantizedFunctionsCPU._loaded_namespace
    wrappers = (reference.torch_forward, reference.torch_backward)
    saved_compiled = [w._compiled_func for w in wrappers]
    QuantizedFunctionsCPU._loaded_namespace = reference.ReferenceQuantizedFunctions
    for w in wrappers:
        w._compiled_func = w._func
    try:
        yield
    finally:
        QuantizedFunctionsCPU._loaded_namespace = saved_namespace
        for w, compiled in zip(wrappers, saved_compiled, strict=True):
            w._compiled_func = compiled


def _quantizers(model: torch.nn.Module) -> list[Any]:
    from nncf.torch.quantization.layers import BaseQuantizer

    return [m for m in model.modules() if isinstance(m, BaseQuantizer)]


INPUT_CENTRE = 0.5  # the middle of the CONTRACT's 0-1 input range


class CentredConv(torch.nn.Module):
    """`conv(x)` computed as `conv_unpadded(zero_pad(x) - c) + c * sum(W)`: equal for a zero-padded conv, padded
    borders included (the padding is applied before the shift). Why: a symmetric int8 quantizer on a 0-1 input
    uses only its 128 non-negative levels (a 7-bit input, the largest single int8 loss measured on ESPCN x3);
    on the centred input it uses all 255."""

    def __init__(self, conv: torch.nn.Conv2d, centre: float) -> None:
        super().__init__()
        pad_h, pad_w = (int(p) for p in conv.padding)  # an int pair: checked by centre_input_conv
        self.pads = [pad_w, pad_w, pad_h, pad_h]
        self.centre = centre
        self.conv = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,  # type: ignore[arg-type]
                                    stride=conv.stride, padding=0, dilation=conv.dilation,  # type: ignore[arg-type]
                                    groups=conv.groups, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight)
            bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
            self.conv.bias.copy_(bias + centre * conv.weight.sum(dim=(1, 2, 3)))  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.nn.functional.pad(x, self.pads) - self.centre)


def centre_input_conv(module: torch.nn.Module, centre: float = INPUT_CENTRE) -> str | None:
    """Replace the first Conv2d of `module` (the input conv of srkit's conv nets) by its CentredConv, in place;
    returns its name, or None where the first conv is not a plain zero-padded one (then nothing changes).
    The rewrite is exact whichever conv it is; it only helps the one that reads the model input."""
    for name, child in module.named_modules():
        if not isinstance(child, torch.nn.Conv2d):
            continue
        if (child.padding_mode != "zeros" or isinstance(child.padding, str)
                or not all(isinstance(p, int) for p in child.padding)):
            return None
        parent = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
        setattr(parent, name.rpartition(".")[2], CentredConv(child, centre))
        return name
    return None


def insert_fake_quant(module: torch.nn.Module, init_batches: list[np.ndarray]) -> torch.nn.Module:
    """A copy of `module` with NNCF fake quantizers, ranges from `init_batches` (NCHW float32)."""
    nncf = require("nncf", extra="quant", purpose="quantization-aware training")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    from nncf.torch.quantization.layers import SymmetricQuantizer

    from srkit.calibration.openvino import quiet_unless_terminal

    data = nncf.Dataset([torch.from_numpy(b) for b in init_batches])
    centred = copy.deepcopy(module).eval()
    centred_conv = centre_input_conv(centred)
    # the centring Sub is no conv: srkit quantizes conv inputs only, and a quantizer in front of the Sub would
    # bring back the 7-bit input the centring removes
    names = [f"{centred_conv}/sub/0"] if centred_conv else []
    with quiet_unless_terminal():  # NNCF's own progress bars on stdout
        quantized = nncf.quantize(
            centred, data, preset=nncf.QuantizationPreset.PERFORMANCE,
            target_device=nncf.TargetDevice.CPU, subset_size=len(init_batches),
            ignored_scope=nncf.IgnoredScope(names=names, types=["pixel_shuffle"], validate=False),
            advanced_parameters=AdvancedQuantizationParameters(
                activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
                overflow_fix=OverflowFix.DISABLE))
    for q in _quantizers(quantized):
        if not isinstance(q, SymmetricQuantizer):  # the PERFORMANCE preset is symmetric throughout
            raise RuntimeError(f"NNCF inserted a {type(q).__name__}; srkit's int8 is symmetric")
        if not q.signed:
            q.signed = True  # same scale, signed levels: TensorRT's int8 (module docstring)
    return quantized


def fine_tune(module: torch.nn.Module, sampler: PatchSampler, settings: QatSettings,
              progress: Callable[[int, float], None] | None = None) -> torch.nn.Module:
    """Fake-quantized copy of `module`, fine-tuned; `module` itself is left as it was."""
    with torch.random.fork_rng(), _eager_nncf_kernels():
        torch.manual_seed(settings.seed)
        init = [sampler.batch(1)[0] for _ in range(INIT_SAMPLES)]
        model = insert_fake_quant(module, init)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
        for step in range(settings.steps):
            for group in opt.param_groups:  # cosine to zero: the last steps settle the rounding
                group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
            lr_batch, hr_batch = (torch.from_numpy(a) for a in sampler.batch(settings.batch))
            loss = torch.nn.functional.mse_loss(model(lr_batch), hr_batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress is not None:
                progress(step + 1, float(loss.item()))
        model.eval()
    return model


def export_qdq(model: torch.nn.Module, loaded: LoadedModel, info: ModelInfo, opset: int) -> Any:
    """The fake-quantized model as an ONNX ModelProto with QuantizeLinear/DequantizeLinear pairs, traced by
    srkit's exporter (same names, dynamic axes and graph clean-up as an fp32 export)."""
    from nncf.torch.quantization.layers import QuantizerExportMode

    for q in _quantizers(model):
        q.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
    with _eager_nncf_kernels(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NNCF's tracing notes; the graph is checked after
        return trace(dataclasses.replace(loaded, module=model), info, ExportOptions(opset=opset))

