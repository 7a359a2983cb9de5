"""The bench pieces: FLOP counting, the report's JSON schema, Markdown, plot, size presets, metric agreement.

Speed is never asserted here; `pytest bench/` is the benchmark suite.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from srkit import quality
from srkit.bench import metrics
from srkit.bench.dataset import load_pairs
from srkit.bench.report import Targets, check_targets, passes_gate, recommend, render_markdown, render_summary
from srkit.bench.roofline import count_flops, roofline
from srkit.bench.runner import (
    BenchConfig,
    find_int8_model,
    plan_variants,
    run_bench,
    size_for_output,
)
from srkit.errors import InputError
from srkit.meta import read_model_info
from srkit.runtime import Upscaler, registry

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _small_graph(path: Path) -> Path:
    """Conv 1->8 5x5, Tanh, Conv 8->4 3x3 (group 2), ConvTranspose 4->2 2x2 stride 2, DepthToSpace, Add."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 1, 5, 5)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((8,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal((4, 2, 2, 2)).astype(np.float32), "w3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[2, 2, 2, 2]),
        helper.make_node("Tanh", ["c1"], ["t1"]),
        helper.make_node("Conv", ["t1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=2),
        helper.make_node("ConvTranspose", ["c2", "w3"], ["c3"], strides=[2, 2]),
        helper.make_node("DepthToSpace", ["c3"], ["d"], blocksize=1, mode="CRD"),
        helper.make_node("Add", ["d", "d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_flop_count_matches_the_hand_count(tmp_path: Path) -> None:
    h, w = 12, 20
    count = count_flops(_small_graph(tmp_path / "g.onnx"), (h, w))
    conv1 = 2 * (8 * h * w) * (1 * 5 * 5)
    conv2 = 2 * (4 * h * w) * (4 * 3 * 3)  # group 2: each output sees Cin/group = 4 of the 8 channels
    deconv = 2 * (4 * h * w) * (2 * 2 * 2)  # each input pixel scatters Cout x k x k
    elementwise = 8 * h * w + 2 * (2 * h) * (2 * w)  # Tanh on c1, Add on the 2-channel 2h x 2w output
    assert count.conv == conv1 + conv2 + deconv
    assert count.minor == elementwise
    assert count.by_op["ConvTranspose"] == deconv
    assert not count.unknown


def test_flop_count_follows_a_pad_computed_inside_the_graph(tmp_path: Path) -> None:
    """Pad to a multiple of 4 computed from Shape(x) with Mod (as Real-CUGAN and the window-attention models
    do): onnx's inference alone loses the shapes after the Pad; the count evaluates the pads and finds them."""
    inits = [
        numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([2], np.int64), "two"), numpy_helper.from_array(np.array([4], np.int64), "four"),
        numpy_helper.from_array(np.array([4, 4], np.int64), "fours"),
        numpy_helper.from_array(np.zeros(6, np.int64), "zeros"),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "two", "four"], ["hw"]),
        helper.make_node("Mod", ["hw", "fours"], ["rest"]),
        helper.make_node("Sub", ["fours", "rest"], ["missing"]),
        helper.make_node("Mod", ["missing", "fours"], ["pad"]),
        helper.make_node("Concat", ["zeros", "pad"], ["pads"], axis=0),
        helper.make_node("Pad", ["x", "pads"], ["padded"], mode="reflect"),
        helper.make_node("Conv", ["padded", "w"], ["y"], pads=[1, 1, 1, 1]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, None, None])
    graph = helper.make_graph(nodes, "computed-pad", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "pad.onnx"))
    count = count_flops(tmp_path / "pad.onnx", (10, 13))  # padded to 12 x 16 inside
    assert not count.unknown
    assert count.conv == 2 * (8 * 12 * 16) * 9


