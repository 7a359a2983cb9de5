"""One contract, every backend: each installed backend must pass the same checks (after NNCF's test templates,
tests/cross_fw/test_templates/: an abstract class with hooks, one subclass per backend).

Hooks a subclass sets: `backend`, `device` (where it runs: TensorRT needs "cuda"), `reference_backend` (what its
output is compared with: never itself; the PyTorch module for the ONNX runtimes, ONNX Runtime for PyTorch) and
pytest marks. Every check runs on a Y-channel model (the bundled ESPCN x3) and an RGB model (a small random
SRVGGNetCompact x2 exported here). A backend that is not installed, or lacks the device, is skipped with the
reason; nothing is mocked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from srkit import imaging
from srkit.errors import BackendUnavailableError, InputError
from srkit.quality import FLOAT_GATE_DB, parity
from srkit.runtime import Upscaler
from srkit.runtime import registry as backends

AGREEMENT_DB = 50.0  # uint8 outputs of two fp32 runtimes: at most an occasional rounding step apart
THREADS, CALLS = 8, 10


@dataclass(frozen=True)
class ContractModel:
    kind: str  # "y" or "rgb"
    path: Path
    arch: str
    scale: int


@pytest.fixture(scope="session")
def srvgg_x2_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SRVGGNetCompact x2 with random weights, exported from a checkpoint (an RGB model)."""
    torch = pytest.importorskip("torch")
    from srkit.export import export_model
    from srkit.models import registry

    torch.manual_seed(0)
    params = {"in_channels": 3, "out_channels": 3, "num_feat": 8, "num_conv": 2, "act_type": "prelu", "scale": 2}
    module = registry.get("srvgg").build(params)
    with torch.no_grad():  # a small residual over the nearest-upsampled input, as a trained model adds
        last = [m for m in module.body if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.mul_(0.05)
        last.bias.zero_()
    folder = tmp_path_factory.mktemp("srvgg")
    checkpoint = folder / "srvgg-x2.pth"
    torch.save(module.state_dict(), checkpoint)
    path = folder / "srvgg-x2.onnx"
    export_model(str(checkpoint), path)
    return path


@pytest.fixture(scope="session", params=["y", "rgb"])
def contract_model(request: pytest.FixtureRequest) -> ContractModel:
    if request.param == "y":
        return ContractModel("y", request.getfixturevalue("espcn_x3_onnx"), "espcn", 3)
    return ContractModel("rgb", request.getfixturevalue("srvgg_x2_onnx"), "srvgg", 2)


def skip_unless_runs(backend: str, device: str) -> None:
    if backend not in backends.available():
        pytest.skip(f"backend {backend} is not installed")
    devices = backends.backend_class(backend).devices()
    if device.split(":")[0] not in devices:
        pytest.skip(f"backend {backend} has no device {device!r} here (it has: {', '.join(devices)})")


class UpscalerContract:
    backend: ClassVar[str]
    device: ClassVar[str] = "cpu"
    reference_backend: ClassVar[str] = "torch"
    reference_device: ClassVar[str] = "cpu"

    @pytest.fixture(scope="class")
    @classmethod
    def up(cls, contract_model: ContractModel) -> Iterator[Upscaler]:
        skip_unless_runs(cls.backend, cls.device)
        with Upscaler(contract_model.path, backend=cls.backend, device=cls.device, precision="fp32",
                      threads=2) as upscaler:
            yield upscaler

    @pytest.fixture(scope="class")
    @classmethod
    def reference(cls, contract_model: ContractModel) -> Iterator[Upscaler]:
        assert cls.reference_backend != cls.backend, "a backend cannot be its own reference"
        skip_unless_runs(cls.reference_backend, cls.reference_device)
        with Upscaler(contract_model.path, backend=cls.reference_backend, device=cls.reference_device,
                      precision="fp32") as upscaler:
            yield upscaler

    def test_reads_scale_from_metadata(self, up: Upscaler, contract_model: ContractModel) -> None:
        assert up.scale == contract_model.scale and up.info.arch == contract_model.arch

    @pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
    def test_rgb_keeps_dtype_and_scales(self, up: Upscaler, sample_rgb: np.ndarray, dtype: type) -> None:
        image = sample_rgb.astype(np.float32) / 255.0
        image = image if dtype is np.float32 else (image * np.iinfo(dtype).max).round().astype(dtype)
        out = up.upscale(image)
        assert out.dtype == dtype and out.shape == (150 * up.scale, 200 * up.scale, 3)

    def test_gray_stays_gray(self, up: Upscaler, sample_rgb: np.ndarray) -> None:
        gray = sample_rgb[..., 1]
        out = up.upscale(gray)
        assert out.shape == (150 * up.scale, 200 * up.scale) and out.dtype == np.uint8
        assert up.upscale(gray[..., None]).shape == (150 * up.scale, 200 * up.scale, 1)

    def test_alpha_is_kept(self, up: Upscaler, sample_rgb: np.ndarray) -> None:
        rgba = np.dstack([sample_rgb, np.full(sample_rgb.shape[:2], 255, np.uint8)])
        rgba[:, :50, 3] = 0
        out = up.upscale(rgba)
        edge = 50 * up.scale
        assert out.shape == (150 * up.scale, 200 * up.scale, 4)
        assert (out[:, : edge - 10, 3] == 0).all() and (out[:, edge + 10 :, 3] == 255).all()

    def test_agrees_with_the_reference(self, up: Upscaler, reference: Upscaler, sample_rgb: np.ndarray) -> None:
        out = up.upscale(sample_rgb)
        ref = reference.upscale(sample_rgb)
        psnr, _ = parity(out.astype(np.float64) / 255, ref.astype(np.float64) / 255)
        assert psnr >= AGREEMENT_DB, f"{self.backend} vs {self.reference_backend}: {psnr:.1f} dB"

    def test_looks_like_the_photo(self, up: Upscaler, sample_rgb: np.ndarray) -> None:
        """The upscaled image, shrunk back, is close to the input (it is the photo, not noise)."""
        out = up.upscale(sample_rgb)
        back = imaging.downscale_uint8(out, up.scale)
        assert np.abs(back.astype(int) - sample_rgb.astype(int)).mean() < 3.0

    def test_odd_sizes(self, up: Upscaler, sample_rgb: np.ndarray) -> None:
        s = up.scale
        assert up.upscale(sample_rgb[:7, :13]).shape == (7 * s, 13 * s, 3)
        assert up.upscale(sample_rgb[:1, :1]).shape == (s, s, 3)

    def test_rejects_bad_input(self, up: Upscaler) -> None:
        with pytest.raises(InputError):
            up.upscale(np.zeros((0, 4, 3), np.uint8))
        with pytest.raises(InputError):
            up.upscale(np.zeros((4, 4, 2), np.uint8))
        with pytest.raises(InputError):
            up.upscale(np.zeros((4, 4, 3), np.int64))

    def test_reports_what_ran(self, up: Upscaler) -> None:
        described = up.describe()
        assert described["backend"] == self.backend
        assert described["precision"] == "fp32"  # never a silent bf16 (docs/background.md, 6)

    def test_one_upscaler_serves_many_threads(self, up: Upscaler, sample_rgb: np.ndarray) -> None:
        """8 threads x 10 calls on one shared Upscaler, each thread its own image (two shapes): every result
        equals the single-threaded result for that image."""
        images = [np.ascontiguousarray(sample_rgb[5 * i : 5 * i + 24 + 6 * (i % 2), 9 * i : 9 * i + 32])
                  for i in range(THREADS)]
        expected = [up.upscale(image) for image in images]
        start = threading.Barrier(THREADS)

        def work(i: int) -> list[np.ndarray]:
            start.wait()  # all threads call at once
            return [up.upscale(images[i]) for _ in range(CALLS)]

        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(work, range(THREADS)))
        for i, outputs in enumerate(results):
            for call, out in enumerate(outputs):
                assert np.array_equal(out, expected[i]), f"thread {i}, call {call}: another image's result"


