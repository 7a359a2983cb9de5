"""Quantization-aware fine-tuning (`srkit quantize --qat`) on the bundled ESPCN x3: the all-int8 symmetric
Q/DQ structure, the int8 metadata, the budget against the ORIGINAL fp32 model, the refusals, and the runtime
running the result. A few steps keep it fast; the run that meets the 0.3 dB budget is marked slow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("torch")
pytest.importorskip("nncf")

from srkit.calibration import budget as B
from srkit.calibration.tensorrt import check_qdq
from srkit.cli.main import run
from srkit.data import HELD_OUT, data_path, held_out_images
from srkit.errors import InputError
from srkit.meta import Precision, read_model_info
from srkit.qat.data import refuse_validation_images
from srkit.qat.run import quantize_aware
from srkit.qat.settings import QatSettings

TINY = QatSettings(steps=8, batch=4, patch=24)


@pytest.fixture(scope="module")
def qat_int8(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("qat") / "espcn-qat.onnx"
    # a few steps do not reach 0.3 dB; this proves the pipeline and the bookkeeping, not the accuracy
    return quantize_aware("espcn-x3", out, settings=TINY, max_psnr_drop=3.0)


def test_every_conv_is_int8_with_symmetric_qdq_and_a_float_upsampler(qat_int8) -> None:
    model = onnx.load(str(qat_int8.path))
    graph = model.graph
    report = check_qdq(model)
    assert report.problems == [] and report.float_convs == []
    assert len(report.quantized_convs) == 3  # conv1..conv3: all-int8
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = inits[node.input[2]] if len(node.input) > 2 else np.zeros(1, np.int8)
            assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    d2s = [n for n in graph.node if n.op_type == "DepthToSpace"]
    assert len(d2s) == 1 and producer[d2s[0].input[0]].op_type == "Conv"
    assert next(a for a in d2s[0].attribute if a.name == "mode").s == b"CRD"


def test_the_input_is_centred_before_its_quantizer_and_the_rewrite_is_exact(qat_int8) -> None:
    """A symmetric int8 quantizer on a 0-1 input would use 128 of its levels; centred it uses 255."""
    import torch

    from srkit.models.loader import load_model
    from srkit.qat.train import centre_input_conv

    graph = onnx.load(str(qat_int8.path)).graph
    producer = {o: n for n in graph.node for o in n.output}
    first_conv = next(n for n in graph.node if n.op_type == "Conv")
    quantize = producer[producer[first_conv.input[0]].input[0]]
    assert quantize.op_type == "QuantizeLinear" and producer[quantize.input[0]].op_type == "Sub"
    model = load_model("espcn-x3").module.eval()
    centred = load_model("espcn-x3").module.eval()
    assert centre_input_conv(centred) == "conv1"
    x = torch.rand(1, 1, 23, 31)  # odd sizes: every border pixel is a padded one for some output
    with torch.no_grad():
        assert torch.allclose(centred(x), model(x), atol=1e-5)


def test_metadata_is_the_int8_metadata_with_method_qat(qat_int8, espcn_x3_onnx: Path) -> None:
    info = read_model_info(qat_int8.path)
    fp32 = read_model_info(espcn_x3_onnx)
    assert info.precision == Precision.INT8
    assert (info.arch, info.scale, info.color, info.source_sha256) == (fp32.arch, fp32.scale, fp32.color,
                                                                      fp32.source_sha256)
    extra = info.extra
    assert extra["quant_method"] == "qat" and extra["quant_backend"] == "ort"
    assert json.loads(extra["quant_float_layers"]) == []
    assert json.loads(extra["quant_qat"])["steps"] == TINY.steps
    assert extra["quant_validation"].split(",") == list(HELD_OUT)
    m = qat_int8.measurement
    assert float(extra["quant_psnr_drop_db"]) == pytest.approx(m.drop_db, abs=1e-3)


def test_budget_is_measured_against_the_original_fp32_model(qat_int8, espcn_x3_onnx: Path) -> None:
    info = read_model_info(espcn_x3_onnx)
    valid = B.validation_set(held_out_images(), info)
    ref = B.reference(espcn_x3_onnx, valid, info, "ort")
    m = qat_int8.measurement
    assert m.fp32_psnr_y == pytest.approx(ref.psnr_y, abs=1e-6)
    again = B.measure(qat_int8.path, ref, info, "ort")
    assert again.int8_psnr_y == pytest.approx(m.int8_psnr_y, abs=1e-6)
    assert m.drop_db <= 3.0 and m.int8_psnr_y > 30  # bicubic is 32.35 dB: int8 is a working upscaler


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_qat_model_runs_as_int8(qat_int8, backend: str, sample_rgb: np.ndarray) -> None:
    from srkit.runtime import Upscaler

    if backend not in Upscaler.available_backends():
        pytest.skip(f"{backend} is not installed")
    with Upscaler(qat_int8.path, backend=backend, precision="int8") as up:
        out = up.upscale(sample_rgb[:40, :50])
    assert out.shape == (120, 150, 3) and out.dtype == np.uint8


def test_outside_the_budget_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """No fine-tuning at all (0 steps): NNCF's all-int8 ESPCN x3 loses about 2.4 dB, far over 0.3 dB."""
    out = tmp_path / "refused.onnx"
    code = run(["quantize", "espcn-x3", "--qat", "--steps", "0", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "srkit: error:" in err and "misses the budget" in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_refuses_training_on_the_budget_photos(tmp_path: Path) -> None:
    shutil.copy(data_path("coffee.png"), tmp_path / "renamed.png")
    from srkit.calibration.dataset import read_folder

    with pytest.raises(InputError, match="coffee"):
        refuse_validation_images(read_folder(tmp_path), held_out_images())


def test_refuses_an_exported_onnx_and_ptq_options(espcn_x3_onnx: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    assert run(["quantize", str(espcn_x3_onnx), "--qat", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert run(["quantize", "espcn-x3", "--qat", "--method", "entropy"]) == 2
    assert run(["quantize", "espcn-x3", "--data", str(tmp_path)]) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_default_qat_brings_all_int8_espcn_x3_within_budget(tmp_path: Path) -> None:
    """The issue's target: every conv int8, within 0.3 dB of the fp32 model (the default budget)."""
    result = quantize_aware("espcn-x3", tmp_path / "espcn-x3-int8.onnx")
    assert result.measurement.drop_db <= 0.3 and result.kept_float == []
    assert check_qdq(result.path).float_convs == []
