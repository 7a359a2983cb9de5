"""The community model database's architectures (SPAN, PLKSR/RealPLKSR, SAFMN, Omni-SR, SwinIR, HAT, DAT):
per variant, a checkpoint in the public key layout (random weights of the real shapes, tiny widths) is
detected without flags and loaded strictly; per architecture it exports with dynamic H/W, passes the
three-shape parity gate on ONNX Runtime and matches on OpenVINO fp32 at sizes that are not multiples of the
window, and upscales through the runtime tiled and untiled. The released full-size configurations are
detected from their shapes alone (meta tensors)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from srkit.export import export_model  # noqa: E402
from srkit.export.parity import real_inputs  # noqa: E402
from srkit.models import registry  # noqa: E402
from srkit.models.loader import load_model  # noqa: E402

MAX_ABS = 1e-4
# (batch, H, W) for OpenVINO, unrelated to the gate's shapes and not multiples of any window (8, 16, 32)
OTHER_SHAPES = ((1, 13, 21), (2, 9, 35))

_SWIN = {"in_channels": 3, "embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 8, "mlp_ratio": 2.0,
         "resi_connection": "1conv", "qkv_bias": True, "patch_norm": True, "img_range": 1.0}
_HAT = {"in_channels": 3, "embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 8, "overlap_ratio": 0.5,
        "compress_ratio": 3, "squeeze_factor": 6, "mlp_ratio": 2.0, "qkv_bias": True, "patch_norm": True,
        "resi_connection": "1conv", "num_feat": 16}
# depth [2, 1]: a spatial block, a channel block, and (second group, block 0) a shifted spatial block
_DAT = {"in_channels": 3, "embed_dim": 32, "depth": [2, 1], "num_heads": [2, 2], "split_size": [2, 4],
        "expansion_factor": 2.0, "qkv_bias": True, "resi_connection": "1conv"}
_PLK = {"dim": 16, "n_blocks": 1, "use_ea": True, "lk_type": "PLK", "kernel_size": 7, "split_ratio": 0.25}

# case -> (architecture, every hyperparameter detection returns); tiny widths keep each case fast
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "span-x4": ("span", {"scale": 4, "in_channels": 3, "feature_channels": 8, "norm": True}),
    "span-x2-no-norm": ("span", {"scale": 2, "in_channels": 3, "feature_channels": 8, "norm": False}),
    "plksr-x2": ("plksr", {**_PLK, "variant": "plain", "scale": 2, "ccm_type": "CCM"}),
    "plksr-x4-rect-iccm": ("plksr", {**_PLK, "variant": "plain", "scale": 4, "ccm_type": "ICCM",
                                     "lk_type": "RectSparsePLK", "kernel_size": 9, "use_ea": False}),
    "plksr-x3-dccm": ("plksr", {**_PLK, "variant": "plain", "scale": 3, "ccm_type": "DCCM"}),
    "realplksr-x4": ("plksr", {**_PLK, "variant": "real", "scale": 4, "layer_norm": False, "dysample": False,
                               "norm_groups": 4}),
    "realplksr-x2-layernorm": ("plksr", {**_PLK, "variant": "real", "scale": 2, "layer_norm": True,
                                         "dysample": False, "norm_groups": 4}),
    "realplksr-x3-dysample": ("plksr", {**_PLK, "variant": "real", "scale": 3, "layer_norm": False,
                                        "dysample": True, "norm_groups": 4}),
    "realplksr-x4-dysample": ("plksr", {**_PLK, "variant": "real", "scale": 4, "layer_norm": True,
                                        "dysample": True, "norm_groups": 4}),
    "safmn-x4": ("safmn", {"scale": 4, "dim": 16, "n_blocks": 1, "ffn_scale": 2.0}),
    "safmn-x2": ("safmn", {"scale": 2, "dim": 24, "n_blocks": 2, "ffn_scale": 1.5}),
    "omnisr-x2": ("omnisr", {"scale": 2, "in_channels": 3, "num_feat": 16, "res_num": 1, "block_num": 1,
                             "window_size": 8, "pe": True, "bias": True}),
    "omnisr-x4-no-pe": ("omnisr", {"scale": 4, "in_channels": 3, "num_feat": 16, "res_num": 1, "block_num": 2,
                                   "window_size": 8, "pe": False, "bias": True}),
    "swinir-x2-classical": ("swinir", {**_SWIN, "scale": 2, "upsampler": "pixelshuffle", "num_feat": 16}),
    "swinir-x3-classical": ("swinir", {**_SWIN, "scale": 3, "upsampler": "pixelshuffle", "num_feat": 16}),
    "swinir-x4-lightweight": ("swinir", {**_SWIN, "scale": 4, "upsampler": "pixelshuffledirect"}),
    "swinir-x4-realsr-3conv": ("swinir", {**_SWIN, "scale": 4, "upsampler": "nearest+conv", "num_feat": 16,
                                          "resi_connection": "3conv", "embed_dim": 16}),
    "swinir-x2-realsr": ("swinir", {**_SWIN, "scale": 2, "upsampler": "nearest+conv", "num_feat": 16}),
    "swinir-x1-denoise": ("swinir", {**_SWIN, "scale": 1, "upsampler": ""}),
    "swinir-x1-jpeg-window7": ("swinir", {**_SWIN, "scale": 1, "upsampler": "", "window_size": 7,
                                          "img_range": 255.0}),
    "hat-x2": ("hat", {**_HAT, "scale": 2}),
    "hat-s-x4-window16": ("hat", {**_HAT, "scale": 4, "window_size": 16, "compress_ratio": 6,
                                  "squeeze_factor": 6}),
    "hat-l-x3": ("hat", {**_HAT, "scale": 3, "depths": [1, 1], "num_heads": [2, 3]}),
    "dat-x2": ("dat", {**_DAT, "scale": 2, "upsampler": "pixelshuffle", "num_feat": 16}),
    "dat-light-x4": ("dat", {**_DAT, "scale": 4, "upsampler": "pixelshuffledirect", "resi_connection": "3conv",
                             "split_size": [4, 8]}),
}

# exact key names of the public files, per case (besides those every case of the arch has)
PUBLIC_KEYS: dict[str, set[str]] = {
    "span": {"conv_1.sk.weight", "conv_1.conv.0.weight", "conv_1.conv.1.weight", "conv_1.conv.2.weight",
             "conv_1.eval_conv.weight", "block_1.c1_r.sk.weight", "block_1.c1_r.eval_conv.weight",
             "block_6.c3_r.eval_conv.bias", "conv_cat.weight", "conv_2.sk.weight", "conv_2.eval_conv.weight",
             "upsampler.0.weight"},
    "span-x2-no-norm": {"no_norm"},
    "plksr": {"feats.0.weight", "feats.1.refine.weight", "feats.1.channe_mixer.0.weight",
              "feats.1.channe_mixer.2.weight", "feats.2.weight"},
    "plksr-x2": {"feats.1.lk.conv.weight", "feats.1.attn.f.0.weight"},
    "plksr-x4-rect-iccm": {"feats.1.lk.mn_conv.weight", "feats.1.lk.nm_conv.weight", "feats.1.lk.nn_conv.weight"},
    "realplksr": {"feats.1.channel_mixer.0.weight", "feats.1.channel_mixer.2.weight", "feats.1.lk.conv.weight",
                  "feats.1.attn.f.0.weight", "feats.1.refine.weight", "feats.3.weight"},
    "realplksr-x4": {"feats.1.norm.weight", "feats.1.norm.bias"},
    "realplksr-x2-layernorm": {"feats.1.layer_norm.weight", "feats.1.layer_norm.bias"},
    "realplksr-x3-dysample": {"to_img.init_pos", "to_img.offset.weight", "to_img.offset.bias",
                              "to_img.scope.weight", "to_img.end_conv.weight"},
    "safmn": {"to_feat.weight", "feats.0.norm1.weight", "feats.0.norm2.weight", "feats.0.safm.mfr.0.weight",
              "feats.0.safm.mfr.3.weight", "feats.0.safm.aggr.weight", "feats.0.ccm.ccm.0.weight",
              "feats.0.ccm.ccm.2.weight", "to_img.0.weight"},
    "omnisr": {"input.weight", "input.bias", "output.weight", "up.0.weight",
               "residual_layer.0.residual_layer.0.layer.0.fn.0.weight",
               "residual_layer.0.residual_layer.0.layer.0.fn.4.gate.1.weight",
               "residual_layer.0.residual_layer.0.layer.2.norm.weight",
               "residual_layer.0.residual_layer.0.layer.2.fn.to_qkv.weight",
               "residual_layer.0.residual_layer.0.layer.2.fn.to_out.0.weight",
               "residual_layer.0.residual_layer.0.layer.4.fn.project_in.weight",
               "residual_layer.0.residual_layer.0.layer.5.fn.temperature",
               "residual_layer.0.residual_layer.0.layer.11.fn.qkv_dwconv.weight",
               "residual_layer.0.esa.conv2.weight", "residual_layer.0.esa.conv_f.weight"},
    "omnisr-x2": {"residual_layer.0.residual_layer.0.layer.2.fn.rel_pos_bias.weight",
                  "residual_layer.0.residual_layer.1.weight"},
    "swinir": {"conv_first.weight", "patch_embed.norm.weight", "layers.0.residual_group.blocks.0.norm1.weight",
               "layers.0.residual_group.blocks.0.attn.relative_position_bias_table",
               "layers.0.residual_group.blocks.0.attn.relative_position_index",
               "layers.0.residual_group.blocks.0.attn.qkv.weight", "layers.0.residual_group.blocks.1.mlp.fc1.bias",
               "norm.weight"},
    "swinir-x2-classical": {"layers.0.conv.weight", "conv_after_body.weight", "conv_before_upsample.0.weight",
                            "upsample.0.weight", "conv_last.weight"},
    "swinir-x4-lightweight": {"upsample.0.weight", "upsample.0.bias"},
    "swinir-x4-realsr-3conv": {"layers.0.conv.4.weight", "conv_after_body.0.weight", "conv_up1.weight",
                               "conv_up2.weight", "conv_hr.weight", "conv_last.weight"},
    "hat": {"relative_position_index_SA", "relative_position_index_OCA", "conv_first.weight",
            "layers.0.residual_group.blocks.0.norm1.weight",
            "layers.0.residual_group.blocks.0.conv_block.cab.0.weight",
            "layers.0.residual_group.blocks.0.conv_block.cab.2.weight",
            "layers.0.residual_group.blocks.0.conv_block.cab.3.attention.1.weight",
            "layers.0.residual_group.blocks.0.conv_block.cab.3.attention.3.weight",
            "layers.0.residual_group.blocks.0.mlp.fc1.bias", "layers.0.residual_group.blocks.0.mlp.fc2.weight",
            "layers.0.residual_group.overlap_attn.relative_position_bias_table",
            "layers.0.residual_group.overlap_attn.qkv.weight", "layers.0.residual_group.overlap_attn.proj.weight",
            "layers.0.residual_group.overlap_attn.mlp.fc1.weight",
            "layers.0.residual_group.overlap_attn.mlp.fc2.weight", "conv_last.weight", "conv_after_body.weight",
            "patch_embed.norm.weight", "conv_before_upsample.0.weight", "upsample.0.weight"},
    "dat": {"conv_first.weight", "before_RG.1.weight", "before_RG.1.bias", "layers.0.blocks.0.norm1.weight",
            "layers.0.blocks.0.norm2.weight", "layers.0.blocks.0.ffn.fc1.weight",
            "layers.0.blocks.0.ffn.sg.norm.weight", "layers.0.blocks.0.ffn.sg.conv.weight",
            "layers.0.blocks.0.ffn.fc2.weight", "layers.0.blocks.0.attn.qkv.weight",
            "layers.0.blocks.0.attn.proj.weight", "layers.0.blocks.0.attn.dwconv.0.weight",
            "layers.0.blocks.0.attn.dwconv.1.running_mean",
            "layers.0.blocks.0.attn.channel_interaction.1.weight",
            "layers.0.blocks.0.attn.channel_interaction.2.running_mean",
            "layers.0.blocks.0.attn.channel_interaction.4.weight",
            "layers.0.blocks.0.attn.spatial_interaction.0.weight",
            "layers.0.blocks.0.attn.spatial_interaction.1.running_mean",
            "layers.0.blocks.0.attn.spatial_interaction.3.weight", "layers.0.blocks.0.attn.attns.0.rpe_biases",
            "layers.0.blocks.0.attn.attns.0.relative_position_index",
            "layers.0.blocks.0.attn.attns.0.pos.pos_proj.weight", "layers.0.blocks.0.attn.attns.0.pos.pos1.0.weight",
            "layers.0.blocks.0.attn.attns.0.pos.pos3.0.weight", "layers.0.blocks.1.attn.temperature", "norm.weight"},
    "dat-x2": {"conv_after_body.weight", "conv_before_upsample.0.weight", "conv_last.weight"},
    "dat-light-x4": {"conv_after_body.4.weight", "upsample.0.weight"},
}
# buffers the public files store that depend on the training patch size only (recomputed per input)
STORED_MASKS: dict[str, dict[str, tuple[int, ...]]] = {
    "swinir": {"layers.0.residual_group.blocks.1.attn_mask": (64, 64, 64)},  # img_size 64, window 8
    "dat": {"layers.1.blocks.0.attn.attn_mask_0": (512, 8, 8), "layers.1.blocks.0.attn.attn_mask_1": (512, 8, 8)},
}

# one case per architecture runs in the default suite; the other variants export in the slow suite
FAST_EXPORT = {"span-x4", "realplksr-x3-dysample", "safmn-x4", "omnisr-x2", "swinir-x2-classical", "hat-x2",
               "dat-x2"}
EXPORT_CASES = [pytest.param(c, marks=() if c in FAST_EXPORT else pytest.mark.slow) for c in CASES]

# tiled vs untiled (PSNR, dB) on a real photo: exact for the local convnets (the runtime's promise), an
# approximation where the context is global or windows/pooling are anchored at the image origin
TILED_MIN_PSNR = {"span": 50.0, "plksr": 25.0, "safmn": 25.0, "omnisr": 25.0, "swinir": 25.0, "hat": 25.0,
                  "dat": 25.0}


def expected_keys(case: str) -> set[str]:
    arch = CASES[case][0]
    family = "realplksr" if case.startswith("realplksr") else arch
    return PUBLIC_KEYS.get(family, set()) | PUBLIC_KEYS.get(case, set())


def random_module(case: str, seed: int = 0) -> Any:
    """A module of the case's shapes with random weights, BatchNorm statistics and SPAN branches."""
    arch, params = CASES[case]
    torch.manual_seed(seed)
    module = registry.get(arch).build(params)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # off the trivial init (zero biases, unit norms, zero tables)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return module.eval()  # SPAN fuses its branches into eval_conv here


def public_file(case: str, folder: Path) -> Path:
    """The checkpoint as the public files are: BasicSR's {'params': ...} wrapper, stored masks included."""
    module = random_module(case)
    sd = dict(module.state_dict())
    for key, shape in STORED_MASKS.get(CASES[case][0], {}).items():
        owner = key.rsplit(".", 1)[0] + "."
        if any(k.startswith(owner) for k in sd):  # the case has that block
            sd[key] = torch.zeros(shape)
    path = folder / f"{case}.pth"
    torch.save({"params": sd}, path)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_public_layout_is_detected_and_loads_strictly(case: str, tmp_path: Path) -> None:
    arch, params = CASES[case]
    module = random_module(case)
    assert expected_keys(case) <= set(module.state_dict()), "the module must use the public key names"
    spec, detected = registry.detect(module.state_dict())
    assert (spec.name, detected) == (arch, params)

    loaded = load_model(str(public_file(case, tmp_path)))  # wrapper, stored masks: as downloaded
    assert (loaded.spec.name, loaded.params) == (arch, {**spec.defaults, **params})
    x = torch.rand(1, 3, 11, 19)  # odd, smaller than the windows of several cases
    with torch.no_grad():
        ref, out = module(x), loaded.module(x)
    assert out.shape == (1, 3, 11 * params["scale"], 19 * params["scale"])
    assert torch.equal(out, ref)


