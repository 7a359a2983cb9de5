"""Pipeline graphs: an exported tensor model wrapped so that 8-bit (or 16-bit) images go in and come out.

`compose(model, info, io)` returns a new ONNX model whose input is `image`, uint8 (uint16 for `rgb16`)
`[N, H, W, C]` (NHWC, as decoders hand images over) and whose output is `upscaled`, the same dtype,
`[N, s*H, s*W, C]`. Everything srkit's host code does around the model is inside the graph, so an app can
embed the file with a plain runtime and get `srkit upscale`'s pixels:

- cast and scale to 0-1;
- Y-channel models: BT.601 luma (MATLAB `rgb2ycbcr`) as a 1x1 convolution; the chroma is upscaled with
  Pillow's bicubic (a = -0.5, taps outside the image dropped and the rest renormalised, half-pixel centres);
  YCbCr -> RGB as a 1x1 convolution;
- padding to the model's size multiple (bottom/right, by reflection, as the host path pads) and cropping back;
- `Round` (half to even, as numpy's rint), `Clip`, then `Cast` (a bare cast truncates).

The chroma upscale by an integer factor s is a fixed polyphase filter: zero-pad by 2, a grouped 5x1
convolution making s row phases per plane, a grouped 1x5 one making s column phases of each (Pillow's 1-D
cubic weights at each output phase), then `DepthToSpace` (CRD). Pillow renormalises the taps that stay inside
the image; with zero padding the same result is `conv(plane) / conv(ones)`, and `conv(ones)` is separable and
depends only on (H, W): a row sum times a column sum, computed in the graph at the input's size. This
matches Pillow's float resize to float rounding and, in a prototype, ran 2.6x faster on OpenVINO bf16 than an
equivalent cubic `Resize` (45 vs 118 ms at 1080p).

Every node, initializer and intermediate name added here starts with `PREFIX`: backends that lower
precision (OpenVINO bf16 on a CPU) keep these nodes in fp32, so colour and rounding lose nothing.

Only `onnx` and numpy are used (this is core: the runtime composes pipelines when it loads a model).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import numpy as np

from srkit import imaging
from srkit.errors import InputError, UnsupportedModelError
from srkit.meta import PREFIX as META_PREFIX
from srkit.meta import Color, Io, ModelInfo

PREFIX = "srkit_io/"
INPUT_NAME = "image"
OUTPUT_NAME = "upscaled"

# The ops a pipeline adds around the model. Each is in onnx-tensorrt's operator support list
# (onnx/onnx-tensorrt, docs/operators.md; see tests/test_pipeline.py for the table it is checked against).
PIPELINE_OPS = frozenset({
    "Cast", "Clip", "Concat", "ConstantOfShape", "Conv", "DepthToSpace", "Div", "Gather", "Mod", "Mul",
    "Pad", "ReduceMean", "Round", "Shape", "Slice", "Sub", "Transpose", "Add", "Identity", "Reshape", "Unsqueeze",
})
# Rounding.QUANTIZE adds QuantizeLinear (uint8) and compose(phase_form=...) an 8-bit DepthToSpace: srkit
# composes those only in memory, for the backends that run them


def pillow_cubic(x: float, a: float = -0.5) -> float:
    """Pillow's bicubic kernel (Resample.c `bicubic_filter`, a = -0.5)."""
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def phase_taps(scale: int) -> np.ndarray:
    """[scale, 5]: the 1-D weights of the input pixels i-2..i+2 for output pixel i*scale + p.

    Output pixel o sits at input coordinate (o + 0.5) / s - 0.5 (half-pixel centres) = i + d_p with
    d_p = (p + 0.5) / s - 0.5; tap i + k weighs cubic(k - d_p). Taps further than 2 weigh 0."""
    taps = np.zeros((scale, 5), dtype=np.float64)
    for p in range(scale):
        offset = (p + 0.5) / scale - 0.5
        taps[p] = [pillow_cubic(k - offset) for k in range(-2, 3)]
    return taps


def polyphase_weights(scale: int, planes: int) -> np.ndarray:
    """Grouped-conv weights [planes * s * s, 1, 5, 5]; channel c*s*s + i*s + j is row phase i, column phase j
    of plane c, which is the order DepthToSpace in CRD mode reads."""
    taps = phase_taps(scale)
    kernels = np.einsum("iy,jx->ijyx", taps, taps).reshape(scale * scale, 1, 5, 5)
    return np.concatenate([kernels] * planes).astype(np.float32)


class Rounding(str, Enum):
    """How the graph turns float levels into 8-bit pixels; both give the same pixels (np.rint, then clip).

    PORTABLE: `Mul` to levels, `Round`, `Clip`, `Cast` (every runtime, TensorRT included). This is what
    `srkit export --io` writes.
    QUANTIZE: one `QuantizeLinear` (scale 1/gain, zero point 0, uint8: round half to even and saturate) does
    the scaling, rounding, clipping and cast in one pass, a third of the time on ONNX Runtime's CPU kernels;
    TensorRT takes only int8 quantizers, so srkit uses this form in memory, for the backends that ask for it.
    uint16 output keeps the portable form (a uint16 QuantizeLinear needs opset 21).
    """

    PORTABLE = "portable"
    QUANTIZE = "quantize"


class PhaseForm(str, Enum):
    """How the phase-space tail (compose(phase_form=...)) holds an RGB image's output phases; same pixels.

    PLANES: [N, 3, s*s, H, W]; the luma phases [N, 1, s*s, H, W] broadcast onto the three chroma planes and the
    border normaliser is one [1, 1, s*s, H, W] product of row and column sums.
    CHANNELS: [N, 3*s*s, H, W] throughout (channel c*s*s + i*s + j, the order DepthToSpace in CRD mode reads):
    the luma phases tiled three times by Concat, the row and column sums divided out after both convolutions as
    two broadcasts (fused with the luma add and the rounding), and the 8-bit phases put in place by one 6-D Transpose
    (`_phases_to_nhwc`). No 5-D intermediate: OpenVINO's CPU plugin keeps convolution outputs channels-last
    and reorders the whole tensor before a 5-D Reshape (19 ms of 42 in its post stage, ESPCN x3 at 1080p,
    measured). ONNX Runtime runs the PLANES form as fast or faster and copies the 6-D Transpose element by
    element, so the form is each backend's choice (Backend.pipeline_phase_form).
    """

    PLANES = "planes"
    CHANNELS = "channels"


@dataclass
class _Graph:
    """Collects the nodes and constants a pipeline adds, each name under PREFIX."""

    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)
    count: int = 0
    image: str = ""  # the input image cast to float, NHWC: shapes are read from it (see `image_shape`)
    shape: str = ""  # its Shape, made once

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{PREFIX}{hint}_{self.count}"

    def const(self, hint: str, value: np.ndarray | np.generic) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, output: str | None = None,
           **attrs: Any) -> str:
        from onnx import helper

        out = output or self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out

    def image_shape(self) -> str:
        """int64 [4]: N, H, W, C of the image, read from its float copy: TensorRT takes 8-bit tensors only as
        network I/O consumed or produced by a Cast (onnx-tensorrt docs/operators.md), so not even Shape may
        read the uint8 input."""
        if not self.shape:
            self.shape = self.op("Shape", [self.image], "image_shape")
        return self.shape


@dataclass(frozen=True)
class _Inner:
    """What the pipeline needs to know of the wrapped tensor model."""

    input_name: str
    output_name: str
    input_elem: int  # onnx TensorProto element type of the model's input (FLOAT or FLOAT16)
    output_elem: int
    opset: int


def pixel_peak(io: Io) -> float:
    return 65535.0 if io == Io.RGB16 else 255.0


def io_channels(io: Io) -> int:
    return 3 if io in (Io.RGB8, Io.RGB16) else 1


def check_composable(info: ModelInfo, io: Io) -> None:
    """Refuse combinations the host path does not define either."""
    if io == Io.TENSOR:
        raise InputError("--io tensor is the plain model; there is no pipeline to add")
    if info.io != Io.TENSOR:
        raise InputError(f"this model is already a pipeline model (srkit.io {info.io.value}); "
                         "export from the tensor model or its checkpoint")
    if io == Io.Y8 and info.color != Color.Y:
        raise InputError("--io y8 (a luma plane in and out) needs a Y-channel model")
    if info.color != Color.Y and info.in_channels != 3:
        raise UnsupportedModelError(f"cannot build a pipeline for a {info.in_channels}-channel RGB model")


