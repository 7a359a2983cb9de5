"""int8 quantization end to end on the bundled ESPCN x3: ORT QDQ, OpenVINO (NNCF), the TensorRT Q/DQ model,
the PSNR budget, metadata, atomic writes, and `--precision int8` in the runtime. Few, small calibration
patches keep it fast; speed is measured in the notes, never asserted here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from srkit._system import has_int8_dot_product
from srkit.calibration import quantize
from srkit.calibration.budget import BudgetMode, default_mode, sensitive_candidates
from srkit.calibration.tensorrt import check_qdq
from srkit.cli.main import run
from srkit.data import HELD_OUT
from srkit.errors import InputError, ParityError
from srkit.meta import Precision, read_model_info

FAST = {"samples": 8, "patch": 32}


@pytest.fixture(scope="module")
def ort_int8(espcn_x3_onnx: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("q") / "espcn-int8.onnx"
    return quantize(espcn_x3_onnx, out, backend="ort", max_psnr_drop=0.3, **FAST)


def test_ort_int8_meets_the_budget_and_records_it(ort_int8) -> None:
    info = read_model_info(ort_int8.path)
    assert info.precision == Precision.INT8
    m = ort_int8.measurement
    assert m.drop_db <= 0.3 and np.isfinite(m.fp32_psnr_y) and np.isfinite(m.int8_psnr_y)
    assert info.extra["quant_method"] == "minmax" and info.extra["quant_samples"] == "8"
    assert float(info.extra["quant_psnr_drop_db"]) == pytest.approx(m.drop_db, abs=1e-3)
    assert json.loads(info.extra["quant_float_layers"]) == ort_int8.kept_float
    assert set(ort_int8.validation) == set(HELD_OUT)  # no held-out photo calibrates the built-in run
    ops = [n.op_type for n in onnx.load(str(ort_int8.path)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_int8_model_runs_with_precision_int8(ort_int8, backend: str, sample_rgb: np.ndarray) -> None:
    from srkit.runtime import Upscaler

    if backend not in Upscaler.available_backends():
        pytest.skip(f"{backend} is not installed")
    with Upscaler(ort_int8.path, backend=backend, precision="int8") as up:
        out = up.upscale(sample_rgb[:40, :50])
    assert out.shape == (120, 150, 3) and out.dtype == np.uint8


def test_fp32_model_refuses_int8_on_ort(espcn_x3_onnx: Path) -> None:
    from srkit.runtime import Upscaler

    up = Upscaler(espcn_x3_onnx, backend="ort", precision="int8")
    with pytest.raises(InputError, match="quantize"), up:
        up.upscale(np.zeros((8, 8, 3), np.uint8))


def test_tensorrt_qdq_model_is_symmetric_with_float_upsampler(espcn_x3_onnx: Path, tmp_path: Path) -> None:
    result = quantize(espcn_x3_onnx, tmp_path / "trt.onnx", backend="trt", **FAST)
    model = onnx.load(str(result.path))
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:  # every zero point is 0 and activations/weights are signed int8
        zp = inits[node.input[2]]
        assert not zp.any(), node.name
        assert zp.dtype == (np.int32 if node.input[0].endswith("bias_quantized") else np.int8), node.name
    convs = [n for n in graph.node if n.op_type == "Conv"]
    quantized = [c for c in convs
                 if all(i in producer and producer[i].op_type == "DequantizeLinear" for i in c.input[:2])]
    assert len(quantized) == len(convs) - len(result.kept_float) >= 1
    d2s = [n for n in graph.node if n.op_type == "DepthToSpace"]
    assert d2s and all(producer[n.input[0]].op_type == "Conv" for n in d2s)  # no Q/DQ into the upsampler
    assert not any(producer.get(i) is not None and producer[i].op_type == "QuantizeLinear"
                   for n in d2s for i in n.input)
    assert check_qdq(model).problems == []


def test_openvino_int8_espcn_meets_the_default_budget(espcn_x3_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    # issue 6's budget with the default calibration (64 patches of the ten built-in calibration photos),
    # measured on the six held-out photos: global min/max activation ranges and full bias correction keep
    # ESPCN x3 within 0.3 dB with conv2 (81% of the MACs) in int8 (measured: 0.21 dB, conv1 and conv3 float)
    result = quantize(espcn_x3_onnx, tmp_path / "ov.onnx", backend="openvino")
    assert result.budget.max_drop_db == 0.3 and result.measurement.drop_db <= 0.3
    assert result.validation == list(HELD_OUT)
    assert "/conv2/Conv" not in result.kept_float
    assert check_qdq(result.path).float_convs == result.kept_float


def test_openvino_int8_with_a_residual_layer_in_float_records_its_bias_correction(tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    torch = pytest.importorskip("torch")
    from srkit.calibration.dataset import calibration_dataset
    from srkit.calibration.openvino import NncfMethod, quantize_nncf
    from srkit.export import export_model
    from srkit.models import registry

    # RRDBNet's conv_first feeds a residual: NNCF's full bias correction fails on it (a KeyError inside
    # NNCF), so srkit falls back to the fast correction and says so in the model
    params = {"in_channels": 3, "out_channels": 3, "num_feat": 8, "num_block": 1, "num_grow_ch": 4, "scale": 4}
    torch.manual_seed(0)
    torch.save(registry.get("rrdbnet").build(params).state_dict(), tmp_path / "tiny.pth")
    model = export_model(str(tmp_path / "tiny.pth"), tmp_path / "tiny.onnx").path
    data = calibration_dataset(None, read_model_info(model), samples=4, patch=32)
    out = tmp_path / "q.onnx"
    quantize_nncf(model, out, data, method=NncfMethod.PERFORMANCE, nodes_to_exclude=["/conv_first/Conv"])
    assert read_model_info(out).extra["quant_bias_correction"].startswith(("full", "fast"))
    assert "/conv_first/Conv" in check_qdq(out).float_convs
    # dense blocks concatenate int8 tensors: OpenVINO runs the written model as ONNX Runtime does
    ov = pytest.importorskip("openvino")
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(0).random((1, 3, 24, 24), dtype=np.float32)
    expected = ort.InferenceSession(str(out)).run(None, {"input": x})[0]
    got = ov.Core().compile_model(str(out), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    # without VNNI/AMX, OpenVINO's int8 kernels saturate pairs of u8 x s8 products in int16 (measured on an AVX2
    # AMD EPYC: 0.037); with them it agrees with ONNX Runtime to 0.02
    assert np.abs(got - expected).max() < (0.02 if has_int8_dot_product() else 0.05)


def _concat_then_conv(channels: tuple[int, int], rng: np.random.Generator) -> Any:
    """Two int8 Q/DQ activations (zero point 0, NNCF's symmetric scheme) -> Concat -> Conv with int8 weights:
    the pattern of every dense block."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    for name in ("a", "b"):
        inits += [numpy_helper.from_array(np.array(0.03, np.float32), f"{name}_s"),
                  numpy_helper.from_array(np.array(0, np.int8), f"{name}_z")]
        nodes += [helper.make_node("QuantizeLinear", [name, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
                  helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"])]
    weights = rng.normal(0, 0.05, (32, sum(channels), 3, 3)).astype(np.float32)
    scale = (np.abs(weights).max(axis=(1, 2, 3)) / 127).astype(np.float32)
    inits += [numpy_helper.from_array(np.round(weights / scale[:, None, None, None]).astype(np.int8), "wq"),
              numpy_helper.from_array(scale, "ws"), numpy_helper.from_array(np.zeros(32, np.int8), "wz")]
    nodes += [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
              helper.make_node("Concat", ["a_dq", "b_dq"], ["cat"], axis=1),
              helper.make_node("Conv", ["cat", "w"], ["y"], pads=[1, 1, 1, 1])]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, c, 20, 20])
              for name, c in zip("ab", channels, strict=True)]
    graph = helper.make_graph(nodes, "dense", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                     [1, 32, 20, 20])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_int8_concat_inputs_are_stored_unsigned_for_openvino(tmp_path: Path) -> None:
    """OpenVINO 2026.4's CPU plugin gets Conv(Concat(int8, int8)) wrong; uint8 with zero point 128 holds the same
    numbers and it gets those right. The rewrite must change nothing for ONNX Runtime."""
    import onnx

    ov = pytest.importorskip("openvino")
    ort = pytest.importorskip("onnxruntime")
    from srkit.calibration.openvino import unsigned_concat_inputs

    rng = np.random.default_rng(0)
    model = _concat_then_conv((64, 32), rng)
    before = tmp_path / "before.onnx"
    onnx.save(model, str(before))
    assert unsigned_concat_inputs(model) == 2
    after = tmp_path / "after.onnx"
    onnx.save(model, str(after))
    feed = {"a": rng.normal(0, 1, (1, 64, 20, 20)).astype(np.float32),
            "b": rng.normal(0, 1, (1, 32, 20, 20)).astype(np.float32)}
    reference = ort.InferenceSession(str(before)).run(None, feed)[0]
    np.testing.assert_array_equal(ort.InferenceSession(str(after)).run(None, feed)[0], reference)
    def openvino_error(path: Path) -> float:
        got = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feed)[0]
        return float(np.abs(got - reference).max() / np.abs(reference).max())

    if has_int8_dot_product():
        assert openvino_error(after) < 1e-3
    else:  # AVX2 only: int16 saturation in OpenVINO's u8 x s8 kernel spoils both forms (measured 6 % and 28 %)
        assert openvino_error(after) < openvino_error(before)
    assert {i.data_type for i in model.graph.initializer if i.name.endswith("_z_uint8")} == {onnx.TensorProto.UINT8}


