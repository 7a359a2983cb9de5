"""RRDBNet (ESRGAN, Wang et al. 2018; Real-ESRGAN x4plus / x2plus / anime 6B).

Parameter names are BasicSR's (`basicsr/archs/rrdbnet_arch.py`): conv_first, body.N.rdb{1,2,3}.conv{1..5},
conv_body, conv_up1, conv_up2, conv_hr, conv_last, so BasicSR and Real-ESRGAN files load strictly; the
original ESRGAN repository's layouts are renamed to these by `srkit.models.layouts` before detection.
x4 is the plain network; x2 and x1 put a pixel-unshuffle (space-to-depth by 2 or 4) in front of conv_first,
which is why those need input sizes that are multiples of 2 or 4.
"""

from __future__ import annotations

import itertools
import re

import torch
import torch.nn.functional as F
from torch import nn

from srkit.meta import Color
from srkit.models.base import IMAGE_IN, IMAGE_OUT, ArchSpec, ConversionPiece, Params, StateDict
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
        feat = self.first_features(x)
        return self.upsample(feat, self.body(feat))

    def first_features(self, x: torch.Tensor) -> torch.Tensor:
        # F.pixel_unshuffle exports as Reshape/Transpose with 0/-1 dims, so H and W stay dynamic
        return self.conv_first(F.pixel_unshuffle(x, self.unshuffle) if self.unshuffle > 1 else x)

    def upsample(self, feat: torch.Tensor, body_out: torch.Tensor) -> torch.Tensor:
        feat = feat + self.conv_body(body_out)
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


# pnnx's ncnn pass needs about twice the memory for every RRDB block beyond ~16 in one graph (feature width 8:
# 16 blocks 0.3 GB, 19: 1.6 GB, 21: 5.9 GB, 23: killed at 21 GB); converted in pieces of at most this many blocks,
# each piece of x4plus (64 features) takes ~0.7 GB and ~10 s
BLOCKS_PER_PIECE = 12


# Each piece holds the whole network and runs a slice of its body: registering the slice's blocks as a second
# attribute would reach one module by two paths, and pnnx then leaves those convolutions unconverted.
class _Head(nn.Module):
    """image -> (first features, output of the first blocks)."""

    def __init__(self, net: RRDBNet, end: int) -> None:
        super().__init__()
        self.net, self.end = net, end

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.net.first_features(x)
        return feat, self.net.body[: self.end](feat)


class _Blocks(nn.Module):
    def __init__(self, net: RRDBNet, start: int, end: int) -> None:
        super().__init__()
        self.net, self.start, self.end = net, start, end

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net.body[self.start : self.end](h)


class _Tail(nn.Module):
    """(first features, output of the earlier blocks) -> the last blocks, the long skip and the upsampler."""

    def __init__(self, net: RRDBNet, start: int) -> None:
        super().__init__()
        self.net, self.start = net, start

    def forward(self, feat: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.net.upsample(feat, self.net.body[self.start :](h))


def conversion_pieces(net: RRDBNet, p: Params) -> list[ConversionPiece]:
    """Head, middle runs of blocks and tail, each at most BLOCKS_PER_PIECE blocks deep; [] when one piece does."""
    n = len(net.body)
    if n <= BLOCKS_PER_PIECE:
        return []
    runs = -(-n // BLOCKS_PER_PIECE)
    bounds = [round(i * n / runs) for i in range(runs + 1)]
    width, stride = int(p["num_feat"]), UNSHUFFLE[int(p["scale"])]
    pieces = [ConversionPiece(_Head(net, bounds[1]), (IMAGE_IN,), ("feat", "h1"), (int(p["in_channels"]),))]
    pieces += [ConversionPiece(_Blocks(net, start, end), (f"h{i}",), (f"h{i + 1}",), (width,), stride)
               for i, (start, end) in enumerate(itertools.pairwise(bounds[1:-1]), start=1)]
    pieces.append(ConversionPiece(_Tail(net, bounds[-2]), ("feat", f"h{runs - 1}"), (IMAGE_OUT,), (width, width),
                                  stride))
    return pieces


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
    conversion_pieces=conversion_pieces,
)
