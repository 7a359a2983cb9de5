"""Real-CUGAN (bilibili/ailab, "UpCunet") and waifu2x's CUNet, which is the same network.

Two U-Nets of unpadded ("valid") convolutions: `unet1` upscales (a transposed conv, x2 or x3; a plain conv
for waifu2x's x1 CUNet), `unet2` refines at the output resolution and its result is added to unet1's, cropped
to the same size. The x4 model ends in a 3x3 conv, PixelShuffle(2) and a nearest-upsampled input residual.
Each U-Net level has a squeeze-and-excitation (SE) block that scales the channels by a function of their mean
over the *whole* input: the output at one pixel depends on every pixel of the tile, so tiled inference
differs from whole-image inference (srkit measures by how much; docs/ncnn-models.md).

Because the convolutions shrink their input, the ncnn tools pad every tile first (`PREPADDING`), plus the
bottom/right pixels that make the tile a multiple of the U-Net's stride (2, or 4 for x1 and x3). srkit's
module does the same inside `forward`, so an exported graph maps H x W to exactly scale*H x scale*W at any
size: reflect padding as realcugan-ncnn-vulkan and Real-CUGAN's PyTorch code do, edge replication as
waifu2x-ncnn-vulkan does (`pad_mode`). Reflection needs each side to be longer than the pad (H, W >= 20).
The stride multiple is also the module's `size_multiple`, so srkit's runtime pads to it and starts every tile
on the stride grid (the U-Nets are shift-equivariant only for shifts that are multiples of it).

Parameter names are Real-CUGAN's public checkpoints' (`upcunet_v3.py`: `unet1.conv1.conv.0`,
`unet1.conv2.seblock.conv1`, `unet2.conv3_up`, `conv_final`, ...). Real-CUGAN "pro" checkpoints carry a
`pro` marker key and work on inputs mapped to 0.15-0.85; the module applies that mapping and its inverse.
The ncnn pro files have the mapping folded into their weights (realcugan-ncnn-vulkan treats them like SE).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from srkit.meta import Color
from srkit.models.base import ArchSpec, Params, StateDict
from srkit.models.util import conv_shape

# pixels each tool pads a tile by, per scale (realcugan-ncnn-vulkan main.cpp, waifu2x-ncnn-vulkan main.cpp)
PREPADDING = {1: 28, 2: 18, 3: 14, 4: 19}
# the U-Nets halve twice; x1 and x3 need a multiple of 4, x2 and x4 of 2 (the tools pad up to it)
STRIDE_MULTIPLE = {1: 4, 2: 2, 3: 4, 4: 2}
PAD_MODES = ("reflect", "replicate")
PRO_SHIFT, PRO_GAIN = 0.15, 0.7


class SEBlock(nn.Module):
    """Channel attention from the global mean: 1x1 conv, ReLU, 1x1 conv, sigmoid, multiply."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels // reduction, 1, 1, 0, bias=True)
        self.conv2 = nn.Conv2d(channels // reduction, channels, 1, 1, 0, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = x.mean(dim=(2, 3), keepdim=True)
        weights = torch.sigmoid(self.conv2(F.relu(self.conv1(weights))))
        return x * weights


class UNetConv(nn.Module):
    """Two valid 3x3 convs with LeakyReLU(0.1), optionally followed by an SE block."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, se: bool) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, mid_ch, 3, 1, 0), nn.LeakyReLU(0.1),
            nn.Conv2d(mid_ch, out_ch, 3, 1, 0), nn.LeakyReLU(0.1),
        )
        self.seblock = SEBlock(out_ch) if se else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.seblock(x) if self.seblock is not None else x


def _crop(x: torch.Tensor, border: int) -> torch.Tensor:
    return x[:, :, border:-border, border:-border]


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1)


class UNet1(nn.Module):
    """One down/up level. `upscale` 2 or 3: the last layer is a transposed conv; 1: a valid 3x3 conv."""

    def __init__(self, in_ch: int, out_ch: int, upscale: int) -> None:
        super().__init__()
        self.conv1 = UNetConv(in_ch, 32, 64, se=False)
        self.conv1_down = nn.Conv2d(64, 64, 2, 2, 0)
        self.conv2 = UNetConv(64, 128, 64, se=True)
        self.conv2_up = nn.ConvTranspose2d(64, 64, 2, 2, 0)
        self.conv3 = nn.Conv2d(64, 64, 3, 1, 0)
        self.conv_bottom: nn.Module
        if upscale == 1:
            self.conv_bottom = nn.Conv2d(64, out_ch, 3, 1, 0)
        elif upscale == 2:
            self.conv_bottom = nn.ConvTranspose2d(64, out_ch, 4, 2, 3)
        else:
            self.conv_bottom = nn.ConvTranspose2d(64, out_ch, 5, 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        x2 = self.conv2(_leaky(self.conv1_down(x1)))
        x2 = _leaky(self.conv2_up(x2))
        x3 = _leaky(self.conv3(_crop(x1, 4) + x2))
        return self.conv_bottom(x3)


class UNet2(nn.Module):
    """Two down/up levels at the output resolution, ending in a valid 3x3 conv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = UNetConv(in_ch, 32, 64, se=False)
        self.conv1_down = nn.Conv2d(64, 64, 2, 2, 0)
        self.conv2 = UNetConv(64, 64, 128, se=True)
        self.conv2_down = nn.Conv2d(128, 128, 2, 2, 0)
        self.conv3 = UNetConv(128, 256, 128, se=True)
        self.conv3_up = nn.ConvTranspose2d(128, 128, 2, 2, 0)
        self.conv4 = UNetConv(128, 64, 64, se=True)
        self.conv4_up = nn.ConvTranspose2d(64, 64, 2, 2, 0)
        self.conv5 = nn.Conv2d(64, 64, 3, 1, 0)
        self.conv_bottom = nn.Conv2d(64, out_ch, 3, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        x2 = self.conv2(_leaky(self.conv1_down(x1)))
        x3 = self.conv3(_leaky(self.conv2_down(x2)))
        x3 = _leaky(self.conv3_up(x3))
        x4 = self.conv4(_crop(x2, 4) + x3)
        x4 = _leaky(self.conv4_up(x4))
        x5 = _leaky(self.conv5(_crop(x1, 16) + x4))
        return self.conv_bottom(x5)


class UpCunet(nn.Module):
    """Real-CUGAN x2/x3/x4 and waifu2x CUNet x1/x2; any H x W (>= 20 with reflection) -> scale*H x scale*W."""

    def __init__(
        self, scale: int = 2, in_channels: int = 3, out_channels: int = 3, pro: bool = False,
        pad_mode: str = "reflect",
    ) -> None:
        super().__init__()
        if scale not in PREPADDING:
            raise ValueError(f"UpCunet scales are {tuple(PREPADDING)}, not {scale}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, not {pad_mode!r}")
        self.scale, self.pad_mode, self.prepadding = scale, pad_mode, PREPADDING[scale]
        self.multiple = STRIDE_MULTIPLE[scale]
        # The graph pads any size itself, but tiles must start on the U-Nets' stride grid: a tile shifted by a
        # pixel that is not a multiple of it pools other pixel pairs and gives a different picture (up to 0.2
        # in 0-1 measured at a 1-3 px shift). The exporter records this as `size_multiple`, so the runtime pads
        # the image (reflect, bottom/right, as realcugan-ncnn-vulkan does) and aligns its tiles to it.
        self.size_multiple = self.multiple
        mid = 64 if scale == 4 else out_channels  # x4: the U-Nets work on 64 channels, conv_final makes RGB
        self.unet1 = UNet1(in_channels, mid, 2 if scale == 4 else scale)
        self.unet2 = UNet2(mid, mid)
        self.conv_final = nn.Conv2d(64, out_channels * 4, 3, 1, 0) if scale == 4 else None
        self.ps = nn.PixelShuffle(2) if scale == 4 else None
        self.pro = pro
        if pro:  # the public pro checkpoints' marker key; its value means nothing
            self.register_buffer("pro_marker", torch.zeros(1), persistent=False)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # a pro checkpoint says so with a `pro` entry that no layer owns
        state_dict.pop(prefix + "pro", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """The tools' prepadding on every side, plus bottom/right pixels up to the U-Net's multiple."""
        h, w = x.shape[2], x.shape[3]
        m, p = self.multiple, self.prepadding
        extra_h, extra_w = (m - h % m) % m, (m - w % m) % m
        return F.pad(x, (p, p + extra_w, p, p + extra_h), mode=self.pad_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pro:
            x = x * PRO_GAIN + PRO_SHIFT
        h, w = x.shape[2], x.shape[3]
        up = self.unet1(self._pad(x))
        out = self.unet2(up) + _crop(up, 20)
        if self.conv_final is not None and self.ps is not None:
            out = self.ps(_crop(self.conv_final(out), 1))
        out = out[:, :, : h * self.scale, : w * self.scale]
        if self.scale == 4:
            out = out + F.interpolate(x, scale_factor=4.0, mode="nearest")
        if self.pro:
            out = (out - PRO_SHIFT) / PRO_GAIN
        return out


def build(p: Params) -> UpCunet:
    return UpCunet(p["scale"], p["in_channels"], p.get("out_channels") or p["in_channels"],
                   bool(p.get("pro", False)), p.get("pad_mode", "reflect"))


_REQUIRED = ("unet1.conv1.conv.0.weight", "unet1.conv1_down.weight", "unet1.conv2.seblock.conv1.weight",
             "unet1.conv2_up.weight", "unet1.conv_bottom.weight", "unet2.conv1.conv.0.weight",
             "unet2.conv3.seblock.conv1.weight", "unet2.conv4_up.weight", "unet2.conv_bottom.weight")


def detect(sd: StateDict) -> Params | None:
    """Scale from unet1's last layer (conv: x1; 4x4 transposed conv: x2; 5x5: x3) and `conv_final` (x4)."""
    if any(k not in sd for k in _REQUIRED):
        return None
    first, bottom = conv_shape(sd, "unet1.conv1.conv.0.weight"), conv_shape(sd, "unet1.conv_bottom.weight")
    last = conv_shape(sd, "unet2.conv_bottom.weight")
    if first is None or bottom is None or last is None or len(bottom) != 4:
        return None
    in_ch = first[1]
    if "conv_final.weight" in sd:
        final = conv_shape(sd, "conv_final.weight")
        if final is None or in_ch == 12:  # 12 inputs: UpCunet2x_fast (pixel-unshuffled), not supported
            return None
        scale, out_ch = 4, final[0] // 4
    elif bottom[2] == 3 and bottom[1] == 64:  # Conv2d [out, 64, 3, 3]: waifu2x's x1 CUNet
        scale, out_ch = 1, bottom[0]
    elif bottom[2] in (4, 5) and bottom[0] == 64:  # ConvTranspose2d [64, out, k, k]
        scale, out_ch = (2 if bottom[2] == 4 else 3), bottom[1]
    else:
        return None
    return {
        "scale": scale,
        "in_channels": in_ch,
        "out_channels": out_ch,
        "pro": "pro" in sd,
        # Real-CUGAN pads by reflection; only waifu2x has an x1 CUNet, and waifu2x replicates the edge
        "pad_mode": "replicate" if scale == 1 else "reflect",
    }


FIRST_WIDTH = 32  # feature maps of the first convolution (the released networks' fixed width)

SPEC = ArchSpec(
    name="realcugan",
    title="Real-CUGAN / waifu2x CUNet (UpCunet)",
    color=Color.RGB,
    scales=(1, 2, 3, 4),
    build=build,
    detect=detect,
    feature_width=lambda params: FIRST_WIDTH,  # the first convolution's, as every descriptor states it
    size_multiple=lambda params: 4 if int(params["scale"]) in (1, 3) else 2,  # the U-Nets' stride grid
    global_context=True,  # the SE blocks scale each channel by its mean over the whole input
    # The convolutions see about as far as the tools' prepadding (18-28 px); the SE blocks see the whole tile,
    # so no overlap makes tiles exact. 28 covers the convolutional field of every variant.
    receptive_field=28,
    # measured with the released weights (the ncnn packages' Real-CUGAN SE/Pro and waifu2x CUNet files, real
    # photos): activations peak at 724 at most (Pro), 90x below fp16's range; fp16 vs fp32 >= 68 dB, nothing kept
    # fp32 by the fp16 export (docs/ncnn-models.md, fp16)
    fp16_safe=True,
    defaults={"in_channels": 3, "out_channels": 3, "pro": False, "pad_mode": "reflect"},
)