def compose(model: Any, info: ModelInfo, io: Io, *, rounding: Rounding = Rounding.PORTABLE,
            phase_form: PhaseForm | None = None) -> Any:
    """tensor model (onnx.ModelProto) + its ModelInfo -> a pipeline ModelProto for `io` (metadata included).

    `rounding`: how float levels become pixels (see Rounding). `phase_form` (None: none): for a Y-channel model
    whose graph ends in DepthToSpace (ESPCN), leave that node out and do the colour and rounding on its input,
    the s*s output phases at the input's size, held in that PhaseForm, then put the 8-bit phases in place in one
    pass (see `_phase_tail`); the same pixels with two float DepthToSpace passes at the output's size gone.
    Composed in memory for the backends that ask for it: `srkit export --io` keeps the float DepthToSpace
    (TensorRT's shuffle layers take no 8-bit tensors)."""
    from onnx import TensorProto

    check_composable(info, io)
    inner = _describe_inner(model)
    # 8-bit only: ONNX Runtime has no uint16 DepthToSpace
    wants_tail = phase_form is not None and info.color == Color.Y and io != Io.RGB16
    tail = _phase_tail(model, info, inner) if wants_tail else None
    if tail is not None:
        inner = replace(inner, output_name=tail.input[0])
    g = _Graph()
    image_dtype = TensorProto.UINT16 if io == Io.RGB16 else TensorProto.UINT8
    channels = io_channels(io)
    # cast first: the 8-bit image is touched by this Cast only (TensorRT), and the input is the small end
    g.image = g.op("Cast", [INPUT_NAME], "pixels_nhwc", to=TensorProto.FLOAT)
    pixels = g.op("Transpose", [g.image], "pixels", perm=[0, 3, 1, 2])
    hw = _height_width(g)
    peak = pixel_peak(io)
    chroma = None
    if info.color == Color.Y and io == Io.Y8:
        planes = g.op("Div", [pixels, g.const("peak", np.float32(peak))], "y")
    elif info.color == Color.Y and channels == 3:
        luma_chroma = _luma_and_chroma_terms(g, pixels, peak)
        planes = _slice_channels(g, luma_chroma, 0, 1, "y")
        chroma = _slice_channels(g, luma_chroma, 1, 4, "chroma_terms")
    elif info.color == Color.Y:  # a gray image: its luma is an affine map of the gray level (imaging.gray_to_y)
        gain = float(imaging._RGB2YCBCR[0].sum()) / peak
        planes = g.op("Add", [g.op("Mul", [pixels, g.const("gain", np.float32(gain))]),
                              g.const("offset", np.float32(imaging._YCBCR_OFFSET[0]))], "y")
    else:
        planes = g.op("Div", [pixels, g.const("peak", np.float32(peak))], "rgb")
        if channels == 1:  # gray through an RGB model: the same plane three times, the mean taken after
            planes = g.op("Concat", [planes, planes, planes], "gray3", axis=1)
    out = _run_inner(g, planes, hw, info, inner, phases=tail is not None)
    form = phase_form if tail is not None else None
    if chroma is not None:  # RGB levels = luma gain x the model's Y + the upscaled chroma terms
        big_chroma = _upscale_chroma(g, chroma, hw, info.scale, planes=3, phases=form)
        # in luma units (levels / luma gain): the gain is applied once, by the rounding step
        levels = g.op("Add", [big_chroma, _luma_like(g, out, form)], "levels_over_gain")
        gain = _luma_gain(peak)
    elif info.color == Color.Y and io != Io.Y8:  # gray out: imaging.y_to_gray, then to levels
        gain = peak / float(imaging._RGB2YCBCR[0].sum())
        levels = g.op("Sub", [out, g.const("offset", np.float32(imaging._YCBCR_OFFSET[0]))], "levels_over_gain")
    else:
        if info.color != Color.Y and channels == 1:
            out = _reduce_mean_channels(g, out, inner.opset)
        levels, gain = out, peak
    _to_pixels(g, levels, float(gain), peak, image_dtype, rounding,
               phases=_PhaseLayout(info.scale, channels, hw, form) if form is not None else None)
    return _assemble(model, info, io, g, inner, image_dtype, channels, leave_out=tail)


