"""ncnn backend: the engine of the ncnn upscaler apps (realesrgan-ncnn-vulkan, Upscayl) and of most phone
deployments, on the CPU, or on a Vulkan GPU where ncnn finds one (no silent fallback to the CPU).

The model is an ncnn `.param` with its `.bin` beside it: srkit's own exports (`srkit export SRC -o m.param`,
ModelInfo from the sidecar `m.json`) or a third-party file such as Real-ESRGAN's (ModelInfo read from the graph
by `srkit.ncnn_meta`). The blob names come from the sidecar, else from the graph.

Precision is the arithmetic ncnn runs: fp32 switches off every reduced-precision path (ncnn's defaults turn on
fp16 storage and arithmetic where the hardware has them, and bf16 on some CPUs); fp16 turns on fp16 storage and
arithmetic; bf16 turns on bf16 storage. The weights are stored as the file has them (fp16 in srkit's default
export); they are widened on load.

Threads: one `ncnn.Net` per backend, one `Extractor` per image and call, so `infer` may be called from several
threads at once (ncnn's Net is read-only while extracting; each extractor holds its own blobs). ncnn has no batch
axis: an N-image batch is N extractor runs.
"""

from __future__ import annotations

import ctypes.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from srkit._optional import require
from srkit.errors import BackendUnavailableError, InputError, UnsupportedModelError
from srkit.meta import ModelInfo, Precision
from srkit.ncnn_meta import blob_names, read_layers
from srkit.runtime.base import Backend

LOW_PRECISION_OPTIONS = ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                         "use_bf16_packed")
PRECISION_OPTIONS: dict[Precision, tuple[str, ...]] = {
    Precision.FP32: (),
    Precision.FP16: ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic"),
    Precision.BF16: ("use_bf16_storage", "use_bf16_packed"),
}


def find_ncnn_model(model: Path, info: ModelInfo) -> Path | None:
    """An ncnn export of the same weights beside `model`: STEM.param or STEM-xN.param (the name the ncnn apps
    read the scale from), whose sidecar names the same source sha256."""
    for name in (f"{model.stem}.param", f"{model.stem}-x{info.scale}.param"):
        candidate = model.with_name(name)
        if candidate.is_file() and same_network(candidate, info):
            return candidate
    return None


def same_network(param: Path, info: ModelInfo) -> bool:
    from srkit.errors import SrkitError
    from srkit.meta import read_model_info

    try:
        other = read_model_info(param)
    except SrkitError:
        return False
    return bool(info.source_sha256) and other.source_sha256 == info.source_sha256 and other.scale == info.scale


def vulkan_gpu_count() -> int:
    """GPUs ncnn can use. Without a Vulkan loader on the system ncnn is not asked (it would print a dlopen
    error per attempt)."""
    if ctypes.util.find_library("vulkan") is None:
        return 0
    ncnn = require("ncnn", extra="ncnn")
    return int(ncnn.get_gpu_count())


