"""HAT (Chen et al., CVPR 2023, "Activating More Pixels in Image Super-Resolution Transformer").

Parameter names are those of the public checkpoints (XPixelGroup/HAT: HAT-S, HAT, HAT-L and their Real_HAT
GAN models, as chaiNNer/spandrel load them): relative_position_index_SA / _OCA (buffers), conv_first,
patch_embed.norm, layers.L.residual_group.blocks.B (HAB: norm1, attn.{qkv, proj,
relative_position_bias_table}, conv_block.cab.{0, 2, 3.attention.1, 3.attention.3} (a channel-attention
conv block), norm2, mlp.{fc1, fc2}), layers.L.residual_group.overlap_attn (OCAB: overlapping cross-window
attention), layers.L.conv, norm, conv_after_body, conv_before_upsample.0, upsample.{0,2,...}, conv_last.

Width, depths, heads, window, overlap ratio, compress ratio and squeeze factor (as the channel counts of
the conv block), MLP ratio and scale are read from the shapes; conv_scale (0.01) and img_range (1) are not
in the weights and take the values every public model uses. HAT-S, HAT and HAT-L differ only in these.

Any input size: the forward reflect-pads to a multiple of the window (16 in every public model; the
reference does it too, but F.pad's reflection needs the input larger than the pad, the reason spandrel
declares a 16-pixel minimum: the folding reflection here has no such limit), computes the shifted-window
mask for that size and crops the output back.

Global: the conv block of every HAB ends in channel attention over the whole image (global average
pooling), so tiled inference is an approximation whatever the overlap; the window-attention part alone
reaches sum(depths) x (window - 1) + OCAB overlap pixels (over 500 for HAT).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from srkit.meta import Color
from srkit.models import _detect
from srkit.models._layers import (
    pad_reflect,
    relative_position_index,
    rgb_mean,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from srkit.models.base import ArchSpec, Params
from srkit.models.blocks import Upsample
from srkit.models.swinir import Mlp, PatchEmbed, to_image, to_tokens
from srkit.models.util import StateDict

CONV_SCALE = 0.01


def channels(dim: int, ratio: float) -> int:
    """The conv block's widths: dim // ratio as the reference computes them (ratio may be fractional)."""
    return int(dim // ratio) if float(ratio).is_integer() else round(dim / ratio)


def oca_index(ws: int, ows: int) -> torch.Tensor:
    """(ws*ws, ows*ows) index into OCAB's (ws + ows - 1)^2-row bias table: query window vs larger key window."""
    def flat(n: int) -> torch.Tensor:
        return torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")).flatten(1)

    rel = (flat(ows)[:, None, :] - flat(ws)[:, :, None]).permute(1, 2, 0) + (ws - ows + 1)
    return rel[:, :, 0] * (ws + ows - 1) + rel[:, :, 1]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
           mask: torch.Tensor | None, heads: int) -> torch.Tensor:
    attn = q @ k.transpose(-2, -1) + bias.unsqueeze(0)
    if mask is not None:
        n, m = attn.shape[-2], attn.shape[-1]
        attn = attn.view(-1, mask.shape[0], heads, n, m) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, n, m)
    return attn.softmax(dim=-1) @ v


