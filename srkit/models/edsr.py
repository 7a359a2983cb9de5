"""EDSR (Lim et al., 2017), baseline (16 blocks, 64 features) and full (32 blocks, 256 features).

Parameter names are BasicSR's (`basicsr/archs/edsr_arch.py`): conv_first, body.N.conv1/conv2,
conv_after_body, upsample.{0,2,4} (conv + PixelShuffle stages), conv_last. The files of the original
EDSR-PyTorch repository (head/body/tail, sub_mean/add_mean) are renamed to these by `srkit.models.layouts`.

Mean shift: like BasicSR, the network works on (x - DIV2K mean) * 255 and undoes it at the end; the mean is a
constant (a non-persistent buffer), so it is not in the weights and strict loading of BasicSR files works.

res_scale (the residual scaling inside each block) is not stored in the weights. The paper and every public
checkpoint use 0.1 for the 256-feature model and 1.0 for the 64-feature baseline, so it is inferred from
num_feat (256 -> 0.1, else 1.0). A network trained otherwise would be exported with the wrong scaling.
"""

from __future__ import annotations

import torch
from torch import nn

from srkit.meta import Color
from srkit.models.base import ArchSpec, Params, StateDict
from srkit.models.blocks import MeanShift, ResidualBlockNoBN, Upsample
from srkit.models.util import conv_shape, max_index, upsample_scale


class EDSR(nn.Module):
    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 16,
        upscale: int = 4,
        res_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.shift = MeanShift(num_in_ch)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block)))
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(self.shift.normalize(x))
        res = self.conv_after_body(self.body(x)) + x
        return self.shift.denormalize(self.conv_last(self.upsample(res)))


def build(p: Params) -> EDSR:
    return EDSR(p["in_channels"], p.get("out_channels") or p["in_channels"], p["num_feat"], p["num_block"],
                p["scale"], p.get("res_scale", 1.0))


def detect(sd: StateDict) -> Params | None:
    first, last = conv_shape(sd, "conv_first.weight"), conv_shape(sd, "conv_last.weight")
    if first is None or last is None or "body.0.conv1.weight" not in sd or "conv_after_body.weight" not in sd:
        return None
    num_feat = first[0]
    scale = upsample_scale(sd, "upsample", num_feat)
    blocks = max_index(sd, r"^body\.(\d+)\.conv1\.weight$")
    if scale is None or blocks is None:
        return None
    return {
        "scale": scale,
        "in_channels": first[1],
        "out_channels": last[0],
        "num_feat": num_feat,
        "num_block": blocks + 1,
        "res_scale": 0.1 if num_feat >= 256 else 1.0,  # not in the weights: see the module docstring
    }


SPEC = ArchSpec(
    name="edsr",
    title="EDSR",
    color=Color.RGB,
    scales=(2, 3, 4, 8),
    build=build,
    detect=detect,
    # 2 convs per block (35 for the baseline, 67 for the full model) in theory; the effective field is far
    # smaller, and 32 LR pixels of tile overlap bounds the tiling cost
    receptive_field=32,
    defaults={"in_channels": 3, "out_channels": 3, "num_feat": 64, "num_block": 16, "res_scale": 1.0},
)
