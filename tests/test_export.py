"""Export: DepthToSpace CRD, dynamic axes, metadata, the parity gate, atomic output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from srkit import quality  # noqa: E402
from srkit.errors import InputError, ParityError  # noqa: E402
from srkit.export import ExportOptions, export_model  # noqa: E402
from srkit.export import parity as parity_module  # noqa: E402
from srkit.meta import Color, read_model_info  # noqa: E402
from srkit.models import registry  # noqa: E402


def save_checkpoint(tmp_path: Path, arch: str, seed: int = 0, **params: int) -> Path:
    spec = registry.get(arch)
    torch.manual_seed(seed)
    module = spec.build({**spec.defaults, "scale": spec.scales[0], **params})
    path = tmp_path / f"{arch}-{seed}.pth"
    torch.save({"params": module.state_dict()}, path)  # a BasicSR-style wrapper
    return path


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_pixel_shuffle_becomes_crd_depth_to_space_with_colour(tmp_path: Path, scale: int) -> None:
    """r = 2, 3, 4 with three channels: DCR would scramble sub-pixels across colours (docs/background.md 1)."""
    ckpt = save_checkpoint(tmp_path, "espcn", scale=scale, in_channels=3)
    result = export_model(str(ckpt), tmp_path / "m.onnx")
    model = onnx.load(str(result.path))
    d2s = [n for n in model.graph.node if n.op_type == "DepthToSpace"]
    assert len(d2s) == 1
    attrs = {a.name: a for a in d2s[0].attribute}
    assert attrs["mode"].s == b"CRD" and attrs["blocksize"].i == scale
    assert result.parity is not None and result.parity.max_abs <= quality.FP32_EXPORT_MAX_ABS
    assert len(result.parity.shapes) >= 3


def test_dynamic_axes_run_at_unrelated_shapes(tmp_path: Path) -> None:
    result = export_model(str(save_checkpoint(tmp_path, "espcn", scale=3)), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 17, 29), (3, 1, 40, 8), (1, 1, 5, 64)]:
        out = session.run(None, {"input": np.random.rand(*shape).astype(np.float32)})[0]
        assert out.shape == (shape[0], 1, shape[2] * 3, shape[3] * 3)


@pytest.mark.parametrize("arch,scale", [("srcnn", 3), ("srcnn", 2), ("fsrcnn", 3), ("fsrcnn", 4)])
def test_seed_architectures_pass_the_gate(tmp_path: Path, arch: str, scale: int) -> None:
    ckpt = save_checkpoint(tmp_path, arch)
    result = export_model(str(ckpt), tmp_path / "m.onnx", scale=scale)
    info = read_model_info(result.path)
    assert (info.arch, info.scale, info.color) == (arch, scale, Color.Y)
    assert info.parity["passed"] and info.parity["max_abs"] <= quality.FP32_EXPORT_MAX_ABS


def test_metadata_is_self_describing(espcn_x3_onnx: Path) -> None:
    props = {p.key: p.value for p in onnx.load(str(espcn_x3_onnx)).metadata_props}
    for key in ("arch", "scale", "in_channels", "color", "range", "size_multiple", "precision", "opset",
                "source_sha256", "parity", "version"):
        assert f"srkit.{key}" in props, key
    info = read_model_info(espcn_x3_onnx)
    assert info.scale == 3 and info.color == Color.Y and info.opset == 17
    assert info.source == "bundled:espcn-x3" and len(info.source_sha256) == 64


def test_static_shape_export(tmp_path: Path) -> None:
    result = export_model("espcn-x3", tmp_path / "s.onnx", options=ExportOptions(static=(48, 64)))
    model = onnx.load(str(result.path))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 48, 64]
    assert read_model_info(result.path).static_shape == (48, 64)


def test_failed_gate_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the ONNX model disagree with PyTorch: the gate must fail with numbers and delete the output."""
    real_gate = parity_module.run_gate

    def gate_against_other_weights(path, module, **kwargs):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            module.conv3.bias += 0.01
        return real_gate(path, module, **kwargs)

    monkeypatch.setattr("srkit.export.exporter.run_gate", gate_against_other_weights)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ParityError, match="max abs error"):
        export_model("espcn-x3", out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp file either


def test_scale_mismatch_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--scale 2 does not match .* x3"):
        export_model("espcn-x3", tmp_path / "m.onnx", scale=2)


def test_srcnn_without_scale_asks_for_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--scale"):
        export_model(str(save_checkpoint(tmp_path, "srcnn")), tmp_path / "m.onnx")
