"""ModelInfo for ncnn models (`model.param` + `model.bin`), which have no place for metadata.

srkit's own ncnn exports carry a sidecar `model.json` beside the `.param`: a flat JSON object with the same
`srkit.*` keys an exported ONNX model holds in its `metadata_props`, plus the ncnn facts (`srkit.ncnn_input`,
`srkit.ncnn_output`: the blob names; `srkit.ncnn_weights`: fp16 or fp32 storage; `srkit.feed`: how to feed it).

A `.param` without a sidecar (the files of the Real-ESRGAN ncnn package, for instance) is *read*, not guessed:
the blob names from the graph (the first Input layer's blob, the last layer's top blob), the input channels from
the first convolution's weight count, and the scale by following every blob's size through the graph (a
PixelShuffle of r multiplies it by r, an Interp by its scale factors, a strided convolution or a Reorg divides
it). A graph whose output is not exactly an integer multiple of its input (unpadded convolutions that shrink the
image, as in waifu2x / Real-CUGAN files, which `srkit export` imports to ONNX instead; fixed-size resizes;
reshapes) is refused rather than half-understood.
A one-channel graph without a sidecar is refused too: nothing in it says whether it takes luma or gray.

This module is core (no srkit package imports beyond errors/meta) so the runtime and the CLI can both use it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from srkit._fs import sha256_file
from srkit.errors import InputError, UnsupportedModelError
from srkit.meta import Color, ModelInfo, Precision

MAGIC = "7767517"
SIDECAR_SUFFIX = ".json"
# the blob names srkit writes (realesrgan-ncnn-vulkan and Upscayl feed "data" and extract "output")
INPUT_BLOB, OUTPUT_BLOB = "data", "output"
# deep networks: 32 low-resolution pixels of tile overlap bound the cost of tiling (as srkit's arch specs do)
MAX_RECEPTIVE_FIELD = 32
# layers that change the spatial size in ways this reader does not follow: refused without a sidecar
RESHAPING = {"Crop", "Padding", "Reshape", "Permute", "Flatten", "Slice", "Deconvolution", "DeconvolutionDepthWise",
             "Unfold", "Fold", "Gemm", "MatMul"}


@dataclass(frozen=True)
class NcnnLayer:
    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, str] = field(default_factory=dict)

    def number(self, key: int, default: float) -> float:
        value = self.params.get(key)
        try:
            return float(value) if value is not None else default
        except ValueError:  # an array parameter where a number was expected
            raise UnsupportedModelError(f"ncnn layer {self.name}: parameter {key} is {value!r}") from None


def sidecar_path(param: str | Path) -> Path:
    return Path(param).with_suffix(SIDECAR_SUFFIX)


def sidecar_text(info: ModelInfo) -> str:
    return json.dumps(info.to_props(), indent=2, sort_keys=True) + "\n"


def parse_layers(text: str, where: str) -> list[NcnnLayer]:
    """The layers of a text `.param` (magic, `layer_count blob_count`, one layer per line)."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != [MAGIC]:
        raise InputError(f"{where} is not an ncnn text .param file (its first line must be {MAGIC})")
    layers = []
    for number, fields in enumerate(lines[2:], start=3):
        try:
            n_in, n_out = int(fields[2]), int(fields[3])
        except (IndexError, ValueError):
            raise InputError(f"{where}: line {number} is not an ncnn layer") from None
        blobs = fields[4 : 4 + n_in + n_out]
        params = dict(token.split("=", 1) for token in fields[4 + n_in + n_out :] if "=" in token)
        try:
            parsed = {int(k): v for k, v in params.items()}
        except ValueError:
            raise InputError(f"{where}: line {number} has a malformed parameter") from None
        layers.append(NcnnLayer(fields[0], fields[1], tuple(blobs[:n_in]), tuple(blobs[n_in:]), parsed))
    return layers


def read_layers(param: str | Path) -> list[NcnnLayer]:
    param = Path(param)
    if not param.is_file():
        raise InputError(f"ncnn model not found: {param}")
    try:
        return parse_layers(param.read_text(encoding="utf-8"), str(param))
    except UnicodeDecodeError:
        raise InputError(f"{param} is not a text .param file (a binary .param.bin is not supported)") from None