def test_flop_count_of_a_window_attention_model_is_complete(tmp_path: Path) -> None:
    """SwinIR pads to its window inside the graph and reshapes by shapes taken deeper in: every layer is sized,
    and the count follows the padded size (37x53 and 40x56 pad to the same 40x56)."""
    pytest.importorskip("torch")
    from safetensors.torch import save_file

    from srkit.export import ExportOptions, export_model
    from srkit.models import registry

    params = {**registry.get("swinir").defaults, "in_channels": 3, "embed_dim": 12, "depths": [2], "num_heads": [2],
              "window_size": 8, "mlp_ratio": 2.0, "resi_connection": "1conv", "img_range": 1.0, "scale": 2,
              "upsampler": "pixelshuffle", "num_feat": 16}
    module = registry.get("swinir").build(params)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp_path / "s.safetensors"),
              metadata={"srkit.arch": "swinir", "srkit.params": json.dumps(params)})
    path = export_model(str(tmp_path / "s.safetensors"), tmp_path / "s.onnx", options=ExportOptions(verify=False)).path
    odd, even = count_flops(path, (37, 53)), count_flops(path, (40, 56))
    assert not odd.unknown and odd.by_op["MatMul"] > 0 and odd.by_op["Conv"] > 0
    assert odd.conv == pytest.approx(even.conv, rel=0.02)  # the convs before the pad see 37x53, the rest 40x56


def test_flop_count_of_the_bundled_espcn(espcn_x3_onnx: Path) -> None:
    info = read_model_info(espcn_x3_onnx)
    feat, feat2, cin, s = info.params["feat"], info.params["feat2"], info.in_channels, info.scale
    h, w = 30, 40
    macs_per_pixel = cin * feat * 25 + feat * feat2 * 9 + feat2 * cin * s * s * 9
    assert count_flops(espcn_x3_onnx, (h, w)).conv == 2 * macs_per_pixel * h * w


