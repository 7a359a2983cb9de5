"""SwinIR (Liang et al., 2021, "SwinIR: Image Restoration Using Swin Transformer").

Parameter names are those of the public checkpoints (JingyunLiang/SwinIR releases: classical SR,
lightweight SR, real-world SR, denoising and JPEG artifact reduction; as chaiNNer/spandrel load them):
conv_first, patch_embed.norm, layers.L.residual_group.blocks.B.{norm1, attn.{qkv, proj,
relative_position_bias_table, relative_position_index}, norm2, mlp.{fc1, fc2}}, layers.L.conv (or
conv.{0,2,4} for "3conv"), norm, conv_after_body, then the upsampler the weights show:

* "pixelshuffle" (classical SR): conv_before_upsample.0, upsample.{0,2,...}, conv_last
* "pixelshuffledirect" (lightweight SR): upsample.0 (one conv before a PixelShuffle)
* "nearest+conv" (real-world SR): conv_before_upsample.0, conv_up1[, conv_up2[, conv_up3]], conv_hr, conv_last
* none (x1: denoising, JPEG): conv_last, the output added to the input

Width, depths, heads, window, MLP ratio, resi connection, upsampler and scale are read from the shapes.
img_range is not in the weights: 255 for window 7 (the JPEG models, the only ones with that window), else 1,
as spandrel decides. The stored `attn_mask` buffers depend on the training patch size only and are
recomputed for each input, so they are dropped when loading.

Any input size: the forward reflect-pads to a multiple of the window (what the reference test code does
outside the network), computes the shifted-window mask for that size, and crops the output back.

Receptive field (theoretical): every Swin block widens it by window - 1 (its window, shifted or not), every
3x3 conv by 1: 1 + sum(depths) x (window - 1) + convs; 262 LR pixels for the classical-SR SwinIR-M
(6 x 6 blocks, window 8), 176 for the lightweight model. Windows are anchored at the image origin, so a
tile whose origin is not a multiple of the window partitions differently: tiled output approximates the
untiled one (spandrel marks SwinIR "tiling discouraged").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
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
from srkit.models.util import StateDict

UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")


def drop_stored_masks(module: nn.Module, names: tuple[str, ...]) -> None:
    """Drop buffers that public files store but that depend on the training size (recomputed per input)."""

    def hook(state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        for name in names:
            state_dict.pop(prefix + name, None)

    module._register_load_state_dict_pre_hook(hook)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    def __init__(self, dim: int, ws: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.ws, self.heads = ws, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(ws))
        self.relative_position_index: torch.Tensor
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def bias(self) -> torch.Tensor:
        n = self.ws * self.ws
        table = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return table.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.bias().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(-1, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b_, n, c)
        return self.proj(x)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ws: int, shift: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        drop_stored_masks(self, ("attn_mask",))

    def forward(self, x: torch.Tensor, size: tuple[Any, Any], mask: torch.Tensor) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        s, ws = self.shift, self.ws
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        windows = window_partition(x, ws).view(-1, ws * ws, c)
        windows = self.attn(windows, mask if s else None).view(-1, ws, ws, c)
        x = window_reverse(windows, ws, h, w)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        x = shortcut + x.reshape(b, -1, c)
        return x + self.mlp(self.norm2(x))


def resi_conv(dim: int, kind: str) -> nn.Module:
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(  # "3conv", to save parameters
        nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(dim // 4, dim, 3, 1, 1),
    )


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def to_image(x: torch.Tensor, size: tuple[Any, Any]) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], size[0], size[1])


class BasicLayer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, ws: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, ws, 0 if i % 2 == 0 else ws // 2, mlp_ratio, qkv_bias) for i in range(depth)
        )

    def forward(self, x: torch.Tensor, size: tuple[Any, Any], mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, size, mask)
        return x


class RSTB(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, p: Params) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, heads, p["window_size"], p["mlp_ratio"], p["qkv_bias"])
        self.conv = resi_conv(dim, p["resi_connection"])

    def forward(self, x: torch.Tensor, size: tuple[Any, Any], mask: torch.Tensor) -> torch.Tensor:
        return to_tokens(self.conv(to_image(self.residual_group(x, size, mask), size))) + x


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, norm: bool) -> None:
        super().__init__()
        self.norm: nn.Module = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(to_tokens(x))


class SwinIR(nn.Module):
    def __init__(self, p: Params) -> None:
        super().__init__()
        in_ch, dim, ws, scale = p["in_channels"], p["embed_dim"], p["window_size"], p["scale"]
        self.ws, self.scale, self.upsampler = ws, scale, p["upsampler"]
        self.img_range = float(p["img_range"])
        self.register_buffer("mean", rgb_mean(in_ch), persistent=False)
        self.mean: torch.Tensor
        self.conv_first = nn.Conv2d(in_ch, dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(dim, p["patch_norm"])
        self.layers = nn.ModuleList(RSTB(dim, d, h, p) for d, h in zip(p["depths"], p["num_heads"], strict=True))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = resi_conv(dim, p["resi_connection"])
        nf = p.get("num_feat", 64)
        if self.upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, nf, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.upsample: nn.Module = Upsample(scale, nf)
            self.conv_last = nn.Conv2d(nf, in_ch, 3, 1, 1)
        elif self.upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(dim, in_ch * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))
        elif self.upsampler == "nearest+conv":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, nf, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.steps = {2: 1, 4: 2, 8: 3}[scale]
            for i in range(1, self.steps + 1):
                self.add_module(f"conv_up{i}", nn.Conv2d(nf, nf, 3, 1, 1))
            self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
            self.conv_last = nn.Conv2d(nf, in_ch, 3, 1, 1)
        else:
            self.conv_last = nn.Conv2d(dim, in_ch, 3, 1, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        mask = shifted_window_mask(size[0], size[1], self.ws, self.ws // 2, x.dtype)
        t = self.patch_embed(x)
        for layer in self.layers:
            t = layer(t, size, mask)
        return to_image(self.norm(t), size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        x = (pad_reflect(x, self.ws) - self.mean) * self.img_range
        if self.upsampler == "":
            first = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self.features(first)) + first)
        else:
            x = self.conv_first(x)
            x = self.conv_after_body(self.features(x)) + x
            x = self.reconstruct(x)
        x = x / self.img_range + self.mean
        return x[:, :, : h * self.scale, : w * self.scale]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsampler == "pixelshuffledirect":
            return self.upsample(x)
        x = self.conv_before_upsample(x)
        if self.upsampler == "pixelshuffle":
            return self.conv_last(self.upsample(x))
        for i in range(1, self.steps + 1):  # nearest+conv
            conv = getattr(self, f"conv_up{i}")
            x = F.leaky_relu(conv(F.interpolate(x, scale_factor=2.0, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(x), 0.2))


def build(p: Params) -> SwinIR:
    return SwinIR(p)


def receptive_field(p: Params) -> int:
    """Theoretical LR radius (see the module docstring)."""
    per_conv = 1 if p["resi_connection"] == "1conv" else 2
    layers = len(p["depths"])
    head_tail = 1 + per_conv + (1 if p["upsampler"] in ("pixelshuffle", "nearest+conv") else 0) + 1
    return head_tail + sum(p["depths"]) * (p["window_size"] - 1) + layers * per_conv


_B0 = "layers.0.residual_group.blocks.0."
_REQUIRED = ("conv_first.weight", "norm.weight", _B0 + "norm1.weight", _B0 + "attn.relative_position_bias_table",
             _B0 + "mlp.fc1.weight")


def _upsampler(sd: StateDict) -> str:
    if "conv_before_upsample.0.weight" in sd:
        return "nearest+conv" if "conv_up1.weight" in sd else "pixelshuffle"
    return "pixelshuffledirect" if "upsample.0.weight" in sd else ""


def _scale(sd: StateDict, upsampler: str, in_ch: int) -> tuple[int, int] | None:
    """(scale, num_feat) for the upsampler found."""
    if upsampler == "pixelshuffle":
        return _detect.basicsr_upsample(sd, "upsample")
    if upsampler == "nearest+conv":
        steps = sum(f"conv_up{i}.weight" in sd for i in (1, 2, 3))
        nf = _detect.shape(sd, "conv_up1.weight")
        return (2**steps, nf[0]) if nf is not None and steps in (1, 2, 3) else None
    if upsampler == "pixelshuffledirect":
        up = _detect.shape(sd, "upsample.0.weight")
        scale = _detect.shuffle_scale(up[0], in_ch) if up is not None else None
        return (scale, 64) if scale is not None else None
    return 1, 64


def detect(sd: StateDict) -> Params | None:
    # HAT shares SwinIR's key names but has conv blocks in every layer and overlapping cross-attention
    if not _detect.has_all(sd, _REQUIRED) or "relative_position_index_SA" in sd or "absolute_pos_embed" in sd:
        return None
    first = _detect.shape(sd, "conv_first.weight")
    table = _detect.shape(sd, _B0 + "attn.relative_position_bias_table")
    fc1 = _detect.shape(sd, _B0 + "mlp.fc1.weight")
    assert first is not None and table is not None and fc1 is not None
    in_ch, dim = first[1], first[0]
    ws = _detect.window_of(table[0])
    upsampler = _upsampler(sd)
    found = _scale(sd, upsampler, in_ch)
    if ws is None or found is None or in_ch != 3:  # grey-scale SwinIR (denoise/JPEG) is not an RGB model
        return None
    layers = _detect.seq_len(sd, "layers")
    depths = [_detect.seq_len(sd, f"layers.{i}.residual_group.blocks") for i in range(layers)]
    heads = []
    for i in range(layers):
        t = _detect.shape(sd, f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table")
        if t is None:
            return None
        heads.append(t[1])
    scale, nf = found
    p: Params = {
        "scale": scale, "in_channels": in_ch, "embed_dim": dim, "depths": depths, "num_heads": heads,
        "window_size": ws, "mlp_ratio": _detect.ratio(fc1[0], dim), "upsampler": upsampler,
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "3conv",
        "qkv_bias": _B0 + "attn.qkv.bias" in sd, "patch_norm": "patch_embed.norm.weight" in sd,
        "img_range": 255.0 if ws == 7 else 1.0,  # not in the weights: see the module docstring
    }
    if upsampler in ("pixelshuffle", "nearest+conv"):
        p["num_feat"] = nf
    return p


SPEC = ArchSpec(
    name="swinir",
    title="SwinIR",
    color=Color.RGB,
    scales=(1, 2, 3, 4, 8),
    build=build,
    detect=detect,
    # theoretical 262 for SwinIR-M (receptive_field(params)); windows make tiles approximate anyway, and 64
    # (8 windows) bounds the tile overlap
    feature_width=lambda p: int(p["embed_dim"]),
    receptive_field=64,
    # local, but the windows are anchored at the image origin: a tile not on that grid partitions
    # differently, so tiling approximates (which is what this flag tells the runtime)
    global_context=True,
    fp16_safe=False,  # spandrel, from real files; see docs/architectures.md
    defaults={"in_channels": 3, "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 8,
              "mlp_ratio": 2.0, "upsampler": "pixelshuffle", "resi_connection": "1conv", "qkv_bias": True,
              "patch_norm": True, "img_range": 1.0, "num_feat": 64},
)