def blob_names(layers: list[NcnnLayer], where: str) -> tuple[str, str]:
    """(input, output): the first Input layer's blob and the last layer's top blob."""
    inputs = [layer for layer in layers if layer.type == "Input"]
    if not inputs or len(inputs[0].tops) != 1:
        raise UnsupportedModelError(f"{where}: no Input layer with one blob")
    if not layers[-1].tops:
        raise UnsupportedModelError(f"{where}: the last layer has no output blob")
    return inputs[0].tops[0], layers[-1].tops[0]


def read_ncnn_info(param: str | Path) -> ModelInfo:
    """ModelInfo of an ncnn model: from its srkit sidecar when there is one, else read from the graph."""
    param = Path(param)
    if param.suffix.lower() != ".param":
        raise InputError(f"{param}: an ncnn model is a .param file (with its .bin beside it)")
    if not param.is_file():
        raise InputError(f"ncnn model not found: {param}")
    if not param.with_suffix(".bin").is_file():
        raise InputError(f"{param}: its weights {param.with_suffix('.bin').name} are not beside it")
    sidecar = sidecar_path(param)
    if sidecar.is_file():
        try:
            props = json.loads(sidecar.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{sidecar} is not a readable srkit sidecar ({exc})") from None
        if not isinstance(props, dict):
            raise InputError(f"{sidecar} is not a srkit sidecar (a JSON object of srkit.* keys)")
        return ModelInfo.from_props({str(k): str(v) for k, v in props.items()}, where=str(sidecar))
    info = graph_info(read_layers(param), str(param))
    # the identity srkit gives an ONNX model imported from these files (srkit.models.ncnn), so the bench can pair them
    info.source_sha256 = sha256_file(param.with_suffix(".bin"))
    return info


# ---- reading a graph without a sidecar -----------------------------------------------------------------------
@dataclass
class _Blob:
    factor: Fraction | None  # spatial size / input size; None: a constant or a global vector (broadcasts)
    rf: float = 0.0  # receptive field radius so far, in input pixels
    channel_ratio: Fraction | None = None  # channels / input channels, until the first convolution


def graph_info(layers: list[NcnnLayer], where: str) -> ModelInfo:
    """Scale, input channels, size multiple and receptive field of a graph, by following blob sizes."""
    input_blob, output_blob = blob_names(layers, where)
    blobs: dict[str, _Blob] = {input_blob: _Blob(Fraction(1), 0.0, Fraction(1))}
    denominators = {1}
    in_channels: int | None = None
    for layer in layers:
        if layer.type == "Input":
            continue
        sources = [blobs[b] for b in layer.bottoms if b in blobs]
        if len(sources) != len(layer.bottoms):
            raise UnsupportedModelError(f"{where}: layer {layer.name} reads a blob no earlier layer makes")
        out, first_conv_cin = _follow(layer, sources, where)
        if first_conv_cin is not None and in_channels is None:
            in_channels = first_conv_cin
        if out.factor is not None:
            denominators.add(out.factor.denominator)
        for top in layer.tops:
            blobs[top] = out
    result = blobs.get(output_blob)
    if result is None or result.factor is None or result.factor.denominator != 1 or result.factor < 1:
        factor = None if result is None else result.factor
        raise UnsupportedModelError(f"{where}: the output is {factor} times the input, not an integer scale")
    if in_channels is None:
        raise UnsupportedModelError(f"{where}: no convolution reads the input; cannot tell its channels")
    if in_channels != 3:
        raise UnsupportedModelError(
            f"{where}: a {in_channels}-channel ncnn graph without its srkit sidecar ({sidecar_path(where).name}); "
            "nothing in it says whether it takes luma, gray or RGB"
        )
    multiple = math.lcm(*denominators)
    return ModelInfo(
        arch="ncnn",
        scale=int(result.factor),
        in_channels=3,
        color=Color.RGB,
        size_multiple=multiple,
        precision=Precision.FP32,
        opset=0,  # not an ONNX model
        source=str(Path(where).resolve()),
        receptive_field=min(MAX_RECEPTIVE_FIELD, max(1, math.ceil(result.rf))),
        extra={"ncnn_input": input_blob, "ncnn_output": output_blob, "format": "ncnn"},
    )


def _follow(layer: NcnnLayer, sources: list[_Blob], where: str) -> tuple[_Blob, int | None]:
    """The blob a layer makes from its inputs' sizes, and the input channels when it is the first conv."""
    spatial = [s for s in sources if s.factor is not None]
    if not sources:  # MemoryData: a constant
        return _Blob(None), None
    if not spatial:  # computed from constants or global vectors only
        return _Blob(None), None
    factors = {s.factor for s in spatial}
    if len(factors) != 1:
        sizes = sorted(str(f) for f in factors)
        raise UnsupportedModelError(f"{where}: layer {layer.name} joins blobs of different sizes {sizes}")
    factor = spatial[0].factor
    assert factor is not None
    rf = max(s.rf for s in spatial)
    ratio = spatial[0].channel_ratio if len(spatial) == 1 else None
    kind = layer.type
    if kind in RESHAPING:
        raise UnsupportedModelError(f"{where}: layer {layer.name} ({kind}) changes the image size in a way srkit "
                                    "does not follow without a sidecar; srkit runs ncnn graphs whose output is "
                                    "exactly scale x the input")
    if kind in ("Convolution", "ConvolutionDepthWise"):
        return _convolution(layer, factor, rf, ratio, where)
    if kind == "PixelShuffle":
        r = int(layer.number(0, 1))
        return _Blob(factor * r, rf, ratio / (r * r) if ratio else None), None
    if kind == "Reorg":
        s = int(layer.number(0, 1))
        return _Blob(factor / s, rf, ratio * s * s if ratio else None), None
    if kind == "Interp":
        return _interp(layer, factor, rf, ratio, sources, where), None
    if kind == "Pooling":
        if int(layer.number(4, 0)):  # global pooling: a per-channel vector that broadcasts back
            return _Blob(None), None
        raise UnsupportedModelError(f"{where}: layer {layer.name} is a local pooling; not followed without a sidecar")
    if kind == "Concat":
        ratio = None
    return _Blob(factor, rf, ratio), None


def _convolution(
    layer: NcnnLayer, factor: Fraction, rf: float, ratio: Fraction | None, where: str
) -> tuple[_Blob, int | None]:
    kw = int(layer.number(1, 1))
    kh = int(layer.number(11, kw))
    dw = int(layer.number(2, 1))
    dh = int(layer.number(12, dw))
    sw = int(layer.number(3, 1))
    sh = int(layer.number(13, sw))
    pad = int(layer.number(4, 0))
    pads = (pad, int(layer.number(14, pad)), int(layer.number(15, pad)), int(layer.number(16, pad)))
    need_w, need_h = dw * (kw - 1), dh * (kh - 1)
    same = pad in (-233, -234)  # ncnn's "SAME" padding markers
    if sw != sh:
        raise UnsupportedModelError(f"{where}: convolution {layer.name} has unequal strides {sw}x{sh}")
    if not same and (pads[0] + pads[2] != need_w or pads[1] + pads[3] != need_h):
        raise UnsupportedModelError(
            f"{where}: convolution {layer.name} is not size-preserving (kernel {kw}x{kh}, padding {pads}); the "
            "graph shrinks the image (waifu2x / Real-CUGAN files: their tools pad each tile first), which the ncnn "
            "backend does not run; import it with `srkit export FILE.param` (where srkit's module pads as the "
            "tools do) and run the ONNX model"
        )
    cin = None
    if ratio is not None:
        group = layer.number(7, 1) if layer.type == "ConvolutionDepthWise" else 1
        count = layer.number(6, 0) * group
        per_input = count / max(1.0, layer.number(0, 1) * kw * kh)
        channels = Fraction(int(per_input)) / ratio
        cin = int(channels) if channels.denominator == 1 and channels > 0 else None
    radius = max(need_w, need_h) / 2 / float(factor)
    return _Blob(factor / sw, rf + radius, None), cin


def _interp(
    layer: NcnnLayer, factor: Fraction, rf: float, ratio: Fraction | None, sources: list[_Blob], where: str
) -> _Blob:
    if int(layer.number(6, 0)) and len(sources) == 2 and sources[1].factor is not None:
        return _Blob(sources[1].factor, rf, ratio)  # resized to the size of its second input
    hs, ws = layer.number(1, 0.0), layer.number(2, 0.0)
    if hs <= 0 or hs != ws:
        raise UnsupportedModelError(f"{where}: Interp {layer.name} resizes to a fixed size or by unequal factors; "
                                    "not followed without a sidecar")
    scaled = factor * Fraction(hs).limit_denominator(16)
    return _Blob(scaled, rf + (2.0 / float(factor) if int(layer.number(0, 1)) == 3 else 0.0), ratio)

