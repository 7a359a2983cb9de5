"""Omni-SR (Wang et al., CVPR 2023, "Omni Aggregation Networks for Lightweight Image Super-Resolution").

Parameter names are those of the public checkpoints (Francis0625/Omni-SR, as chaiNNer/spandrel load them):
input (3x3), residual_layer.G (OSAG: residual_layer.B OSA blocks, then a 1x1 conv; esa.*), output (3x3),
up.0 (conv before a PixelShuffle). An OSA block is a 13-entry Sequential (`layer.N`): MBConv with squeeze-
excitation (layer.0.fn.*), window self-attention (layer.2: LayerNorm + to_qkv/to_out, relative position
bias `rel_pos_bias` when trained with it), gated conv feed-forwards (layer.4/6/10/12), channel attention
within each window (layer.5) and across windows (layer.11), and self-attention over a dilated grid that
spans the whole image (layer.8). Files profiled with thop carry `total_ops`/`total_params` entries; the
layout converter drops them.

The input is zero-padded to a multiple of the window (8) inside the forward, as the reference does, and to
at least 16 pixels (the ESA branch's strided conv and 7x7 pooling need it; the reference simply fails
below that), and the output is cropped back: the exported graph takes any H and W.

Global: the squeeze-excitation and the grid attention see the whole image, so a tile's output depends on
the tile; tiled inference is an approximation whatever the overlap.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from srkit.meta import Color
from srkit.models import _detect
from srkit.models._layers import LayerNorm2d, as_tensor, relative_position_index
from srkit.models.base import ArchSpec, Params
from srkit.models.util import StateDict

HEADS = 4
MIN_SIZE = 16


def pad_zeros(x: torch.Tensor, multiple: int, minimum: int) -> torch.Tensor:
    """Zero-pad H and W (bottom/right) to a multiple of `multiple` and at least `minimum`, traceably."""
    h, w = x.shape[-2], x.shape[-1]
    floor = -(-minimum // multiple) * multiple
    if torch.jit.is_tracing():
        th: Any = torch.clamp(as_tensor(h + (multiple - h % multiple) % multiple), min=floor)
        tw: Any = torch.clamp(as_tensor(w + (multiple - w % multiple) % multiple), min=floor)
    else:
        th = max(int(h) + (-int(h)) % multiple, floor)
        tw = max(int(w) + (-int(w)) % multiple, floor)
    pads: list[Any] = [0, tw - w, 0, th - h]
    return F.pad(x, pads)


class SqueezeExcitation(nn.Module):
    def __init__(self, dim: int, shrinkage: float = 0.25) -> None:
        super().__init__()
        hidden = int(dim * shrinkage)
        # indices follow the reference Sequential (0: mean, 2: SiLU, 4: Sigmoid, 5: reshape)
        self.gate = nn.ModuleDict({"1": nn.Linear(dim, hidden, bias=False), "3": nn.Linear(hidden, dim, bias=False)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(2, 3))
        y = torch.sigmoid(self.gate["3"](F.silu(self.gate["1"](y))))
        return x * y[:, :, None, None]


class MBConv(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fn = nn.Sequential(
            nn.Conv2d(dim, dim, 1), nn.GELU(), nn.Conv2d(dim, dim, 3, 1, 1, groups=dim), nn.GELU(),
            SqueezeExcitation(dim), nn.Conv2d(dim, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class Attention(nn.Module):
    """Multi-head self-attention within (B, X, Y, ws, ws, C) windows, optional relative position bias."""

    def __init__(self, dim: int, ws: int, with_pe: bool) -> None:
        super().__init__()
        self.heads, self.ws = HEADS, ws
        self.scale = (dim // HEADS) ** -0.5
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim, bias=False))
        self.with_pe = with_pe
        if with_pe:
            self.rel_pos_bias = nn.Embedding((2 * ws - 1) ** 2, HEADS)
            self.register_buffer("rel_pos_indices", relative_position_index(ws), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, gx, gy, w1, w2, c = x.shape
        t = x.reshape(-1, w1 * w2, c)
        q, k, v = (u.reshape(u.shape[0], u.shape[1], self.heads, -1).transpose(1, 2)
                   for u in self.to_qkv(t).chunk(3, dim=-1))
        sim = (q * self.scale) @ k.transpose(-2, -1)
        if self.with_pe:
            sim = sim + self.rel_pos_bias(self.rel_pos_indices).permute(2, 0, 1)
        out = sim.softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(-1, w1, w2, c)
        return self.to_out(out).view(b, gx, gy, w1, w2, c)


class PreNormResidual(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x)) + x


class ConvPreNormResidual(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x)) + x


class GatedConvFeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project_in = nn.Conv2d(dim, dim * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(dim * 2, dim * 2, 3, 1, 1, groups=dim * 2, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class ChannelAttention(nn.Module):
    """Attention between channels, over the pixels of each ps x ps window (grid=False) or over the pixels
    at the same position of every window (grid=True: across the whole image)."""

    def __init__(self, dim: int, ps: int, grid: bool) -> None:
        super().__init__()
        self.ps, self.grid = ps, grid
        self.temperature = nn.Parameter(torch.ones(HEADS, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, 1, 1, groups=dim * 3, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, c, h, w = t.shape
        ps = self.ps
        t = t.reshape(b, HEADS, c // HEADS, h // ps, ps, w // ps, ps)
        if self.grid:  # b (ph pw) head d (h w)
            return t.permute(0, 4, 6, 1, 2, 3, 5).reshape(b, ps * ps, HEADS, c // HEADS, -1)
        return t.permute(0, 3, 5, 1, 2, 4, 6).reshape(b, -1, HEADS, c // HEADS, ps * ps)  # b (h w) head d (ph pw)

    def _merge(self, t: torch.Tensor, h: Any, w: Any) -> torch.Tensor:
        b, ps = t.shape[0], self.ps
        d = t.shape[3]
        if self.grid:
            t = t.reshape(b, ps, ps, HEADS, d, h // ps, w // ps).permute(0, 3, 4, 5, 1, 6, 2)
        else:
            t = t.reshape(b, h // ps, w // ps, HEADS, d, ps, ps).permute(0, 3, 4, 1, 5, 2, 6)
        return t.reshape(b, HEADS * d, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        q, k, v = (self._split(t) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.project_out(self._merge(attn @ v, h, w))


def _to_windows(x: torch.Tensor, ws: int, grid: bool) -> torch.Tensor:
    b, c, h, w = x.shape
    if grid:  # b d (w1 x) (w2 y) -> b x y w1 w2 d
        return x.reshape(b, c, ws, h // ws, ws, w // ws).permute(0, 3, 5, 2, 4, 1)
    return x.reshape(b, c, h // ws, ws, w // ws, ws).permute(0, 2, 4, 3, 5, 1)  # b d (x w1) (y w2) -> ...


def _from_windows(x: torch.Tensor, grid: bool) -> torch.Tensor:
    b, gx, gy, w1, w2, c = x.shape
    if grid:
        return x.permute(0, 5, 3, 1, 4, 2).reshape(b, c, w1 * gx, w2 * gy)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, gx * w1, gy * w2)


class OSABlock(nn.Module):
    def __init__(self, dim: int, ws: int, with_pe: bool) -> None:
        super().__init__()
        self.ws = ws
        # the public key indices: 0 MBConv, 2 window attn, 4/6/10/12 FFN, 5 window CA, 8 grid attn, 11 grid CA
        self.layer = nn.ModuleDict({
            "0": MBConv(dim),
            "2": PreNormResidual(dim, Attention(dim, ws, with_pe)),
            "4": ConvPreNormResidual(dim, GatedConvFeedForward(dim)),
            "5": ConvPreNormResidual(dim, ChannelAttention(dim, ws, grid=False)),
            "6": ConvPreNormResidual(dim, GatedConvFeedForward(dim)),
            "8": PreNormResidual(dim, Attention(dim, ws, with_pe)),
            "10": ConvPreNormResidual(dim, GatedConvFeedForward(dim)),
            "11": ConvPreNormResidual(dim, ChannelAttention(dim, ws, grid=True)),
            "12": ConvPreNormResidual(dim, GatedConvFeedForward(dim)),
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer, ws = self.layer, self.ws
        x = layer["0"](x)
        x = _from_windows(layer["2"](_to_windows(x, ws, grid=False)), grid=False)
        x = layer["6"](layer["5"](layer["4"](x)))
        x = _from_windows(layer["8"](_to_windows(x, ws, grid=True)), grid=True)
        return layer["12"](layer["11"](layer["10"](x)))


class ESA(nn.Module):
    def __init__(self, f: int, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv2 = nn.Conv2d(f, f, 3, 2, 0)
        self.conv3 = nn.Conv2d(f, f, 3, 1, 1)
        self.conv4 = nn.Conv2d(f, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1_ = self.conv1(x)
        c3 = self.conv3(F.max_pool2d(self.conv2(c1_), kernel_size=7, stride=3))
        c3 = F.interpolate(c3, (x.shape[-2], x.shape[-1]), mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(c3 + self.conv_f(c1_)))


class OSAG(nn.Module):
    def __init__(self, dim: int, block_num: int, ws: int, with_pe: bool, bias: bool) -> None:
        super().__init__()
        blocks: list[nn.Module] = [OSABlock(dim, ws, with_pe) for _ in range(block_num)]
        self.residual_layer = nn.Sequential(*blocks, nn.Conv2d(dim, dim, 1, bias=bias))
        self.esa = ESA(max(dim // 4, 16), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.esa(self.residual_layer(x) + x)


class OmniSR(nn.Module):
    def __init__(self, p: Params) -> None:
        super().__init__()
        dim, ws, bias, scale = p["num_feat"], p["window_size"], p["bias"], p["scale"]
        self.scale, self.ws = scale, ws
        self.residual_layer = nn.Sequential(
            *(OSAG(dim, p["block_num"], ws, p["pe"], bias) for _ in range(p["res_num"]))
        )
        self.input = nn.Conv2d(p["in_channels"], dim, 3, 1, 1, bias=bias)
        self.output = nn.Conv2d(dim, dim, 3, 1, 1, bias=bias)
        self.up = nn.Sequential(nn.Conv2d(dim, p["in_channels"] * scale * scale, 3, 1, 1, bias=bias),
                                nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        residual = self.input(pad_zeros(x, self.ws, MIN_SIZE))
        out = self.up(self.output(self.residual_layer(residual)) + residual)
        return out[:, :, : h * self.scale, : w * self.scale]


def build(p: Params) -> OmniSR:
    return OmniSR(p)


_REQUIRED = ("input.weight", "up.0.weight", "residual_layer.0.residual_layer.0.layer.0.fn.0.weight",
             "residual_layer.0.esa.conv1.weight", "output.weight")


def detect(sd: StateDict) -> Params | None:
    if not _detect.has_all(sd, _REQUIRED):
        return None
    first, up = _detect.shape(sd, "input.weight"), _detect.shape(sd, "up.0.weight")
    assert first is not None and up is not None
    in_ch, dim = first[1], first[0]
    scale = _detect.shuffle_scale(up[0], in_ch)
    table = _detect.shape(sd, "residual_layer.0.residual_layer.0.layer.2.fn.rel_pos_bias.weight")
    ws = _detect.window_of(table[0]) if table is not None else 8  # 8: the reference default
    if scale is None or ws is None or in_ch != 3 or dim % HEADS:
        return None
    return {
        "scale": scale, "in_channels": in_ch, "num_feat": dim,
        "res_num": _detect.seq_len(sd, "residual_layer"),
        "block_num": _detect.seq_len(sd, "residual_layer.0.residual_layer") - 1,
        "window_size": ws, "pe": table is not None, "bias": "input.bias" in sd,
    }


SPEC = ArchSpec(
    name="omnisr",
    title="Omni-SR",
    color=Color.RGB,
    scales=(1, 2, 3, 4, 8),
    build=build,
    detect=detect,
    # global (see the module docstring): this is the tile overlap, not a bound on the context
    feature_width=lambda p: int(p["num_feat"]),
    receptive_field=64,
    global_context=True,
    fp16_safe=True,  # docs/architectures.md
    defaults={"in_channels": 3, "num_feat": 64, "res_num": 5, "block_num": 1, "window_size": 8, "pe": True,
              "bias": True},
)
