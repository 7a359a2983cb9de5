"""SRVGGNetCompact (Real-ESRGAN compact, realesr-animevideov3, realesr-general-x4v3).

Parameter names are BasicSR's (`basicsr/archs/srvgg_arch.py`): a flat `body` list of conv, activation, conv,
activation, ..., conv; the last conv gives out_ch * upscale^2 channels for a PixelShuffle, and the input,
nearest-upsampled, is added (the network learns the residual).

Detection: PReLU slopes are stored (body.1.weight has shape [num_feat]), ReLU and LeakyReLU store nothing and
cannot be told apart from the weights; such files are taken as `relu`. BasicSR's default and every released
compact model use PReLU, so this only matters for home-trained checkpoints.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from srkit.meta import Color
from srkit.models.base import ArchSpec, Params, StateDict

ACT_TYPES = ("prelu", "relu", "leakyrelu")


def _activation(act_type: str, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU(inplace=True)
    if act_type == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.1, inplace=True)
    raise ValueError(f"act_type must be one of {ACT_TYPES}, not {act_type!r}")


class SRVGGNetCompact(nn.Module):
    """Same constructor as BasicSR's SRVGGNetCompact."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        upscale: int = 4,
        act_type: str = "prelu",
    ) -> None:
        super().__init__()
        self.upscale = upscale
        self.act_type = act_type
        self.body = nn.ModuleList([nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _activation(act_type, num_feat)])
        for _ in range(num_conv):
            self.body.append(nn.Conv2d(num_feat, num_feat, 3, 1, 1))
            self.body.append(_activation(act_type, num_feat))
        self.body.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        return out + F.interpolate(x, scale_factor=float(self.upscale), mode="nearest")


def build(p: Params) -> SRVGGNetCompact:
    return SRVGGNetCompact(p["in_channels"], p.get("out_channels") or p["in_channels"], p["num_feat"],
                           p["num_conv"], p["scale"], p.get("act_type", "prelu"))


_BODY = re.compile(r"^body\.(\d+)\.(weight|bias)$")


def detect(sd: StateDict) -> Params | None:
    # every key must be body.N.weight/bias: this keeps EDSR/RRDBNet-style `body.N.conv1...` files out
    if not sd or any(_BODY.match(k) is None for k in sd):
        return None
    weights = {
        int(m.group(1)): tuple(sd[k].shape) for k in sd if (m := _BODY.match(k)) and m.group(2) == "weight"
    }
    convs = sorted(i for i, shape in weights.items() if len(shape) == 4)
    slopes = sorted(i for i, shape in weights.items() if len(shape) == 1)
    if len(convs) < 2 or convs[0] != 0:
        return None
    first, last = weights[convs[0]], weights[convs[-1]]
    in_ch, num_feat = first[1], first[0]
    # conv, act, conv, act, ..., conv: convs sit at even indices whatever the activation
    if convs != list(range(0, convs[-1] + 1, 2)):
        return None
    if slopes and slopes != [i + 1 for i in convs[:-1]]:
        return None
    r2, rem = divmod(last[0], in_ch)  # the residual add needs out_ch == in_ch
    upscale = math.isqrt(r2)
    if rem or upscale * upscale != r2 or upscale < 1:
        return None
    return {
        "scale": upscale,
        "in_channels": in_ch,
        "out_channels": in_ch,
        "num_feat": num_feat,
        "num_conv": len(convs) - 2,
        "act_type": "prelu" if slopes else "relu",
    }


SPEC = ArchSpec(
    name="srvgg",
    title="SRVGGNetCompact (Real-ESRGAN compact)",
    color=Color.RGB,
    scales=(1, 2, 3, 4),
    build=build,
    detect=detect,
    gan_trained=True,
    receptive_field=18,  # num_conv + 2 stacked 3x3 convs in LR space: 18 for the released 16-conv models
    defaults={"in_channels": 3, "out_channels": 3, "num_feat": 64, "num_conv": 16, "act_type": "prelu"},
)
