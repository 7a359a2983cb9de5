"""The callable classes Ray Data runs in its actor pools: each loads one `Upscaler` in its constructor (once per
actor, never per image) and upscales the batches it is handed.

The model travels as bytes in Ray's object store and is written to a private temp folder on
the worker's node, so nodes need no copy of it and no shared file system for it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class WorkerOptions:
    """What each actor's Upscaler is built with (the same on every node, so the pixels are the same)."""

    backend: str = "auto"
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = 1
    tile: int | str | None = None
    tile_overlap: int | None = None
    quality: int = 95


class _LoadsUpscaler:
    """Builds the actor's Upscaler from the model's bytes."""

    def __init__(self, model_name: str, model_ref: list[Any], options: WorkerOptions) -> None:
        from srkit.cluster._ray import ray_module
        from srkit.runtime import Upscaler

        self._folder = tempfile.mkdtemp(prefix="srkit-model-")
        model = Path(self._folder) / Path(model_name).name
        model.write_bytes(ray_module().get(model_ref[0]))  # wrapped in a list so that Ray passes the reference
        self.options = options
        self.upscaler = Upscaler(model, backend=options.backend, device=options.device,
                                 precision=options.precision, threads=options.threads, tile=options.tile,
                                 tile_overlap=options.tile_overlap)
        self.upscaler.__enter__()
        from srkit.cluster._ray import where_am_i

        self.node_id, self.node_ip = where_am_i()
        self.pid = os.getpid()

    def __del__(self) -> None:
        try:
            if hasattr(self, "upscaler"):
                self.upscaler.close()
        finally:
            shutil.rmtree(getattr(self, "_folder", ""), ignore_errors=True)


class ImageBatchUpscaler(_LoadsUpscaler):
    """`upscale_dataset`: rows with an `image` column (HxW or HxWxC arrays) or only a `path` column -> rows whose
    `image` is upscaled. Other columns pass through unchanged."""

    def __init__(self, model_name: str, model_ref: list[Any], options: WorkerOptions, column: str) -> None:
        super().__init__(model_name, model_ref, options)
        self.column = column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from srkit.imageio import read_image

        have_pixels = self.column in batch
        images = list(batch[self.column]) if have_pixels else [read_image(str(p)) for p in batch["path"]]
        out: dict[str, Any] = dict(batch)
        out[self.column] = [self.upscaler.upscale(np.asarray(image)) for image in images]
        return out


class FileUpscaler(_LoadsUpscaler):
    """`upscale_folder_on_ray`: rows (src, dst) -> rows (src, dst, status, reason, node, ip, pid).

    status is `done` (written now), `skipped` (dst was already complete: outputs are renamed into place only
    when whole, so an existing dst is a finished one) or `failed` (reason says why). A bad file fails alone."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        statuses, reasons, seconds = [], [], []
        for src, dst in zip(batch["src"], batch["dst"], strict=True):
            start = time.perf_counter()
            status, reason = self.one(Path(str(src)), Path(str(dst)))
            statuses.append(status)
            reasons.append(reason)
            seconds.append(time.perf_counter() - start)
        n = len(statuses)
        return {"src": batch["src"], "dst": batch["dst"], "status": np.array(statuses), "reason": np.array(reasons),
                "seconds": np.array(seconds), "node": np.array([self.node_id] * n),
                "ip": np.array([self.node_ip] * n), "pid": np.array([self.pid] * n)}

    def one(self, src: Path, dst: Path) -> tuple[str, str]:
        """(status, reason): srkit.runtime.files.upscale_file, resuming (an output already there is skipped)."""
        from srkit.runtime.files import upscale_file

        outcome = upscale_file(self.upscaler, src, dst, quality=self.options.quality, skip_existing=True)
        return outcome.status.value, outcome.reason


