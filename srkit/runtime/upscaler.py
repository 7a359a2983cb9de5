"""`Upscaler`: image in (uint8/uint16/float32, gray/RGB/RGBA), image out, on any backend.

Colour handling follows the model's metadata: Y-channel models see BT.601 luma and the chroma is upscaled
bicubically; RGB models see RGB; gray images stay gray; alpha is upscaled on its own.

Two routes give the same pixels (to within one level on a few pixels in ten thousand, float rounding):
- the pipeline: on backends that run ONNX graphs, the model is wrapped at load time in a pipeline graph
  (srkit.pipeline: uint8 or uint16 NHWC in and out, colour, padding and rounding inside the graph) that runs
  untiled 8-bit RGB and gray images and 16-bit RGB images, and the video's luma planes. The runtime's kernels
  do in one pass what numpy does in many, so the end-to-end speed gets close to the model's.
- the host path: numpy and Pillow around the float model (tiles, alpha, float images, the PyTorch backend,
  images smaller than the size multiple).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from srkit import imaging
from srkit._system import available_memory_bytes
from srkit.errors import InputError, SrkitError
from srkit.meta import Color, Io, ModelInfo, Precision, read_model_info
from srkit.runtime import registry, tiling
from srkit.runtime.base import PIPELINE_INPUTS, Backend, BackendOptions

# An untiled call whose working memory would pass this (or half the free memory) is tiled automatically:
# a 6000x4000 photo through ESPCN x3 untiled peaked at 20 GB, tiled at 1.7 GB.
UNTILED_BUDGET_BYTES = 2 << 30
log = logging.getLogger("srkit")


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
        tile: int | str | tuple[int, int] | None = None,
        tile_overlap: int | None = None,
        memory_budget: int | None = None,
        pipeline: bool = True,
        on_note: Callable[[str], None] | None = None,
        **backend_options: Any,
    ) -> None:
        """`pipeline=False` keeps every image on the host path (for comparisons; the pixels agree).
        `on_note` receives one-line notes on what srkit decided for the user (an image tiled automatically
        because it would not fit in memory untiled); by default they go to the "srkit" logger."""
        self.on_note = on_note or log.info
        self._approximation_noted = False
        path = Path(model)
        suffixes = registry.model_suffixes()  # .onnx, and the formats a backend of their own runs (ncnn .param)
        suffix = path.suffix.lower()
        if suffix not in suffixes:
            raise InputError(
                f"{model}: the runtime takes an exported .onnx model (or {', '.join(s for s in suffixes if s != '.onnx')}"
                f" for their backends); run `srkit export {model}` first (or use srkit.export.export_model)"
            )
        self.model_path = path
        self.info: ModelInfo = read_model_info(path)
        own = suffixes[suffix]
        cls = registry.pick(own if own and backend.lower() == "auto" else backend, device)
        if cls.model_suffix != suffix:
            raise InputError(f"{model}: the {cls.name} backend runs {cls.model_suffix} models; use "
                             f"{f'--backend {own}' if own else 'the .onnx export'}")
        given = dict(backend_options)
        if checkpoint is not None:  # the PyTorch backend's weights (TorchOptions.checkpoint)
            given["checkpoint"] = checkpoint
        options = BackendOptions(device=device, precision=Precision.parse(precision), threads=threads,
                                 specific=cls.parse_options(given))
        if options.precision == Precision.AUTO:  # measured on activation (srkit.runtime.precision)
            from srkit.runtime.precision import AutoPrecisionBackend

            self.backend: Backend = AutoPrecisionBackend(cls, path, self.info, options)
        else:
            self.backend = cls(path, self.info, options)
        self._backend_cls = cls
        self._use_pipelines = pipeline and cls.runs_pipelines
        self._pipelines: dict[Io, Backend] = {}
        self._pipeline_lock = threading.Lock()
        self._configure_tiling(tile, tile_overlap, memory_budget)
        options.tile_shape = self.tile  # compiled backends (TensorRT) build their profile from it

    def _configure_tiling(
        self, tile: int | str | tuple[int, int] | None, overlap: int | None, budget: int | None
    ) -> None:
        """`tile`: None (whole image), an int or (H, W), or "auto" (from `memory_budget` bytes).
        A static-shape model always tiles at its input shape."""
        rf = self.info.receptive_field
        self.tile_overlap = tiling.default_overlap(rf) if overlap is None else int(overlap)
        if self.tile_overlap < rf:
            raise InputError(
                f"--tile-overlap {self.tile_overlap} is below this model's receptive field ({rf} pixels); "
                f"use at least {rf}"
            )
        parsed = tiling.parse_tile(tile)
        if parsed == "auto":
            parsed = tiling.auto_tile_size(
                scale=self.info.scale, features=tiling.features_of(self.info),
                overlap=self.tile_overlap, multiple=self.info.size_multiple, budget_bytes=budget,
            )
        if self.info.static_shape:
            if parsed is not None and parsed not in (self.info.static_shape, self.info.static_shape[0]):
                sh, sw = self.info.static_shape
                raise InputError(f"this model was exported for {sh}x{sw} inputs; its tile must be {sh}x{sw}")
            parsed = self.info.static_shape
        self.tile: int | tuple[int, int] | None = parsed  # type: ignore[assignment]

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
        with self._pipeline_lock:
            for backend in self._pipelines.values():
                backend.close()
            self._pipelines.clear()

    @property
    def scale(self) -> int:
        return self.info.scale

    def describe(self) -> dict[str, Any]:
        described = self.backend.describe()
        if self._pipelines:
            described["pipelines"] = sorted(io.value for io in self._pipelines)
        return described

    # ---- the model call -------------------------------------------------------------------------
    def run_model(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 -> NCHW float32, padding to the model's size multiple and cropping back."""
        self._require_tensor_model("a float NCHW tensor")
        multiple = self.info.size_multiple
        padded, (h, w) = imaging.pad_to_multiple(x, multiple)
        if self.info.static_shape and padded.shape[2:] != self.info.static_shape:
            sh, sw = self.info.static_shape
            raise InputError(f"this model was exported for {sh}x{sw} inputs only, got {h}x{w}")
        out = self.backend.infer(padded)
        s = self.info.scale
        return out[:, :, : h * s, : w * s]

    def _run_planes(self, planes: np.ndarray) -> np.ndarray:
        """NxHxWxC float32 -> Nx(sH)x(sW)xC float32 through the model, in one call."""
        nchw = planes.transpose(0, 3, 1, 2)
        return self.run_model(np.ascontiguousarray(nchw, dtype=np.float32)).transpose(0, 2, 3, 1)

    # ---- images ---------------------------------------------------------------------------------
    def upscale(
        self, image: np.ndarray, *, on_tile: Callable[[], None] | None = None, pipeline: bool = True
    ) -> np.ndarray:
        """HxW or HxWxC (C = 1, 3, 4) uint8/uint16/float32 RGB -> the same dtype and channels, scaled.

        With `tile` set, the image goes through in tiles and the float32 result is never held whole.
        `pipeline=False` takes the host path for this call even where a pipeline graph would run it.
        """
        layout = imaging.describe(image)
        imaging.check_finite(image, "input image")  # one NaN would spread over a block: refuse it
        pixels = image[..., None] if layout.gray else image
        h, w = image.shape[:2]
        tile = self._tile_for(h, w, announce=True)
        route = self._pipeline_route(layout, (h, w)) if pipeline and tile is None else None
        if route is not None:
            out = self._pipeline_backend(route).infer(pixels[None])[0]
            return out[..., 0] if layout.gray else out
        self._require_tensor_model(f"a {layout.dtype} image with {layout.channels} channel(s)")
        if layout.channels == 4:
            pixels = self._fill_under_alpha(pixels)
        if tile is None:
            result = self._upscale_float(imaging.to_float(pixels)[None])[0]
            imaging.check_finite(result, f"{self.model_path.name} output")  # a broken model is an error
            out = imaging.from_float(result, layout.dtype)
        else:
            out = self._upscale_tiled(pixels, layout.dtype, on_tile, tile)
        return out[..., 0] if layout.gray else out

    def upscale_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Several images; those of one shape and dtype go through the model in one call (N > 1 batch).
        Tiled upscalers and mixed shapes fall back to one call per image."""
        if not images:
            return []
        layouts = [imaging.describe(im) for im in images]
        for im in images:
            imaging.check_finite(im, "input image")
        same = all(im.shape == images[0].shape and lay == layouts[0]
                   for im, lay in zip(images, layouts, strict=True))
        h, w = images[0].shape[:2]
        if (self.tile is not None or not same or len(images) == 1 or self.info.static_shape
                or self._tile_for(h * len(images), w) is not None):  # too big as one batch: one by one
            return [self.upscale(im) for im in images]
        layout = layouts[0]
        stack = np.stack([im[..., None] if layout.gray else im for im in images])
        route = self._pipeline_route(layout, (h, w))
        if route is not None:
            outs = self._pipeline_backend(route).infer(stack)
            return [o[..., 0] if layout.gray else o for o in outs]
        self._require_tensor_model(f"a {layout.dtype} image with {layout.channels} channel(s)")
        if layout.channels == 4:
            stack = np.stack([self._fill_under_alpha(im) for im in stack])
        result = self._upscale_float(imaging.to_float(stack))
        imaging.check_finite(result, f"{self.model_path.name} output")
        out = imaging.from_float(result, layout.dtype)
        return [o[..., 0] if layout.gray else o for o in out]

    def upscale_frames(self, frames: Iterable[np.ndarray], *, batch: int = 1) -> Iterator[np.ndarray]:
        """Frames in, frames out: each upscaled frame in the order the frames came, as soon as it is done.

        `frames` is any iterable of images (a list, a generator, srkit.runtime.frames.ImageFiles or VideoFrames);
        it is read lazily and at most `batch` frames ahead, so memory stays bounded however long it is. With
        `batch` > 1, frames of one shape go through the model in one call (`upscale_batch`). An error, from the
        source or the model, is raised at the frame that caused it, after every frame before it was yielded.
        The model runs in the thread that iterates the result."""
        if batch < 1:
            raise InputError(f"batch must be at least 1, not {batch}")
        source = iter(frames)
        pending: list[np.ndarray] = []
        while True:
            try:
                frame = next(source)
            except StopIteration:
                break
            except Exception:
                yield from self._upscale_pending(pending)  # the frames read before the failure come out first
                raise
            pending.append(frame)
            if len(pending) == batch:
                yield from self._upscale_pending(pending)
                pending = []
        yield from self._upscale_pending(pending)

    def _upscale_pending(self, pending: list[np.ndarray]) -> Iterator[np.ndarray]:
        """A batch through the model; when the batch fails, one frame at a time, so that the frames before the
        bad one still come out and the error is raised at the frame that caused it."""
        if len(pending) > 1:
            try:
                results = self.upscale_batch(pending)
            except SrkitError:
                results = None
            if results is not None:
                yield from results
                return
        for frame in pending:
            yield self.upscale(frame)

    def upscale_luma(self, y: np.ndarray) -> np.ndarray:
        """A uint8 BT.601 luma plane (a video frame's Y, HxW) -> uint8 (sH x sW), for Y-channel models: through
        the `y8` pipeline where the backend runs one, else the float model and rounding on the host."""
        if self.info.color != Color.Y or y.dtype != np.uint8 or y.ndim != 2:
            raise InputError("upscale_luma takes a uint8 HxW luma plane and a Y-channel model")
        if self._pipeline_route_for(Io.Y8, y.shape) is not None:
            return self._pipeline_backend(Io.Y8).infer(y[None, :, :, None])[0, :, :, 0]
        self._require_tensor_model("a luma plane")
        planes = self.run_model(imaging.to_float(y)[None, None])
        return imaging.from_float(planes[0, 0], np.dtype(np.uint8))

    def luma_pipeline_pays(self) -> bool:
        """Whether a video's luma planes should go through the y8 pipeline (uint8 in and out) rather than the
        float model with the rounding done by the encoder thread. On two cores the pipeline pays where the
        backend runs it as one graph (ONNX Runtime: 12.3 vs 10.8 fps, bench/test_video.py) and not where it
        splits it into stages to keep colour in fp32 (OpenVINO at bf16: 19.1 vs 22.1 fps)."""
        if self._pipeline_route_for(Io.Y8, (1 << 16, 1 << 16)) is None or self.info.io != Io.TENSOR:
            return False
        return not self._backend_cls.splits_pipelines(self.backend.options.precision, self.info.precision)

    def route(self, image: np.ndarray) -> str:
        """Which path `upscale(image)` takes: "pipeline" (in-graph colour and rounding), "host" or "tiled"."""
        layout = imaging.describe(image)
        if self._tile_for(*image.shape[:2]) is not None:
            return "tiled"
        return "pipeline" if self._pipeline_route(layout, image.shape[:2]) is not None else "host"

    # ---- pipelines (srkit.pipeline) ----------------------------------------------------------------
    def _pipeline_route(self, layout: imaging.Layout, hw: tuple[int, ...]) -> Io | None:
        """The pipeline kind that runs this image untiled, or None for the host path."""
        if self.tile is not None:
            return None
        io = {(np.dtype(np.uint8), 3): Io.RGB8, (np.dtype(np.uint8), 1): Io.GRAY8,
              (np.dtype(np.uint16), 3): Io.RGB16}.get((np.dtype(layout.dtype), layout.channels))
        return None if io is None else self._pipeline_route_for(io, hw)

    def _pipeline_route_for(self, io: Io, hw: tuple[int, ...]) -> Io | None:
        from srkit.pipeline import min_side

        big_enough = min(hw[0], hw[1]) >= min_side(self.info)
        if self.info.io != Io.TENSOR:  # the file itself is a pipeline: it serves its own kind only
            if io == self.info.io and not big_enough:
                raise InputError(f"this pipeline model takes images of at least {min_side(self.info)} pixels a side")
            return io if io == self.info.io else None
        if not self._use_pipelines or self.info.static_shape is not None or io not in self._backend_cls.pipeline_ios:
            return None
        if io == Io.Y8 and self.info.color != Color.Y:
            return None
        return io if big_enough else None

    def _pipeline_backend(self, io: Io) -> Backend:
        if self.info.io != Io.TENSOR:
            return self.backend
        with self._pipeline_lock:
            backend = self._pipelines.get(io)
            if backend is None:
                backend = self._build_pipeline(io)
                self._pipelines[io] = backend
        return backend

    def _build_pipeline(self, io: Io) -> Backend:
        """Compose the pipeline graph around the model file in memory and open it on this backend, at the
        precision the tensor model runs (`auto` is measured on the tensor model first)."""
        import onnx

        from srkit.pipeline import compose

        options = self.backend.options
        if options.precision == Precision.AUTO:
            self.backend.activate()
            choice = getattr(self.backend, "choice", None)
            options = replace(options, precision=choice.chosen if choice else Precision.FP32)
        model = onnx.load(str(self.model_path))
        # in memory, so the 8-bit phase-space tail (srkit.pipeline.compose) is fine: no TensorRT parser sees it
        graph = compose(model, self.info, io, rounding=self._backend_cls.pipeline_rounding,
                        phase_form=self._backend_cls.pipeline_phase_form).SerializeToString()
        backend = self._backend_cls(self.model_path, replace(self.info, io=io), options, graph=graph)
        return backend.activate()

    def _require_tensor_model(self, what: str) -> None:
        if self.info.io != Io.TENSOR:
            dtype, channels = PIPELINE_INPUTS[self.info.io]
            raise InputError(
                f"{self.model_path} is a pipeline model (srkit.io {self.info.io.value}): it takes "
                f"{np.dtype(dtype).name} images with {channels} channel(s), untiled, not {what}; "
                "use the tensor model it was made from for anything else"
            )

    def _fill_under_alpha(self, pixels: np.ndarray) -> np.ndarray:
        """HxWx4 -> float32 HxWx4 with the colour under alpha == 0 filled from the visible neighbours, far
        enough (receptive field + the bicubic support) that no visible output pixel sees the hidden colour."""
        floats = imaging.to_float(pixels)
        alpha = floats[..., 3]
        if not (alpha == 0).any():
            return floats
        colour = imaging.fill_transparent(floats[..., :3], alpha, self.info.receptive_field + 2)
        return np.concatenate([colour, floats[..., 3:]], axis=2)

    def _tile_for(self, height: int, width: int, *, announce: bool = False) -> int | tuple[int, int] | None:
        """The tile an image of this size goes through: the configured one, or, untiled, an automatic one
        when the untiled call would not fit comfortably in memory (announced through `on_note`, as is once
        that tiles only approximate a model whose every output pixel sees the whole image, RCAN)."""
        tile = self._choose_tile(height, width, announce=announce)
        if tile is not None and announce and not self._approximation_noted:
            self._approximation_noted = True
            note = tiling.approximation_note(self.info)
            if note:
                self.on_note(note)
        return tile

    def _choose_tile(self, height: int, width: int, *, announce: bool) -> int | tuple[int, int] | None:
        if self.tile is not None:
            return self.tile
        need = self._untiled_bytes(height, width)
        free = available_memory_bytes()
        budget = min(UNTILED_BUDGET_BYTES, free // 2) if free else UNTILED_BUDGET_BYTES
        if need <= budget:
            return None
        side = tiling.auto_tile_size(scale=self.info.scale, features=tiling.features_of(self.info),
                                     overlap=self.tile_overlap, multiple=self.info.size_multiple)
        if announce:
            self.on_note(f"{width}x{height} needs about {need / 2**30:.1f} GiB untiled; tiling it automatically "
                         f"({side}x{side} tiles; --tile sets them)")
        return side

    def _untiled_bytes(self, height: int, width: int) -> int:
        """Working memory of one untiled call: two float32 feature maps of the network's width at the input's
        size, and the float32 output with its temporaries (about four copies)."""
        pixels_in = height * width
        features = tiling.features_of(self.info)
        return 4 * (2 * features * pixels_in + 4 * 4 * pixels_in * self.info.scale**2)

    def _upscale_tiled(
        self, pixels: np.ndarray, dtype: np.dtype, on_tile: Callable[[], None] | None,
        tile: int | tuple[int, int],
    ) -> np.ndarray:
        h, w, channels = pixels.shape
        s, multiple = self.info.scale, self.info.size_multiple
        padded = imaging.pad_hw_to_multiple(pixels, multiple)
        th, tw = tile if isinstance(tile, tuple) else (tile, tile)
        fixed = self.info.static_shape is not None
        if fixed:  # a static model cannot take a smaller tile: pad the image up to one
            padded = imaging.pad_hw(padded, max(padded.shape[0], th), max(padded.shape[1], tw))
        plan = tiling.plan_tiles(
            padded.shape[0], padded.shape[1], tile=(th, tw), overlap=self.tile_overlap,
            receptive_field=self.info.receptive_field, scale=s, multiple=multiple, fixed=fixed,
        )

        def process(tile: np.ndarray) -> np.ndarray:
            result = self._upscale_float(imaging.to_float(tile)[None])[0]
            imaging.check_finite(result, f"{self.model_path.name} output")
            return result

        return tiling.run_tiled(
            padded, plan, process, out_shape=(h * s, w * s), out_channels=channels, out_dtype=dtype,
            on_tile=on_tile,
        )

    def tile_plan(self, height: int, width: int) -> tiling.TilePlan | None:
        """The tiles an image of this size is cut into (None when not tiling), for progress and tests."""
        tile = self._tile_for(height, width)
        if tile is None:
            return None
        multiple = self.info.size_multiple
        ph, pw = height + (-height) % multiple, width + (-width) % multiple
        th, tw = tile if isinstance(tile, tuple) else (tile, tile)
        fixed = self.info.static_shape is not None
        if fixed:
            ph, pw = max(ph, th), max(pw, tw)
        return tiling.plan_tiles(ph, pw, tile=(th, tw), overlap=self.tile_overlap,
                                 receptive_field=self.info.receptive_field, scale=self.info.scale,
                                 multiple=multiple, fixed=fixed)

    def _upscale_float(self, pixels: np.ndarray) -> np.ndarray:
        """NxHxWxC (C = 1, 3, 4) float32 in 0-1 -> Nx(sH)x(sW)xC float32; alpha upscaled on its own."""
        _, h, w, channels = pixels.shape
        s = self.info.scale
        colour = pixels[..., :3] if channels >= 3 else pixels
        out = self._upscale_colour(colour)
        if channels == 4:
            big_alpha = np.stack([np.clip(imaging.resize_bicubic(a, h * s, w * s), 0.0, 1.0)
                                  for a in pixels[..., 3]])
            out = np.concatenate([out, big_alpha[..., None]], axis=3)
        return out

    def _upscale_colour(self, colour: np.ndarray) -> np.ndarray:
        """NxHxWx1 or NxHxWx3 float in 0-1 -> scaled, same channels (imaging.upscale_colour)."""
        return imaging.upscale_colour(colour, scale=self.info.scale, color=self.info.color,
                                      in_channels=self.info.in_channels, run_planes=self._run_planes)
