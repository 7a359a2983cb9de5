"""ESPCN (Shi et al., 2016): 5x5/64 -> 3x3/32 -> 3x3/r^2, tanh, sub-pixel convolution (PixelShuffle)."""

from __future__ import annotations

import math

import torch
from torch import nn

from srkit.meta import Color
from srkit.models.base import ArchSpec, Params, StateDict
from srkit.models.util import conv_shape


class ESPCN(nn.Module):
    def __init__(self, scale: int = 3, in_channels: int = 1, feat: int = 64, feat2: int = 32) -> None:
        super().__init__()
        self.scale = scale
        self.conv1 = nn.Conv2d(in_channels, feat, 5, padding=2)
        self.conv2 = nn.Conv2d(feat, feat2, 3, padding=1)
        self.conv3 = nn.Conv2d(feat2, in_channels * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        self._init_weights()

    def _init_weights(self) -> None:
        # tanh networks train faster from a fan-in-scaled normal than from torch's default uniform
        for conv in (self.conv1, self.conv2, self.conv3):
            fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
            nn.init.normal_(conv.weight, 0.0, math.sqrt(1.0 / fan_in))
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]  # convs here have bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.conv1(x))
        x = torch.tanh(self.conv2(x))
        return self.shuffle(self.conv3(x))


def build(p: Params) -> ESPCN:
    return ESPCN(p["scale"], p["in_channels"], p.get("feat", 64), p.get("feat2", 32))


def detect(sd: StateDict) -> Params | None:
    w1, w2, w3 = (conv_shape(sd, f"conv{i}.weight") for i in (1, 2, 3))
    if w1 is None or w2 is None or w3 is None or "conv4.weight" in sd or w1[2] != 5:
        return None
    in_ch = w1[1]
    r2, rem = divmod(w3[0], in_ch)
    scale = math.isqrt(r2)
    if rem or scale * scale != r2 or scale < 2:
        return None
    return {"scale": scale, "in_channels": in_ch, "feat": w1[0], "feat2": w2[0]}


SPEC = ArchSpec(
    name="espcn",
    title="ESPCN",
    color=Color.Y,
    scales=(2, 3, 4, 8),
    build=build,
    detect=detect,
    feature_width=lambda p: int(p["feat"]),
    receptive_field=4,
    defaults={"in_channels": 1, "feat": 64, "feat2": 32},
)