class WindowAttention(nn.Module):
    def __init__(self, dim: int, ws: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.ws, self.heads = ws, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rpi: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[rpi.view(-1)].view(n, n, -1).permute(2, 0, 1)
        out = attend(qkv[0] * self.scale, qkv[1], qkv[2], bias, mask, self.heads)
        return self.proj(out.transpose(1, 2).reshape(b_, n, c))


class ChannelAttention(nn.Module):
    def __init__(self, dim: int, squeeze: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, squeeze, 1), nn.ReLU(inplace=True),
            nn.Conv2d(squeeze, dim, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    def __init__(self, dim: int, compress: int, squeeze: int) -> None:
        super().__init__()
        self.cab = nn.Sequential(nn.Conv2d(dim, compress, 3, 1, 1), nn.GELU(), nn.Conv2d(compress, dim, 3, 1, 1),
                                 ChannelAttention(dim, squeeze))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class HAB(nn.Module):
    def __init__(self, dim: int, heads: int, shift: int, p: Params) -> None:
        super().__init__()
        self.ws, self.shift = p["window_size"], shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.ws, heads, p["qkv_bias"])
        self.conv_block = CAB(dim, channels(dim, p["compress_ratio"]), channels(dim, p["squeeze_factor"]))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * p["mlp_ratio"]))

    def forward(self, x: torch.Tensor, size: tuple[Any, Any], rpi: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        s, ws = self.shift, self.ws
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        conv_x = to_tokens(self.conv_block(x.permute(0, 3, 1, 2)))
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        windows = self.attn(window_partition(x, ws).view(-1, ws * ws, c), rpi, mask if s else None)
        x = window_reverse(windows.view(-1, ws, ws, c), ws, h, w)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        x = shortcut + x.reshape(b, -1, c) + conv_x * CONV_SCALE
        return x + self.mlp(self.norm2(x))


class OCAB(nn.Module):
    """Overlapping cross-attention: queries from each window, keys/values from a larger overlapping one."""

    def __init__(self, dim: int, heads: int, p: Params) -> None:
        super().__init__()
        ws = p["window_size"]
        self.ws, self.heads, self.dim = ws, heads, dim
        self.ows = overlap_window(p)
        self.scale = (dim // heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=p["qkv_bias"])
        self.unfold = nn.Unfold(kernel_size=(self.ows, self.ows), stride=ws, padding=(self.ows - ws) // 2)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((ws + self.ows - 1) ** 2, heads))
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * p["mlp_ratio"]))

    def forward(self, x: torch.Tensor, size: tuple[Any, Any], rpi: torch.Tensor) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        ws, ows, heads = self.ws, self.ows, self.heads
        shortcut = x
        qkv = self.qkv(self.norm1(x).view(b, h, w, c)).reshape(b, h, w, 3, c).permute(3, 0, 4, 1, 2)
        q = window_partition(qkv[0].permute(0, 2, 3, 1), ws).view(-1, ws * ws, c)
        kv = self.unfold(torch.cat((qkv[1], qkv[2]), dim=1))  # b, 2*c*ows*ows, nw
        kv = kv.view(b, 2, c, ows * ows, -1).permute(1, 0, 4, 3, 2).reshape(2, -1, ows * ows, c)
        d = c // heads
        q = q.reshape(-1, ws * ws, heads, d).permute(0, 2, 1, 3)
        k = kv[0].reshape(-1, ows * ows, heads, d).permute(0, 2, 1, 3)
        v = kv[1].reshape(-1, ows * ows, heads, d).permute(0, 2, 1, 3)
        bias = self.relative_position_bias_table[rpi.view(-1)].view(ws * ws, ows * ows, -1).permute(2, 0, 1)
        out = attend(q * self.scale, k, v, bias, None, heads).transpose(1, 2).reshape(-1, ws, ws, c)
        x = self.proj(window_reverse(out, ws, h, w).reshape(b, -1, c)) + shortcut
        return x + self.mlp(self.norm2(x))


class AttenBlocks(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, p: Params) -> None:
        super().__init__()
        ws = p["window_size"]
        self.blocks = nn.ModuleList(HAB(dim, heads, 0 if i % 2 == 0 else ws // 2, p) for i in range(depth))
        self.overlap_attn = OCAB(dim, heads, p)

    def forward(self, x: torch.Tensor, size: tuple[Any, Any], ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, size, ctx["rpi_sa"], ctx["mask"])
        return self.overlap_attn(x, size, ctx["rpi_oca"])


class RHAG(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, p: Params) -> None:
        super().__init__()
        self.residual_group = AttenBlocks(dim, depth, heads, p)
        self.conv: nn.Module = nn.Conv2d(dim, dim, 3, 1, 1) if p["resi_connection"] == "1conv" else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[Any, Any], ctx: dict[str, torch.Tensor]) -> torch.Tensor:
        return to_tokens(self.conv(to_image(self.residual_group(x, size, ctx), size))) + x


def overlap_window(p: Params) -> int:
    ws = p["window_size"]
    return ws + round(ws * p["overlap_ratio"])


class HAT(nn.Module):
    def __init__(self, p: Params) -> None:
        super().__init__()
        in_ch, dim, ws, scale, nf = p["in_channels"], p["embed_dim"], p["window_size"], p["scale"], p["num_feat"]
        self.ws, self.scale = ws, scale
        self.register_buffer("mean", rgb_mean(in_ch), persistent=False)
        self.mean: torch.Tensor
        self.register_buffer("relative_position_index_SA", relative_position_index(ws))
        self.register_buffer("relative_position_index_OCA", oca_index(ws, overlap_window(p)))
        self.conv_first = nn.Conv2d(in_ch, dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(dim, p["patch_norm"])
        self.layers = nn.ModuleList(RHAG(dim, d, h, p) for d, h in zip(p["depths"], p["num_heads"], strict=True))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body: nn.Module = (
            nn.Conv2d(dim, dim, 3, 1, 1) if p["resi_connection"] == "1conv" else nn.Identity()
        )
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, nf, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = Upsample(scale, nf)
        self.conv_last = nn.Conv2d(nf, in_ch, 3, 1, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        ctx = {"rpi_sa": self.relative_position_index_SA, "rpi_oca": self.relative_position_index_OCA,
               "mask": shifted_window_mask(size[0], size[1], self.ws, self.ws // 2, x.dtype)}
        t = self.patch_embed(x)
        for layer in self.layers:
            t = layer(t, size, ctx)
        return to_image(self.norm(t), size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        x = self.conv_first(pad_reflect(x - self.mean, self.ws))
        x = self.conv_after_body(self.features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x))) + self.mean
        return x[:, :, : h * self.scale, : w * self.scale]


def build(p: Params) -> HAT:
    return HAT(p)


def _ratio(dim: int, width: int) -> float | int:
    """compress_ratio / squeeze_factor as configs write them: the int r with dim // r == width if any."""
    if width > 0 and dim % width == 0:
        return dim // width
    return _detect.ratio(dim, width)


_B0 = "layers.0.residual_group.blocks.0."
_REQUIRED = ("relative_position_index_SA", "relative_position_index_OCA", "conv_first.weight", "conv_last.weight",
             _B0 + "conv_block.cab.0.weight", _B0 + "conv_block.cab.3.attention.1.weight", _B0 + "mlp.fc1.weight",
             "layers.0.residual_group.overlap_attn.relative_position_bias_table", "upsample.0.weight")


def detect(sd: StateDict) -> Params | None:
    if not _detect.has_all(sd, _REQUIRED) or "absolute_pos_embed" in sd:
        return None
    first, sa, oca = (_detect.shape(sd, k) for k in ("conv_first.weight", "relative_position_index_SA",
                                                     "relative_position_index_OCA"))
    cab, squeeze, fc1 = (_detect.shape(sd, _B0 + k) for k in ("conv_block.cab.0.weight",
                                                              "conv_block.cab.3.attention.1.weight",
                                                              "mlp.fc1.weight"))
    up = _detect.basicsr_upsample(sd, "upsample")
    assert first is not None and sa is not None and oca is not None and cab is not None
    assert squeeze is not None and fc1 is not None
    in_ch, dim = first[1], first[0]
    ws = round(sa[0] ** 0.5)
    ows = round(oca[1] ** 0.5)
    if up is None or in_ch != 3 or ws * ws != sa[0] or ows * ows != oca[1] or 0 in (cab[0], squeeze[0]):
        return None
    layers = _detect.seq_len(sd, "layers")
    heads = []
    for i in range(layers):
        t = _detect.shape(sd, f"layers.{i}.residual_group.overlap_attn.relative_position_bias_table")
        if t is None:
            return None
        heads.append(t[1])
    scale, nf = up
    return {
        "scale": scale, "in_channels": in_ch, "embed_dim": dim,
        "depths": [_detect.seq_len(sd, f"layers.{i}.residual_group.blocks") for i in range(layers)],
        "num_heads": heads, "window_size": ws, "overlap_ratio": _detect.ratio(ows - ws, ws),
        "compress_ratio": _ratio(dim, cab[0]), "squeeze_factor": _ratio(dim, squeeze[0]),
        "mlp_ratio": _detect.ratio(fc1[0], dim), "qkv_bias": _B0 + "attn.qkv.bias" in sd,
        "patch_norm": "patch_embed.norm.weight" in sd,
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "identity", "num_feat": nf,
    }


SPEC = ArchSpec(
    name="hat",
    title="HAT",
    color=Color.RGB,
    scales=(2, 3, 4, 8),
    build=build,
    detect=detect,
    # global (channel attention, see the module docstring): this is the tile overlap, not a bound
    feature_width=lambda p: int(p["embed_dim"]),
    receptive_field=64,
    global_context=True,
    fp16_safe=False,  # spandrel, from real files; see docs/architectures.md
    defaults={"in_channels": 3, "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 16,
              "overlap_ratio": 0.5, "compress_ratio": 3, "squeeze_factor": 30, "mlp_ratio": 2.0,
              "qkv_bias": True, "patch_norm": True, "resi_connection": "1conv", "num_feat": 64},
)
