"""Seam-free tiling with bounded memory.

How a large image is cut (all sizes in low-resolution pixels unless named otherwise):

- Every tile has the same shape (`tile_h` x `tile_w`, multiples of the model's size multiple), so a compiled
  backend (OpenVINO, TensorRT, a static-shape ONNX) builds once. The last row/column of tiles is shifted back
  to end at the image border rather than padded: same fixed shape, no wasted pixels.
- `overlap` is the context each tile sees beyond its core on each interior side; it must be at least the
  model's receptive field (`ModelInfo.receptive_field`). Output pixels closer than the receptive field to an
  interior tile edge saw a truncated context: their blending weight is exactly zero. Between the two
  contaminated strips, neighbouring tiles cross-fade with a raised-cosine (sin^2/cos^2) ramp.
- Tiles at the image border sit flush with it, so they see exactly the border the untiled model sees (its
  own convolution padding). This is why tiled == untiled to float rounding, which the tests prove per
  architecture. Where a tile would stick out of the image (an image smaller than a static model's input),
  the image is padded by reflection so the border tiles still see real content.
- The 1-D windows are normalised to sum to 1 across tiles (the shifted last tile breaks the regular
  spacing), and a 2-D weight is their outer product, so no weight map is ever stored.
- Tiles are accumulated a row at a time into a float band `tile_h * scale` rows tall; rows no later tile
  touches are converted to the output dtype and written out at once. Peak memory is one band plus the
  output image in its final dtype, never the whole float32 result.

`auto` tile size (see `auto_tile_size`): the largest square tile whose estimated working set fits a memory
budget, `side = sqrt(budget / bytes_per_input_pixel)` with
`bytes_per_input_pixel = 4 * 2 * features * (1 + scale^2)`: two live float32 feature maps of `features`
channels at the input resolution and at the output resolution (the upsampling tail dominates).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from srkit import imaging
from srkit._system import available_memory_bytes
from srkit.errors import InputError
from srkit.meta import ModelInfo, feature_width, tiling_is_exact

DEFAULT_BUDGET_BYTES = 1 << 30
MIN_AUTO_TILE = 64
MAX_AUTO_TILE = 2048
# the feature width assumed for a model exported before srkit.features, unless its params name `num_feat`
DEFAULT_FEATURES = 64

TileFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one image go. `height`/`width` are of the (padded) image that is tiled."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int
    receptive_field: int
    scale: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def default_overlap(receptive_field: int) -> int:
    """The receptive field plus a cross-fade of 8 pixels, so an underestimated field still leaves no seam."""
    return receptive_field + 8


def parse_tile(value: int | str | tuple[int, int] | None) -> int | str | tuple[int, int] | None:
    """`None`/0 (off), `"auto"`, an int, `"N"` or `(H, W)`; anything else is a user error."""
    if value is None:
        return None
    if isinstance(value, tuple):
        if len(value) != 2 or any(int(v) <= 0 for v in value):
            raise InputError(f"tile shape must be two positive sizes, not {value!r}")
        return int(value[0]), int(value[1])
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if not text.isdigit():
            raise InputError(f"--tile takes a size in pixels or 'auto', not {value!r}")
        value = int(text)
    if int(value) < 0:
        raise InputError(f"tile size must be positive, not {value}")
    return int(value) or None


class ApproximateTilingWarning(UserWarning):
    """Tiling a model with global context (RCAN's channel attention): tiled output only approximates."""


def features_of(info: ModelInfo | Mapping[str, object]) -> int:
    """The model's feature width, as its export recorded it (srkit.features).

    Models exported before that key: BasicSR's `num_feat` from their params, else DEFAULT_FEATURES. (A bare
    params mapping is accepted as such a model's params.)"""
    if isinstance(info, ModelInfo):
        recorded = feature_width(info)
        if recorded is not None:
            return recorded
        params: Mapping[str, object] = info.params
    else:
        params = info
    legacy = params.get("num_feat")
    return int(legacy) if isinstance(legacy, int | float) else DEFAULT_FEATURES


def approximation_note(info: ModelInfo) -> str | None:
    """Why tiling this model is not exact, or None when tiled == untiled (every architecture but RCAN)."""
    if tiling_is_exact(info):
        return None
    return (f"{info.arch}: tiled output approximates the untiled one (the network pools over the whole image "
            "or anchors its windows at the image origin); a larger --tile gets closer")


def warn_if_approximate(info: ModelInfo) -> None:
    """The runtime calls this when it tiles: a model with global context gets one warning."""
    note = approximation_note(info)
    if note is not None:
        warnings.warn(note, ApproximateTilingWarning, stacklevel=3)


def default_budget() -> int:
    """1 GiB, or a quarter of the free memory when less is free."""
    free = available_memory_bytes()
    return min(DEFAULT_BUDGET_BYTES, free // 4) if free else DEFAULT_BUDGET_BYTES


def auto_tile_size(
    *, scale: int, features: int, overlap: int, multiple: int = 1, budget_bytes: int | None = None
) -> int:
    """The tile side from a memory budget: sqrt(budget / (4 * 2 * features * (1 + scale^2)))."""
    budget = budget_bytes if budget_bytes is not None else default_budget()
    per_pixel = 4 * 2 * max(features, 1) * (1 + scale * scale)
    side = math.isqrt(max(budget, 0) // per_pixel)
    side = max(MIN_AUTO_TILE, 4 * overlap + multiple, min(side, MAX_AUTO_TILE))
    return max(multiple, side - side % multiple)


def _starts(length: int, tile: int, overlap: int, multiple: int) -> tuple[int, ...]:
    """Tile origins along one axis: a regular step of tile - 2*overlap, the last one flush with the end."""
    if length <= tile:
        return (0,)
    step = tile - 2 * overlap
    step -= step % multiple
    if step <= 0:
        raise InputError(
            f"tile {tile} is too small for an overlap of {overlap} on both sides; "
            f"use a tile of at least {2 * overlap + multiple} or a smaller --tile-overlap"
        )
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)  # a multiple of `multiple`: both the padded length and the tile are
    return tuple(starts)


def plan_tiles(
    height: int,
    width: int,
    *,
    tile: int | tuple[int, int],
    overlap: int,
    receptive_field: int,
    scale: int,
    multiple: int = 1,
    fixed: bool = False,
) -> TilePlan:
    """A plan over an image already padded to `multiple`. `fixed`: the tile shape may not shrink to a
    smaller image (a static-shape model); the caller pads the image up to the tile instead."""
    if overlap < receptive_field:
        raise InputError(
            f"tile overlap {overlap} is smaller than the model's receptive field ({receptive_field} pixels); "
            "tiles would leave seams"
        )
    th, tw = tile if isinstance(tile, tuple) else (tile, tile)
    for side, name in ((th, "height"), (tw, "width")):
        if side % multiple:
            raise InputError(f"tile {name} {side} must be a multiple of the model's size multiple {multiple}")
    if not fixed:
        th, tw = min(th, height), min(tw, width)
    if height < th or width < tw:
        raise InputError(f"a {width}x{height} image is smaller than the {tw}x{th} tile; pad it first")
    return TilePlan(
        height=height, width=width, tile_h=th, tile_w=tw, overlap=overlap, receptive_field=receptive_field,
        scale=scale, ys=_starts(height, th, overlap, multiple), xs=_starts(width, tw, overlap, multiple),
    )


def _raw_window(length: int, at_start: bool, at_end: bool, overlap: int, rf: int, scale: int) -> np.ndarray:
    """One tile's weights along an axis, in output pixels: 0 where the context was truncated, a raised-
    cosine ramp up to 1 between `rf` and `2*overlap - rf` from an interior edge, 1 inside."""
    n = length * scale
    pos = np.arange(n, dtype=np.float64) + 0.5  # pixel centres, so no weight is exactly 0 inside the ramp
    w = np.ones(n, dtype=np.float64)
    lo, hi = rf * scale, (2 * overlap - rf) * scale
    if not at_start:
        w *= _ramp(pos, lo, hi)
    if not at_end:
        w *= _ramp(n - pos, lo, hi)
    return w


def _ramp(dist: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return (dist >= lo).astype(np.float64)
    t = np.clip((dist - lo) / (hi - lo), 0.0, 1.0)
    return np.sin(0.5 * np.pi * t) ** 2


def axis_windows(starts: tuple[int, ...], tile: int, length: int, plan: TilePlan) -> list[np.ndarray]:
    """Per-tile windows along one axis, normalised so that they sum to exactly 1 at every output pixel."""
    s = plan.scale
    raws = [
        _raw_window(tile, start == 0, start + tile >= length, plan.overlap, plan.receptive_field, s)
        for start in starts
    ]
    total = np.zeros(length * s, dtype=np.float64)
    for start, raw in zip(starts, raws, strict=True):
        total[start * s : (start + tile) * s] += raw
    if np.any(total <= 0):  # cannot happen when overlap >= receptive field; guard against a planning bug
        raise AssertionError("tile windows leave output pixels uncovered")
    return [
        (raw / total[start * s : (start + tile) * s]).astype(np.float32)
        for start, raw in zip(starts, raws, strict=True)
    ]


def run_tiled(
    image: np.ndarray,
    plan: TilePlan,
    process: TileFn,
    *,
    out_shape: tuple[int, int],
    out_channels: int,
    out_dtype: np.dtype,
    on_tile: Callable[[], None] | None = None,
) -> np.ndarray:
    """Apply `process` (an HxWxC tile of `image` -> an (sH)x(sW)xC' float32 result) tile by tile and blend.

    `image` is HxWxC and covers the plan (padded as needed); `out_shape` is the (rows, cols) to keep from the
    top-left of the scaled result. Float rows are converted to `out_dtype` as soon as no tile touches them.
    """
    s = plan.scale
    th, tw = plan.tile_h, plan.tile_w
    out_h, out_w = out_shape
    out = np.empty((out_h, out_w, out_channels), dtype=out_dtype)
    wys = axis_windows(plan.ys, th, plan.height, plan)
    wxs = axis_windows(plan.xs, tw, plan.width, plan)
    band = np.zeros((th * s, plan.width * s, out_channels), dtype=np.float32)
    for i, y in enumerate(plan.ys):
        wy = wys[i][:, None, None]
        for j, x in enumerate(plan.xs):
            result = process(image[y : y + th, x : x + tw])
            if result.shape != (th * s, tw * s, out_channels):
                raise AssertionError(f"tile result has shape {result.shape}, expected {(th * s, tw * s)}")
            weighted = result * wy  # one tile-sized temporary; the rest in place
            weighted *= wxs[j][None, :, None]
            band[:, x * s : (x + tw) * s] += weighted
            if on_tile is not None:
                on_tile()
        done = (plan.ys[i + 1] - y) * s if i + 1 < len(plan.ys) else th * s
        _emit(out, band[:done], y * s, out_dtype)
        if i + 1 < len(plan.ys):  # rows the next tile row also covers move to the top of the band
            keep = th * s - done
            band[:keep] = band[done:]
            band[keep:] = 0.0
    return out


EMIT_ROWS = 128  # rows converted at a time: the dtype conversion's temporaries stay small


def _emit(out: np.ndarray, rows: np.ndarray, top: int, dtype: np.dtype) -> None:
    bottom = min(top + rows.shape[0], out.shape[0])
    for start in range(top, bottom, EMIT_ROWS):
        stop = min(start + EMIT_ROWS, bottom)
        out[start:stop] = imaging.from_float(rows[start - top : stop - top, : out.shape[1]], dtype)
