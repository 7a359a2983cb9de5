"""SRResNet / the SRGAN generator (Ledig et al., 2017), in two key layouts.

* BasicSR's MSRResNet (`basicsr/archs/srresnet_arch.py`), no BatchNorm: conv_first, body.N.conv1/conv2,
  upconv1 (+ upconv2 at x4), conv_hr, conv_last, LeakyReLU 0.1, plus the bilinearly upsampled input.
* The paper's SRResNet, with BatchNorm and PReLU (`batch_norm` params): conv_first (9x9) + prelu_first,
  body.N.{conv1,bn1,prelu,conv2,bn2}, conv_body + bn_body with the long skip, upsample.{0,2}
  (conv, PixelShuffle(2), PReLU) per x2 stage, or one conv + PixelShuffle(3) at x3, conv_last (9x9).
  There is no single public key layout for this variant; srkit's uses BasicSR-style names.

In eval mode each BatchNorm directly follows a conv, and the ONNX exporter folds it into that conv's
weights, so no BatchNormalization node is left (graph.check_graph rejects one if it were).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srkit.meta import Color
from srkit.models.base import ArchSpec, Params, StateDict
from srkit.models.blocks import ResidualBlockNoBN
from srkit.models.util import conv_shape, max_index


class MSRResNet(nn.Module):
    """BasicSR's Modified SRResNet (same constructor)."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 16,
        upscale: int = 4,
    ) -> None:
        super().__init__()
        if upscale not in (2, 3, 4):
            raise ValueError(f"MSRResNet supports scales 2, 3 and 4, not {upscale}")
        self.upscale = upscale
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(ResidualBlockNoBN(num_feat) for _ in range(num_block)))
        if upscale in (2, 3):
            self.upconv1 = nn.Conv2d(num_feat, num_feat * upscale * upscale, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(upscale)
        else:
            self.upconv1 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
            self.upconv2 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(2)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(self.lrelu(self.conv_first(x)))
        out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))
        if self.upscale == 4:
            out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        return out + F.interpolate(x, scale_factor=float(self.upscale), mode="bilinear", align_corners=False)


class BNResidualBlock(nn.Module):
    def __init__(self, num_feat: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(num_feat)
        self.prelu = nn.PReLU(num_feat)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(num_feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))


def _bn_upsample(scale: int, num_feat: int) -> nn.Sequential:
    factors = [2, 2] if scale == 4 else [scale]
    layers: list[nn.Module] = []
    for r in factors:
        layers += [nn.Conv2d(num_feat, num_feat * r * r, 3, 1, 1), nn.PixelShuffle(r), nn.PReLU(num_feat)]
    return nn.Sequential(*layers)


class SRResNet(nn.Module):
    """The paper's generator: BatchNorm in the residual blocks, PReLU, PixelShuffle x2 stages, 9x9 ends."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 16,
        upscale: int = 4,
    ) -> None:
        super().__init__()
        if upscale not in (2, 3, 4):
            raise ValueError(f"SRResNet supports scales 2, 3 and 4, not {upscale}")
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 9, 1, 4)
        self.prelu_first = nn.PReLU(num_feat)
        self.body = nn.Sequential(*(BNResidualBlock(num_feat) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.bn_body = nn.BatchNorm2d(num_feat)
        self.upsample = _bn_upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 9, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.prelu_first(self.conv_first(x))
        out = self.bn_body(self.conv_body(self.body(feat))) + feat
        return self.conv_last(self.upsample(out))


def build(p: Params) -> nn.Module:
    cls = SRResNet if p.get("batch_norm") else MSRResNet
    return cls(p["in_channels"], p.get("out_channels") or p["in_channels"], p["num_feat"], p["num_block"],
               p["scale"])


def _detect_msrresnet(sd: StateDict) -> Params | None:
    first, up1 = conv_shape(sd, "conv_first.weight"), conv_shape(sd, "upconv1.weight")
    last = conv_shape(sd, "conv_last.weight")
    if first is None or up1 is None or last is None or "conv_hr.weight" not in sd:
        return None
    num_feat = first[0]
    if "upconv2.weight" in sd:
        scale = 4 if up1[0] == 4 * num_feat else None
    else:
        scale = {4 * num_feat: 2, 9 * num_feat: 3}.get(up1[0])
    blocks = max_index(sd, r"^body\.(\d+)\.conv1\.weight$")
    if scale is None or blocks is None:
        return None
    return {"scale": scale, "in_channels": first[1], "out_channels": last[0], "num_feat": num_feat,
            "num_block": blocks + 1, "batch_norm": False}


def _detect_bn(sd: StateDict) -> Params | None:
    first, last = conv_shape(sd, "conv_first.weight"), conv_shape(sd, "conv_last.weight")
    up1, up2 = conv_shape(sd, "upsample.0.weight"), conv_shape(sd, "upsample.3.weight")
    if first is None or last is None or up1 is None or "bn_body.running_mean" not in sd:
        return None
    num_feat = first[0]
    if up2 is not None:
        scale = 4 if up1[0] == up2[0] == 4 * num_feat else None
    else:
        scale = {4 * num_feat: 2, 9 * num_feat: 3}.get(up1[0])
    blocks = max_index(sd, r"^body\.(\d+)\.bn1\.running_mean$")
    if scale is None or blocks is None:
        return None
    return {"scale": scale, "in_channels": first[1], "out_channels": last[0], "num_feat": num_feat,
            "num_block": blocks + 1, "batch_norm": True}


def detect(sd: StateDict) -> Params | None:
    return _detect_msrresnet(sd) or _detect_bn(sd)


SPEC = ArchSpec(
    name="srresnet",
    title="SRResNet / SRGAN generator",
    color=Color.RGB,
    scales=(2, 3, 4),
    build=build,
    detect=detect,
    receptive_field=32,  # 2 convs per block (16 blocks) in LR space; see rrdbnet.py for why 32 suffices
    defaults={"in_channels": 3, "out_channels": 3, "num_feat": 64, "num_block": 16, "batch_norm": False},
)
