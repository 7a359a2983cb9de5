"""RRDBNet (ESRGAN, Wang et al. 2018; Real-ESRGAN x4plus / x2plus / anime 6B).

Parameter names are BasicSR's (`basicsr/archs/rrdbnet_arch.py`): conv_first, body.N.rdb{1,2,3}.conv{1..5},
conv_body, conv_up1, conv_up2, conv_hr, conv_last, so BasicSR and Real-ESRGAN files load strictly; the
original ESRGAN repository's layouts are renamed to these by `srkit.models.layouts` before detection.
x4 is the plain network; x2 and x1 put a pixel-unshuffle (space-to-depth by 2 or 4) in front of conv_first,
which is why those need input sizes that are multiples of 2 or 4.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from srkit.meta import Color
from srkit.models.base import ArchSpec, Params, StateDict
from srkit.models.util import conv_shape

# pixel-unshuffle factor in front of conv_first, by scale (the body always upsamples x4)
UNSHUFFLE = {4: 1, 2: 2, 1: 4}


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """Same constructor as BasicSR's RRDBNet (num_in_ch counts image channels, before unshuffling)."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ) -> None:
        super().__init__()
        if scale not in UNSHUFFLE:
            raise ValueError(f"RRDBNet supports scales {sorted(UNSHUFFLE)}, not {scale}")
        self.scale = scale
        self.unshuffle = UNSHUFFLE[scale]
        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.pixel_unshuffle exports as Reshape/Transpose with 0/-1 dims, so H and W stay dynamic
        feat = F.pixel_unshuffle(x, self.unshuffle) if self.unshuffle > 1 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def size_multiple(p: Params) -> int:
    """x2 / x1 start with a pixel-unshuffle by 2 / 4: the runtime pads inputs to that multiple."""
    return UNSHUFFLE[int(p["scale"])]


def build(p: Params) -> RRDBNet:
    return RRDBNet(p["in_channels"], p.get("out_channels") or p["in_channels"], p["scale"],
                   p["num_feat"], p["num_block"], p["num_grow_ch"])


_BODY = re.compile(r"^body\.(\d+)\.rdb[123]\.conv[1-5]\.weight$")
_REQUIRED = ("conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight", "conv_up1.weight",
             "conv_up2.weight", "conv_hr.weight", "conv_last.weight")


def detect(sd: StateDict) -> Params | None:
    """As spandrel does: blocks from the highest body index, scale from conv_first's input channels."""
    if any(k not in sd for k in _REQUIRED) or "conv_up3.weight" in sd:
        return None
    first, last = conv_shape(sd, "conv_first.weight"), conv_shape(sd, "conv_last.weight")
    grow = conv_shape(sd, "body.0.rdb1.conv1.weight")
    if first is None or last is None or grow is None or not len(first) == len(last) == len(grow) == 4:
        return None
    out_ch = last[0]
    scale = next((s for s, u in UNSHUFFLE.items() if first[1] == out_ch * u * u), None)
    if scale is None:
        return None
    blocks = [int(m.group(1)) for k in sd if (m := _BODY.match(k))]
    return {
        "scale": scale,
        "in_channels": out_ch,
        "out_channels": out_ch,
        "num_feat": first[0],
        "num_block": max(blocks) + 1,
        "num_grow_ch": grow[0],
    }


SPEC = ArchSpec(
    name="rrdbnet",
    title="RRDBNet (ESRGAN / Real-ESRGAN)",
    color=Color.RGB,
    scales=(1, 2, 4),
    build=build,
    detect=detect,
    size_multiple=size_multiple,
    gan_trained=True,
    fp16_safe=False,  # fp16 overflow to NaN reported for released weights (xinntao/Real-ESRGAN #632, #330)
    # The theoretical field of 23 blocks is ~350 LR pixels, but the effective one decays fast: Real-ESRGAN's
    # own tiled inference pads tiles by 10 px. 32 keeps seams invisible at a bounded tiling cost.
    receptive_field=32,
    defaults={"in_channels": 3, "out_channels": 3, "num_feat": 64, "num_block": 23, "num_grow_ch": 32},
)