@pytest.mark.parametrize("int8", [False, True])
def test_peak_conv_probe_is_a_chain_whose_flops_the_counter_agrees_with(tmp_path: Path, int8: bool) -> None:
    """The conv probe amortizes the model-edge conversions over a chain of convs, as a real network does (see
    srkit.bench.roofline); its FLOPs are what count_flops says of it, and it runs."""
    import onnx
    import onnxruntime as ort

    from srkit.bench.roofline import PEAK_CONV, build_probes

    depth = PEAK_CONV[3]
    probe = build_probes(tmp_path, int8=int8)[0]
    model = onnx.load(str(probe.path))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == depth >= 4
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    assert all((producer.get(c.input[0]) == "DequantizeLinear") == int8 for c in convs)  # int8: Q/DQ before each
    assert count_flops(probe.path, probe.input_shape[2:]).conv == probe.flops
    x = np.random.default_rng(0).random(probe.input_shape, dtype=np.float32)
    y = ort.InferenceSession(str(probe.path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert y.shape == x.shape and np.isfinite(y).all()


def test_roofline_keys() -> None:
    from srkit.bench.roofline import Peak

    keys = roofline(2e9, 10.0, Peak(100.0, "conv", {"conv": 100.0}, "test"))
    assert keys["gflops"] == 2.0 and keys["achieved_gflops"] == 20.0
    assert keys["pct_of_peak"] == pytest.approx(20.0)
    assert roofline(2e9, None, None)["pct_of_peak"] is None


def test_size_presets() -> None:
    info = read_model_info_stub(scale=3)
    assert size_for_output(info, "1080p") == (640, 360)
    assert size_for_output(info, "720P") == (427, 240)
    assert size_for_output(info, "4k") == (1280, 720)
    assert size_for_output(info, "100x50") == (100, 50)
    for bad in ("big", "0x10", "10x", "-5x5"):
        with pytest.raises(InputError):
            size_for_output(info, bad)


def read_model_info_stub(scale: int):
    from srkit.meta import Color, ModelInfo

    return ModelInfo(arch="espcn", scale=scale, in_channels=1, color=Color.Y)


def test_every_backend_gets_every_precision_it_supports(espcn_x3_onnx: Path) -> None:
    info = read_model_info(espcn_x3_onnx)
    config = BenchConfig(model=espcn_x3_onnx, backends=Upscaler.available_backends(), precision="all")
    variants = plan_variants(config, info)
    by_backend: dict[str, set[str]] = {}
    for v in variants:
        by_backend.setdefault(v.backend, set()).add(v.precision)
    for backend in set(Upscaler.available_backends()) - {"ncnn"}:  # ncnn rows need an ncnn export of the model
        assert "fp32" in by_backend[backend]
    if "torch" in by_backend:  # eager bf16 only where the CPU computes it (PyTorch emulates it elsewhere)
        has_bf16 = "BF16" in registry.backend_class("torch").capabilities("cpu")
        assert ("bf16" in by_backend["torch"]) == has_bf16


def test_int8_siblings_are_found_per_backend(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    assert find_int8_model(model, "ort") is None
    (tmp_path / "m-int8-openvino.onnx").write_bytes(b"")
    (tmp_path / "m-int8.onnx").write_bytes(b"")
    assert find_int8_model(model, "openvino") == tmp_path / "m-int8-openvino.onnx"
    assert find_int8_model(model, "ort") == tmp_path / "m-int8.onnx"
    info = read_model_info_stub(scale=3)
    with pytest.raises(InputError, match="not found"):
        plan_variants(BenchConfig(model=model, backends=["ort"], int8_model=tmp_path / "nope.onnx"), info)


@pytest.fixture(scope="module")
def tiny_report(espcn_x3_onnx: Path) -> dict:
    """A real run on ONNX Runtime in a spawned process, tiny shapes and times."""
    config = BenchConfig(
        model=espcn_x3_onnx,
        backends=["ort"],
        precision="fp32",
        input_size=(48, 32),
        min_time_s=0.05,
        peak_min_time_s=0.05,
        threads=1,
    )
    return run_bench(config)


def test_report_schema(tiny_report: dict) -> None:
    report = json.loads(json.dumps(tiny_report, allow_nan=False))  # strict JSON: no NaN/Infinity
    assert {"model", "machine", "settings", "results"} <= set(report)
    assert report["model"]["scale"] == 3
    (r,) = report["results"]
    assert r["error"] is None
    assert (r["backend"], r["device"], r["precision"]) == ("ort", "cpu", "fp32")
    assert r["input_size"] == [48, 32]
    floats = [
        "fps",
        "e2e_fps",
        "compile_s",
        "peak_rss_mb",
        "psnr_y",
        "ssim_y",
        "bicubic_psnr_y",
        "parity_max_abs",
        "gflops",
        "achieved_gflops",
        "peak_gflops",
        "pct_of_peak",
        "e2e_ratio",
        "e2e_host_fps",
    ]
    assert r["e2e_path"] == "pipeline"  # ONNX Runtime runs the pipeline graph; the host path is measured beside it
    for key in floats:
        assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] >= 0, key
    assert r["fps"] > 0 and r["peak_gflops"] > 0 and r["peak_rss_mb"] > 0
    assert set(r["latency_ms"]) == {"p50", "p95"} and r["latency_ms"]["p95"] >= r["latency_ms"]["p50"]
    assert isinstance(r["nan_count"], int) and r["nan_count"] == 0
    # ORT fp32 against PyTorch fp32: the export gate's tolerance holds here too
    assert r["parity_max_abs"] <= quality.FP32_EXPORT_MAX_ABS
    assert r["parity_psnr_db"] is None or r["parity_psnr_db"] > 60
    assert r["achieved_gflops"] == pytest.approx(r["gflops"] * r["fps"], rel=0.01)
    assert report["settings"]["reference"] == "PyTorch fp32"


def test_psnr_y_agrees_with_the_metrics_module(tiny_report: dict, espcn_x3_onnx: Path) -> None:
    (r,) = tiny_report["results"]
    pairs = load_pairs(3)
    with Upscaler(espcn_x3_onnx, backend="ort") as up:
        psnrs = [metrics.psnr_y(up.upscale(p.lr), p.hr, 3) for p in pairs]
        bicubic = [metrics.psnr_y(__import__("srkit").imaging.upscale_uint8(p.lr, 3), p.hr, 3) for p in pairs]
    assert r["psnr_y"] == pytest.approx(float(np.mean(psnrs)), abs=1e-3)
    assert r["bicubic_psnr_y"] == pytest.approx(float(np.mean(bicubic)), abs=1e-3)


def test_markdown_and_summary_render(tiny_report: dict) -> None:
    md = render_markdown(tiny_report)
    lines = md.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| backend"))
    assert lines[header + 1].startswith("|---")
    row = lines[header + 2]
    assert row.startswith("| ort | cpu | fp32 |") and row.count("|") == lines[header].count("|")
    assert "peak RSS" in md and "Recommended here: **ort fp32**" in md
    summary = render_summary(tiny_report)
    assert "recommended here: ort fp32" in summary


def test_recommendation_respects_the_parity_gates(tiny_report: dict) -> None:
    report = json.loads(json.dumps(tiny_report))
    (base,) = report["results"]
    fast_bad = {**base, "precision": "int8", "fps": base["fps"] * 10, "parity_psnr_db": quality.INT8_GATE_DB - 5}
    fast_nan = {**base, "precision": "bf16", "fps": base["fps"] * 20, "nan_count": 3}
    report["results"] += [fast_bad, fast_nan]
    assert not passes_gate(report, fast_bad) and not passes_gate(report, fast_nan)
    assert recommend(report)["precision"] == "fp32"
    fast_bad["parity_psnr_db"] = quality.INT8_GATE_DB + 1
    assert recommend(report)["precision"] == "int8"
    # a PSNR-trained model: the int8 row must also keep PSNR-Y within the budget of fp32
    assert report["settings"]["max_psnr_drop_db"] == 0.3
    fast_bad["psnr_y"] = base["psnr_y"] - 0.31
    assert not passes_gate(report, fast_bad) and recommend(report)["precision"] == "fp32"
    fast_bad["psnr_y"] = base["psnr_y"] - 0.29
    assert recommend(report)["precision"] == "int8"


def test_targets_say_what_was_met_and_by_how_much_each_was_missed(tiny_report: dict) -> None:
    report = json.loads(json.dumps(tiny_report))
    (ort,) = report["results"]
    torch_row = {**ort, "backend": "torch", "fps": ort["fps"] / 4, "e2e_fps": ort["e2e_fps"] / 4}
    report["results"].append(torch_row)
    wanted = Targets(fps=ort["fps"] * 2, e2e_fps=ort["e2e_fps"] / 2, speedup=4.0, pct_of_peak=ort["pct_of_peak"] + 1)
    verdicts = {v["target"]: v for v in check_targets(report, wanted)}
    fps, e2e = verdicts["model-call fps"], verdicts["end-to-end fps"]
    assert not fps["met"] and fps["ratio"] == pytest.approx(0.5) and fps["by"] == "ort fp32"
    assert e2e["met"] and e2e["measured"] == ort["e2e_fps"]
    assert verdicts["x PyTorch eager fp32"]["measured"] == pytest.approx(4.0)
    assert not verdicts["% of fp32 peak"]["met"]
    report["targets"] = list(verdicts.values())
    assert "model-call fps >=" in render_markdown(report) and "MISSED (0.50 of the target)" in render_summary(report)
    # no deployable result at all: the verdict says so instead of failing
    report["results"] = [torch_row]
    (only,) = check_targets(report, Targets(fps=1.0))
    assert only["measured"] is None and not only["met"] and only["by"] == "no deployable result"


def test_plot_is_a_png(tiny_report: dict, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from srkit.bench.plot import write_plot

    out = write_plot(tiny_report, tmp_path / "r.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*part*"))  # written atomically


def test_cli_rejects_a_bad_size(espcn_x3_onnx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from srkit.cli.main import run

    assert run(["bench", "-m", str(espcn_x3_onnx), "--size", "huge"]) == 2
    assert "srkit: error: --size" in capsys.readouterr().err
    assert run(["bench", "-m", str(espcn_x3_onnx), "--int8-model", "no-such-int8.onnx"]) == 2
    assert "srkit: error: --int8-model no-such-int8.onnx not found" in capsys.readouterr().err


def test_the_int8_peak_probe_runs_integer_convolutions_in_a_chain(tmp_path: Path) -> None:
    """The conv probe is a chain (a lone conv pays the layout reorder at the graph's edges in full: OpenVINO bf16
    read 292 GFLOP/s on one conv and 431 on four, below what Real-ESRGAN x4plus reached), and its int8 form
    quantizes every conv's output, without which ONNX Runtime runs the convs in float (no QLinearConv)."""
    import onnx
    import onnxruntime as ort

    from srkit.bench.roofline import PEAK_CONV, build_probes

    c, h, w, depth = PEAK_CONV
    conv = build_probes(tmp_path, int8=True)[0]
    assert depth > 1 and conv.flops == 2.0 * c * c * 9 * h * w * depth
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(conv.path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") == depth and "Conv" not in ops, ops
