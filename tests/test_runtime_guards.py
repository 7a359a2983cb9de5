"""The runtime refuses models it cannot trust, with one line naming the file (issue 16, items 1 and 11)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from srkit.errors import UnsupportedModelError
from srkit.runtime import Upscaler
from srkit.runtime import registry as backends


def _with_metadata(graph_nodes: list, tmp_path: Path, name: str, props: dict[str, str]) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        graph_nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 1, "h2", "w2"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in {"srkit.arch": "espcn", "srkit.scale": "3", "srkit.in_channels": "1", "srkit.color": "y",
                       **props}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_a_graph_the_runtime_cannot_load_is_a_model_error(tmp_path: Path, backend: str) -> None:
    from onnx import helper

    if backend not in backends.available():
        pytest.skip(f"{backend} is not installed")
    broken = _with_metadata([helper.make_node("NoSuchOp", ["input"], ["output"], domain="srkit.nowhere")],
                            tmp_path, "broken.onnx", {})
    with pytest.raises(UnsupportedModelError, match=r"broken\.onnx"), Upscaler(broken, backend=backend):
        pass


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_an_identity_labelled_x3_is_refused_not_cropped(tmp_path: Path, backend: str) -> None:
    """An x1 graph whose metadata says x3 would have written a third of a picture: refused on load."""
    from onnx import helper

    if backend not in backends.available():
        pytest.skip(f"{backend} is not installed")
    liar = _with_metadata([helper.make_node("Identity", ["input"], ["output"])], tmp_path, "liar.onnx", {})
    with pytest.raises(UnsupportedModelError, match="says x3"), Upscaler(liar, backend=backend) as up:
        up.upscale(np.zeros((8, 8, 3), np.uint8))


def test_cli_reports_an_unloadable_model_in_one_line(tmp_path: Path, sample_rgb: np.ndarray) -> None:
    from onnx import helper

    from srkit.imageio import write_image

    broken = _with_metadata([helper.make_node("NoSuchOp", ["input"], ["output"], domain="srkit.nowhere")],
                            tmp_path, "broken.onnx", {})
    src = tmp_path / "in.png"
    write_image(src, np.ascontiguousarray(sample_rgb[:16, :16]))
    proc = subprocess.run([sys.executable, "-m", "srkit", "upscale", str(src), "-m", str(broken), "-o",
                           str(tmp_path / "out.png"), "--backend", "ort"], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("srkit: error:"), proc.stderr
    assert "broken.onnx" in lines[0] and not (tmp_path / "out.png").exists()