# ---- pieces ----------------------------------------------------------------------------------------
def _describe_inner(model: Any) -> _Inner:
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UnsupportedModelError(
            f"a pipeline wraps a model with one input and one output; this one has {len(inputs)} and "
            f"{len(graph.output)}"
        )
    names = {INPUT_NAME, OUTPUT_NAME}
    used = {o for n in graph.node for o in n.output} | {inputs[0].name}
    if names & used or any(n.startswith(PREFIX) for n in used):
        raise UnsupportedModelError(f"the model already uses the names {sorted(names & used)} or {PREFIX}*")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 11:
        raise UnsupportedModelError(f"a pipeline needs opset 11 or later (the model has {opset})")
    return _Inner(inputs[0].name, graph.output[0].name, inputs[0].type.tensor_type.elem_type,
                  graph.output[0].type.tensor_type.elem_type, opset)


def _height_width(g: _Graph) -> tuple[str, str]:
    """int64 [1] tensors H and W of the NHWC input."""
    shape = g.image_shape()
    h = g.op("Gather", [shape, g.const("axis_h", np.array([1], np.int64))], "h", axis=0)
    w = g.op("Gather", [shape, g.const("axis_w", np.array([2], np.int64))], "w", axis=0)
    return h, w


def _slice_channels(g: _Graph, x: str, start: int, end: int, hint: str) -> str:
    return g.op("Slice", [x, g.const("start", np.array([start], np.int64)), g.const("end", np.array([end], np.int64)),
                          g.const("axis_c", np.array([1], np.int64))], hint)


def _conv1x1(g: _Graph, x: str, matrix: np.ndarray, bias: np.ndarray, hint: str) -> str:
    weight = matrix.astype(np.float32).reshape(matrix.shape[0], matrix.shape[1], 1, 1)
    return g.op("Conv", [x, g.const("w", weight), g.const("b", bias.astype(np.float32))], hint)


def _luma_gain(peak: float) -> float:
    """YCbCr -> RGB levels: each output channel is luma_gain x (Y - 16/255 + a chroma term); BT.601 gives
    luma the same weight (255/219) in R, G and B (imaging.ycbcr_planes_to_rgb, scaled to levels)."""
    return float(imaging._YCBCR2RGB[:, 0].mean() * peak)


def _luma_and_chroma_terms(g: _Graph, levels: str, peak: float) -> str:
    """[N,3,H,W] RGB levels -> [N,4,H,W]: BT.601 Y in 0-1 (the model's input, imaging.rgb_to_ycbcr), then the
    three chroma terms of the YCbCr -> RGB conversion, in luma units (divided by the luma gain).

    The conversion back is linear and the bicubic resize is linear with weights that sum to one, so the chroma
    terms can be formed at the input's resolution and resized instead of Cb and Cr: the same numbers with no
    colour matrix at the output's resolution. The chroma term of channel k is
    sum_j (YCbCr2RGB[k, 1:] . RGB2YCbCr[1:, j]) x level_j / luma_gain - 16/255 (the offsets of Cb and Cr
    cancel; the constant survives the resize because its weights are renormalised to sum to one).
    """
    to_y = imaging._RGB2YCBCR[:1] / peak
    chroma = imaging._YCBCR2RGB[:, 1:] @ imaging._RGB2YCBCR[1:] / _luma_gain(peak)
    matrix = np.concatenate([to_y, chroma])
    bias = np.concatenate([imaging._YCBCR_OFFSET[:1], np.full(3, -imaging._YCBCR_OFFSET[0])])
    return _conv1x1(g, levels, matrix, bias, "luma_chroma")


def _run_inner(g: _Graph, planes: str, hw: tuple[str, str], info: ModelInfo, inner: _Inner, *,
               phases: bool = False) -> str:
    """Pad to the size multiple, feed the model (casting for fp16-io models), crop back to scale x input (in
    phase space: back to the input's size, each position holding its s*s output pixels)."""
    from onnx import TensorProto

    m = info.size_multiple
    x = _pad_to_multiple(g, planes, hw, m) if m > 1 else planes
    if inner.input_elem == TensorProto.FLOAT:
        g.op("Identity", [x], output=inner.input_name)
    else:  # an --fp16-io model takes float16
        g.op("Cast", [x], output=inner.input_name, to=inner.input_elem)
    out = inner.output_name
    if inner.output_elem != TensorProto.FLOAT:
        out = g.op("Cast", [out], "model_out", to=TensorProto.FLOAT)
    if m > 1:
        s = g.const("scale", np.array([1 if phases else info.scale], np.int64))
        ends = g.op("Concat", [g.op("Mul", [hw[0], s]), g.op("Mul", [hw[1], s])], "crop_end", axis=0)
        out = g.op("Slice", [out, g.const("zeros", np.array([0, 0], np.int64)), ends,
                             g.const("axes_hw", np.array([2, 3], np.int64))], "cropped")
    return out