class TestOrt(UpscalerContract):
    backend = "ort"


@pytest.mark.openvino
class TestOpenVINO(UpscalerContract):
    backend = "openvino"


class TestTorch(UpscalerContract):
    backend = "torch"
    reference_backend = "ort"


@pytest.mark.gpu
@pytest.mark.trt
class TestTensorRT(UpscalerContract):
    backend = "trt"
    device = "cuda"


def test_every_registered_backend_runs_the_contract() -> None:
    """A backend is one file, one registry line, one extra and one contract subclass (README, "Adding a backend"):
    a registered backend without a subclass of UpscalerContract somewhere in tests/ fails here."""
    import ast

    covered = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", "") == "UpscalerContract" for b in node.bases):
                covered |= {stmt.value.value for stmt in node.body if isinstance(stmt, ast.Assign)
                            and any(getattr(t, "id", "") == "backend" for t in stmt.targets)
                            and isinstance(stmt.value, ast.Constant)}
    assert set(backends.names()) <= covered, f"no contract subclass for {set(backends.names()) - covered}"


def test_available_backends_lists_installed_ones() -> None:
    found = Upscaler.available_backends()
    assert "ort" in found
    assert set(found) <= set(backends.names())


def test_unknown_backend_and_missing_device_are_errors(espcn_x3_onnx: Path) -> None:
    with pytest.raises(InputError, match="unknown backend"):
        Upscaler(espcn_x3_onnx, backend="tflite")
    with pytest.raises(BackendUnavailableError, match="available"):
        Upscaler(espcn_x3_onnx, backend="ort", device="cuda").backend.activate()


def test_ort_refuses_a_precision_the_model_does_not_have(espcn_x3_onnx: Path) -> None:
    with pytest.raises(InputError, match="fp16"):
        Upscaler(espcn_x3_onnx, backend="ort", precision="fp16").backend.activate()


@pytest.mark.openvino
def test_openvino_precision_is_explicit(espcn_x3_onnx: Path, sample_rgb: np.ndarray) -> None:
    if "openvino" not in backends.available():
        pytest.skip("openvino is not installed")
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in caps:
        pytest.skip(f"this CPU has no bf16 ({caps})")
    with Upscaler(espcn_x3_onnx, backend="openvino", precision="bf16") as up:
        assert up.describe()["precision"] == "bf16"
        low = up.upscale(sample_rgb).astype(np.float64) / 255
    with Upscaler(espcn_x3_onnx, backend="ort") as fp32:
        ref = fp32.upscale(sample_rgb).astype(np.float64) / 255
    assert parity(low, ref)[0] >= FLOAT_GATE_DB  # bf16 is judged by the float gate


def test_runtime_needs_an_exported_model(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="srkit export"):
        Upscaler("espcn-x3")
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a readable ONNX"):
        Upscaler(fake)
