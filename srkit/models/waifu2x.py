"""waifu2x upconv_7 (the anime_style_art_rgb and photo models of waifu2x / waifu2x-ncnn-vulkan).

Six unpadded ("valid") 3x3 convs with LeakyReLU(0.1) (16, 32, 64, 128, 128, 256 channels) and a 4x4
stride-2 transposed conv (padding 3) to RGB: an (H + 14) x (W + 14) input gives 2H x 2W. waifu2x-ncnn-vulkan
pads every tile by 7 pixels, replicating the edge; srkit's module pads inside `forward`, so the exported graph
maps H x W to exactly 2H x 2W. The noise-reduction variants (noise 0-3) share the architecture.

Parameter names are nunif's (`waifu2x.upconv_7`): a Sequential `net` with the convs at 0, 2, ..., 10 and the
transposed conv at 12.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from srkit.meta import Color
from srkit.models.base import ArchSpec, Params, StateDict

CHANNELS = (16, 32, 64, 128, 128, 256)
PREPADDING = 7  # waifu2x-ncnn-vulkan pads upconv_7 tiles by 7 px: six valid 3x3 convs and the deconv's crop


class UpConv7(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for channels in CHANNELS:
            layers += [nn.Conv2d(previous, channels, 3, 1, 0), nn.LeakyReLU(0.1)]
            previous = channels
        layers.append(nn.ConvTranspose2d(previous, out_channels, 4, 2, 3))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.pad(x, (PREPADDING,) * 4, mode="replicate"))


def build(p: Params) -> UpConv7:
    return UpConv7(p["in_channels"], p.get("out_channels") or p["in_channels"])


_KEY = re.compile(r"^net\.(\d+)\.(weight|bias)$")


def detect(sd: StateDict) -> Params | None:
    if not sd or any(_KEY.match(k) is None for k in sd):
        return None
    shapes = {int(m.group(1)): tuple(sd[k].shape) for k in sd if (m := _KEY.match(k)) and m.group(2) == "weight"}
    if sorted(shapes) != list(range(0, 13, 2)):
        return None
    convs, deconv = [shapes[i] for i in range(0, 11, 2)], shapes[12]
    if [c[0] for c in convs] != list(CHANNELS) or any(c[2:] != (3, 3) for c in convs):
        return None
    if len(deconv) != 4 or deconv[0] != CHANNELS[-1] or deconv[2:] != (4, 4):
        return None
    return {"scale": 2, "in_channels": convs[0][1], "out_channels": deconv[1]}


FIRST_WIDTH = 16  # feature maps of the first convolution (the released networks' fixed width)

SPEC = ArchSpec(
    name="waifu2x",
    title="waifu2x upconv_7",
    color=Color.RGB,
    scales=(2,),
    build=build,
    detect=detect,
    feature_width=lambda params: FIRST_WIDTH,  # the first convolution's, as every descriptor states it
    receptive_field=PREPADDING,  # six 3x3 convs and the 4x4 deconv: 7 LR pixels on each side
    defaults={"in_channels": 3, "out_channels": 3},
)
