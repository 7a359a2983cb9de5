"""FSRCNN (Dong et al., 2016): d=56, s=12, m=4, PReLU, 9x9 transposed-convolution upsampler."""

from __future__ import annotations

import torch
from torch import nn

from srkit.meta import Color
from srkit.models.base import ArchSpec, Params, StateDict
from srkit.models.util import conv_shape


class FSRCNN(nn.Module):
    def __init__(self, scale: int = 3, in_channels: int = 1, d: int = 56, s: int = 12, m: int = 4) -> None:
        super().__init__()
        self.scale = scale
        self.feature = nn.Sequential(nn.Conv2d(in_channels, d, 5, padding=2), nn.PReLU(d))
        layers: list[nn.Module] = [nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            layers += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        layers += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.mapping = nn.Sequential(*layers)
        # kernel 9, padding 4 and output_padding r-1 give exactly r*H x r*W
        self.deconv = nn.ConvTranspose2d(d, in_channels, 9, stride=scale, padding=4, output_padding=scale - 1)
        nn.init.normal_(self.deconv.weight, 0.0, 0.001)
        nn.init.zeros_(self.deconv.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.mapping(self.feature(x)))


def build(p: Params) -> FSRCNN:
    return FSRCNN(p["scale"], p["in_channels"], p.get("d", 56), p.get("s", 12), p.get("m", 4))


def detect(sd: StateDict) -> Params | None:
    first = conv_shape(sd, "feature.0.weight")
    deconv = conv_shape(sd, "deconv.weight")
    shrink = conv_shape(sd, "mapping.0.weight")
    if first is None or deconv is None or shrink is None:
        return None
    m = sum(1 for k in sd if k.startswith("mapping.") and k.endswith(".weight") and len(sd[k].shape) == 4) - 2
    # the transposed conv's stride (the scale) is not stored in the weights
    return {"in_channels": first[1], "d": first[0], "s": shrink[0], "m": m}


SPEC = ArchSpec(
    name="fsrcnn",
    title="FSRCNN",
    color=Color.Y,
    scales=(2, 3, 4),
    build=build,
    detect=detect,
    feature_width=lambda p: int(p["d"]),
    receptive_field=8,
    scale_in_weights=False,
    defaults={"in_channels": 1, "d": 56, "s": 12, "m": 4},
)
