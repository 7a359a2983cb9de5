"""Every architecture at every scale: detected from a plain state dict, exported, and ONNX Runtime and
OpenVINO (fp32) agree with PyTorch to 1e-4 at three unrelated shapes. Tiny hyperparameters keep it fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from srkit import quality  # noqa: E402
from srkit.errors import ExportError  # noqa: E402
from srkit.export import export_model  # noqa: E402
from srkit.export.graph import check_graph, check_runtimes  # noqa: E402
from srkit.export.parity import real_inputs  # noqa: E402
from srkit.models import registry  # noqa: E402
from srkit.runtime import tiling  # noqa: E402

MAX_ABS = quality.FP32_EXPORT_MAX_ABS
# (batch, H, W) for the OpenVINO comparison, unrelated to the tracing shape and to the parity gate's (which
# run_gate already uses for ONNX Runtime); small, to keep the matrix fast
OTHER_SHAPES = ((1, 13, 21), (3, 8, 5), (2, 24, 16))

# arch -> tiny hyperparameters (scale added per case); the real defaults are exercised by detection tests
TINY: dict[str, dict[str, Any]] = {
    "rrdbnet": {"in_channels": 3, "out_channels": 3, "num_feat": 8, "num_block": 1, "num_grow_ch": 4},
    "srvgg": {"in_channels": 3, "out_channels": 3, "num_feat": 8, "num_conv": 2, "act_type": "prelu"},
    "edsr": {"in_channels": 3, "out_channels": 3, "num_feat": 16, "num_block": 2, "res_scale": 1.0},
    "rcan": {"in_channels": 3, "out_channels": 3, "num_feat": 16, "num_group": 1, "num_block": 2,
             "squeeze_factor": 4, "res_scale": 1.0},
    "rdn": {"in_channels": 3, "num_features": 8, "growth_rate": 8, "num_blocks": 2, "num_layers": 2},
    "srresnet": {"in_channels": 3, "out_channels": 3, "num_feat": 8, "num_block": 1, "batch_norm": False},
    "srresnet-bn": {"in_channels": 3, "out_channels": 3, "num_feat": 8, "num_block": 1, "batch_norm": True},
    "vdsr": {"in_channels": 1, "num_feat": 8, "num_layers": 5, "bias": False},
    # fixed widths (the released networks'): full size, one scale each to keep the matrix fast
    "waifu2x": {"in_channels": 3, "out_channels": 3},
    "realcugan": {"in_channels": 3, "out_channels": 3, "pro": False, "pad_mode": "reflect"},
}
SCALES = {"rrdbnet": (1, 2, 4), "srvgg": (2, 3, 4), "edsr": (2, 3, 4, 8), "rcan": (2, 3, 4), "rdn": (2, 3, 4),
          "srresnet": (2, 3, 4), "srresnet-bn": (2, 3, 4), "vdsr": (2, 3, 4), "waifu2x": (2,),
          "realcugan": (2,)}
CASES = [(name, scale) for name, scales in SCALES.items() for scale in scales]


def arch_of(name: str) -> str:
    return name.split("-")[0]


def make_module(name: str, scale: int, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A module with random weights, BatchNorm statistics and PReLU slopes (not the trivial defaults)."""
    spec = registry.get(arch_of(name))
    params = {**TINY[name], "scale": scale}
    torch.manual_seed(seed)
    module = spec.build(params)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(0.0, 0.3)
    return module.eval(), params


def save_checkpoint(module: Any, path: Path) -> Path:
    torch.save(module.state_dict(), path)
    return path


def rounded(shape: tuple[int, int, int], multiple: int) -> tuple[int, int, int]:
    b, h, w = shape
    return b, max(multiple, h - h % multiple), max(multiple, w - w % multiple)


def openvino_max_abs(onnx_path: Path, module: Any, channels: int, size_multiple: int) -> float:
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    # fp32 explicitly: on CPUs with AVX512-BF16/AMX OpenVINO otherwise runs bf16 (docs/background.md 6)
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    worst = 0.0
    # a network that reflect-pads its input by p needs sides above p (Real-CUGAN: 18-28): grow the shapes
    min_side = getattr(module, "prepadding", 0) + size_multiple + 1  # still above p after rounding down
    for i, (b, h, w) in enumerate(OTHER_SHAPES):
        shape = (b, max(h, min_side + h % 7), max(w, min_side + w % 5))
        x = real_inputs(rounded(shape, size_multiple), channels, seed=10 + i)
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        out = compiled([x])[compiled.output(0)]
        assert out.shape == ref.shape
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst


