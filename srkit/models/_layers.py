"""Torch building blocks shared by the modern architectures (SPAN, PLKSR, SAFMN, OmniSR, SwinIR, HAT, DAT).

Everything here traces to ONNX with dynamic height and width: sizes are read from `x.shape` (0-dim tensors
while tracing, ints in eager mode) and only combined with torch ops, so no size is baked into the graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def as_tensor(n: Any) -> torch.Tensor:
    """A size as a tensor: already one while tracing (keep it, so it stays dynamic), else a new one."""
    return n if isinstance(n, torch.Tensor) else torch.tensor(n)


def reflect_index(n: Any, total: Any) -> torch.Tensor:
    """Indices 0..total-1 folded back into 0..n-1 by reflection (edge pixel not repeated), as
    F.pad(mode="reflect") does, but defined for any pad: past one reflection it keeps folding (a 5-pixel
    input padded to 16 reads 0 1 2 3 4 3 2 1 0 1 ...), where F.pad refuses pads >= n."""
    i = torch.arange(total)
    period = torch.clamp(2 * (as_tensor(n) - 1), min=1)
    m = torch.remainder(i, period)
    return torch.minimum(m, period - m)


def pad_reflect(x: torch.Tensor, multiple: int, minimum: int = 0) -> torch.Tensor:
    """Reflect-pad H and W (bottom/right) up to a multiple of `multiple`, and to at least `minimum`.

    This is what SwinIR/HAT/DAT's own `check_image_size` does (reflect to a window multiple), moved inside
    the exported graph so it accepts any H/W; the caller crops the output back to scale x input.
    """
    h, w = x.shape[-2], x.shape[-1]
    th, tw = _padded_size(h, multiple, minimum), _padded_size(w, multiple, minimum)
    x = x.index_select(-2, reflect_index(h, th))
    return x.index_select(-1, reflect_index(w, tw))


def _padded_size(n: Any, multiple: int, minimum: int) -> Any:
    size = n + (multiple - n % multiple) % multiple
    if minimum:
        floor = -(-minimum // multiple) * multiple  # the minimum, rounded up to the multiple
        size = torch.clamp(as_tensor(size), min=floor)
    return size


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/ws * W/ws, ws, ws, C); H and W must be multiples of ws."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: Any, w: Any) -> torch.Tensor:
    """Inverse of window_partition: (B * nW, ws, ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def _shift_regions(n: Any, ws: int, shift: int) -> torch.Tensor:
    """Region id (0, 1, 2) of each row for Swin's shifted windows: [0, n-ws), [n-ws, n-shift), [n-shift, n)."""
    i = torch.arange(n)
    return (i >= n - ws).to(torch.int64) + (i >= n - shift).to(torch.int64)


def shifted_window_mask(h: Any, w: Any, ws: int, shift: int, dtype: torch.dtype,
                        rect: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Swin's attention mask for shifted windows, (nW, N, N) with 0 / -100, for any H and W.

    The reference implementations fill an image with the 9 region ids by slicing and partition it; the
    same ids come from comparisons with arange, so the mask is computed inside the graph from the size.
    `rect` = (window_h, window_w, shift_h, shift_w) for rectangular windows (DAT); else square ws/shift.
    """
    wh, ww, sh, sw = rect if rect is not None else (ws, ws, shift, shift)
    regions = _shift_regions(h, wh, sh)[:, None] * 3 + _shift_regions(w, ww, sw)[None, :]
    windows = regions.view(h // wh, wh, w // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    diff = windows[:, None, :] - windows[:, :, None]
    zero = torch.zeros((), dtype=dtype)
    return torch.where(diff != 0, torch.full((), -100.0, dtype=dtype), zero)


def relative_position_index(ws: int) -> torch.Tensor:
    """Swin's (ws*ws, ws*ws) index into a (2ws-1)^2-row relative position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[:, :, 0] * (2 * ws - 1) + rel[:, :, 1]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor (per pixel: local), with `weight`/`bias` keys."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def rgb_mean(channels: int) -> torch.Tensor:
    """The DIV2K mean the SwinIR family subtracts (zeros for other channel counts, as they do)."""
    if channels == 3:
        return torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1)
    return torch.zeros(1, channels, 1, 1)
