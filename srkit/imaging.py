"""Pixel plumbing shared by every layer: dtype and range, BT.601 YCbCr, bicubic resize, padding.

numpy plus Pillow only (Pillow is a core dependency, used for its antialiased bicubic resampler), so the
runtime can use it on a device without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike
from PIL import Image

from srkit.errors import InputError
from srkit.meta import Color

# ITU-R BT.601 for 8-bit video range, as MATLAB's rgb2ycbcr (the SR papers' convention). Values in 0-1.
_RGB2YCBCR = np.array(
    [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], dtype=np.float64
) / 255.0
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0]) / 255.0
_YCBCR2RGB = np.linalg.inv(_RGB2YCBCR)

SUPPORTED_DTYPES = (np.uint8, np.uint16, np.float32)


@dataclass(frozen=True)
class Layout:
    """How a caller's image was laid out, so the result can be given back the same way."""

    dtype: np.dtype
    gray: bool  # HxW in, HxW out
    channels: int  # 1, 3 or 4 (the last one alpha)


def describe(image: np.ndarray) -> Layout:
    if not isinstance(image, np.ndarray):
        raise InputError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype not in SUPPORTED_DTYPES:
        raise InputError(f"unsupported image dtype {image.dtype}; use uint8, uint16 or float32")
    if image.ndim == 2:
        channels, gray = 1, True
    elif image.ndim == 3 and image.shape[2] in (1, 3, 4):
        channels, gray = image.shape[2], False
    else:
        raise InputError(f"expected an HxW or HxWxC image with C in 1, 3, 4; got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"empty image (shape {image.shape})")
    return Layout(image.dtype, gray, channels)


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8/uint16/float32 -> float32 in 0-1. The scale comes from the dtype, never from pixel values."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if image.dtype == np.float32:
        return image
    raise InputError(f"unsupported image dtype {image.dtype}")


def from_float(image: np.ndarray, dtype: DTypeLike) -> np.ndarray:
    """float 0-1 -> dtype, clipped and rounded (not truncated)."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)
    peak = 255.0 if dtype == np.uint8 else 65535.0
    scaled = image * np.float32(peak)  # the one temporary: rint and clip work in place (per-frame hot path)
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, peak, out=scaled)
    return scaled.astype(dtype)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 float RGB in 0-1 -> HxWx3 float32 YCbCr in 0-1 (Y in 16/255..235/255)."""
    out = rgb.astype(np.float32, copy=False) @ _RGB2YCBCR.T.astype(np.float32)
    return out + _YCBCR_OFFSET.astype(np.float32)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    return (ycc - _YCBCR_OFFSET.astype(np.float32)) @ _YCBCR2RGB.T.astype(np.float32)


def ycbcr_planes_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """Three same-shape float planes -> (..., 3) float32 RGB; ycbcr_to_rgb without stacking the planes first
    (at 1080p the stack and the (3, 3) matmul cost 40 ms, these nine multiply-adds 13 ms)."""
    m = _YCBCR2RGB.astype(np.float32)
    offset = _YCBCR_OFFSET.astype(np.float32)
    centred = [plane - offset[i] for i, plane in enumerate((y, cb, cr))]
    out = np.empty((*y.shape, 3), dtype=np.float32)
    acc, term = np.empty(y.shape, dtype=np.float32), np.empty(y.shape, dtype=np.float32)
    for k in range(3):
        np.multiply(centred[0], m[k, 0], out=acc)
        for c in (1, 2):
            acc += np.multiply(centred[c], m[k, c], out=term)
        out[..., k] = acc
    return out


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """Luma only, HxW float32 (0-1)."""
    w = _RGB2YCBCR[0].astype(np.float32)
    return rgb[..., 0] * w[0] + rgb[..., 1] * w[1] + rgb[..., 2] * w[2] + np.float32(_YCBCR_OFFSET[0])


def gray_to_y(gray: np.ndarray) -> np.ndarray:
    """A gray pixel v is RGB (v, v, v): its luma is an affine map of v."""
    return gray * np.float32(_RGB2YCBCR[0].sum()) + np.float32(_YCBCR_OFFSET[0])


def y_to_gray(y: np.ndarray) -> np.ndarray:
    return (y - np.float32(_YCBCR_OFFSET[0])) / np.float32(_RGB2YCBCR[0].sum())


def resize_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of a float32 HxW or HxWxC array (Pillow's kernel, antialiased when shrinking)."""
    if image.ndim == 2:
        return np.asarray(
            Image.fromarray(image.astype(np.float32, copy=False), mode="F").resize(
                (width, height), Image.Resampling.BICUBIC
            )
        )
    planes = [resize_bicubic(image[..., c], height, width) for c in range(image.shape[2])]
    return np.stack(planes, axis=-1)


def downscale_uint8(hr: np.ndarray, scale: int) -> np.ndarray:
    """The benchmark convention's low-resolution image: Pillow bicubic (antialiased) on uint8 RGB or gray."""
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    return np.asarray(Image.fromarray(hr).resize((w, h), Image.Resampling.BICUBIC))


def upscale_uint8(lr: np.ndarray, scale: int) -> np.ndarray:
    """The bicubic baseline the benchmark compares a model with."""
    h, w = lr.shape[0] * scale, lr.shape[1] * scale
    return np.asarray(Image.fromarray(lr).resize((w, h), Image.Resampling.BICUBIC))


def crop_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    h, w = image.shape[0] - image.shape[0] % multiple, image.shape[1] - image.shape[1] % multiple
    return image[:h, :w]


def pad_to_multiple(chw: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad the last two axes up to a multiple; returns the padded array and the original (H, W)."""
    h, w = chw.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return chw, (h, w)
    pad = [(0, 0)] * (chw.ndim - 2) + [(0, ph), (0, pw)]
    return _reflect_or_edge(chw, pad, h > ph and w > pw), (h, w)


def _reflect_or_edge(array: np.ndarray, pad: list[tuple[int, int]], can_reflect: bool) -> np.ndarray:
    """Reflection needs more pixels than the pad; a tiny image is edge-replicated instead."""
    return np.pad(array, pad, mode="reflect") if can_reflect else np.pad(array, pad, mode="edge")


def pad_hw(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad an HxW or HxWxC array at the bottom/right up to (height, width), by reflection as
    `pad_to_multiple` does (edge replication where the image is too small to reflect)."""
    h, w = image.shape[:2]
    ph, pw = max(height - h, 0), max(width - w, 0)
    if ph == 0 and pw == 0:
        return image
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (image.ndim - 2)
    return _reflect_or_edge(image, pad, h > ph and w > pw)


def pad_hw_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """`pad_to_multiple` for an HxW or HxWxC array (same reflection rule, so tiled and untiled agree)."""
    h, w = image.shape[:2]
    return pad_hw(image, h + (-h) % multiple, w + (-w) % multiple)


def fill_transparent(colour: np.ndarray, alpha: np.ndarray, radius: int) -> np.ndarray:
    """Replace the colour under fully transparent pixels (alpha == 0) by the mean of the nearby known ones,
    growing `radius` pixels out from the visible area (game-texture "alpha bleeding").

    The colour stored under alpha == 0 is arbitrary (often black or white); a model or a bicubic kernel
    would smear it into the visible edge pixels. Straight colour is kept where alpha > 0, so visible pixels
    never change; pixels further than `radius` from any visible one take the mean visible colour.
    `colour` is HxWxC float32, `alpha` HxW float32; returns a new array.
    """
    known = alpha > 0
    if known.all() or not known.any():
        return colour
    out = colour.copy()
    out[~known] = 0.0
    weight = known.astype(np.float32)
    for _ in range(max(radius, 1)):
        if weight.all():
            break
        summed = _box3(out * weight[..., None])
        count = _box3(weight)
        grow = (weight == 0) & (count > 0)
        out[grow] = summed[grow] / count[grow][:, None]
        weight = np.where(grow, 1.0, weight).astype(np.float32)
    rest = weight == 0
    if rest.any():
        out[rest] = colour[known].mean(axis=0)
    return out


def _box3(a: np.ndarray) -> np.ndarray:
    """Sum over each pixel's 3x3 neighbourhood (zero outside the image)."""
    p = np.pad(a, [(1, 1), (1, 1)] + [(0, 0)] * (a.ndim - 2))
    rows = p[:-2] + p[1:-1] + p[2:]
    return rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]


def upscale_colour(
    colour: np.ndarray, *, scale: int, color: Color, in_channels: int,
    run_planes: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """The host colour pipeline: NxHxWx1 or NxHxWx3 float in 0-1 -> Nx(sH)x(sW)x(same C) float.

    `run_planes` runs the model on NxHxWxC float32 planes (C = the model's input channels) and returns them
    scaled. Y-channel models see BT.601 luma and the chroma is upscaled with Pillow's bicubic; a gray image
    through a Y model is an affine map of its luma; a gray image through an RGB model is fed as three equal
    planes and the mean taken. srkit.pipeline builds the same steps as an ONNX graph.
    """
    _, h, w, channels = colour.shape
    if color == Color.Y:
        if channels == 1:
            return y_to_gray(run_planes(gray_to_y(colour)))
        ycc = rgb_to_ycbcr(colour)
        y = run_planes(ycc[..., :1])[..., 0]
        cb, cr = (np.stack([resize_bicubic(plane, h * scale, w * scale) for plane in ycc[..., c]]) for c in (1, 2))
        return ycbcr_planes_to_rgb(y, cb, cr)
    if in_channels == 3:
        if channels == 1:
            return run_planes(np.repeat(colour, 3, axis=3)).mean(axis=3, keepdims=True)
        return run_planes(colour)
    raise InputError(f"cannot feed a {channels}-channel image to a {in_channels}-channel model")
