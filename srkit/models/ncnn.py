"""Import Real-ESRGAN ncnn models (`.param` text + `.bin` weights) as BasicSR-named state dicts.

Supported networks (what Real-ESRGAN's ncnn files contain):

- RRDBNet x4 (Real-ESRGAN x4plus, 23 blocks; x4plus-anime, 6 blocks): conv_first, N RRDB blocks, conv_body,
  two nearest x2 upsamplings (conv_up1, conv_up2), conv_hr, conv_last.
- SRVGGNetCompact (realesr-animevideov3): conv + activation pairs, PixelShuffle and a nearest-upsampled input
  residual.

- Real-CUGAN (realcugan-ncnn-vulkan: SE and Pro, x2/x3/x4) and waifu2x's CUNet (x1, x2): two U-Nets of
  unpadded convolutions with SE blocks (Pooling, InnerProduct, Scale/BinaryOp) -> `srkit.models.realcugan`.
- waifu2x upconv_7 (anime_style_art_rgb, photo): six unpadded convs and a transposed conv ->
  `srkit.models.waifu2x`.

The graphs of the last two shrink their input; the ncnn tools pad each tile first. The torch modules pad
inside `forward` (see their docstrings), so ncnn's own output on a padded tile is what they reproduce.

Refused with UnsupportedModelError: anything else, including the `_UP2X` / `_UP3X` files, which are the x4
network followed by a bicubic downscale (an ncnn `Interp` after the residual add). Their weights are the same
as the `_UP4X` file's, so import that one; a network that up- then down-scales is not an x2/x3 SR model.

The `.bin` layout (ncnn's ModelBin): per Convolution a 4-byte tag then the weights [Cout, Cin, kh, kw]
(0x01306B47 = fp16, aligned to 4 bytes; 0 or 0x0002C056 = raw fp32; any other non-zero tag = a 256-entry fp32
table followed by uint8 indices; 0x000D4B38 = int8, refused), then the fp32 bias without a tag. Deconvolution
stores its weights [Cout, Cin, kh, kw] the same way (PyTorch's ConvTranspose2d holds [Cin, Cout, kh, kw]);
InnerProduct [out, in]. PReLU slopes are raw fp32 without a tag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from srkit.errors import InputError, UnsupportedModelError

MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_RAW = 0x0002C056

# Layer types that carry no weights in the .bin
WEIGHTLESS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle", "ReLU", "Pooling",
              "Scale", "Crop"}
# Convolution param ids (ncnn's Convolution::load_param)
NUM_OUTPUT, KERNEL_W, DILATION_W, STRIDE_W, PAD_LEFT, BIAS_TERM, WEIGHT_SIZE = 0, 1, 2, 3, 4, 5, 6
ACTIVATION_TYPE, ACTIVATION_PARAMS, KERNEL_H = 9, 10, 11
ACT_NONE, ACT_RELU, ACT_LEAKY, ACT_SIGMOID = 0, 1, 2, 4
# Deconvolution: 0 num_output, 1 kernel, 3 stride, 4 pad, 5 bias, 6 weight size (as Convolution)
# InnerProduct: 0 num_output, 1 bias_term, 2 weight_data_size
IP_BIAS, IP_WEIGHT_SIZE = 1, 2
INTERP_NEAREST = 1
SUPPORTED = ("RRDBNet x4 (Real-ESRGAN x4plus, x4plus-anime, RealSR DF2K), SRVGGNetCompact (realesr-animevideov3), "
             "Real-CUGAN / waifu2x CUNet (x1-x4) and waifu2x upconv_7")

ParamValue = int | float | tuple[float, ...]


@dataclass(frozen=True)
class Layer:
    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, ParamValue] = field(default_factory=dict)

    def get(self, key: int, default: ParamValue = 0) -> ParamValue:
        return self.params.get(key, default)

    def as_int(self, key: int, default: int = 0) -> int:
        return int(self.get(key, default))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Graph:
    layers: tuple[Layer, ...]
    where: str

    @property
    def input_blob(self) -> str:
        inputs = [layer for layer in self.layers if layer.type == "Input"]
        if len(inputs) != 1 or len(inputs[0].tops) != 1:
            raise UnsupportedModelError(f"{self.where}: expected one Input layer, found {len(inputs)}")
        return inputs[0].tops[0]

    @property
    def output_blob(self) -> str:
        consumed = {b for layer in self.layers for b in layer.bottoms}
        produced = [t for layer in self.layers for t in layer.tops if t not in consumed]
        if len(produced) != 1:
            raise UnsupportedModelError(f"{self.where}: expected one output blob, found {produced}")
        return produced[0]

    def compute_layers(self) -> list[Layer]:
        """The layers that compute something (Input and Split only route blobs)."""
        return [layer for layer in self.layers if layer.type not in ("Input", "Split")]


@dataclass
class NcnnImport:
    """What a .param/.bin pair holds: architecture, what the graph says about it, BasicSR-named weights."""

    arch: str  # "rrdbnet", "srvgg", "realcugan" or "waifu2x"
    scale: int
    hyper: dict[str, object]  # read from the graph, cross-checked against detection from the weights
    state_dict: dict[str, np.ndarray]
    input_blob: str
    output_blob: str
    bin_path: Path
    # what the graph (not the weights) tells the module, e.g. the tool's padding mode; merged into the
    # hyperparameters detected from the weights
    graph_params: dict[str, object] = field(default_factory=dict)


# ---- .param ---------------------------------------------------------------------------------------
def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _parse_params(tokens: Sequence[str], where: str) -> dict[int, ParamValue]:
    params: dict[int, ParamValue] = {}
    for token in tokens:
        key_text, sep, value = token.partition("=")
        try:
            key = int(key_text)
            if key <= -23300:  # an array: id = -(key + 23300), value "count,v1,v2,..."
                count, *items = value.split(",")
                values = tuple(float(v) for v in items)
                if int(count) != len(values):
                    raise ValueError(f"array {token!r} declares {count} items")
                params[-(key + 23300)] = values
            elif sep:
                params[key] = _number(value)
            else:
                raise ValueError(f"no '=' in {token!r}")
        except ValueError as exc:
            raise InputError(f"{where}: malformed layer parameter {token!r} ({exc})") from None
    return params


def parse_param(text: str, where: str = "model.param") -> Graph:
    """The text .param format: magic, `layer_count blob_count`, then one layer per line."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != [str(MAGIC)]:
        raise InputError(f"{where} is not an ncnn text .param file (first line must be {MAGIC})")
    try:
        layer_count, _blob_count = (int(v) for v in lines[1])
    except (IndexError, ValueError):
        raise InputError(f"{where}: second line must be 'layer_count blob_count'") from None
    layers = []
    for number, fields in enumerate(lines[2:], start=3):
        try:
            kind, name, n_in, n_out = fields[0], fields[1], int(fields[2]), int(fields[3])
        except (IndexError, ValueError):
            raise InputError(f"{where}: line {number} is not an ncnn layer") from None
        blobs = fields[4 : 4 + n_in + n_out]
        if len(blobs) != n_in + n_out:
            raise InputError(f"{where}: line {number} ({name}) lists too few blobs")
        params = _parse_params(fields[4 + n_in + n_out :], f"{where} line {number}")
        layers.append(Layer(kind, name, tuple(blobs[:n_in]), tuple(blobs[n_in:]), params))
    if len(layers) != layer_count:
        raise InputError(f"{where} declares {layer_count} layers but holds {len(layers)} (truncated?)")
    return Graph(tuple(layers), where)


