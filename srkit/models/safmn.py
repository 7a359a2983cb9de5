"""SAFMN (Sun et al., ICCV 2023, "Spatially-Adaptive Feature Modulation for Efficient Image SR").

Parameter names are those of the public checkpoints (sunny2109/SAFMN, as chaiNNer/spandrel load them):
to_feat (3x3), feats.N (AttBlock: norm1/norm2 channel LayerNorms, safm.mfr.{0..3} depthwise 3x3 convs,
safm.aggr 1x1, ccm.ccm.{0,2} convs), to_img.0 (conv before a PixelShuffle). Width, block count, FFN
scale and upscale are read from the shapes.

SAFM's levels 1-3 max-pool the features to 1/2, 1/4, 1/8 of the size (adaptive pooling in the reference)
and scale them back by nearest interpolation. On sizes that are multiples of 8 that is exactly a max pool
of kernel 2^i and a nearest upsample by 2^i, which export to ONNX with dynamic shapes; other sizes are
reflect-padded to a multiple of 8 inside the forward and the output cropped back (the reference needs
multiples of 8 too: spandrel declares it), so the exported graph takes any H and W.

Receptive field: per block the deepest level (pool 8, 3x3 conv at 1/8) reaches 15 pixels, plus 1 for the
CCM's 3x3 conv: 8 blocks x 16 + 2 = 130 LR pixels. The pooling grid is anchored at the image origin, so
tiles whose origin is not a multiple of 8 see a shifted grid: tiled output is close to, not equal to,
the untiled one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srkit.meta import Color
from srkit.models import _detect
from srkit.models._layers import LayerNorm2d, pad_reflect
from srkit.models.base import ArchSpec, Params
from srkit.models.util import StateDict

LEVELS = 4
MULTIPLE = 2 ** (LEVELS - 1)


class SAFM(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        chunk = dim // LEVELS
        self.mfr = nn.ModuleList(nn.Conv2d(chunk, chunk, 3, 1, 1, groups=chunk) for _ in range(LEVELS))
        self.aggr = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = x.chunk(LEVELS, dim=1)
        out = [self.mfr[0](chunks[0])]
        for i in range(1, LEVELS):
            k = 2**i
            s = self.mfr[i](F.max_pool2d(chunks[i], k, k))
            out.append(F.interpolate(s, scale_factor=float(k), mode="nearest"))
        return self.act(self.aggr(torch.cat(out, dim=1))) * x


class CCM(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.ccm = nn.Sequential(nn.Conv2d(dim, hidden, 3, 1, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ccm(x)


class AttBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.norm2 = LayerNorm2d(dim)
        self.safm = SAFM(dim)
        self.ccm = CCM(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.safm(self.norm1(x)) + x
        return self.ccm(self.norm2(x)) + x


class SAFMN(nn.Module):
    def __init__(self, dim: int = 36, n_blocks: int = 8, ffn_scale: float = 2.0, upscale: int = 4) -> None:
        super().__init__()
        self.upscale = upscale
        self.to_feat = nn.Conv2d(3, dim, 3, 1, 1)
        self.feats = nn.Sequential(*(AttBlock(dim, int(dim * ffn_scale)) for _ in range(n_blocks)))
        self.to_img = nn.Sequential(nn.Conv2d(dim, 3 * upscale * upscale, 3, 1, 1), nn.PixelShuffle(upscale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        x = self.to_feat(pad_reflect(x, MULTIPLE))
        x = self.to_img(self.feats(x) + x)
        return x[:, :, : h * self.upscale, : w * self.upscale]


def build(p: Params) -> SAFMN:
    return SAFMN(p["dim"], p["n_blocks"], p["ffn_scale"], p["scale"])


_REQUIRED = ("to_feat.weight", "feats.0.norm1.weight", "feats.0.norm2.weight", "feats.0.safm.mfr.0.weight",
             "feats.0.safm.mfr.3.weight", "feats.0.safm.aggr.weight", "feats.0.ccm.ccm.0.weight",
             "feats.0.ccm.ccm.2.weight", "to_img.0.weight")


def detect(sd: StateDict) -> Params | None:
    if not _detect.has_all(sd, _REQUIRED):
        return None
    first, hidden, last = (_detect.shape(sd, k) for k in ("to_feat.weight", "feats.0.ccm.ccm.0.weight",
                                                          "to_img.0.weight"))
    assert first is not None and hidden is not None and last is not None
    scale = _detect.shuffle_scale(last[0], 3)
    if first[1] != 3 or scale is None:
        return None
    dim = first[0]
    ffn_scale = _detect.ratio(hidden[0], dim)
    if int(dim * ffn_scale) != hidden[0]:
        return None
    return {"scale": scale, "dim": dim, "n_blocks": _detect.seq_len(sd, "feats"), "ffn_scale": ffn_scale}


SPEC = ArchSpec(
    name="safmn",
    title="SAFMN",
    color=Color.RGB,
    scales=(1, 2, 3, 4, 8),
    build=build,
    detect=detect,
    # theoretical 130 (see the module docstring); 64 bounds the tile overlap, and the pooling grid makes
    # tiles approximate anyway
    feature_width=lambda p: int(p["dim"]),
    receptive_field=64,
    # local, but the pooling cells are anchored at the image origin: a tile not on that grid pools other
    # cells, so tiling approximates (which is what this flag tells the runtime)
    global_context=True,
    fp16_safe=True,  # docs/architectures.md: measured on random weights only
    defaults={"dim": 36, "n_blocks": 8, "ffn_scale": 2.0},
)
