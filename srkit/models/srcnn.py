"""SRCNN (Dong et al., 2014), 9-5-5 with 64/32 filters.

SRCNN works on a bicubically pre-upsampled image. The upsampling is inside the network (and so inside the
exported ONNX graph, as a cubic Resize): every srkit model then maps a low-resolution image to a
high-resolution one, the runtime needs no per-architecture step, and the parity gate covers the resize too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srkit.meta import Color
from srkit.models.base import ArchSpec, Params, StateDict
from srkit.models.util import conv_shape


class SRCNN(nn.Module):
    def __init__(
        self, scale: int = 3, in_channels: int = 1, f1: int = 64, f2: int = 32, residual: bool = False
    ) -> None:
        super().__init__()
        self.scale = scale
        self.residual = residual
        self.conv1 = nn.Conv2d(in_channels, f1, 9, padding=4)
        self.conv2 = nn.Conv2d(f1, f2, 5, padding=2)
        self.conv3 = nn.Conv2d(f2, in_channels, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=float(self.scale), mode="bicubic", align_corners=False)
        y = F.relu(self.conv1(x))
        y = F.relu(self.conv2(y))
        y = self.conv3(y)
        # The paper predicts the image itself. srkit's bundled weights predict the residual over bicubic
        # (as VDSR does), which converges far faster on a 2-core training budget; `residual` says which.
        return x + y if self.residual else y


def build(p: Params) -> SRCNN:
    return SRCNN(p["scale"], p["in_channels"], p.get("f1", 64), p.get("f2", 32), bool(p.get("residual", False)))


def detect(sd: StateDict) -> Params | None:
    w1, w2, w3 = (conv_shape(sd, f"conv{i}.weight") for i in (1, 2, 3))
    if w1 is None or w2 is None or w3 is None or w1[2] != 9 or w3[0] != w1[1]:
        return None
    return {"in_channels": w1[1], "f1": w1[0], "f2": w2[0]}


SPEC = ArchSpec(
    name="srcnn",
    title="SRCNN",
    color=Color.Y,
    scales=(2, 3, 4),
    build=build,
    detect=detect,
    feature_width=lambda p: int(p["f1"]),
    receptive_field=8,  # 16 HR pixels across / scale, rounded up generously
    scale_in_weights=False,
    defaults={"in_channels": 1, "f1": 64, "f2": 32, "residual": False},
)