def _pad_to_multiple(g: _Graph, x: str, hw: tuple[str, str], multiple: int) -> str:
    """Bottom/right reflection padding up to the multiple (imaging.pad_to_multiple; needs H, W >= multiple)."""
    m = g.const("multiple", np.array([multiple], np.int64))
    extra = [g.op("Mod", [g.op("Sub", [m, g.op("Mod", [side, m])]), m]) for side in hw]
    pads = g.op("Concat", [g.const("pad_begin", np.zeros(6, np.int64)), *extra], "pads", axis=0)
    return g.op("Pad", [x, pads], "padded", mode="reflect")


def _upscale_chroma(g: _Graph, chroma: str, hw: tuple[str, str], scale: int, *, planes: int,
                    phases: PhaseForm | None = None) -> str:
    """[N,C,H,W] -> [N,C,sH,sW] with Pillow's bicubic (see the module docstring), `phases`: left as the output
    phases instead, in that PhaseForm.

    The 2-D filter is separable (Pillow runs it as two 1-D passes), so it runs as two grouped convolutions: a
    5x1 one making the s row phases of each plane, then a 1x5 one making the s column phases of each of those
    (channel c*s*s + i*s + j, the order DepthToSpace in CRD mode reads): 30 multiply-adds per output pixel
    instead of 25 per phase and input pixel (measured on ONNX Runtime, 640x360 x3: 4.6 vs 7.8 ms). Pillow's
    border renormalisation is separable too: the row and column sums of the taps inside the image, computed
    on a column and a row of ones at the input's size."""
    taps = phase_taps(scale).astype(np.float32)
    pad_hw = g.const("pad2", np.array([0, 0, 2, 2, 0, 0, 2, 2], np.int64))
    rows = g.op("Conv", [g.op("Pad", [chroma, pad_hw], mode="constant"),
                         g.const("cubic_rows", np.concatenate([taps.reshape(scale, 1, 5, 1)] * planes))],
                "chroma_row_phases", group=planes)
    row_sums, col_sums = _border_sums(g, hw, taps)
    cols = g.const("cubic_cols", np.concatenate([taps.reshape(scale, 1, 1, 5)] * planes * scale))
    num = g.op("Conv", [rows, cols], "chroma_phases", group=planes * scale)
    if phases == PhaseForm.CHANNELS:
        # channel c*s*s + i*s + j divides by row sum i ([1, C*s*s, H, 1]) and column sum j ([1, C*s*s, 1, W]),
        # two broadcasts that a runtime fuses with the luma add and the rounding into one pass
        channel = np.arange(planes * scale * scale)
        row_of = g.const("row_phase_of_channel", (channel // scale % scale).astype(np.int64))
        by_rows = g.op("Div", [num, g.op("Gather", [row_sums, row_of], "row_sums_c", axis=1)], "rows_normalised")
        return g.op("Div", [by_rows, g.op("Concat", [col_sums] * (planes * scale), "col_sums_c", axis=1)],
                    "chroma_phases_normalised")
    normalised = g.op("Div", [g.op("Reshape", [num, _phase_shape(g, hw, [planes, scale * scale])], "chroma_5d"),
                              _border_norm(g, hw, row_sums, col_sums, scale)], "chroma_phases_normalised")
    if phases == PhaseForm.PLANES:
        return normalised
    flat = g.op("Reshape", [normalised, _phase_shape(g, hw, [planes * scale * scale])], "chroma_phases_4d")
    return g.op("DepthToSpace", [flat], "chroma_big", blocksize=scale, mode="CRD")


def _luma_like(g: _Graph, luma: str, form: PhaseForm | None) -> str:
    """The model's luma in the chroma's layout: as is at the output's size, [N, 1, s*s, H, W] for PLANES
    phases (broadcast onto the planes), tiled to [N, 3*s*s, H, W] for CHANNELS phases."""
    if form == PhaseForm.PLANES:
        return g.op("Unsqueeze", [luma, g.const("axis_1", np.array([1], np.int64))], "luma_phases")
    if form == PhaseForm.CHANNELS:
        return g.op("Concat", [luma] * 3, "luma_phases", axis=1)
    return luma


def _border_sums(g: _Graph, hw: tuple[str, str], taps: np.ndarray) -> tuple[str, str]:
    """[1, s, H, 1] and [1, s, 1, W]: for row phase i at input row y, the sum of its taps that fall inside the
    image (1 away from the borders); the same for column phase j at input column x."""
    from onnx import TensorProto, helper

    scale = taps.shape[0]
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    ones_col = g.op("ConstantOfShape", [g.op("Concat", [g.const("one_one", np.array([1, 1], np.int64)), hw[0],
                                                        g.const("one", np.array([1], np.int64))], "col_shape",
                                             axis=0)], "ones_col", value=one)
    ones_row = g.op("ConstantOfShape", [g.op("Concat", [g.const("one_one_one", np.array([1, 1, 1], np.int64)),
                                                        hw[1]], "row_shape", axis=0)], "ones_row", value=one)
    pad_h = g.const("pad_h", np.array([0, 0, 2, 0, 0, 0, 2, 0], np.int64))
    pad_w = g.const("pad_w", np.array([0, 0, 0, 2, 0, 0, 0, 2], np.int64))
    row_sums = g.op("Conv", [g.op("Pad", [ones_col, pad_h], mode="constant"),
                             g.const("row_taps", taps.reshape(scale, 1, 5, 1))], "row_sums")
    col_sums = g.op("Conv", [g.op("Pad", [ones_row, pad_w], mode="constant"),
                             g.const("col_taps", taps.reshape(scale, 1, 1, 5))], "col_sums")
    return row_sums, col_sums


def _border_norm(g: _Graph, hw: tuple[str, str], row_sums: str, col_sums: str, scale: int) -> str:
    """[1, 1, s*s, H, W]: for output phase (i, j) at input pixel (y, x), row sum i at y times column sum j at x."""
    i_axis = g.op("Unsqueeze", [row_sums, g.const("axis_2", np.array([2], np.int64))], "row_sums_i")
    j_axis = g.op("Unsqueeze", [col_sums, g.const("axis_1", np.array([1], np.int64))], "col_sums_j")
    both = g.op("Mul", [i_axis, j_axis], "norm_ij")  # [1, s, s, H, W]
    shape = g.op("Concat", [g.const("norm_lead", np.array([1, 1, scale * scale], np.int64)), *hw], "norm_shape",
                 axis=0)
    return g.op("Reshape", [both, shape], "norm_phases")


def _reduce_mean_channels(g: _Graph, x: str, opset: int) -> str:
    if opset >= 18:  # ReduceMean's axes moved from an attribute to an input in opset 18
        return g.op("ReduceMean", [x, g.const("axis_c", np.array([1], np.int64))], "gray", keepdims=1)
    return g.op("ReduceMean", [x], "gray", axes=[1], keepdims=1)


@dataclass(frozen=True)
class _PhaseLayout:
    """Levels held as output phases: [N, C, s*s, H, W] (PLANES), [N, C*s*s, H, W] (CHANNELS), [N, s*s, H, W]
    for one plane either way."""

    scale: int
    channels: int
    hw: tuple[str, str]
    form: PhaseForm


def _phase_shape(g: _Graph, hw: tuple[str, str], middle: list[int]) -> str:
    """int64 [N, *middle, H, W] for a Reshape (N from the image's shape)."""
    n = g.op("Gather", [g.image_shape(), g.const("axis_n", np.array([0], np.int64))], "n", axis=0)
    return g.op("Concat", [n, g.const("middle", np.array(middle, np.int64)), *hw], "phase_shape", axis=0)


def _to_pixels(g: _Graph, levels: str, gain: float, peak: float, dtype: int, rounding: Rounding,
               phases: _PhaseLayout | None = None) -> None:
    """levels x gain, rounded half to even (np.rint), clipped to the pixel range, cast, put in place as NHWC
    (from phases: by a DepthToSpace or one 6-D Transpose first). QUANTIZE makes the 8-bit pixels in one pass
    and moves them as bytes; PORTABLE places the float levels and casts last, so that the only op touching an
    8-bit tensor is that Cast (TensorRT takes uint8 only as network I/O, onnx-tensorrt docs/operators.md)."""
    from onnx import TensorProto

    if rounding == Rounding.QUANTIZE and dtype == TensorProto.UINT8:
        pixels = g.op("QuantizeLinear", [levels, g.const("inv_gain", np.float32(1.0 / gain)),
                                         g.const("zero_point", np.uint8(0))], "pixels_out")
        _place(g, pixels, phases, output=OUTPUT_NAME)
        return
    scaled = g.op("Mul", [levels, g.const("gain", np.float32(gain))], "levels")
    rounded = g.op("Round", [scaled], "rounded")
    clipped = g.op("Clip", [rounded, g.const("lo", np.float32(0.0)), g.const("hi", np.float32(peak))], "clipped")
    g.op("Cast", [_place(g, clipped, phases)], output=OUTPUT_NAME, to=dtype)


def _place(g: _Graph, x: str, phases: _PhaseLayout | None, output: str | None = None) -> str:
    """[N, C, sH, sW] (or phases) -> [N, sH, sW, C]."""
    if phases is not None and phases.form == PhaseForm.CHANNELS and phases.channels > 1:
        return _phases_to_nhwc(g, x, phases, output)
    if phases is not None:
        s = phases.scale
        if phases.channels > 1:
            x = g.op("Reshape", [x, _phase_shape(g, phases.hw, [phases.channels * s * s])], "pixel_phases")
        x = g.op("DepthToSpace", [x], "pixels_in_place", blocksize=s, mode="CRD")
    return g.op("Transpose", [x], "pixels_nhwc_out", output=output, perm=[0, 2, 3, 1])


def _phases_to_nhwc(g: _Graph, pixels: str, phases: _PhaseLayout, output: str | None) -> str:
    """[N, C*s*s, H, W] phases straight to the NHWC image with one 6-D Transpose ([N, C, i, j, H, W] ->
    [N, H, i, W, j, C]) instead of DepthToSpace then Transpose: one pass over the output instead of two and a
    layout change on OpenVINO (post stage 33.6 -> 28.3 ms, ESPCN x3 at 1080p, measured). ONNX Runtime copies
    such a transpose element by element (much slower), so its PLANES form keeps DepthToSpace."""
    s, c = phases.scale, phases.channels
    six = g.op("Reshape", [pixels, _phase_shape(g, phases.hw, [c, s, s])], "pixel_phases_6d")
    placed = g.op("Transpose", [six], "pixels_placed", perm=[0, 4, 2, 5, 3, 1])
    n = g.op("Gather", [g.image_shape(), g.const("axis_n", np.array([0], np.int64))], "n", axis=0)
    big = [g.op("Mul", [side, g.const("scale", np.array([s], np.int64))]) for side in phases.hw]
    shape = g.op("Concat", [n, *big, g.const("channels", np.array([c], np.int64))], "out_shape", axis=0)
    return g.op("Reshape", [placed, shape], "pixels_nhwc_out", output=output)


def _phase_tail(model: Any, info: ModelInfo, inner: _Inner) -> Any | None:
    """The model's last node when it is the DepthToSpace that makes its output (blocksize = scale, one output
    channel: CRD and DCR agree) and its input is float32; else None (the pipeline keeps the model whole)."""
    from onnx import TensorProto, helper

    last = next((n for n in model.graph.node if inner.output_name in n.output), None)
    if last is None or last.op_type != "DepthToSpace" or info.in_channels != 1:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in last.attribute}
    if attrs.get("blocksize") != info.scale or inner.output_elem != TensorProto.FLOAT:
        return None
    return last


def _assemble(model: Any, info: ModelInfo, io: Io, g: _Graph, inner: _Inner, dtype: int, channels: int, *,
              leave_out: Any | None = None) -> Any:
    from onnx import helper

    graph = model.graph
    if info.static_shape:
        h, w = info.static_shape
        in_dims: list[Any] = ["batch", h, w, channels]
        out_dims: list[Any] = ["batch", h * info.scale, w * info.scale, channels]
    else:
        in_dims, out_dims = ["batch", "height", "width", channels], ["batch", "out_height", "out_width", channels]
    after = _downstream_of(inner.output_name, g.nodes)
    pre = [n for n in g.nodes if not set(n.input) & after]
    post = [n for n in g.nodes if set(n.input) & after]
    new_graph = helper.make_graph(
        pre + [n for n in graph.node if n is not leave_out] + post, f"{graph.name or 'model'}_{io.value}",
        [helper.make_tensor_value_info(INPUT_NAME, dtype, in_dims)],
        [helper.make_tensor_value_info(OUTPUT_NAME, dtype, out_dims)],
        initializer=list(graph.initializer) + g.initializers,
        value_info=list(graph.value_info),
    )
    new_graph.sparse_initializer.extend(graph.sparse_initializer)
    composed = helper.make_model(new_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    composed.producer_name, composed.producer_version = model.producer_name, model.producer_version
    for prop in model.metadata_props:
        if prop.key != META_PREFIX + "io":
            entry = composed.metadata_props.add()
            entry.key, entry.value = prop.key, prop.value
    entry = composed.metadata_props.add()
    entry.key, entry.value = META_PREFIX + "io", io.value
    entry = composed.metadata_props.add()  # where `split` cuts the graph: the wrapped model's input and output
    entry.key, entry.value = CUT_KEY, f"{inner.input_name},{inner.output_name}"
    return composed


CUT_KEY = META_PREFIX + "pipeline_cut"


@dataclass(frozen=True)
class Stages:
    """A pipeline cut in three: pre (image -> model input), the model, post (model output and image -> image)."""

    pre: Any
    model: Any
    post: Any
    model_input: str
    model_output: str


def split(composed: Any) -> Stages:
    """Cut a composed pipeline at the wrapped model, so a runtime that lowers precision per compiled model
    can run pre and post in fp32 and only the model at the lower precision (OpenVINO's bf16 hint lowers
    every Convolution, the colour matrices included, and honours no per-node opt-out on CPU)."""
    from onnx.shape_inference import infer_shapes
    from onnx.utils import Extractor

    props = {p.key: p.value for p in composed.metadata_props}
    if CUT_KEY not in props:
        raise UnsupportedModelError("this model is not an srkit pipeline (no srkit.pipeline_cut)")
    model_in, model_out = props[CUT_KEY].split(",")
    # post recomputes what it needs from the image (1x1 work at the input's size) rather than receiving
    # full-size intermediates from pre: less to copy between the stages
    extractor = Extractor(infer_shapes(composed))  # the extractor needs every cut value's type
    pre = extractor.extract_model([INPUT_NAME], [model_in])
    model = extractor.extract_model([model_in], [model_out])
    post = extractor.extract_model([model_out, INPUT_NAME], [OUTPUT_NAME])
    for part in (pre, model, post):
        del part.metadata_props[:]
    return Stages(pre, model, post, model_in, model_out)


def _downstream_of(value: str, nodes: list[Any]) -> set[str]:
    """The values computed from `value` (nodes are in topological order): what runs after the model."""
    after = {value}
    for n in nodes:
        if set(n.input) & after:
            after.update(n.output)
    return after


def min_side(info: ModelInfo) -> int:
    """The smallest input side a pipeline takes (reflection padding needs more pixels than it adds)."""
    return max(1, info.size_multiple)


def describe_io(io: Io) -> str:
    """One line for `srkit info` and the export summary."""
    if io == Io.TENSOR:
        return "tensor: float32 NCHW in 0-1 (the host does colour, padding and rounding)"
    dtype = "uint16" if io == Io.RGB16 else "uint8"
    c = io_channels(io)
    what = {Io.RGB8: "RGB", Io.RGB16: "RGB", Io.GRAY8: "gray", Io.Y8: "BT.601 luma (video range)"}[io]
    return (f"{io.value}: {dtype} [N,H,W,{c}] {what} in -> {dtype} [N,sH,sW,{c}] out "
            f"(input '{INPUT_NAME}', output '{OUTPUT_NAME}'; colour, padding, rounding inside the graph)")


__all__ = ["INPUT_NAME", "OUTPUT_NAME", "PIPELINE_OPS", "PREFIX", "compose", "describe_io", "min_side",
           "phase_taps", "pillow_cubic", "polyphase_weights"]
