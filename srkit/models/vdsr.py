"""VDSR (Kim et al., 2016): 20 3x3 convs (64 features, ReLU) predicting the residual over bicubic, on Y.

Key layout: twtygqyy/pytorch-vdsr, the common PyTorch VDSR: input, residual_layer.N.conv (18 of them),
output, without biases (files with biases are accepted too). As in srcnn.py, the bicubic pre-upsampling is
inside the network, and so inside the exported graph: the scale is a property of the graph, not of the
weights (one VDSR is trained for several scales), hence scale_in_weights=False and `--scale` is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srkit.meta import Color
from srkit.models.base import ArchSpec, Params, StateDict
from srkit.models.util import conv_shape, max_index


class ConvReLU(nn.Module):
    def __init__(self, feat: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(feat, feat, 3, padding=1, bias=bias)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


class VDSR(nn.Module):
    def __init__(
        self,
        scale: int = 2,
        in_channels: int = 1,
        num_feat: int = 64,
        num_layers: int = 20,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.input = nn.Conv2d(in_channels, num_feat, 3, padding=1, bias=bias)
        self.residual_layer = nn.Sequential(*(ConvReLU(num_feat, bias) for _ in range(num_layers - 2)))
        self.output = nn.Conv2d(num_feat, in_channels, 3, padding=1, bias=bias)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=float(self.scale), mode="bicubic", align_corners=False)
        out = self.residual_layer(self.relu(self.input(x)))
        return self.output(out) + x


def build(p: Params) -> VDSR:
    return VDSR(p["scale"], p["in_channels"], p["num_feat"], p["num_layers"], bool(p["bias"]))


def detect(sd: StateDict) -> Params | None:
    first, last = conv_shape(sd, "input.weight"), conv_shape(sd, "output.weight")
    inner = max_index(sd, r"^residual_layer\.(\d+)\.conv\.weight$")
    if first is None or last is None or inner is None or last[0] != first[1]:
        return None
    bias = "input.bias" in sd
    return {"in_channels": first[1], "num_feat": first[0], "num_layers": inner + 3, "bias": bias}


SPEC = ArchSpec(
    name="vdsr",
    title="VDSR",
    color=Color.Y,
    scales=(2, 3, 4),
    build=build,
    detect=detect,
    receptive_field=10,  # 20 convs = 20 HR pixels of radius, 10 LR pixels at x2 (fewer at x3, x4)
    scale_in_weights=False,
    defaults={"in_channels": 1, "num_feat": 64, "num_layers": 20, "bias": False},
)
