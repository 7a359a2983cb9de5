"""Layers shared by several architectures (BasicSR's building blocks)."""

from __future__ import annotations

import math

import torch
from torch import nn

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
IMG_RANGE = 255.0


class Upsample(nn.Sequential):
    """BasicSR's upsampler: log2(scale) x (conv 4*nf + PixelShuffle(2)), or conv 9*nf + PixelShuffle(3)."""

    def __init__(self, scale: int, num_feat: int) -> None:
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"scale {scale} is not supported; supported: 2^n and 3")
        super().__init__(*layers)


class MeanShift(nn.Module):
    """(x - mean) * range on the way in, x / range + mean on the way out; constants, not weights."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        mean = torch.tensor(DIV2K_RGB_MEAN if channels == 3 else (0.5,) * channels).view(1, channels, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.mean: torch.Tensor

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * IMG_RANGE

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x / IMG_RANGE + self.mean


class ResidualBlockNoBN(nn.Module):
    def __init__(self, num_feat: int = 64, res_scale: float = 1.0) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale
