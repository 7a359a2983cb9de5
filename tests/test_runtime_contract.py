"""One contract, every backend: each installed backend must pass the same checks (NNCF-style test template).

A backend that is not installed is skipped with the reason; nothing is mocked.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from srkit.bench.metrics import parity
from srkit.errors import BackendUnavailableError, InputError
from srkit.runtime import Upscaler
from srkit.runtime import registry as backends


def _reference(model: Path, image: np.ndarray) -> np.ndarray:
    with Upscaler(model, backend="ort") as up:
        return up.upscale(image)


class UpscalerContract:
    backend: ClassVar[str]

    @pytest.fixture(scope="class")
    @classmethod
    def up(cls, espcn_x3_onnx: Path):  # type: ignore[no-untyped-def]
        if cls.backend not in backends.available():
            pytest.skip(f"backend {cls.backend} is not installed")
        with Upscaler(espcn_x3_onnx, backend=cls.backend, precision="fp32", threads=2) as upscaler:
            yield upscaler

    def test_reads_scale_from_metadata(self, up: Upscaler) -> None:
        assert up.scale == 3 and up.info.arch == "espcn"

    @pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
    def test_rgb_keeps_dtype_and_scales(self, up: Upscaler, sample_rgb: np.ndarray, dtype: type) -> None:
        image = sample_rgb.astype(np.float32) / 255.0
        image = image if dtype is np.float32 else (image * np.iinfo(dtype).max).round().astype(dtype)
        out = up.upscale(image)
        assert out.dtype == dtype and out.shape == (450, 600, 3)

    def test_gray_stays_gray(self, up: Upscaler, sample_rgb: np.ndarray) -> None:
        gray = sample_rgb[..., 1]
        out = up.upscale(gray)
        assert out.shape == (450, 600) and out.dtype == np.uint8
        assert up.upscale(gray[..., None]).shape == (450, 600, 1)

    def test_alpha_is_kept(self, up: Upscaler, sample_rgb: np.ndarray) -> None:
        rgba = np.dstack([sample_rgb, np.full(sample_rgb.shape[:2], 255, np.uint8)])
        rgba[:, :50, 3] = 0
        out = up.upscale(rgba)
        assert out.shape == (450, 600, 4)
        assert (out[:, :140, 3] == 0).all() and (out[:, 160:, 3] == 255).all()

    def test_agrees_with_onnx_runtime(self, up: Upscaler, espcn_x3_onnx: Path, sample_rgb: np.ndarray) -> None:
        out = up.upscale(sample_rgb).astype(np.float64) / 255
        ref = _reference(espcn_x3_onnx, sample_rgb).astype(np.float64) / 255
        psnr, _ = parity(out, ref)
        assert psnr >= 50.0

    def test_looks_like_the_photo(self, up: Upscaler, sample_rgb: np.ndarray) -> None:
        """The upscaled image, shrunk back, is close to the input (it is the photo, not noise)."""
        from srkit import imaging

        out = up.upscale(sample_rgb)
        back = imaging.downscale_uint8(out, 3)
        assert np.abs(back.astype(int) - sample_rgb.astype(int)).mean() < 3.0

    def test_odd_sizes(self, up: Upscaler, sample_rgb: np.ndarray) -> None:
        assert up.upscale(sample_rgb[:7, :13]).shape == (21, 39, 3)
        assert up.upscale(sample_rgb[:1, :1]).shape == (3, 3, 3)

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
        assert described["precision"] == "fp32"  # never a silent bf16 (FIELD-NOTES #6)


class TestOrt(UpscalerContract):
    backend = "ort"


class TestOpenVINO(UpscalerContract):
    backend = "openvino"


class TestTorch(UpscalerContract):
    backend = "torch"


class TestTensorRT(UpscalerContract):
    backend = "trt"


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
    ref = _reference(espcn_x3_onnx, sample_rgb).astype(np.float64) / 255
    assert parity(low, ref)[0] >= 35.0


def test_runtime_needs_an_exported_model(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="srkit export"):
        Upscaler("espcn-x3")
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a readable ONNX"):
        Upscaler(fake)