# ---- .bin -----------------------------------------------------------------------------------------
class _BinReader:
    def __init__(self, data: bytes, where: str) -> None:
        self.data, self.pos, self.where = data, 0, where

    def take(self, size: int, what: str) -> bytes:
        if self.pos + size > len(self.data):
            raise InputError(
                f"{self.where} is truncated: {what} needs {size} bytes at offset {self.pos}, "
                f"the file has {len(self.data)}"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def raw_fp32(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(4 * count, what), dtype="<f4").copy()

    def tagged(self, count: int, what: str) -> np.ndarray:
        """ncnn ModelBin::load(w, type=0): a tag says how the data is stored."""
        tag_bytes = self.take(4, f"{what} tag")
        tag = int.from_bytes(tag_bytes, "little")
        if tag == TAG_FP16:
            raw = self.take(_align4(2 * count), what)
            return np.frombuffer(raw[: 2 * count], dtype="<f2").astype(np.float32)
        if tag == TAG_INT8:
            raise UnsupportedModelError(f"{self.where}: {what} is int8-quantized ncnn data; "
                                        "srkit imports fp16 and fp32 weights")
        if tag == TAG_FP32_RAW or sum(tag_bytes) == 0:
            return self.raw_fp32(count, what)
        # any other non-zero flag: a 256-entry lookup table, then one uint8 index per value
        table = self.raw_fp32(256, f"{what} table")
        index = np.frombuffer(self.take(_align4(count), what)[:count], dtype=np.uint8)
        return table[index]


def _align4(size: int) -> int:
    return (size + 3) & ~3


@dataclass
class _Conv:
    layer: Layer
    weight: np.ndarray  # [Cout, Cin, kh, kw]
    bias: np.ndarray | None

    @property
    def activation(self) -> tuple[int, tuple[float, ...]]:
        params = self.layer.get(ACTIVATION_PARAMS, ())
        return self.layer.as_int(ACTIVATION_TYPE), params if isinstance(params, tuple) else (float(params),)


def read_weights(graph: Graph, data: bytes, where: str) -> dict[str, _Conv | np.ndarray]:
    """Layer name -> its weights (a _Conv, or PReLU slopes), read in layer order."""
    reader = _BinReader(data, where)
    weights: dict[str, _Conv | np.ndarray] = {}
    for layer in graph.layers:
        if layer.type in ("Convolution", "Deconvolution"):
            weights[layer.name] = _read_conv(layer, reader)
        elif layer.type == "InnerProduct":
            weights[layer.name] = _read_inner_product(layer, reader)
        elif layer.type == "PReLU":
            weights[layer.name] = reader.raw_fp32(max(1, layer.as_int(0)), f"{layer.name} slopes")
        elif layer.type not in WEIGHTLESS:
            raise UnsupportedModelError(
                f"{graph.where}: ncnn layer type {layer.type} ({layer.name}) is not part of a supported "
                f"network; srkit imports {SUPPORTED}"
            )
    if reader.pos != len(data):
        raise InputError(
            f"{where} has {len(data) - reader.pos} bytes more than its .param describes (a different model?)"
        )
    return weights


def _read_conv(layer: Layer, reader: _BinReader) -> _Conv:
    cout, kw = layer.as_int(NUM_OUTPUT), layer.as_int(KERNEL_W)
    kh, size = layer.as_int(KERNEL_H, kw), layer.as_int(WEIGHT_SIZE)
    if layer.as_int(8) != 0:  # int8_scale_term
        raise UnsupportedModelError(f"{layer.name}: int8-quantized ncnn convolutions are not supported")
    if layer.as_int(7, 1) != 1:  # group
        raise UnsupportedModelError(f"{layer.name}: grouped ncnn convolutions are not supported")
    cin, rem = divmod(size, max(1, cout * kh * kw))
    if rem or cin == 0:
        raise InputError(f"{layer.name}: weight_data_size {size} does not fit {cout} x {kh}x{kw} kernels")
    weight = reader.tagged(size, f"{layer.name} weights").reshape(cout, cin, kh, kw)
    bias = reader.raw_fp32(cout, f"{layer.name} bias") if layer.as_int(BIAS_TERM) else None
    return _Conv(layer, weight, bias)


def _read_inner_product(layer: Layer, reader: _BinReader) -> _Conv:
    """A fully connected layer, kept as a 1x1 convolution (how the SE blocks' PyTorch code holds it)."""
    cout, size = layer.as_int(NUM_OUTPUT), layer.as_int(IP_WEIGHT_SIZE)
    if layer.as_int(8) != 0:  # int8_scale_term
        raise UnsupportedModelError(f"{layer.name}: int8-quantized ncnn layers are not supported")
    cin, rem = divmod(size, max(1, cout))
    if rem or cin == 0:
        raise InputError(f"{layer.name}: weight_data_size {size} does not fit {cout} outputs")
    weight = reader.tagged(size, f"{layer.name} weights").reshape(cout, cin, 1, 1)
    bias = reader.raw_fp32(cout, f"{layer.name} bias") if layer.as_int(IP_BIAS) else None
    return _Conv(layer, weight, bias)


# ---- architecture ---------------------------------------------------------------------------------
def _conv_entries(prefix: str, conv: _Conv) -> dict[str, np.ndarray]:
    entries = {f"{prefix}.weight": conv.weight}
    if conv.bias is not None:
        entries[f"{prefix}.bias"] = conv.bias
    return entries


def _rrdb_signature(blocks: int) -> list[str]:
    rdb = ["Convolution", "Concat"] * 4 + ["Convolution", "Eltwise"]
    body = (rdb * 3 + ["Eltwise"]) * blocks
    # conv_body, the trunk add, (upsample, conv_up1), (upsample, conv_up2), conv_hr, conv_last
    tail = ["Convolution", "BinaryOp", "Interp", "Convolution", "Interp", "Convolution", "Convolution",
            "Convolution"]
    return ["Convolution", *body, *tail]


def _as_rrdbnet(graph: Graph, weights: dict[str, _Conv | np.ndarray]) -> tuple[dict[str, object], dict]:
    layers = graph.compute_layers()
    types = [layer.type for layer in layers]
    convs = [weights[layer.name] for layer in layers if layer.type == "Convolution"]
    blocks, rem = divmod(len(convs) - 6, 15)
    if rem or blocks < 1 or types != _rrdb_signature(blocks):
        raise UnsupportedModelError(
            f"{graph.where}: the ncnn graph is not a supported network ({len(layers)} layers: "
            f"{', '.join(sorted(set(types)))}); srkit imports {SUPPORTED}"
        )
    names = ["conv_first"]
    names += [f"body.{b}.rdb{r}.conv{k}" for b in range(blocks) for r in (1, 2, 3) for k in range(1, 6)]
    names += ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    leaky = {f"body.{b}.rdb{r}.conv{k}" for b in range(blocks) for r in (1, 2, 3) for k in range(1, 5)}
    leaky |= {"conv_up1", "conv_up2", "conv_hr"}
    for name, conv in zip(names, convs, strict=True):
        assert isinstance(conv, _Conv)
        act, act_params = conv.activation
        expected = (ACT_LEAKY, (0.2,)) if name in leaky else (ACT_NONE, ())
        if (act, tuple(round(v, 4) for v in act_params)) != expected:
            raise UnsupportedModelError(f"{graph.where}: {conv.layer.name} ({name}) has activation {act} "
                                        f"{act_params}, RRDBNet has {expected}")
    for layer in layers:
        nearest_x2 = layer.as_int(0) == INTERP_NEAREST and layer.get(1) == layer.get(2) == 2.0
        if layer.type == "Interp" and not nearest_x2:
            raise UnsupportedModelError(f"{graph.where}: {layer.name} is not a nearest x2 upsampling")
        if layer.type == "Eltwise" and tuple(round(v, 4) for v in layer.get(1, ())) != (0.2, 1.0):  # type: ignore[union-attr]
            raise UnsupportedModelError(f"{graph.where}: {layer.name} is not RRDBNet's 0.2-scaled residual")
    sd: dict[str, np.ndarray] = {}
    for name, conv in zip(names, convs, strict=True):
        sd.update(_conv_entries(name, conv))  # type: ignore[arg-type]
    first, last = convs[0], convs[-1]
    hyper = {"num_in_ch": first.weight.shape[1], "num_out_ch": last.weight.shape[0],  # type: ignore[union-attr]
             "num_feat": first.weight.shape[0], "num_block": blocks,  # type: ignore[union-attr]
             "num_grow_ch": convs[1].weight.shape[0]}  # type: ignore[union-attr]
    return hyper, sd


def _as_srvgg(graph: Graph, weights: dict[str, _Conv | np.ndarray]) -> tuple[dict[str, object], dict]:
    layers = graph.compute_layers()
    types = [layer.type for layer in layers]
    n_conv = types.count("Convolution")
    body, tail = layers[: 2 * n_conv - 1], layers[2 * n_conv - 1 :]
    tail_types = [layer.type for layer in tail]
    if tail_types == ["PixelShuffle", "Interp", "BinaryOp", "Interp"]:
        raise UnsupportedModelError(
            f"{graph.where}: this file is the x4 network followed by a bicubic x{tail[-1].get(1)} downscale "
            "(Real-ESRGAN's _UP2X/_UP3X ncnn files); srkit imports the network itself: use the _UP4X file, "
            "which holds the same weights"
        )
    pattern_ok = (
        n_conv >= 3
        and all(layer.type == "Convolution" for layer in body[0::2])
        and all(layer.type == "PReLU" for layer in body[1::2])
        and sorted(tail_types) == ["BinaryOp", "Interp", "PixelShuffle"]
    )
    if not pattern_ok:
        raise UnsupportedModelError(
            f"{graph.where}: the ncnn graph is not a supported network ({len(layers)} layers: "
            f"{', '.join(sorted(set(types)))}); srkit imports {SUPPORTED}"
        )
    shuffle = next(layer for layer in tail if layer.type == "PixelShuffle")
    interp = next(layer for layer in tail if layer.type == "Interp")
    add = next(layer for layer in tail if layer.type == "BinaryOp")
    scale = shuffle.as_int(0)
    if interp.as_int(0) != INTERP_NEAREST or interp.get(1) != float(scale) or add.as_int(0) != 0:
        raise UnsupportedModelError(f"{graph.where}: the residual is not a nearest x{scale} upsampling added "
                                    "to the PixelShuffle output, as in SRVGGNetCompact")
    sd: dict[str, np.ndarray] = {}
    for index, layer in enumerate(body):
        item = weights[layer.name]
        if isinstance(item, _Conv):
            if item.activation[0] != ACT_NONE:
                raise UnsupportedModelError(f"{graph.where}: {layer.name} has a fused activation")
            sd.update(_conv_entries(f"body.{index}", item))
        else:
            sd[f"body.{index}.weight"] = item
    first, last = weights[body[0].name], weights[body[-1].name]
    assert isinstance(first, _Conv) and isinstance(last, _Conv)
    hyper = {"num_in_ch": first.weight.shape[1], "num_out_ch": last.weight.shape[0] // (scale * scale),
             "num_feat": first.weight.shape[0], "num_conv": n_conv - 2, "upscale": scale, "act_type": "prelu"}
    return hyper, sd


# ---- Real-CUGAN / waifu2x CUNet and waifu2x upconv_7 -------------------------------------------------
_CONV, _DECONV, _FC = "Convolution", "Deconvolution", "InnerProduct"
Activation = tuple[int, tuple[float, ...]]
_LEAKY: Activation = (ACT_LEAKY, (0.1,))
_NO_ACT: Activation = (ACT_NONE, ())


def _unet_conv(prefix: str, se: bool) -> list[tuple[str, str, Activation]]:
    layers: list[tuple[str, str, Activation]] = [(f"{prefix}.conv.0", _CONV, _LEAKY), (f"{prefix}.conv.2", _CONV, _LEAKY)]
    if se:
        layers += [(f"{prefix}.seblock.conv1", _FC, (ACT_RELU, ())), (f"{prefix}.seblock.conv2", _FC,
                                                                        (ACT_SIGMOID, ()))]
    return layers


def _cunet_layers(scale: int) -> list[tuple[str, str, Activation]]:
    """(PyTorch name, ncnn layer type, fused activation) of every weighted layer, in the graph's order."""
    unet1 = [*_unet_conv("unet1.conv1", False), ("unet1.conv1_down", _CONV, _LEAKY),
             *_unet_conv("unet1.conv2", True), ("unet1.conv2_up", _DECONV, _LEAKY), ("unet1.conv3", _CONV, _LEAKY),
             ("unet1.conv_bottom", _CONV if scale == 1 else _DECONV, _NO_ACT)]
    unet2 = [*_unet_conv("unet2.conv1", False), ("unet2.conv1_down", _CONV, _LEAKY),
             *_unet_conv("unet2.conv2", True), ("unet2.conv2_down", _CONV, _LEAKY),
             *_unet_conv("unet2.conv3", True), ("unet2.conv3_up", _DECONV, _LEAKY),
             *_unet_conv("unet2.conv4", True), ("unet2.conv4_up", _DECONV, _LEAKY),
             ("unet2.conv5", _CONV, _LEAKY), ("unet2.conv_bottom", _CONV, _NO_ACT)]
    return unet1 + unet2 + ([("conv_final", _CONV, _NO_ACT)] if scale == 4 else [])


def _weighted(graph: Graph) -> list[Layer]:
    return [layer for layer in graph.layers if layer.type in (_CONV, _DECONV, _FC)]


def _rounded_activation(conv: _Conv) -> Activation:
    act, params = conv.activation
    return act, tuple(round(v, 4) for v in params)


def _torch_entries(name: str, conv: _Conv) -> dict[str, np.ndarray]:
    """ncnn stores deconvolution kernels [Cout, Cin, kh, kw]; ConvTranspose2d holds [Cin, Cout, kh, kw]."""
    if conv.layer.type == _DECONV:
        conv = _Conv(conv.layer, np.ascontiguousarray(conv.weight.transpose(1, 0, 2, 3)), conv.bias)
    return _conv_entries(name, conv)


def _unsupported(graph: Graph, why: str) -> UnsupportedModelError:
    types = sorted({layer.type for layer in graph.layers})
    return UnsupportedModelError(f"{graph.where}: the ncnn graph is not a supported network ({why}; layer "
                                 f"types {', '.join(types)}); srkit imports {SUPPORTED}")


def _cunet_scale(graph: Graph, weighted: list[Layer]) -> int:
    if any(layer.type == "PixelShuffle" for layer in graph.layers):
        return 4
    bottom = weighted[9] if len(weighted) > 9 else None  # unet1.conv_bottom
    if bottom is not None and bottom.type == _CONV:
        return 1
    if bottom is not None and bottom.type == _DECONV:
        kernel, stride = bottom.as_int(KERNEL_W), bottom.as_int(STRIDE_W, 1)
        return {(4, 2): 2, (5, 3): 3}.get((kernel, stride), 0)
    return 0


def _check_geometry(graph: Graph, name: str, layer: Layer) -> None:
    """Kernel, stride and padding of each layer, as in Real-CUGAN's PyTorch code."""
    kernel, stride, pad = layer.as_int(KERNEL_W), layer.as_int(STRIDE_W, 1), layer.as_int(PAD_LEFT)
    if layer.type == _FC:
        return
    if name.endswith(("_down", "_up")):
        expected = (2, 2, 0)
    elif name == "unet1.conv_bottom" and layer.type == _DECONV:
        expected = (4, 2, 3) if kernel == 4 else (5, 3, 2)
    else:
        expected = (3, 1, 0)
    if (kernel, stride, pad) != expected or layer.as_int(KERNEL_H, kernel) != kernel:
        raise _unsupported(graph, f"{layer.name} ({name}) has kernel {kernel}, stride {stride}, pad {pad}; "
                                  f"CUNet has {expected}")


def _as_cunet(graph: Graph, weights: dict[str, _Conv | np.ndarray]) -> tuple[dict[str, object], dict]:
    weighted = _weighted(graph)
    scale = _cunet_scale(graph, weighted)
    expected = _cunet_layers(scale) if scale else []
    if not expected or [layer.type for layer in weighted] != [kind for _, kind, _ in expected]:
        raise _unsupported(graph, f"{len(weighted)} weighted layers do not follow Real-CUGAN's U-Nets")
    sd: dict[str, np.ndarray] = {}
    for layer, (name, _kind, activation) in zip(weighted, expected, strict=True):
        conv = weights[layer.name]
        assert isinstance(conv, _Conv)
        if _rounded_activation(conv) != activation:
            raise _unsupported(graph, f"{layer.name} ({name}) has activation {conv.activation}, not {activation}")
        _check_geometry(graph, name, layer)
        sd.update(_torch_entries(name, conv))
    if scale == 4:
        tail = [layer.type for layer in graph.compute_layers()][-2:]
        if tail != ["Crop", "PixelShuffle"]:
            raise _unsupported(graph, f"an x4 CUNet ends in Crop, PixelShuffle, not {', '.join(tail)}")
    first = sd["unet1.conv1.conv.0.weight"]
    out_ch = sd["conv_final.weight"].shape[0] // 4 if scale == 4 else sd["unet2.conv_bottom.weight"].shape[0]
    # waifu2x-ncnn-vulkan (Caffe-converted files: Scale layers, blob Input1) replicates the edge when it pads
    # a tile; realcugan-ncnn-vulkan reflects
    waifu2x_tool = any(layer.type == "Scale" for layer in graph.layers)
    hyper = {"scale": scale, "in_channels": first.shape[1], "out_channels": out_ch,
             "pad_mode": "replicate" if waifu2x_tool else "reflect"}
    return hyper, sd


def _as_upconv7(graph: Graph, weights: dict[str, _Conv | np.ndarray]) -> tuple[dict[str, object], dict]:
    weighted = _weighted(graph)
    if [layer.type for layer in weighted] != [_CONV] * 6 + [_DECONV] or len(graph.compute_layers()) != 7:
        raise _unsupported(graph, "not six convolutions and a deconvolution in a chain (waifu2x upconv_7)")
    sd: dict[str, np.ndarray] = {}
    for index, layer in enumerate(weighted):
        conv = weights[layer.name]
        assert isinstance(conv, _Conv)
        is_last = index == 6
        geometry = (layer.as_int(KERNEL_W), layer.as_int(STRIDE_W, 1), layer.as_int(PAD_LEFT))
        if geometry != ((4, 2, 3) if is_last else (3, 1, 0)):
            raise _unsupported(graph, f"{layer.name} has kernel/stride/pad {geometry}, unlike upconv_7")
        if _rounded_activation(conv) != (_NO_ACT if is_last else _LEAKY):
            raise _unsupported(graph, f"{layer.name} has activation {conv.activation}, unlike upconv_7")
        sd.update(_torch_entries(f"net.{2 * index}", conv))
    hyper = {"scale": 2, "in_channels": sd["net.0.weight"].shape[1], "out_channels": sd["net.12.weight"].shape[1]}
    return hyper, sd


def import_ncnn(param_path: str | Path) -> NcnnImport:
    """Read a .param and the .bin beside it into BasicSR-named weights, refusing unknown networks."""
    param_path = Path(param_path)
    bin_path = param_path.with_suffix(".bin")
    if not param_path.is_file():
        raise InputError(f"ncnn model not found: {param_path}")
    if not bin_path.is_file():
        raise InputError(f"{param_path}: its weights {bin_path.name} are not beside it")
    try:
        text = param_path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{param_path} is not a text .param file (binary .param.bin is not supported)"
                         ) from None
    graph = parse_param(text, str(param_path))
    weights = read_weights(graph, bin_path.read_bytes(), str(bin_path))
    types = {layer.type for layer in graph.layers}
    graph_params: dict[str, object] = {}
    if "Deconvolution" in types and "Pooling" in types:
        arch, (hyper, sd) = "realcugan", _as_cunet(graph, weights)
        scale = int(hyper["scale"])  # type: ignore[call-overload]
        graph_params["pad_mode"] = hyper["pad_mode"]
    elif "Deconvolution" in types:
        arch, (hyper, sd) = "waifu2x", _as_upconv7(graph, weights)
        scale = 2
    elif "PixelShuffle" in types:
        arch, (hyper, sd) = "srvgg", _as_srvgg(graph, weights)
        scale = int(hyper["upscale"])  # type: ignore[call-overload]
    elif "Eltwise" in types and "Concat" in types:
        arch, (hyper, sd) = "rrdbnet", _as_rrdbnet(graph, weights)
        scale = 4  # two nearest x2 upsamplings and no pixel-unshuffle front (checked by the signature)
    else:
        raise UnsupportedModelError(f"{graph.where}: the ncnn graph is not a supported network; "
                                    f"srkit imports {SUPPORTED}")
    return NcnnImport(arch, scale, hyper, sd, graph.input_blob, graph.output_blob, bin_path, graph_params)
