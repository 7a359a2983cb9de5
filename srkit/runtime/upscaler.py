"""`Upscaler`: image in (uint8/uint16/float32, gray/RGB/RGBA), image out, on any backend.

Colour handling follows the model's metadata: Y-channel models see BT.601 luma and the chroma is upscaled
bicubically; RGB models see RGB; gray images stay gray; alpha is upscaled on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from srkit import imaging
from srkit.errors import InputError
from srkit.meta import Color, ModelInfo, Precision, read_model_info
from srkit.runtime import registry
from srkit.runtime.base import Backend, BackendOptions

# Refuse (with advice) rather than let one call allocate more than this much float32 output untiled.
UNTILED_LIMIT_BYTES = 6 << 30


class Upscaler:
    """Upscale images with an exported srkit ONNX model.

    >>> with Upscaler("espcn-x3.onnx", backend="openvino") as up:
    ...     big = up.upscale(image)
    """

    def __init__(
        self,
        model: str | Path,
        backend: str = "auto",
        device: str = "cpu",
        precision: str | Precision = "fp32",
        *,
        threads: int | None = None,
        checkpoint: str | Path | None = None,
        **backend_options: Any,
    ) -> None:
        path = Path(model)
        if path.suffix.lower() != ".onnx":
            raise InputError(
                f"{model}: the runtime takes an exported .onnx model; "
                f"run `srkit export {model}` first (or use srkit.export.export_model)"
            )
        self.model_path = path
        self.info: ModelInfo = read_model_info(path)
        cls = registry.pick(backend, device)
        extra = dict(backend_options)
        if checkpoint is not None:
            extra["checkpoint"] = checkpoint
        options = BackendOptions(device=device, precision=Precision.parse(precision), threads=threads, extra=extra)
        self.backend: Backend = cls(path, self.info, options)

    # ---- lifecycle ------------------------------------------------------------------------------
    @staticmethod
    def available_backends() -> list[str]:
        return registry.available()

    def __enter__(self) -> Upscaler:
        self.backend.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()

    @property
    def scale(self) -> int:
        return self.info.scale

    def describe(self) -> dict[str, Any]:
        return self.backend.describe()

    # ---- the model call -------------------------------------------------------------------------
    def run_model(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 -> NCHW float32, padding to the model's size multiple and cropping back."""
        multiple = self.info.size_multiple
        padded, (h, w) = imaging.pad_to_multiple(x, multiple)
        if self.info.static_shape and padded.shape[2:] != self.info.static_shape:
            sh, sw = self.info.static_shape
            raise InputError(f"this model was exported for {sh}x{sw} inputs only, got {h}x{w}")
        out = self.backend.infer(padded)
        s = self.info.scale
        return out[:, :, : h * s, : w * s]

    def _run_planes(self, planes: np.ndarray) -> np.ndarray:
        """HxWxC float32 -> (sH)x(sW)xC float32 through the model."""
        chw = planes.transpose(2, 0, 1)[None]
        return self.run_model(np.ascontiguousarray(chw, dtype=np.float32))[0].transpose(1, 2, 0)

    # ---- images ---------------------------------------------------------------------------------
    def upscale(self, image: np.ndarray) -> np.ndarray:
        """HxW or HxWxC (C = 1, 3, 4) uint8/uint16/float32 RGB -> the same dtype and channels, scaled."""
        layout = imaging.describe(image)
        h, w = image.shape[:2]
        s = self.info.scale
        self._check_size(h, w)
        pixels = imaging.to_float(image)
        if layout.gray:
            pixels = pixels[..., None]
        alpha = pixels[..., 3] if layout.channels == 4 else None
        colour = pixels[..., :3] if layout.channels >= 3 else pixels
        out = self._upscale_colour(colour)
        if alpha is not None:
            big_alpha = np.clip(imaging.resize_bicubic(alpha, h * s, w * s), 0.0, 1.0)
            out = np.concatenate([out, big_alpha[..., None]], axis=2)
        result = imaging.from_float(out, layout.dtype)
        return result[..., 0] if layout.gray else result

    def _upscale_colour(self, colour: np.ndarray) -> np.ndarray:
        """HxWx1 or HxWx3 float in 0-1 -> scaled, same channels."""
        h, w, channels = colour.shape
        s = self.info.scale
        if self.info.color == Color.Y:
            if channels == 1:
                y = self._run_planes(imaging.gray_to_y(colour))
                return imaging.y_to_gray(y)
            ycc = imaging.rgb_to_ycbcr(colour)
            y = self._run_planes(ycc[..., :1])
            chroma = imaging.resize_bicubic(ycc[..., 1:], h * s, w * s)
            return imaging.ycbcr_to_rgb(np.concatenate([y, chroma], axis=2))
        if self.info.in_channels == 3:
            if channels == 1:
                rgb = self._run_planes(np.repeat(colour, 3, axis=2))
                return rgb.mean(axis=2, keepdims=True)
            return self._run_planes(colour)
        raise InputError(f"cannot feed a {channels}-channel image to a {self.info.in_channels}-channel model")

    def _check_size(self, h: int, w: int) -> None:
        s = self.info.scale
        out_bytes = h * s * w * s * 4 * 4
        if out_bytes > UNTILED_LIMIT_BYTES:
            raise InputError(
                f"a {w}x{h} image upscaled x{s} needs about {out_bytes >> 30} GiB of float32 at once; "
                "use tiling (--tile)"
            )
