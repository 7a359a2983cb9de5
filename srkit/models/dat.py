"""DAT (Chen et al., ICCV 2023, "Dual Aggregation Transformer for Image Super-Resolution").

Parameter names are those of the public checkpoints (zhengchen1999/DAT: DAT-light, DAT-S, DAT, DAT-2, as
chaiNNer/spandrel load them): conv_first, before_RG.1 (LayerNorm), layers.L.blocks.B (DATB: norm1, attn,
norm2, ffn.{fc1, sg.{norm, conv}, fc2}), layers.L.conv (or conv.{0,2,4} for "3conv"), norm, conv_after_body
(or conv_after_body.{0,2,4}), then conv_before_upsample.0 / upsample.{0,2,...} / conv_last ("pixelshuffle")
or upsample.0 ("pixelshuffledirect", DAT-light). Even blocks hold adaptive spatial attention (attn.qkv,
attn.proj, attn.attns.{0,1} rectangular-window attentions with a dynamic position bias `pos.*` and the
buffers rpe_biases / relative_position_index, attn.dwconv, attn.channel_interaction,
attn.spatial_interaction: conv + BatchNorm); odd blocks adaptive channel attention (attn.temperature, ...).
The `attn_mask_0/1` buffers of shifted blocks depend on the training patch size only and are recomputed
for each input, so they are dropped when loading; BatchNorm is folded into its conv by the exporter.

Width, depths, heads, split size (from rpe_biases), expansion factor, resi connection, upsampler and scale
are read from the weights; img_range (1) is not, and every public model uses 1.

Any input size: as the reference, the spatial attention zero-pads its q/k/v to a multiple of the larger
split size and crops back; the pad is computed from the input inside the graph.

Global: channel attention (over all pixels) in every other block and the global-pooling channel
interaction: tiled inference is an approximation whatever the overlap.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from srkit.meta import Color
from srkit.models import _detect
from srkit.models._layers import rgb_mean, shifted_window_mask
from srkit.models.base import ArchSpec, Params
from srkit.models.blocks import Upsample
from srkit.models.swinir import drop_stored_masks, resi_conv, to_image, to_tokens
from srkit.models.util import StateDict


def is_shifted(rg_idx: int, b_idx: int) -> bool:
    """Which spatial-attention blocks shift their windows (the reference's rule, verbatim)."""
    return (rg_idx % 2 == 0 and b_idx > 0 and (b_idx - 2) % 4 == 0) or (rg_idx % 2 != 0 and b_idx % 4 == 0)


def pad_amount(n: Any, multiple: int) -> Any:
    if torch.jit.is_tracing():
        return (multiple - n % multiple) % multiple
    return (-int(n)) % multiple


class DynamicPosBias(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        pos = dim // 4
        self.pos_proj = nn.Linear(2, pos)
        self.pos1 = nn.Sequential(nn.LayerNorm(pos), nn.ReLU(inplace=True), nn.Linear(pos, pos))
        self.pos2 = nn.Sequential(nn.LayerNorm(pos), nn.ReLU(inplace=True), nn.Linear(pos, pos))
        self.pos3 = nn.Sequential(nn.LayerNorm(pos), nn.ReLU(inplace=True), nn.Linear(pos, heads))

    def forward(self, biases: torch.Tensor) -> torch.Tensor:
        return self.pos3(self.pos2(self.pos1(self.pos_proj(biases))))


class SpatialAttention(nn.Module):
    """Attention within rectangular h_sp x w_sp windows (idx 1 swaps the sides), dynamic position bias."""

    def __init__(self, dim: int, idx: int, split: tuple[int, int], heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.h_sp, self.w_sp = split if idx == 0 else (split[1], split[0])
        self.pos = DynamicPosBias(dim // 4, heads)
        bh = torch.arange(1 - self.h_sp, self.h_sp)
        bw = torch.arange(1 - self.w_sp, self.w_sp)
        self.register_buffer("rpe_biases", torch.stack(torch.meshgrid(bh, bw, indexing="ij")).flatten(1).T.float())
        coords = torch.stack(torch.meshgrid(torch.arange(self.h_sp), torch.arange(self.w_sp), indexing="ij"))
        coords = coords.flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        index = (rel[:, :, 0] + self.h_sp - 1) * (2 * self.w_sp - 1) + rel[:, :, 1] + self.w_sp - 1
        self.register_buffer("relative_position_index", index)
        self.rpe_biases: torch.Tensor
        self.relative_position_index: torch.Tensor

    def to_windows(self, x: torch.Tensor, h: Any, w: Any) -> torch.Tensor:
        b, _, c = x.shape
        hs, ws = self.h_sp, self.w_sp
        x = x.transpose(-2, -1).reshape(b, c, h // hs, hs, w // ws, ws)
        x = x.permute(0, 2, 4, 3, 5, 1).reshape(-1, hs * ws, self.heads, c // self.heads)
        return x.permute(0, 2, 1, 3)

    def forward(self, qkv: torch.Tensor, h: Any, w: Any, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = (self.to_windows(t, h, w) for t in (qkv[0], qkv[1], qkv[2]))
        n = self.h_sp * self.w_sp
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.pos(self.rpe_biases)[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            attn = attn.view(-1, mask.shape[0], self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(-1, n, q.shape[1] * q.shape[3])
        c = x.shape[-1]
        x = x.view(-1, h // self.h_sp, w // self.w_sp, self.h_sp, self.w_sp, c)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def interactions(dim: int) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    dwconv = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, groups=dim), nn.BatchNorm2d(dim), nn.GELU())
    channel = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim // 8, 1), nn.BatchNorm2d(dim // 8),
                            nn.GELU(), nn.Conv2d(dim // 8, dim, 1))
    spatial = nn.Sequential(nn.Conv2d(dim, dim // 16, 1), nn.BatchNorm2d(dim // 16), nn.GELU(),
                            nn.Conv2d(dim // 16, 1, 1))
    return dwconv, channel, spatial


class AdaptiveSpatialAttention(nn.Module):
    def __init__(self, dim: int, heads: int, split: tuple[int, int], qkv_bias: bool, shifted: bool) -> None:
        super().__init__()
        self.split = split
        self.shift = (split[0] // 2, split[1] // 2)
        self.shifted = shifted
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attns = nn.ModuleList(SpatialAttention(dim // 2, i, split, heads // 2) for i in range(2))
        self.dwconv, self.channel_interaction, self.spatial_interaction = interactions(dim)
        drop_stored_masks(self, ("attn_mask_0", "attn_mask_1"))

    def forward(self, x: torch.Tensor, h: Any, w: Any) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, -1, 3, c).permute(2, 0, 1, 3)  # 3, B, HW, C
        v = qkv[2].transpose(-2, -1).reshape(b, c, h, w)
        big = max(self.split)
        pad_b, pad_r = pad_amount(h, big), pad_amount(w, big)
        qkv = qkv.reshape(3 * b, h, w, c).permute(0, 3, 1, 2)
        pads: list[Any] = [0, pad_r, 0, pad_b]
        qkv = F.pad(qkv, pads).reshape(3, b, c, -1).transpose(-2, -1)
        hp, wp = h + pad_b, w + pad_r
        half = c // 2
        s0, s1 = self.split
        if self.shifted:
            qkv = qkv.view(3, b, hp, wp, c)
            sh0, sh1 = self.shift
            q0 = torch.roll(qkv[..., :half], shifts=(-sh0, -sh1), dims=(2, 3)).reshape(3, b, -1, half)
            q1 = torch.roll(qkv[..., half:], shifts=(-sh1, -sh0), dims=(2, 3)).reshape(3, b, -1, half)
            m0 = shifted_window_mask(hp, wp, 0, 0, x.dtype, rect=(s0, s1, sh0, sh1))
            m1 = shifted_window_mask(hp, wp, 0, 0, x.dtype, rect=(s1, s0, sh1, sh0))
            x1 = torch.roll(self.attns[0](q0, hp, wp, m0), shifts=(sh0, sh1), dims=(1, 2))
            x2 = torch.roll(self.attns[1](q1, hp, wp, m1), shifts=(sh1, sh0), dims=(1, 2))
        else:
            x1 = self.attns[0](qkv[..., :half], hp, wp, None)
            x2 = self.attns[1](qkv[..., half:], hp, wp, None)
        x1 = x1[:, :h, :w, :].reshape(b, n, half)
        x2 = x2[:, :h, :w, :].reshape(b, n, half)
        attended = torch.cat([x1, x2], dim=2)
        conv_x = self.dwconv(v)
        channel_map = self.channel_interaction(conv_x).permute(0, 2, 3, 1).reshape(b, 1, c)
        spatial_map = self.spatial_interaction(attended.transpose(-2, -1).reshape(b, c, h, w))
        attended = attended * torch.sigmoid(channel_map)
        conv_x = (torch.sigmoid(spatial_map) * conv_x).permute(0, 2, 3, 1).reshape(b, n, c)
        return self.proj(attended + conv_x)


class AdaptiveChannelAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.dwconv, self.channel_interaction, self.spatial_interaction = interactions(dim)

    def forward(self, x: torch.Tensor, h: Any, w: Any) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0].transpose(-2, -1), qkv[1].transpose(-2, -1), qkv[2].transpose(-2, -1)
        v_ = v.reshape(b, c, n).reshape(b, c, h, w)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        attended = (attn @ v).permute(0, 3, 1, 2).reshape(b, n, c)
        conv_x = self.dwconv(v_)
        channel_map = self.channel_interaction(attended.transpose(-2, -1).reshape(b, c, h, w))
        spatial_map = self.spatial_interaction(conv_x).permute(0, 2, 3, 1).reshape(b, n, 1)
        attended = attended * torch.sigmoid(spatial_map)
        conv_x = (conv_x * torch.sigmoid(channel_map)).permute(0, 2, 3, 1).reshape(b, n, c)
        return self.proj(attended + conv_x)


class SpatialGate(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: Any, w: Any) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        b, _, c = x.shape
        x2 = self.conv(self.norm(x2).transpose(1, 2).reshape(b, c // 2, h, w)).flatten(2).transpose(-1, -2)
        return x1 * x2


class SGFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.sg = SpatialGate(hidden // 2)
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x: torch.Tensor, h: Any, w: Any) -> torch.Tensor:
        return self.fc2(self.sg(self.act(self.fc1(x)), h, w))


class DATB(nn.Module):
    def __init__(self, dim: int, heads: int, rg_idx: int, b_idx: int, p: Params) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        if b_idx % 2 == 0:
            split = (p["split_size"][0], p["split_size"][1])
            self.attn: nn.Module = AdaptiveSpatialAttention(dim, heads, split, p["qkv_bias"],
                                                            is_shifted(rg_idx, b_idx))
        else:
            self.attn = AdaptiveChannelAttention(dim, heads, p["qkv_bias"])
        self.ffn = SGFN(dim, int(dim * p["expansion_factor"]))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: Any, w: Any) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.ffn(self.norm2(x), h, w)


class ResidualGroup(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, rg_idx: int, p: Params) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(DATB(dim, heads, rg_idx, i, p) for i in range(depth))
        self.conv = resi_conv(dim, p["resi_connection"])

    def forward(self, x: torch.Tensor, h: Any, w: Any) -> torch.Tensor:
        res = x
        for block in self.blocks:
            x = block(x, h, w)
        return res + to_tokens(self.conv(to_image(x, (h, w))))


class TokenNorm(nn.Sequential):
    """`before_RG`: NCHW -> tokens, then LayerNorm (index 1, as in the public files)."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Identity(), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[1](to_tokens(x))


class DAT(nn.Module):
    def __init__(self, p: Params) -> None:
        super().__init__()
        in_ch, dim, scale = p["in_channels"], p["embed_dim"], p["scale"]
        self.scale, self.upsampler = scale, p["upsampler"]
        self.register_buffer("mean", rgb_mean(in_ch), persistent=False)
        self.mean: torch.Tensor
        self.conv_first = nn.Conv2d(in_ch, dim, 3, 1, 1)
        self.before_RG = TokenNorm(dim)
        self.layers = nn.ModuleList(
            ResidualGroup(dim, d, h, i, p) for i, (d, h) in enumerate(zip(p["depth"], p["num_heads"], strict=True))
        )
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = resi_conv(dim, p["resi_connection"])
        if self.upsampler == "pixelshuffle":
            nf = p.get("num_feat", 64)
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, nf, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.upsample: nn.Module = Upsample(scale, nf)
            self.conv_last = nn.Conv2d(nf, in_ch, 3, 1, 1)
        else:
            self.upsample = nn.Sequential(nn.Conv2d(dim, in_ch * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        t = self.before_RG(x)
        for layer in self.layers:
            t = layer(t, h, w)
        return to_image(self.norm(t), (h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(x - self.mean)
        x = self.conv_after_body(self.features(x)) + x
        if self.upsampler == "pixelshuffle":
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        else:
            x = self.upsample(x)
        return x + self.mean


def build(p: Params) -> DAT:
    return DAT(p)


_B0 = "layers.0.blocks.0."
_REQUIRED = ("conv_first.weight", "before_RG.1.weight", "norm.weight", _B0 + "ffn.sg.conv.weight",
             _B0 + "attn.attns.0.rpe_biases", _B0 + "attn.attns.0.pos.pos3.2.weight", _B0 + "attn.qkv.weight",
             _B0 + "ffn.fc1.weight")


def _split_size(sd: StateDict) -> list[int] | None:
    """The first branch's window (H_sp, W_sp): its rpe_biases table ends at (H_sp - 1, W_sp - 1).

    Without values (meta tensors) the shapes give the two sides but not their order: ((2h-1)(2w-1), 2)
    and (hw, hw); every public model has h <= w, which is assumed then.
    """
    biases = sd[_B0 + "attn.attns.0.rpe_biases"]
    if biases.ndim != 2 or biases.shape[1] != 2:
        return None
    if biases.device.type != "meta":
        return [int(v) + 1 for v in biases[-1].tolist()]
    index = _detect.shape(sd, _B0 + "attn.attns.0.relative_position_index")
    if index is None:
        return None
    n = index[0]
    sides = [[h, n // h] for h in range(1, n + 1) if n % h == 0 and h <= n // h
             and (2 * h - 1) * (2 * (n // h) - 1) == biases.shape[0]]
    return sides[0] if sides else None


def detect(sd: StateDict) -> Params | None:
    if not _detect.has_all(sd, _REQUIRED):
        return None
    first, fc1 = _detect.shape(sd, "conv_first.weight"), _detect.shape(sd, _B0 + "ffn.fc1.weight")
    assert first is not None and fc1 is not None
    in_ch, dim = first[1], first[0]
    layers = _detect.seq_len(sd, "layers")
    depth = [_detect.seq_len(sd, f"layers.{i}.blocks") for i in range(layers)]
    heads = []
    for i, d in enumerate(depth):
        if d >= 2:
            t = _detect.shape(sd, f"layers.{i}.blocks.1.attn.temperature")
            heads.append(t[0] if t is not None else 0)
        else:  # only the spatial attention (half the heads per branch) is there
            t = _detect.shape(sd, f"layers.{i}.blocks.0.attn.attns.0.pos.pos3.2.weight")
            heads.append(2 * t[0] if t is not None else 0)
    split = _split_size(sd)
    upsampler = "pixelshuffle" if "conv_last.weight" in sd else "pixelshuffledirect"
    if upsampler == "pixelshuffle":
        found = _detect.basicsr_upsample(sd, "upsample")
    else:
        up = _detect.shape(sd, "upsample.0.weight")
        s = _detect.shuffle_scale(up[0], in_ch) if up is not None else None
        found = (s, 0) if s is not None else None
    if found is None or in_ch != 3 or 0 in heads or split is None:
        return None
    p: Params = {
        "scale": found[0], "in_channels": in_ch, "embed_dim": dim, "depth": depth, "num_heads": heads,
        "split_size": split, "expansion_factor": _detect.ratio(fc1[0], dim), "qkv_bias": _B0 + "attn.qkv.bias" in sd,
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "3conv", "upsampler": upsampler,
    }
    if upsampler == "pixelshuffle":
        p["num_feat"] = found[1]
    return p


SPEC = ArchSpec(
    name="dat",
    title="DAT",
    color=Color.RGB,
    scales=(2, 3, 4, 8),
    build=build,
    detect=detect,
    # global (channel attention, see the module docstring): this is the tile overlap, not a bound
    feature_width=lambda p: int(p["embed_dim"]),
    receptive_field=64,
    global_context=True,
    fp16_safe=False,  # spandrel, from real files; see docs/architectures.md
    defaults={"in_channels": 3, "embed_dim": 180, "depth": [6] * 6, "num_heads": [6] * 6, "split_size": [8, 32],
              "expansion_factor": 2.0, "qkv_bias": True, "resi_connection": "1conv", "upsampler": "pixelshuffle",
              "num_feat": 64},
)
