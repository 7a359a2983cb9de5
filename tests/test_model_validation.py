"""Malformed and foreign ONNX files (issue 16 item 11): refused on reading, in one line naming the file.

The models are real, runnable graphs (a convolution and a pixel shuffle, as ESPCN ends) built with onnx.helper,
then altered the way a hostile or foreign file would be."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from srkit.errors import InputError, UnsupportedModelError
from srkit.meta import MAX_JSON_DEPTH, ModelInfo, read_model_info

ROOT = Path(__file__).resolve().parents[1]


def srkit_props(**overrides: object) -> dict[str, str]:
    props = {"arch": "espcn", "scale": "3", "in_channels": "1", "color": "y", "range": "0-1", "size_multiple": "1",
             "receptive_field": "4", "params": "{}", "parity": "{}"}
    props.update({k: str(v) for k, v in overrides.items()})
    return {f"srkit.{k}": v for k, v in props.items()}


def sr_graph(*, channels: int = 1, scale: int = 3, in_type: int = TensorProto.FLOAT, static: tuple[int, int] | None = None,
             out_scale: int | None = None, extra_input: bool = False) -> onnx.ModelProto:
    """x -> Conv(channels -> channels*s*s, 3x3) -> DepthToSpace(s): a real sub-pixel upscaler."""
    s = scale
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(0, 0.1, (channels * s * s, channels, 3, 3)).astype(np.float32), "w")
    h, w = static if static else ("height", "width")
    oh, ow = (static[0] * (out_scale or s), static[1] * (out_scale or s)) if static else ("oh", "ow")
    nodes = []
    x = "input"
    if in_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT))
        x = "x"
    nodes += [helper.make_node("Conv", [x, "w"], ["features"], pads=[1, 1, 1, 1]),
              helper.make_node("DepthToSpace", ["features"], ["output"], blocksize=s, mode="CRD")]
    inputs = [helper.make_tensor_value_info("input", in_type, ["batch", channels, h, w])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("strength", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(nodes, "sr", inputs,
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", channels, oh, ow])],
                              initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path: Path, props: dict[str, str] | None = None, **save_kwargs: object) -> Path:
    del model.metadata_props[:]
    for key, value in (props if props is not None else srkit_props()).items():
        model.metadata_props.add(key=key, value=value)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), **save_kwargs)  # type: ignore[arg-type]
    return path


def with_external_data(tmp_path: Path, location: str = "weights.bin") -> Path:
    model = sr_graph()
    return save(model, tmp_path / "model" / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                location=location, size_threshold=0)


def set_external(path: Path, **entries: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key in entries:
            entry.value = entries.pop(entry.key)
    for key, value in entries.items():
        model.graph.initializer[0].external_data.add(key=key, value=value)
    onnx.save_model(model, str(path))


# ---- what must keep working ----------------------------------------------------------------------
def test_a_sound_model_reads_and_runs(tmp_path: Path) -> None:
    from srkit.runtime import Upscaler

    path = save(sr_graph(), tmp_path / "ok.onnx")
    info = read_model_info(path)
    assert (info.scale, info.in_channels) == (3, 1)
    with Upscaler(path, backend="onnxruntime") as up:
        assert up.upscale(np.zeros((5, 7), dtype=np.uint8)).shape == (15, 21)


def test_sound_external_data_reads_and_runs(tmp_path: Path) -> None:
    from srkit.runtime import Upscaler

    path = with_external_data(tmp_path)
    assert read_model_info(path).scale == 3
    with Upscaler(path, backend="onnxruntime") as up:
        assert up.upscale(np.zeros((4, 6), dtype=np.uint8)).shape == (12, 18)


def test_exported_model_passes(espcn_x3_onnx: Path) -> None:
    assert read_model_info(espcn_x3_onnx).arch == "espcn"


def test_fp16_input_and_pipeline_io_pass(tmp_path: Path) -> None:
    read_model_info(save(sr_graph(in_type=TensorProto.FLOAT16), tmp_path / "half.onnx"))
    nhwc = sr_graph(in_type=TensorProto.UINT8)
    nhwc.graph.input[0].CopyFrom(helper.make_tensor_value_info("input", TensorProto.UINT8, ["n", "h", "w", 3]))
    nhwc.graph.output[0].CopyFrom(helper.make_tensor_value_info("output", TensorProto.UINT8, ["n", "oh", "ow", 3]))
    rgb = srkit_props(in_channels=3, color="rgb", io="rgb8")
    assert read_model_info(save(nhwc, tmp_path / "rgb8.onnx", rgb)).io.value == "rgb8"
    with pytest.raises(UnsupportedModelError, match="rank-4 NHWC uint8"):
        read_model_info(save(sr_graph(channels=3), tmp_path / "tensor-says-rgb8.onnx", rgb))


# ---- metadata that cannot be true ------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    ({"scale": 0}, "srkit.scale 0 is not in 1-16"),
    ({"scale": -3}, "srkit.scale -3 is not in 1-16"),
    ({"scale": 300}, "srkit.scale 300 is not in 1-16"),
    ({"size_multiple": 0}, "srkit.size_multiple 0 is not in 1-1024"),
    ({"receptive_field": -1}, "srkit.receptive_field -1 is not in 0-4096"),
    ({"range": "0-255"}, "srkit.range '0-255' is not supported"),
    ({"in_channels": 4, "color": "rgb"}, "srkit.in_channels 4 is not 1 or 3"),
    ({"in_channels": 3, "color": "y"}, "srkit.color y needs srkit.in_channels 1"),
    ({"static_shape": "0x5"}, "srkit.static_shape 0x5 is not positive"),
    ({"params": "[1, 2]"}, "srkit.params must be a JSON object"),
    ({"parity": "{nope"}, "srkit.parity is not JSON"),
])
def test_impossible_metadata_is_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(UnsupportedModelError, match="^where.onnx.*" + message.replace("(", r"\(")):
        ModelInfo.from_props(srkit_props(**overrides), where="where.onnx")


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 3000, 100_000])
def test_deeply_nested_json_is_refused_without_recursion_error(depth: int) -> None:
    nested = '{"a": ' * depth + "1" + "}" * depth
    with pytest.raises(UnsupportedModelError, match=f"srkit.params nests deeper than {MAX_JSON_DEPTH} levels"):
        ModelInfo.from_props(srkit_props(params=nested), where="m.onnx")


def test_overlong_metadata_value_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match=r"metadata srkit.source is \d+ characters long"):
        ModelInfo.from_props(srkit_props(source="x" * (2 << 20)), where="m.onnx")


def test_srkit_info_on_nested_json_is_one_line_exit_2(tmp_path: Path) -> None:
    path = save(sr_graph(), tmp_path / "nested.onnx", srkit_props(parity="[" * 5000 + "]" * 5000))
    run = subprocess.run([sys.executable, "-m", "srkit", "info", str(path)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        f"srkit: error: {path}: metadata srkit.parity nests deeper than {MAX_JSON_DEPTH} levels"
    ]


# ---- graphs that contradict their metadata --------------------------------------------------------
def classifier() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(rng.normal(0, 0.1, (1000, 3)).astype(np.float32), "fc")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1)],
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        initializer=[weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("name,model,props,message", [
    ("classifier", classifier(), srkit_props(in_channels=3, color="rgb"), r"output is float \?x1000; an srkit model"),
    ("channels", sr_graph(channels=1), srkit_props(in_channels=3, color="rgb"),
     "the graph's input has 1 channels but the metadata says srkit.in_channels 3"),
    ("two-inputs", sr_graph(extra_input=True), srkit_props(), "one input and one output; this graph has 2 and 1"),
    ("int64", sr_graph(in_type=TensorProto.INT64), srkit_props(), r"input is int64 \?x1x\?x\?"),
    ("static-scale", sr_graph(static=(16, 16)), srkit_props(scale=2),
     r"maps \[None, 1, 16, 16\] to \[None, 1, 48, 48\], not x2 as srkit.scale says"),
])
def test_graph_contradicting_metadata_is_refused(tmp_path: Path, name: str, model: onnx.ModelProto,
                                                 props: dict[str, str], message: str) -> None:
    path = save(model, tmp_path / f"{name}.onnx", props)
    with pytest.raises(UnsupportedModelError, match=f"^{path}: .*({message})"):
        read_model_info(path)


def test_upscaler_refuses_before_any_backend_loads(tmp_path: Path) -> None:
    from srkit.runtime import Upscaler

    path = save(sr_graph(in_type=TensorProto.INT64), tmp_path / "int64.onnx")
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(UnsupportedModelError, match=r"int64\.onnx: input is int64"):
            Upscaler(path, backend=backend)


# ---- external data --------------------------------------------------------------------------------
def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    path = with_external_data(tmp_path)
    secret = tmp_path / "secret.bin"
    (path.parent / "weights.bin").rename(secret)
    set_external(path, location="../secret.bin")
    with pytest.raises(UnsupportedModelError, match=r"external data '../secret.bin' is outside the model's folder"):
        read_model_info(path)
    set_external(path, location=str(secret))
    with pytest.raises(UnsupportedModelError, match="is outside the model's folder"):
        read_model_info(path)


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    path = with_external_data(tmp_path)
    outside = tmp_path / "outside.bin"
    (path.parent / "weights.bin").rename(outside)
    (path.parent / "weights.bin").symlink_to(outside)
    with pytest.raises(UnsupportedModelError, match="is outside the model's folder"):
        read_model_info(path)


def test_missing_external_data_is_refused(tmp_path: Path) -> None:
    path = with_external_data(tmp_path)
    (path.parent / "weights.bin").unlink()
    with pytest.raises(UnsupportedModelError, match=r"m.onnx: tensor w's external data file weights.bin is missing"):
        read_model_info(path)


def test_truncated_external_data_is_refused(tmp_path: Path) -> None:
    path = with_external_data(tmp_path)
    data = path.parent / "weights.bin"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(UnsupportedModelError, match=r"wants bytes 0-324 of weights.bin, which holds 100"):
        read_model_info(path)


def test_overlong_external_data_length_is_refused(tmp_path: Path) -> None:
    path = with_external_data(tmp_path)
    set_external(path, length=str(1 << 40))
    with pytest.raises(UnsupportedModelError, match=f"declares {1 << 40} bytes of external data but its shape needs 324"):
        read_model_info(path)
    set_external(path, length="324", offset="1000")
    with pytest.raises(UnsupportedModelError, match="wants bytes 1000-1324"):
        read_model_info(path)


def test_missing_model_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model file not found"):
        read_model_info(tmp_path / "nope.onnx")


def test_info_json_is_bounded(tmp_path: Path) -> None:
    """What `srkit info --json` prints stays printable: the depth bound holds for what was accepted."""
    deep = "{" + '"a": {' * (MAX_JSON_DEPTH - 2) + "}" * (MAX_JSON_DEPTH - 2) + "}"
    info = read_model_info(save(sr_graph(), tmp_path / "deep-ok.onnx", srkit_props(params=deep)))
    assert json.loads(json.dumps(info.to_json()))["params"]
