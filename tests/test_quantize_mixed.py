"""The block search for models with many convs (srkit.calibration.mixed): grouping from node names, Q/DQ
surgery that puts a group back in float, and the search under a budget, on a tiny RRDBNet (2 RRDBs, 8
features, seeded random weights) exported with srkit's exporter. Real ORT / OpenVINO sessions throughout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

from srkit.calibration import budget as B
from srkit.calibration.dataset import calibration_dataset
from srkit.calibration.mixed import (
    GREEDY_MAX_CONVS,
    ConvGroup,
    GroupError,
    SearchStrategy,
    bisect_prefix,
    conv_groups,
    float_convs,
    keep_float,
    predicted_prefix,
)
from srkit.cli.main import run
from srkit.errors import InputError
from srkit.meta import Precision, read_model_info

ort = pytest.importorskip("onnxruntime")
TINY = {"in_channels": 3, "out_channels": 3, "num_feat": 8, "num_block": 2, "num_grow_ch": 4, "scale": 4}
FAST = {"samples": 4, "patch": 32}


def _export(tmp: Path, arch: str, params: dict[str, Any]) -> Path:
    torch = pytest.importorskip("torch")
    from srkit.export import export_model
    from srkit.models import registry

    torch.manual_seed(0)
    torch.save(registry.get(arch).build(params).state_dict(), tmp / f"{arch}.pth")
    return export_model(str(tmp / f"{arch}.pth"), tmp / f"{arch}.onnx").path


@pytest.fixture(scope="module")
def tiny_rrdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("tiny"), "rrdbnet", TINY)


def _quantized(model: Path, out: Path, backend: str) -> Path:
    data = calibration_dataset(None, read_model_info(model), seed=0, **FAST)
    if backend == "openvino":
        pytest.importorskip("nncf")
        from srkit.calibration.openvino import NncfMethod, quantize_nncf

        quantize_nncf(model, out, data, method=NncfMethod.PERFORMANCE)
    else:
        from srkit.calibration.ort import CalibrationMethod, quantize_ort

        quantize_ort(model, out, data, method=CalibrationMethod.MINMAX, symmetric=backend == "trt")
    return out


def test_blocks_of_an_rrdbnet_come_from_its_node_names(tiny_rrdb: Path) -> None:
    model = onnx.load(str(tiny_rrdb))
    groups = {g.name: g for g in conv_groups(model)}
    dense = [f"body/body.{b}/rdb{r}" for b in range(2) for r in (1, 2, 3)]
    tail = ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    assert list(groups) == ["conv_first", *dense, *tail]
    assert all(len(groups[name].convs) == 5 for name in dense)
    assert all(groups[name].convs == (f"/{name}/Conv",) for name in ["conv_first", *tail])
    # work at each conv's own resolution: the same 8->8 3x3 conv costs 4x after each 2x upsampling
    assert groups["conv_up1"].macs == 4 * groups["conv_body"].macs
    assert groups["conv_up2"].macs == groups["conv_hr"].macs == 16 * groups["conv_body"].macs
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert [c for g in groups.values() for c in g.convs] == convs
    assert [g.convs for g in conv_groups(model, blocks=False)] == [(c,) for c in convs]


def test_flat_names_and_containers_fall_back_to_single_convs(tiny_rrdb: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_rrdb))
    for i, node in enumerate(model.graph.node):  # names without a module path, as some exporters write
        node.name = f"{node.op_type}_{i}"
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert [g.convs for g in conv_groups(model)] == [(c,) for c in convs]
    # SRVGGNetCompact's convs all sit in one Sequential: a container, not a block, so one group per conv
    srvgg = onnx.load(str(_export(tmp_path, "srvgg", {"in_channels": 3, "out_channels": 3, "num_feat": 8,
                                                       "num_conv": 6, "act_type": "prelu", "scale": 2})))
    groups = conv_groups(srvgg)
    assert len(groups) == sum(n.op_type == "Conv" for n in srvgg.graph.node) and all(
        len(g.convs) == 1 for g in groups)


def _conv_alone(conv: Any, fp32: Any) -> Any:
    """A one-node model: the fp32 model's conv with its fp32 weights, fed any input."""
    inits = {i.name: i for i in fp32.graph.initializer}
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    node = helper.make_node("Conv", ["x", *conv.input[1:]], ["y"], **attrs)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [inits[name] for name in conv.input[1:]])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: Any, x: np.ndarray, name: str = "input") -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {name: x})


