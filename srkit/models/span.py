"""SPAN (Wan et al., 2024, "Swift Parameter-free Attention Network", NTIRE 2024 efficient SR winner).

Parameter names are those of the public checkpoints (hongyuanyu/SPAN, as chaiNNer/spandrel load them):
conv_1, block_1..block_6 (each c1_r, c2_r, c3_r), conv_cat (1x1), conv_2, upsampler.0 (conv before a
PixelShuffle). Every 3x3 layer is a `Conv3XC`: a training-time branch (sk: 1x1, conv.0: 1x1, conv.1: 3x3,
conv.2: 1x1) and `eval_conv`, the one 3x3 conv those collapse to. The public files store both; the
reference network recomputes eval_conv from the branches on every eval forward, so srkit fuses them once,
after loading and on .eval(), and the exported graph holds only the fused 3x3 convs (an exact identity:
the branches are linear and zero padding commutes with them, bias included).

Input normalisation: (x - DIV2K mean) * 255, and no de-normalisation at the end (as the reference). Files
with a `no_norm` buffer were trained without it.

Attention is parameter-free and per pixel (sigmoid(x) - 0.5), so the network is a plain local convnet:
receptive field 1 (conv_1) + 6 blocks x 3 + 1 (conv_2) + 1 (upsampler) = 21 LR pixels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from srkit.meta import Color
from srkit.models import _detect
from srkit.models._layers import DIV2K_RGB_MEAN
from srkit.models.base import ArchSpec, Params
from srkit.models.util import StateDict

NUM_BLOCKS = 6  # fixed in the architecture: the forward wires block_1 and block_6's inner output by name
GAIN = 2


class Conv3XC(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.sk = nn.Conv2d(c_in, c_out, 1)
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_in * GAIN, 1),
            nn.Conv2d(c_in * GAIN, c_out * GAIN, 3),
            nn.Conv2d(c_out * GAIN, c_out, 1),
        )
        self.eval_conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.eval_conv.weight.requires_grad_(False)
        self.eval_conv.bias.requires_grad_(False)  # type: ignore[union-attr]
        self.register_load_state_dict_post_hook(lambda module, _keys: module.fuse())

    @torch.no_grad()
    def fuse(self) -> None:
        """eval_conv <- the composition sk + conv.2 o conv.1 o conv.0 (one 3x3 conv)."""
        convs: list[nn.Conv2d] = [self.conv[0], self.conv[1], self.conv[2]]  # type: ignore[list-item]
        w0, w1, w2 = convs[0].weight[:, :, 0, 0], convs[1].weight, convs[2].weight[:, :, 0, 0]
        b0, b1, b2, bs = (c.bias for c in (*convs, self.sk))
        assert b0 is not None and b1 is not None and b2 is not None and bs is not None
        # 1x1 then 3x3: mix the 3x3 kernel's input channels through w0; then mix its outputs through w2
        weight = torch.einsum("om,mikl,in->onkl", w2, w1, w0)
        bias = w2 @ (torch.einsum("mikl,i->m", w1, b0) + b1) + b2
        weight[:, :, 1, 1] += self.sk.weight[:, :, 0, 0]
        self.eval_conv.weight.copy_(weight)
        self.eval_conv.bias.copy_(bias + bs)  # type: ignore[union-attr]

    def train(self, mode: bool = True) -> Conv3XC:
        super().train(mode)
        if not mode:
            self.fuse()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.conv(F.pad(x, (1, 1, 1, 1))) + self.sk(x)
        return self.eval_conv(x)


class SPAB(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c1_r = Conv3XC(channels, channels)
        self.c2_r = Conv3XC(channels, channels)
        self.c3_r = Conv3XC(channels, channels)
        self.act1 = nn.SiLU()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the reference's SiLU is in place, so the first conv's output it hands on is the activated one
        out1 = self.act1(self.c1_r(x))
        out3 = self.c3_r(self.act1(self.c2_r(out1)))
        attention = torch.sigmoid(out3) - 0.5
        return (out3 + x) * attention, out1


class SPAN(nn.Module):
    def __init__(self, in_ch: int = 3, out_ch: int = 3, feat: int = 48, upscale: int = 4,
                 norm: bool = True) -> None:
        super().__init__()
        self.norm = norm
        self.register_buffer("mean", torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.mean: torch.Tensor
        if not norm:  # the public files of un-normalised models carry this marker buffer
            self.register_buffer("no_norm", torch.zeros(1))
        self.conv_1 = Conv3XC(in_ch, feat)
        for i in range(1, NUM_BLOCKS + 1):
            self.add_module(f"block_{i}", SPAB(feat))
        self.conv_cat = nn.Conv2d(feat * 4, feat, 1)
        self.conv_2 = Conv3XC(feat, feat)
        self.upsampler = nn.Sequential(nn.Conv2d(feat, out_ch * upscale * upscale, 3, padding=1),
                                       nn.PixelShuffle(upscale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm:
            x = (x - self.mean) * 255.0
        first = self.conv_1(x)
        out = first
        outs: list[Any] = []
        for i in range(1, NUM_BLOCKS + 1):
            out, inner = getattr(self, f"block_{i}")(out)
            outs.append((out, inner))
        b1, (b6, b6_inner) = outs[0][0], outs[-1]
        out = self.conv_cat(torch.cat([first, self.conv_2(b6), b1, b6_inner], 1))
        return self.upsampler(out)


def build(p: Params) -> SPAN:
    return SPAN(p["in_channels"], p["in_channels"], p["feature_channels"], p["scale"], p.get("norm", True))


_REQUIRED = ("conv_1.sk.weight", "conv_1.conv.1.weight", "conv_1.eval_conv.weight", "block_1.c1_r.sk.weight",
             "block_6.c3_r.eval_conv.weight", "conv_cat.weight", "conv_2.sk.weight", "upsampler.0.weight")


def detect(sd: StateDict) -> Params | None:
    if not _detect.has_all(sd, _REQUIRED) or "block_7.c1_r.sk.weight" in sd:
        return None
    first, up = _detect.shape(sd, "conv_1.sk.weight"), _detect.shape(sd, "upsampler.0.weight")
    assert first is not None and up is not None
    in_ch, feat = first[1], first[0]
    scale = _detect.shuffle_scale(up[0], in_ch)
    if in_ch != 3 or scale is None:  # the mean shift is RGB's
        return None
    return {"scale": scale, "in_channels": in_ch, "feature_channels": feat, "norm": "no_norm" not in sd}


SPEC = ArchSpec(
    name="span",
    title="SPAN",
    color=Color.RGB,
    scales=(1, 2, 3, 4, 8),
    build=build,
    detect=detect,
    feature_width=lambda p: int(p["feature_channels"]),
    receptive_field=21,  # see the module docstring
    fp16_safe=True,  # docs/architectures.md: measured finite, peak activation ~130 (input x 255)
    defaults={"in_channels": 3, "feature_channels": 48, "norm": True},
)