class NcnnBackend(Backend):
    name = "ncnn"
    title = "ncnn"
    module_name = "ncnn"
    thread_safe: ClassVar[bool] = True  # one Net, one Extractor per image and call
    model_suffix = ".param"

    @classmethod
    def devices(cls) -> list[str]:
        return ["cpu"] + (["vulkan"] if vulkan_gpu_count() > 0 else [])

    @classmethod
    def bench_model(cls, model: Path, info: ModelInfo, given: Path | None = None, *, required: bool = False
                    ) -> Path | None:
        """The ncnn export of the ONNX `model`'s network: `given` (checked to come from the same weights), else
        found beside it; the bench's ncnn rows run it next to the ONNX rows (the peer row of the apps)."""
        if given is not None:
            if not given.is_file() or given.suffix.lower() != ".param":
                raise InputError(f"--ncnn-model {given} is not an ncnn .param file")
            if not same_network(given, info):
                raise InputError(f"--ncnn-model {given} was not exported from the weights {model.name} was "
                                 "(its sidecar's srkit.source_sha256 or scale differs)")
            return given
        found = find_ncnn_model(model, info)
        if found is None and required:
            raise InputError(f"no ncnn export of {model.name} found; write one with "
                             f"`srkit export SOURCE -o {model.stem}.param` or pass --ncnn-model")
        return found

    @classmethod
    def precision_candidates(
        cls, device: str, model_precision: Precision, capabilities: Sequence[str] = ()
    ) -> list[Precision]:
        """fp32 arithmetic, and fp16 on a Vulkan GPU (where ncnn's apps run it); whatever the weights' storage."""
        return [Precision.FP32, Precision.FP16] if device.lower().startswith("vulkan") else [Precision.FP32]

    @classmethod
    def bench_precisions(
        cls, device: str, info: ModelInfo, int8: Path | None, capabilities: set[str]
    ) -> list[tuple[str, Path | None]]:
        return [(p.value, None) for p in cls.precision_candidates(device, info.precision, sorted(capabilities))]

    def _gpu_index(self) -> int | None:
        """None for the CPU, the Vulkan device index for `vulkan` / `vulkan:N`."""
        device = self.options.device.lower()
        if device == "cpu":
            return None
        kind, _, index = device.partition(":")
        if kind != "vulkan" or (index and not index.isdigit()):
            raise InputError(f"ncnn device must be cpu, vulkan or vulkan:N, not {self.options.device!r}")
        count = vulkan_gpu_count()
        wanted = int(index or 0)
        if wanted >= count:
            found = ", ".join(["cpu"] + [f"vulkan:{i}" for i in range(count)])
            raise BackendUnavailableError(
                f"ncnn finds no Vulkan device {wanted} here (no Vulkan loader or GPU driver); available: {found}"
            )
        return wanted

    def _precision(self) -> Precision:
        wanted = self.options.precision
        if wanted == Precision.AUTO:
            return Precision.FP32  # `--precision auto` is measured by Upscaler; a direct AUTO runs fp32
        if wanted not in PRECISION_OPTIONS:
            raise InputError(f"the ncnn backend runs fp32, fp16 or bf16 arithmetic, not {wanted.value}")
        return wanted

    def _activate(self) -> None:
        if self.model_path.suffix.lower() != ".param":
            raise InputError(f"the ncnn backend runs ncnn models (.param + .bin); {self.model_path.name} is not one: "
                             "export one with `srkit export SOURCE -o model.param`")
        ncnn = require("ncnn", extra="ncnn")
        precision = self._precision()
        gpu = self._gpu_index()
        net = ncnn.Net()
        for option in LOW_PRECISION_OPTIONS:
            setattr(net.opt, option, option in PRECISION_OPTIONS[precision])
        net.opt.use_vulkan_compute = gpu is not None
        if gpu is not None:
            net.set_vulkan_device(gpu)
        if self.options.threads:
            net.opt.num_threads = int(self.options.threads)
        param, weights = self.model_path, self.model_path.with_suffix(".bin")
        if net.load_param(str(param)) != 0:
            raise InputError(f"ncnn could not read {param} (not an ncnn .param, or a layer this ncnn lacks)")
        if net.load_model(str(weights)) != 0:
            raise InputError(f"ncnn could not read the weights {weights} (missing, truncated or not for this .param)")
        self.input_blob, self.output_blob = self._blob_names()
        self.net = net
        self.precision = precision
        self.gpu = gpu

    def _blob_names(self) -> tuple[str, str]:
        extra = self.info.extra
        if "ncnn_input" in extra and "ncnn_output" in extra:
            return extra["ncnn_input"], extra["ncnn_output"]
        return blob_names(read_layers(self.model_path), str(self.model_path))

    def _infer(self, x: np.ndarray) -> np.ndarray:
        # the output size is checked once on activation (Backend._check_scale) against srkit.scale
        return np.stack([self._forward(item) for item in x])

    def _forward(self, chw: np.ndarray) -> np.ndarray:
        """One image on its own extractor. ncnn.Mat borrows `data`'s memory, so `data` stays referenced until the
        extractor has run; the output is copied before the extractor (and its allocator's blob) goes away."""
        ncnn = require("ncnn", extra="ncnn")
        data = np.ascontiguousarray(chw, dtype=np.float32)
        extractor = self.net.create_extractor()
        if extractor.input(self.input_blob, ncnn.Mat(data)) != 0:
            raise UnsupportedModelError(f"{self.model_path.name} has no input blob {self.input_blob!r}")
        status, mat = extractor.extract(self.output_blob)
        if status != 0:
            raise UnsupportedModelError(f"ncnn could not compute blob {self.output_blob!r} of "
                                        f"{self.model_path.name} (status {status})")
        out = np.array(mat, dtype=np.float32, copy=True)
        return out[None] if out.ndim == 2 else out  # a one-channel Mat may come back as H x W

    def _close(self) -> None:
        self.net.clear()  # every Mat from it was copied in _forward
        del self.net

    def describe(self) -> dict[str, Any]:
        precision = getattr(self, "precision", self.options.precision)
        return {**super().describe(), "precision": precision.value,
                "weights": self.info.extra.get("ncnn_weights", "as stored in the file"),
                "vulkan_device": getattr(self, "gpu", None)}