@pytest.mark.parametrize("backend", ["ort", "openvino", "trt"])
def test_a_float_group_computes_exactly_what_the_fp32_convs_compute(tiny_rrdb: Path, tmp_path: Path,
                                                                     backend: str) -> None:
    quantized = onnx.load(str(_quantized(tiny_rrdb, tmp_path / "q.onnx", backend)))
    fp32 = onnx.load(str(tiny_rrdb))
    groups = conv_groups(fp32)
    group = groups[5]  # body/body.1/rdb2: a dense block fed through int8 blocks
    x = np.random.default_rng(0).random((1, 3, 20, 28), dtype=np.float32)

    variant = keep_float(quantized, fp32, group.convs)
    assert float_convs(variant) == list(group.convs)
    assert len(float_convs(quantized)) == 0  # the rest stays int8 (weights behind DequantizeLinear)
    convs = {n.name: n for n in variant.graph.node if n.op_type == "Conv"}
    for conv in group.convs:  # expose each float conv's input and output
        variant.graph.output.extend([helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                                     for t in (convs[conv].input[0], convs[conv].output[0])])
    outs = _run(variant, x)
    fp32_convs = {n.name: n for n in fp32.graph.node if n.op_type == "Conv"}
    for i, conv in enumerate(group.convs):
        got_in, got_out = outs[1 + 2 * i], outs[2 + 2 * i]
        assert np.array_equal(_run(_conv_alone(fp32_convs[conv], fp32), got_in, "x")[0], got_out), conv
    # every group float: no quantizer left, the fp32 model's output
    everything = keep_float(quantized, fp32, [c for g in groups for c in g.convs])
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in everything.graph.node}
    np.testing.assert_allclose(_run(everything, x)[0], _run(fp32, x)[0], atol=1e-6)
    with pytest.raises(InputError, match="not convs"):
        keep_float(quantized, fp32, ["/no/such/Conv"])


def test_prefix_search_helpers() -> None:
    errors = [GroupError(ConvGroup(str(i), (str(i),), 1), mse) for i, mse in enumerate([0.5, 1.0, 2.0, 4.0])]
    assert predicted_prefix(errors, 1.6) == 2 and predicted_prefix(errors, 0.1) == 0
    for answer in range(0, 6):
        probes: list[int] = []

        def holds(k: int, answer: int = answer, probes: list[int] = probes) -> bool:
            probes.append(k)
            return k <= answer

        assert bisect_prefix(5, 3, holds) == answer
        assert probes[0] == 3 and len(probes) <= 4
    assert SearchStrategy.parse(None).resolve(GREEDY_MAX_CONVS) == SearchStrategy.GREEDY
    assert SearchStrategy.parse("auto").resolve(GREEDY_MAX_CONVS + 1) == SearchStrategy.BLOCKS
    with pytest.raises(InputError, match="blocks"):
        SearchStrategy.parse("bogus")


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_block_search_meets_a_budget_all_int8_misses(tiny_rrdb: Path, tmp_path: Path, backend: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # the budget: 3 dB above what all-int8 measures on the validation photos
    info = read_model_info(tiny_rrdb)
    engine = "openvino" if backend == "openvino" else "ort"
    if engine == "openvino":
        pytest.importorskip("openvino")
    from srkit.data import held_out_images

    ref = B.reference(tiny_rrdb, B.validation_set(held_out_images(), info), info, engine)
    all_int8 = B.measure(_quantized(tiny_rrdb, tmp_path / "all.onnx", backend), ref, info, engine).parity_db
    budget = all_int8 + 3.0
    out = tmp_path / "mixed.onnx"
    rc = run(["quantize", str(tiny_rrdb), "-o", str(out), "--backend", backend, "--search", "blocks",
              "--min-parity", f"{budget:.2f}", "--samples", str(FAST["samples"]), "--patch", str(FAST["patch"])])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "groups int8" in captured.out and "kept in float" in captured.out
    qinfo = read_model_info(out)
    assert qinfo.precision == Precision.INT8 and qinfo.extra["quant_search"] == "blocks"
    assert float(qinfo.extra["quant_parity_db"]) >= round(budget, 2)
    kept = json.loads(qinfo.extra["quant_float_layers"])
    groups = {g.name: g for g in conv_groups(onnx.load(str(tiny_rrdb)))}
    float_groups = json.loads(qinfo.extra["quant_float_groups"])
    assert float_groups and len(float_groups) < len(groups)  # some in float, at least one int8
    assert sorted(kept) == sorted(c for name in float_groups for c in groups[name].convs)
    assert float_convs(onnx.load(str(out))) == kept
    assert 0 < float(qinfo.extra["quant_int8_work"]) < 1