def test_span_fused_conv_equals_the_training_branches() -> None:
    """The public files' eval_conv is recomputed from the branches; srkit fuses once, exactly."""
    module = random_module("span-x4")
    x = torch.rand(2, 3, 9, 14)
    with torch.no_grad():
        fused = module(x)
        module.train()
        branches = module(x)
    module.eval()
    assert float((fused - branches).abs().max()) <= 1e-4 * float(branches.abs().max())


# The released configurations (as in the public files and spandrel's tags), by shapes alone
RELEASED: dict[str, tuple[str, dict[str, Any]]] = {
    "SPAN x4 (48 ch)": ("span", {"scale": 4}),
    "PLKSR x4": ("plksr", {"variant": "plain", "scale": 4, "ccm_type": "CCM"}),
    "RealPLKSR x4": ("plksr", {"scale": 4}),
    "RealPLKSR x2 DySample": ("plksr", {"scale": 2, "dysample": True}),
    "SAFMN x4": ("safmn", {"scale": 4}),
    "SAFMN-L x2": ("safmn", {"scale": 2, "dim": 128, "n_blocks": 16}),
    "Omni-SR x4": ("omnisr", {"scale": 4}),
    "SwinIR-M x4 classical": ("swinir", {"scale": 4}),
    "SwinIR-S x2 lightweight": ("swinir", {"scale": 2, "embed_dim": 60, "depths": [6] * 4, "num_heads": [6] * 4,
                                           "upsampler": "pixelshuffledirect"}),
    "SwinIR-L x4 real-SR": ("swinir", {"scale": 4, "embed_dim": 240, "depths": [6] * 9, "num_heads": [8] * 9,
                                       "upsampler": "nearest+conv", "resi_connection": "3conv"}),
    "SwinIR-M x1 denoise": ("swinir", {"scale": 1, "upsampler": ""}),
    "HAT-S x4": ("hat", {"scale": 4, "embed_dim": 144, "compress_ratio": 24, "squeeze_factor": 24}),
    "HAT x4": ("hat", {"scale": 4}),
    "HAT-L x2": ("hat", {"scale": 2, "depths": [6] * 12, "num_heads": [6] * 12}),
    "DAT-light x2": ("dat", {"scale": 2, "embed_dim": 60, "depth": [18], "num_heads": [6], "split_size": [8, 32],
                             "resi_connection": "3conv", "upsampler": "pixelshuffledirect"}),
    "DAT-S x4": ("dat", {"scale": 4, "split_size": [8, 16]}),
    "DAT x4": ("dat", {"scale": 4, "expansion_factor": 4.0}),
    "DAT-2 x3": ("dat", {"scale": 3, "expansion_factor": 2.0, "split_size": [8, 32]}),
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_configurations_detect_exactly(name: str) -> None:
    arch, extra = RELEASED[name]
    spec = registry.get(arch)
    params = {**spec.defaults, **extra}
    with torch.device("meta"):
        module = spec.build(params)
    found, detected = registry.detect(module.state_dict())  # raises if two architectures claim the file
    assert found.name == arch
    assert {**spec.defaults, **detected} == params


# ---- export, parity, runtime --------------------------------------------------------------------------
def openvino_max_abs(onnx_path: Path, module: Any) -> float:
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    worst = 0.0
    for i, shape in enumerate(OTHER_SHAPES):
        x = real_inputs(shape, 3, seed=20 + i)
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        out = compiled([x])[compiled.output(0)]
        assert out.shape == ref.shape
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.mark.parametrize("case", EXPORT_CASES)
def test_export_parity_and_upscale(case: str, tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    from srkit.runtime import Upscaler

    arch, params = CASES[case]
    spec = registry.get(arch)
    module = random_module(case)
    result = export_model(str(public_file(case, tmp_path)), tmp_path / f"{case}.onnx")
    info = result.info
    assert (info.arch, info.scale, info.size_multiple) == (arch, params["scale"], 1)  # any H/W, no flags
    assert info.receptive_field == spec.receptive_field
    assert info.extra["tiling"] == ("approximate" if spec.global_context else "exact")  # the runtime warns
    assert info.extra["fp16_safe"] == ("true" if spec.fp16_safe else "false")
    assert result.parity is not None and result.parity.passed and result.parity.max_abs <= MAX_ABS
    assert len(result.parity.shapes) == 3
    assert "BatchNormalization" not in result.nodes and "Dropout" not in result.nodes
    assert result.checks["onnxruntime"].startswith("ok")
    assert result.checks["openvino"].startswith("ok (openvino")
    assert openvino_max_abs(result.path, module) <= MAX_ABS

    image = np.ascontiguousarray(photos["chelsea"][:170, :230])  # 2 x 2 tiles at the widest overlap
    with Upscaler(result.path, backend="ort") as up:
        untiled = up.upscale(image)
    rf = spec.receptive_field
    tile = 2 * rf + 24
    with Upscaler(result.path, backend="ort", tile=tile, tile_overlap=rf) as up:
        plan = up.tile_plan(*image.shape[:2])
        tiled = up.upscale(image)
    s = params["scale"]
    assert untiled.shape == tiled.shape == (170 * s, 230 * s, 3)
    assert untiled.dtype == tiled.dtype == np.uint8
    assert plan is not None and plan.count >= 4, "the image must really be cut into tiles"
    assert psnr(tiled / 255.0, untiled / 255.0) >= TILED_MIN_PSNR[arch]


def test_cli_exports_a_public_checkpoint_without_flags_and_upscales_tiled_and_untiled(
        tmp_path: Path, photos: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]) -> None:
    """`srkit export FILE` then `srkit upscale -m`: a SwinIR file as released, no --arch / --scale."""
    from srkit.cli.main import run
    from srkit.imageio import read_image, write_image

    case = "swinir-x4-lightweight"
    onnx = tmp_path / "swinir.onnx"
    assert run(["export", str(public_file(case, tmp_path)), "-o", str(onnx)]) == 0, capsys.readouterr().err
    src = write_image(tmp_path / "in.png", np.ascontiguousarray(photos["coffee"][:170, :201]))
    rf = registry.get("swinir").receptive_field
    tiled = ["--tile", str(2 * rf + 24), "--tile-overlap", str(rf)]
    for name, extra in (("untiled.png", []), ("tiled.png", tiled)):
        code = run(["upscale", str(src), "-m", str(onnx), "-o", str(tmp_path / name), "--backend", "ort", *extra])
        assert code == 0, capsys.readouterr().err
        assert read_image(tmp_path / name).shape == (680, 804, 3)
