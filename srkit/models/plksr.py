"""PLKSR and RealPLKSR (Lee et al., 2024, "Partial Large Kernel CNNs for Efficient Super-Resolution").

Parameter names are those of the public checkpoints (dslisleedh/PLKSR; RealPLKSR as trained with neosr and
traiNNer-redux, as chaiNNer/spandrel load them): a flat `feats` Sequential of the first conv, n_blocks
PLKBlocks and the last conv (RealPLKSR has a parameter-free Dropout2d before it, so its last conv sits one
index further), then PixelShuffle, or DySample (`to_img.*`) for the RealPLKSR DySample variants; the input,
each channel repeated scale^2 times, is added before the upsampler.

PLKBlock: channel mixer (`channe_mixer`, sic, in PLKSR; `channel_mixer` in RealPLKSR), a partial large
kernel conv on the first `split_ratio` of the channels (`lk.conv`; PLKSR's ablation variant
RectSparsePLK: `lk.mn_conv`/`nm_conv`/`nn_conv`), element-wise attention (`attn.f.0`, optional), a 1x1
`refine`, and in RealPLKSR a GroupNorm(4) (`norm`) or, in its LayerNorm variant, a channel LayerNorm in front
(`layer_norm`). PLKSR's SparsePLK ablation is refused: its kernel sizes and dilations are not in the weights.
`with_idt` (PLKSR ablation) is not in the weights either and is taken as False, its default.

Receptive field: the 17x17 kernels dominate: per block 8 (lk) + 1 (3x3 mixer conv) + 1 (second 3x3 in DCCM)
+ 1 (EA 3x3), so 28 blocks x 11 + 2 = 310 LR pixels for the released 28-block DCCM models in theory.
GroupNorm (RealPLKSR without layer_norm) normalises each group over the whole image: those models are
global, and tiles see slightly different statistics than the whole image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srkit.meta import Color
from srkit.models import _detect
from srkit.models._layers import LayerNorm2d, as_tensor
from srkit.models.base import ArchSpec, Params
from srkit.models.util import StateDict

MIXERS = {"CCM": (3, 1), "ICCM": (1, 3), "DCCM": (3, 3)}  # kernel sizes of the mixer's two convs


def mixer(dim: int, kind: str, act: type[nn.Module]) -> nn.Sequential:
    k1, k2 = MIXERS[kind]
    return nn.Sequential(nn.Conv2d(dim, dim * 2, k1, 1, k1 // 2), act(), nn.Conv2d(dim * 2, dim, k2, 1, k2 // 2))


class PartialConv(nn.Module):
    """A large kernel on the first `pdim` channels; the rest pass through (split + concat, no in-place)."""

    def __init__(self, pdim: int, kernel_size: int, rect: bool = False) -> None:
        super().__init__()
        self.pdim, self.rect = pdim, rect
        if rect:  # RectSparsePLK: m x n, n x m and n x n kernels, n = m // 3
            m, n = kernel_size, kernel_size // 3
            self.mn_conv = nn.Conv2d(pdim, pdim, (m, n), 1, (m // 2, n // 2))
            self.nm_conv = nn.Conv2d(pdim, pdim, (n, m), 1, (n // 2, m // 2))
            self.nn_conv = nn.Conv2d(pdim, pdim, (n, n), 1, (n // 2, n // 2))
        else:
            self.conv = nn.Conv2d(pdim, pdim, kernel_size, 1, kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, : self.pdim], x[:, self.pdim :]
        x1 = self.mn_conv(x1) + self.nm_conv(x1) + self.nn_conv(x1) if self.rect else self.conv(x1)
        return torch.cat([x1, x2], dim=1)


class EA(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f(x)


class PLKBlock(nn.Module):
    def __init__(self, dim: int, p: Params) -> None:
        super().__init__()
        real = p["variant"] == "real"
        self.real = real
        mix = mixer(dim, "DCCM" if real else p["ccm_type"], nn.Mish if real else nn.GELU)
        if real:
            self.layer_norm: nn.Module = LayerNorm2d(dim) if p["layer_norm"] else nn.Identity()
            self.channel_mixer = mix
        else:
            self.channe_mixer = mix  # sic: the public PLKSR files spell it so
        pdim = round(dim * p["split_ratio"])  # the ratio is read back from pdim / dim, rounded
        self.lk = PartialConv(pdim, p["kernel_size"], rect=p.get("lk_type") == "RectSparsePLK")
        self.attn: nn.Module = EA(dim) if p["use_ea"] else nn.Identity()
        self.refine = nn.Conv2d(dim, dim, 1)
        if real and not p["layer_norm"]:
            self.norm: nn.Module = nn.GroupNorm(p.get("norm_groups", 4), dim)
        else:
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x
        x = self.channel_mixer(self.layer_norm(x)) if self.real else self.channe_mixer(x)
        x = self.norm(self.refine(self.attn(self.lk(x))))
        return x + skip


class DySample(nn.Module):
    """Learned point sampling upsampler (Liu et al., 2023, "Learning to Upsample by Learning to Sample"),
    as RealPLKSR's DySample variants use it: offsets from 1x1 convs, bilinear grid_sample, border padding."""

    def __init__(self, in_ch: int, out_ch: int, scale: int, groups: int) -> None:
        super().__init__()
        self.scale, self.groups = scale, groups
        self.has_end_conv = scale != 1
        if self.has_end_conv:
            self.end_conv = nn.Conv2d(in_ch, out_ch, 1)
        self.offset = nn.Conv2d(in_ch, 2 * groups * scale * scale, 1)
        self.scope = nn.Conv2d(in_ch, 2 * groups * scale * scale, 1, bias=False)
        self.register_buffer("init_pos", self._init_pos())

    def _init_pos(self) -> torch.Tensor:
        s = self.scale
        h = torch.arange((-s + 1) / 2, (s - 1) / 2 + 1) / s
        grid = torch.stack(torch.meshgrid(h, h, indexing="ij")).transpose(1, 2)
        return grid.repeat(1, self.groups, 1).reshape(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale
        offset = self.offset(x) * self.scope(x).sigmoid() * 0.5 + self.init_pos
        b, _, h, w = offset.shape
        offset = offset.view(b, 2, -1, h, w)
        ys = torch.arange(h, dtype=x.dtype) + 0.5
        xs = torch.arange(w, dtype=x.dtype) + 0.5
        base = torch.stack(torch.meshgrid(xs, ys, indexing="ij")).transpose(1, 2)[None, :, None]  # 1,2,1,h,w
        size = torch.stack([as_tensor(w), as_tensor(h)]).to(x.dtype).view(1, 2, 1, 1, 1)
        coords = 2 * (base + offset) / size - 1
        coords = F.pixel_shuffle(coords.reshape(b, -1, h, w), s)
        coords = coords.view(b, 2, -1, s * h, s * w).permute(0, 2, 3, 4, 1).flatten(0, 1)
        out = F.grid_sample(x.reshape(b * self.groups, -1, h, w), coords, mode="bilinear",
                            align_corners=False, padding_mode="border")
        out = out.view(b, -1, s * h, s * w)
        return self.end_conv(out) if self.has_end_conv else out


class PLKSR(nn.Module):
    """PLKSR (variant "plain") and RealPLKSR (variant "real") on one constructor: the key names differ."""

    def __init__(self, p: Params) -> None:
        super().__init__()
        dim, scale, real = p["dim"], p["scale"], p["variant"] == "real"
        layers: list[nn.Module] = [nn.Conv2d(3, dim, 3, 1, 1)]
        layers += [PLKBlock(dim, p) for _ in range(p["n_blocks"])]
        if real:
            layers.append(nn.Dropout2d(0.0))  # no weights; keeps the last conv at its public index
        layers.append(nn.Conv2d(dim, 3 * scale * scale, 3, 1, 1))
        self.feats = nn.Sequential(*layers)
        self.register_buffer("repeat_index", torch.arange(3 * scale * scale) // (scale * scale),
                             persistent=False)
        self.repeat_index: torch.Tensor
        if p.get("dysample"):
            self.to_img: nn.Module = DySample(3 * scale * scale, 3, scale, groups=3 if scale % 2 else 4)
        else:
            self.to_img = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # repeat_interleave(x, scale^2, dim=1) as one Gather
        return self.to_img(self.feats(x) + x.index_select(1, self.repeat_index))


def build(p: Params) -> PLKSR:
    return PLKSR(p)


def _mixer_kind(sd: StateDict, prefix: str) -> str | None:
    k1, k2 = _detect.shape(sd, f"{prefix}.0.weight"), _detect.shape(sd, f"{prefix}.2.weight")
    if k1 is None or k2 is None:
        return None
    return next((kind for kind, ks in MIXERS.items() if ks == (k1[2], k2[2])), None)


def detect(sd: StateDict) -> Params | None:
    first = _detect.shape(sd, "feats.0.weight")
    if first is None or "feats.1.refine.weight" not in sd or first[1] != 3:
        return None
    dim = first[0]
    real = "feats.1.channel_mixer.0.weight" in sd
    prefix = "feats.1.channel_mixer" if real else "feats.1.channe_mixer"
    kind = _mixer_kind(sd, prefix)
    if kind is None or (real and kind != "DCCM"):
        return None
    length = _detect.seq_len(sd, "feats")
    last = _detect.shape(sd, f"feats.{length - 1}.weight")
    scale = _detect.shuffle_scale(last[0], 3) if last is not None else None
    if scale is None:
        return None
    p: Params = {"variant": "real" if real else "plain", "scale": scale, "dim": dim,
                 "n_blocks": length - (3 if real else 2), "use_ea": "feats.1.attn.f.0.weight" in sd}
    if "feats.1.lk.conv.weight" in sd:
        lk = _detect.shape(sd, "feats.1.lk.conv.weight")
        p["lk_type"] = "PLK"
    elif "feats.1.lk.mn_conv.weight" in sd and not real:
        lk = _detect.shape(sd, "feats.1.lk.mn_conv.weight")
        p["lk_type"] = "RectSparsePLK"
    else:  # SparsePLK: its kernel sizes and dilations are not recoverable from the weights
        return None
    assert lk is not None
    p["kernel_size"], p["split_ratio"] = lk[2], _detect.ratio(lk[0], dim)
    if real:
        p["layer_norm"] = "feats.1.layer_norm.weight" in sd
        p["dysample"] = "to_img.init_pos" in sd
        p["norm_groups"] = 4  # not in the weights; 4 in every RealPLKSR config
    else:
        p["ccm_type"] = kind
    return p


SPEC = ArchSpec(
    name="plksr",
    title="PLKSR / RealPLKSR",
    color=Color.RGB,
    scales=(1, 2, 3, 4, 8),
    build=build,
    detect=detect,
    # theoretical 282-310 (see the module docstring); 64 bounds the tile overlap, as EDSR's 32 does
    feature_width=lambda p: int(p["dim"]),
    receptive_field=64,
    # RealPLKSR's GroupNorm (the common variant) sees the whole image; PLKSR and the LayerNorm variant are
    # local, but their theoretical field (282-310) is far beyond the 64 used: tiling approximates for all
    global_context=True,
    fp16_safe=False,  # RealPLKSR with GroupNorm (spandrel, from real files); PLKSR and LayerNorm RealPLKSR are safe
    defaults={"variant": "real", "dim": 64, "n_blocks": 28, "kernel_size": 17, "split_ratio": 0.25,
              "use_ea": True, "lk_type": "PLK", "layer_norm": False, "dysample": False, "norm_groups": 4},
)