def test_openvino_nncf_layer_search_meets_a_budget(espcn_x3_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    # a small calibration set makes the all-int8 attempt fail (measured 0.74 dB), so this exercises the
    # measured layer search (conv1 alone in float: 0.37 dB; conv1 and conv3: 0.26 dB)
    result = quantize(espcn_x3_onnx, tmp_path / "ov.onnx", backend="openvino", max_psnr_drop=0.3, **FAST)
    assert result.measurement.drop_db <= 0.3
    assert 0 < len(result.kept_float) < 3
    assert not result.log.attempts[0].held  # the all-int8 attempt came first and failed
    info = read_model_info(result.path)
    assert info.precision == Precision.INT8 and info.extra["quant_backend"] == "openvino"
    # each layer the search kept in float is really float in the written graph
    assert set(result.kept_float) <= set(check_qdq(result.path).float_convs)


def test_unmeetable_budget_fails_with_numbers_and_writes_nothing(espcn_x3_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "never.onnx"
    with pytest.raises(ParityError) as err:
        quantize(espcn_x3_onnx, out, backend="ort", budget_mode="parity", min_parity_db=150.0,
                 max_float_layers=1, **FAST)
    text = str(err.value)
    assert "parity with fp32 >= 150 dB" in text and "float [none]" in text and "/conv" in text
    assert "dB" in text and "no model written" in text
    assert list(tmp_path.iterdir()) == []  # no half-written model, no temp file


def test_gan_archs_default_to_parity_and_candidates_are_convs(espcn_x3_onnx: Path) -> None:
    info = read_model_info(espcn_x3_onnx)
    assert default_mode(info) == BudgetMode.GROUND_TRUTH
    info.extra["gan_trained"] = "true"  # what the export records for srvgg and rrdbnet
    assert default_mode(info) == BudgetMode.PARITY
    del info.extra["gan_trained"]  # a model exported before srkit.gan_trained: its architecture decides
    info.arch = "srvgg"
    assert default_mode(info) == BudgetMode.PARITY
    names = sensitive_candidates(espcn_x3_onnx)
    assert names[0] == "/conv3/Conv" and "/conv1/Conv" in names  # the conv feeding DepthToSpace first


def test_cli_quantize_reports_and_fails_cleanly(espcn_x3_onnx: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(["quantize", str(espcn_x3_onnx), "--calib", str(empty), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "srkit: error: calibration folder" in capsys.readouterr().err
    gray = tmp_path / "gray"
    gray.mkdir()
    from PIL import Image

    Image.fromarray(np.full((40, 40), 99, np.uint8)).save(gray / "g.png")
    out = tmp_path / "y.onnx"
    rc = run(["quantize", str(espcn_x3_onnx), "--calib", str(gray), "-o", str(out), "--samples", "4",
              "--patch", "16", "--max-psnr-drop", "5"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "1 gray" in captured.out and "drop" in captured.out and out.is_file()


@pytest.mark.slow
def test_openvino_accuracy_control_meets_the_budget(espcn_x3_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    result = quantize(espcn_x3_onnx, tmp_path / "ac.onnx", backend="openvino", method="accuracy-control",
                      max_psnr_drop=1.5, samples=16, patch=48)
    assert result.method == "accuracy-control" and result.measurement.drop_db <= 1.5
    assert read_model_info(result.path).extra["quant_method"] == "accuracy-control"


@pytest.mark.gpu
@pytest.mark.trt
def test_tensorrt_runs_the_qdq_model(espcn_x3_onnx: Path, tmp_path: Path, sample_rgb: np.ndarray) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT needs an NVIDIA GPU; the Q/DQ structure is tested above")
    from srkit.runtime import Upscaler

    result = quantize(espcn_x3_onnx, tmp_path / "trt.onnx", backend="trt", **FAST)
    with Upscaler(result.path, backend="trt", device="cuda", precision="int8") as up:
        out = up.upscale(sample_rgb[:40, :50])
    assert out.shape == (120, 150, 3)


@pytest.mark.parametrize(("backend", "method"),
                         [("ort", "entropy"), ("ort", "percentile"), ("trt", "percentile")])
def test_histogram_calibrators(espcn_x3_onnx: Path, tmp_path: Path, backend: str, method: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    result = quantize(espcn_x3_onnx, tmp_path / "m.onnx", backend=backend, method=method, **FAST)
    assert result.measurement.holds(result.budget)
    assert read_model_info(result.path).extra["quant_method"] == method
    assert capsys.readouterr().out == ""  # ORT's calibrator chatter stays out of stdout


def test_unknown_method_is_an_input_error(espcn_x3_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="choose one of: performance, mixed, accuracy-control"):
        quantize(espcn_x3_onnx, tmp_path / "x.onnx", backend="openvino", method="entropy")
    assert not (tmp_path / "x.onnx").exists()
