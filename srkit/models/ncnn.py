"""Import Real-ESRGAN ncnn models (`.param` text + `.bin` weights) as BasicSR-named state dicts.

Supported networks (what Real-ESRGAN's ncnn files contain):

- RRDBNet x4 (Real-ESRGAN x4plus, 23 blocks; x4plus-anime, 6 blocks): conv_first, N RRDB blocks, conv_body,
  two nearest x2 upsamplings (conv_up1, conv_up2), conv_hr, conv_last.
- SRVGGNetCompact (realesr-animevideov3): conv + activation pairs, PixelShuffle and a nearest-upsampled input
  residual.

Refused with UnsupportedModelError: anything else, including the `_UP2X` / `_UP3X` files, which are the x4
network followed by a bicubic downscale (an ncnn `Interp` after the residual add). Their weights are the same
as the `_UP4X` file's, so import that one; a network that up- then down-scales is not an x2/x3 SR model.

The `.bin` layout (ncnn's ModelBin): per Convolution a 4-byte tag then the weights [Cout, Cin, kh, kw]
(0x01306B47 = fp16, aligned to 4 bytes; 0 or 0x0002C056 = raw fp32; any other non-zero tag = a 256-entry fp32
table followed by uint8 indices; 0x000D4B38 = int8, refused), then the fp32 bias without a tag. PReLU slopes
are raw fp32 without a tag.
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
WEIGHTLESS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle", "ReLU"}
# Convolution param ids (ncnn's Convolution::load_param)
NUM_OUTPUT, KERNEL_W, DILATION_W, STRIDE_W, PAD_LEFT, BIAS_TERM, WEIGHT_SIZE = 0, 1, 2, 3, 4, 5, 6
ACTIVATION_TYPE, ACTIVATION_PARAMS, KERNEL_H = 9, 10, 11
ACT_NONE, ACT_RELU, ACT_LEAKY = 0, 1, 2
INTERP_NEAREST = 1
SUPPORTED = "RRDBNet x4 (Real-ESRGAN x4plus, x4plus-anime) and SRVGGNetCompact (realesr-animevideov3)"

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

    arch: str  # "rrdbnet" or "srvgg"
    scale: int
    hyper: dict[str, object]  # read from the graph, cross-checked against detection from the weights
    state_dict: dict[str, np.ndarray]
    input_blob: str
    output_blob: str
    bin_path: Path


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
        if layer.type == "Convolution":
            weights[layer.name] = _read_conv(layer, reader)
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
    if "PixelShuffle" in types:
        arch, (hyper, sd) = "srvgg", _as_srvgg(graph, weights)
        scale = int(hyper["upscale"])  # type: ignore[call-overload]
    elif "Eltwise" in types and "Concat" in types:
        arch, (hyper, sd) = "rrdbnet", _as_rrdbnet(graph, weights)
        scale = 4  # two nearest x2 upsamplings and no pixel-unshuffle front (checked by the signature)
    else:
        raise UnsupportedModelError(f"{graph.where}: the ncnn graph is not a supported network; "
                                    f"srkit imports {SUPPORTED}")
    return NcnnImport(arch, scale, hyper, sd, graph.input_blob, graph.output_blob, bin_path)
