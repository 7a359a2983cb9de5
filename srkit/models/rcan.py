"""RCAN (Zhang et al., 2018): residual groups of residual channel-attention blocks.

Parameter names are BasicSR's (`basicsr/archs/rcan_arch.py`): conv_first,
body.G.residual_group.B.rcab.{0,2} (convs), body.G.residual_group.B.rcab.3.attention.{1,3} (the squeeze and
excite 1x1 convs), body.G.conv, conv_after_body, upsample.*, conv_last; DIV2K mean shift with range 255 as
in EDSR. The original RCAN repository's names (head/body/tail, conv_du) are renamed by
`srkit.models.layouts`.

Channel attention pools over the whole image, so strictly every output pixel sees every input pixel:
tiled inference is an approximation for RCAN (the receptive_field below is the convolutional part only).
"""

from __future__ import annotations

import torch
from torch import nn

from srkit.meta import Color
from srkit.models.base import ArchSpec, Params, StateDict
from srkit.models.blocks import MeanShift, Upsample
from srkit.models.util import conv_shape, max_index, upsample_scale


class ChannelAttention(nn.Module):
    def __init__(self, num_feat: int, squeeze_factor: int = 16) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, num_feat // squeeze_factor, 1, padding=0),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat // squeeze_factor, num_feat, 1, padding=0),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class RCAB(nn.Module):
    def __init__(self, num_feat: int, squeeze_factor: int = 16, res_scale: float = 1.0) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.rcab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
            nn.ReLU(True),
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rcab(x) * self.res_scale + x


class ResidualGroup(nn.Module):
    def __init__(
        self, num_feat: int, num_block: int, squeeze_factor: int = 16, res_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.residual_group = nn.Sequential(
            *(RCAB(num_feat, squeeze_factor, res_scale) for _ in range(num_block))
        )
        self.conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.residual_group(x)) + x


class RCAN(nn.Module):
    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_group: int = 10,
        num_block: int = 20,
        squeeze_factor: int = 16,
        upscale: int = 4,
        res_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.shift = MeanShift(num_in_ch)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(
            *(ResidualGroup(num_feat, num_block, squeeze_factor, res_scale) for _ in range(num_group))
        )
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(self.shift.normalize(x))
        res = self.conv_after_body(self.body(x)) + x
        return self.shift.denormalize(self.conv_last(self.upsample(res)))


def build(p: Params) -> RCAN:
    return RCAN(p["in_channels"], p.get("out_channels") or p["in_channels"], p["num_feat"], p["num_group"],
                p["num_block"], p["squeeze_factor"], p["scale"], p.get("res_scale", 1.0))


def detect(sd: StateDict) -> Params | None:
    first, last = conv_shape(sd, "conv_first.weight"), conv_shape(sd, "conv_last.weight")
    squeeze = conv_shape(sd, "body.0.residual_group.0.rcab.3.attention.1.weight")
    if first is None or last is None or squeeze is None or "conv_after_body.weight" not in sd:
        return None
    num_feat = first[0]
    scale = upsample_scale(sd, "upsample", num_feat)
    groups = max_index(sd, r"^body\.(\d+)\.conv\.weight$")
    blocks = max_index(sd, r"^body\.0\.residual_group\.(\d+)\.rcab\.0\.weight$")
    if scale is None or groups is None or blocks is None or squeeze[0] == 0:
        return None
    return {
        "scale": scale,
        "in_channels": first[1],
        "out_channels": last[0],
        "num_feat": num_feat,
        "num_group": groups + 1,
        "num_block": blocks + 1,
        "squeeze_factor": num_feat // squeeze[0],
        "res_scale": 1.0,  # not in the weights; 1 in the paper and in every public RCAN model
    }


SPEC = ArchSpec(
    name="rcan",
    title="RCAN",
    color=Color.RGB,
    scales=(2, 3, 4, 8),
    build=build,
    detect=detect,
    receptive_field=32,  # convolutional part only; see the module docstring about channel attention
    global_context=True,  # channel attention pools over the whole image: tiled output only approximates
    defaults={"in_channels": 3, "out_channels": 3, "num_feat": 64, "num_group": 10, "num_block": 20,
              "squeeze_factor": 16, "res_scale": 1.0},
)
