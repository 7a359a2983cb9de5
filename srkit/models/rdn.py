"""RDN (Zhang et al., 2018): residual dense blocks with local and global feature fusion.

Key layout: yjn870/RDN-pytorch (`models.py`), the most used PyTorch RDN: sfe1, sfe2,
rdbs.N.layers.M.conv, rdbs.N.lff, gff.{0,1}, upscale.{0,2} (conv + PixelShuffle stages), output. Like that
implementation it takes RGB in 0-1 without a mean shift, and its local residual needs growth_rate ==
num_features (64/64 in the released weights). The paper's D=16, C=8, G=64 are the defaults.
"""

from __future__ import annotations

import torch
from torch import nn

from srkit.meta import Color
from srkit.models.base import ArchSpec, Params, StateDict
from srkit.models.util import conv_shape, max_index


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.relu(self.conv(x))], 1)


class RDB(nn.Module):
    def __init__(self, in_channels: int, growth_rate: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(DenseLayer(in_channels + growth_rate * i, growth_rate) for i in range(num_layers))
        )
        self.lff = nn.Conv2d(in_channels + growth_rate * num_layers, growth_rate, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lff(self.layers(x))


def _upscale(scale: int, feat: int) -> nn.Sequential:
    if scale in (2, 4):
        layers: list[nn.Module] = []
        for _ in range(scale // 2):
            layers += [nn.Conv2d(feat, feat * 4, kernel_size=3, padding=1), nn.PixelShuffle(2)]
        return nn.Sequential(*layers)
    if scale == 3:
        return nn.Sequential(nn.Conv2d(feat, feat * 9, kernel_size=3, padding=1), nn.PixelShuffle(3))
    raise ValueError(f"RDN supports scales 2, 3 and 4, not {scale}")


class RDN(nn.Module):
    def __init__(
        self,
        scale_factor: int = 4,
        num_channels: int = 3,
        num_features: int = 64,
        growth_rate: int = 64,
        num_blocks: int = 16,
        num_layers: int = 8,
    ) -> None:
        super().__init__()
        self.sfe1 = nn.Conv2d(num_channels, num_features, kernel_size=3, padding=1)
        self.sfe2 = nn.Conv2d(num_features, num_features, kernel_size=3, padding=1)
        self.rdbs = nn.ModuleList(
            [RDB(num_features if i == 0 else growth_rate, growth_rate, num_layers) for i in range(num_blocks)]
        )
        self.gff = nn.Sequential(
            nn.Conv2d(growth_rate * num_blocks, num_features, kernel_size=1),
            nn.Conv2d(num_features, num_features, kernel_size=3, padding=1),
        )
        self.upscale = _upscale(scale_factor, num_features)
        self.output = nn.Conv2d(num_features, num_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sfe1 = self.sfe1(x)
        x = self.sfe2(sfe1)
        local_features = []
        for rdb in self.rdbs:
            x = rdb(x)
            local_features.append(x)
        x = self.gff(torch.cat(local_features, 1)) + sfe1
        return self.output(self.upscale(x))


def build(p: Params) -> RDN:
    return RDN(p["scale"], p["in_channels"], p["num_features"], p["growth_rate"], p["num_blocks"],
               p["num_layers"])


def detect(sd: StateDict) -> Params | None:
    sfe1, grow = conv_shape(sd, "sfe1.weight"), conv_shape(sd, "rdbs.0.layers.0.conv.weight")
    up1, up2 = conv_shape(sd, "upscale.0.weight"), conv_shape(sd, "upscale.2.weight")
    if sfe1 is None or grow is None or up1 is None or "gff.0.weight" not in sd or "output.weight" not in sd:
        return None
    feat = sfe1[0]
    if up1[0] == 9 * feat and up2 is None:
        scale = 3
    elif up1[0] == 4 * feat:
        scale = 4 if up2 is not None else 2
    else:
        return None
    blocks = max_index(sd, r"^rdbs\.(\d+)\.lff\.weight$")
    layers = max_index(sd, r"^rdbs\.0\.layers\.(\d+)\.conv\.weight$")
    if blocks is None or layers is None:
        return None
    return {
        "scale": scale,
        "in_channels": sfe1[1],
        "num_features": feat,
        "growth_rate": grow[0],
        "num_blocks": blocks + 1,
        "num_layers": layers + 1,
    }


SPEC = ArchSpec(
    name="rdn",
    title="RDN",
    color=Color.RGB,
    scales=(2, 3, 4),
    build=build,
    detect=detect,
    feature_width=lambda p: int(p["num_features"]),
    receptive_field=32,  # D*(C+1) + 4 convs in theory (>100); 32 LR pixels of overlap bounds the tiling cost
    defaults={"in_channels": 3, "num_features": 64, "growth_rate": 64, "num_blocks": 16, "num_layers": 8},
)