@pytest.mark.parametrize(("name", "scale"), CASES, ids=[f"{n}-x{s}" for n, s in CASES])
def test_detect_export_and_parity(name: str, scale: int, tmp_path: Path) -> None:
    module, params = make_module(name, scale)
    spec = registry.get(arch_of(name))
    ckpt = save_checkpoint(module, tmp_path / f"{name}-x{scale}.pth")

    # detection alone, from the state dict, gives back every hyperparameter the weights determine
    detected_spec, detected = registry.detect(module.state_dict())
    assert detected_spec.name == spec.name
    expected = {k: v for k, v in params.items() if spec.scale_in_weights or k != "scale"}
    assert detected == expected

    result = export_model(str(ckpt), tmp_path / "out.onnx",
                          scale=None if spec.scale_in_weights else scale)
    info = result.info
    assert (info.arch, info.scale, info.color) == (spec.name, scale, spec.color)
    assert info.size_multiple == spec.size_multiple(params)
    # the descriptor's facts travel in the metadata: the feature width is the first conv's
    first_conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    assert tiling.features_of(info) == first_conv.out_channels
    assert info.extra["tiling"] == ("approximate" if spec.global_context else "exact")
    if name == "rrdbnet":  # Real-ESRGAN x2/x1 pixel-unshuffle by 2/4 first
        assert info.size_multiple == {1: 4, 2: 2, 4: 1}[scale]
    assert result.parity is not None and result.parity.passed and result.parity.max_abs <= MAX_ABS
    assert len(result.parity.shapes) == 3
    assert "BatchNormalization" not in result.nodes and "Dropout" not in result.nodes
    # check_graph already refused DepthToSpace in DCR mode; PixelShuffle must not have become anything else
    shuffles = any(isinstance(m, torch.nn.PixelShuffle) for m in module.modules())
    assert ("DepthToSpace" in result.nodes) == shuffles
    assert result.checks["onnxruntime"].startswith("ok")
    assert result.checks["openvino"].startswith("ok (openvino")  # the op-support check compiled it
    # ORT ran the gate's three shapes, OpenVINO runs three others (batch 1-3): a shape baked into a Reshape
    # (the pixel-unshuffle models' risk) would fail one of the six
    assert openvino_max_abs(result.path, module, info.in_channels, info.size_multiple) <= MAX_ABS


# the bundled small models: exported, gated and compared with the runtimes in tests/test_export.py and the zoo
BUNDLED = {"espcn", "srcnn", "fsrcnn"}


def test_every_registered_architecture_is_covered() -> None:
    """Registering an architecture without a tiny configuration here, a bundled model, or a case in
    tests/test_archs_modern.py's CASES (the community-database architectures) fails this test."""
    from test_archs_modern import CASES as MODERN_CASES

    covered = {arch_of(name) for name in TINY} | BUNDLED | {arch for arch, _ in MODERN_CASES.values()}
    assert set(registry.names()) <= covered, f"not covered by a test case: {set(registry.names()) - covered}"
    assert set(SCALES) == set(TINY)


def test_batchnorm_is_folded_and_leftovers_rejected(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    module, _ = make_module("srresnet-bn", 4)
    result = export_model(str(save_checkpoint(module, tmp_path / "bn.pth")), tmp_path / "bn.onnx")
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert "BatchNormalization" not in ops and {"Conv", "DepthToSpace", "PRelu"} <= ops

    # the gate itself: a graph with a BatchNormalization node left in is refused
    h = onnx.helper
    c = 2
    inits = [onnx.numpy_helper.from_array(np.ones(c, np.float32), n) for n in ("s", "b", "m", "v")]
    node = h.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])
    graph = h.make_graph([node], "bn", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, c, 4, 4])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, c, 4, 4])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    with pytest.raises(ExportError, match="BatchNormalization"):
        check_graph(model, expects_depth_to_space=False)


def test_runtime_check_refuses_an_op_no_runtime_knows(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    h = onnx.helper
    node = h.make_node("SuperResolve", ["x"], ["y"], domain="com.example")
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 8, 8])
    graph = h.make_graph([node], "custom", [x], [y])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ExportError, match="ONNX Runtime cannot load"):
        check_runtimes(path)


def test_static_shape_respects_the_size_multiple(tmp_path: Path) -> None:
    """--static for fixed-shape targets: a pixel-unshuffle model takes only multiples of its factor."""
    onnx = pytest.importorskip("onnx")
    from srkit.errors import InputError
    from srkit.export import ExportOptions

    module, _ = make_module("rrdbnet", 2)
    ckpt = save_checkpoint(module, tmp_path / "x2.pth")
    with pytest.raises(InputError, match="multiples of 2"):
        export_model(str(ckpt), tmp_path / "bad.onnx", options=ExportOptions(static=(13, 18)))
    assert not (tmp_path / "bad.onnx").exists()
    result = export_model(str(ckpt), tmp_path / "static.onnx", options=ExportOptions(static=(12, 18)))
    dims = [d.dim_value for d in onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 12, 18]
    assert result.parity is not None and result.parity.shapes == [[1, 3, 12, 18]]

