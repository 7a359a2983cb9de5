"""Tiling: the plan, the blending windows, and tiled == untiled for every registered architecture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from srkit import meta, quality
from srkit.errors import InputError
from srkit.runtime import tiling

# Tiny hyperparameters per architecture, so each export takes a second or two. Every registered architecture
# needs an entry (test_every_architecture_is_tiled fails otherwise) or a reason in NOT_TILED.
_SWIN = {"in_channels": 3, "embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 8, "mlp_ratio": 2.0,
         "resi_connection": "1conv", "qkv_bias": True, "patch_norm": True, "img_range": 1.0}
TINY: dict[str, dict[str, object]] = {
    "espcn": {"scale": 3, "in_channels": 1, "feat": 8, "feat2": 8},
    "srcnn": {"scale": 2, "in_channels": 1, "f1": 8, "f2": 8},
    "fsrcnn": {"scale": 2, "in_channels": 1, "d": 8, "s": 4, "m": 1},
    "edsr": {"scale": 2, "num_feat": 8, "num_block": 1},
    "rcan": {"scale": 2, "num_feat": 16, "num_group": 1, "num_block": 1, "squeeze_factor": 4},
    "rdn": {"scale": 2, "num_features": 8, "growth_rate": 8, "num_blocks": 1, "num_layers": 2},
    # x2: pixel-unshuffle first, so a size multiple of 2
    "rrdbnet": {"scale": 2, "num_feat": 8, "num_block": 1, "num_grow_ch": 4},
    "srresnet": {"scale": 2, "num_feat": 8, "num_block": 1},
    "srvgg": {"scale": 2, "num_feat": 8, "num_conv": 2},
    "vdsr": {"scale": 2, "num_feat": 8, "num_layers": 3},
    # the ncnn tools' networks have no width hyperparameter: the released size (unpadded convs, padded inside)
    "waifu2x": {"scale": 2},
    "realcugan": {"scale": 2},  # size multiple 2, SE blocks (global)
    # the community model database's architectures (tiny widths as in tests/test_archs_modern.py)
    "span": {"scale": 2, "in_channels": 3, "feature_channels": 8, "norm": True},
    "plksr": {"variant": "plain", "scale": 2, "ccm_type": "CCM", "dim": 16, "n_blocks": 1, "use_ea": True,
              "lk_type": "PLK", "kernel_size": 7, "split_ratio": 0.25},
    "safmn": {"scale": 2, "dim": 16, "n_blocks": 1, "ffn_scale": 2.0},
    "omnisr": {"scale": 2, "in_channels": 3, "num_feat": 16, "res_num": 1, "block_num": 1, "window_size": 8,
               "pe": True, "bias": True},
    "swinir": {**_SWIN, "scale": 2, "upsampler": "pixelshuffle", "num_feat": 16},
    "hat": {"in_channels": 3, "embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 8,
            "overlap_ratio": 0.5, "compress_ratio": 3, "squeeze_factor": 6, "mlp_ratio": 2.0, "qkv_bias": True,
            "patch_norm": True, "resi_connection": "1conv", "num_feat": 16, "scale": 2},
    "dat": {"in_channels": 3, "embed_dim": 32, "depth": [2, 1], "num_heads": [2, 2], "split_size": [2, 4],
            "expansion_factor": 2.0, "qkv_bias": True, "resi_connection": "1conv", "scale": 2,
            "upsampler": "pixelshuffle", "num_feat": 16},
}
# architectures deliberately not run tiled here, with the reason (none today)
NOT_TILED: dict[str, str] = {}
# Tiled vs untiled, PSNR in dB (0-1 range, float output). Local architectures (ArchSpec.global_context False):
# the overlap covers the receptive field, so tiles are exact to float rounding (>= 50 dB). Global or anchored
# ones (channel attention, SE blocks, GroupNorm, windows / pooling cells anchored at the origin) only
# approximate it: the bound per architecture is what docs/architectures.md records for these tiny random
# models, with a margin.
EXACT_MIN_PSNR = 50.0
APPROXIMATE_MIN_PSNR: dict[str, float] = {
    "dat": 40.0,  # measured 44.3 dB (channel attention, global pooling)
    "hat": 22.0,  # 24.8 dB (channel attention in every block)
    "omnisr": 17.0,  # 20.0 dB (squeeze-excitation, grid attention over the whole image)
    "plksr": 50.0,  # identical: this tiny PLKSR (1 block, 7x7) sees less than the 64-pixel overlap
    "rcan": 23.0,  # 26.4 dB (channel attention)
    "realcugan": 45.0,  # 95.0 dB with these random weights (SE gains saturate); 41-50 dB with the real ones
    "safmn": 20.0,  # 23.0 dB (pooling cells anchored at the origin)
    "swinir": 25.0,  # 27.9 dB (windows anchored at the origin)
}
BACKENDS = ["ort", "openvino"]


def _registered() -> list[str]:
    try:
        from srkit.models import registry
    except ImportError:  # torch missing: the parametrisation still needs names
        return sorted(TINY)
    return registry.names()


# ---- the plan -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [37, 64, 65, 200, 513])
@pytest.mark.parametrize(("tile", "overlap", "multiple"), [(32, 6, 1), (64, 8, 4), (48, 12, 2)])
def test_plan_covers_with_fixed_tiles(length: int, tile: int, overlap: int, multiple: int) -> None:
    padded = length + (-length) % multiple
    plan = tiling.plan_tiles(padded, padded, tile=tile, overlap=overlap, receptive_field=overlap, scale=2,
                             multiple=multiple)
    assert plan.tile_h == min(tile, padded)
    assert plan.xs[0] == 0 and plan.xs[-1] + plan.tile_w == padded
    assert all(x % multiple == 0 for x in plan.xs)
    assert list(plan.xs) == sorted(set(plan.xs))
    # consecutive tiles share at least two overlaps, so every pixel has a tile with full context
    assert all(b - a <= plan.tile_w - 2 * overlap for a, b in zip(plan.xs, plan.xs[1:], strict=False))


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_windows_sum_to_one_and_ignore_truncated_context(scale: int) -> None:
    rf, overlap, tile, length = 4, 7, 40, 131
    plan = tiling.plan_tiles(length, length, tile=tile, overlap=overlap, receptive_field=rf, scale=scale)
    windows = tiling.axis_windows(plan.xs, tile, length, plan)
    total = np.zeros(length * scale)
    for x, w in zip(plan.xs, windows, strict=True):
        assert w.shape == (tile * scale,)
        if x > 0:
            assert np.all(w[: rf * scale] == 0), "pixels that saw a truncated context must get no weight"
        if x + tile < length:
            assert np.all(w[-rf * scale :] == 0)
        total[x * scale : (x + tile) * scale] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_window_ramp_is_raised_cosine() -> None:
    plan = tiling.plan_tiles(100, 100, tile=40, overlap=10, receptive_field=2, scale=1)
    w = tiling.axis_windows(plan.xs, 40, 100, plan)[1]  # an interior tile
    ramp = w[2:18]
    assert np.all(np.diff(ramp) > 0) and 0 < ramp[0] < 0.05 and 0.95 < ramp[-1] < 1


def test_plan_refuses_overlap_below_receptive_field() -> None:
    with pytest.raises(InputError, match="receptive field"):
        tiling.plan_tiles(100, 100, tile=32, overlap=3, receptive_field=4, scale=2)


def test_plan_refuses_tile_too_small_for_overlap() -> None:
    with pytest.raises(InputError, match="too small"):
        tiling.plan_tiles(100, 100, tile=20, overlap=10, receptive_field=4, scale=2)


def test_plan_refuses_tile_not_multiple() -> None:
    with pytest.raises(InputError, match="multiple"):
        tiling.plan_tiles(100, 100, tile=30, overlap=4, receptive_field=4, scale=2, multiple=4)


@pytest.mark.parametrize(("value", "expected"), [(None, None), (0, None), ("auto", "auto"), ("128", 128),
                                                 (96, 96), ((64, 48), (64, 48))])
def test_parse_tile(value: object, expected: object) -> None:
    assert tiling.parse_tile(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["big", "-3", -1, (0, 4)])
def test_parse_tile_rejects(bad: object) -> None:
    with pytest.raises(InputError):
        tiling.parse_tile(bad)  # type: ignore[arg-type]


def test_auto_tile_follows_budget_formula() -> None:
    small = tiling.auto_tile_size(scale=4, features=64, overlap=40, budget_bytes=256 << 20)
    large = tiling.auto_tile_size(scale=4, features=64, overlap=40, budget_bytes=2 << 30)
    assert small < large
    expected = math.isqrt((2 << 30) // (4 * 2 * 64 * 17))
    assert large == min(expected, tiling.MAX_AUTO_TILE)
    assert tiling.auto_tile_size(scale=2, features=64, overlap=8, multiple=4, budget_bytes=300 << 20) % 4 == 0
    # never smaller than what the overlap needs
    assert tiling.auto_tile_size(scale=4, features=64, overlap=40, budget_bytes=1) >= 4 * 40


def test_run_tiled_identity_process_is_exact() -> None:
    """With a pointwise 'model' (nearest x2), blending must reproduce the untiled result bit for bit-ish."""
    rng = np.random.default_rng(0)
    image = rng.random((77, 91, 3), dtype=np.float32)
    plan = tiling.plan_tiles(77, 91, tile=30, overlap=5, receptive_field=0, scale=2)

    def nearest(t: np.ndarray) -> np.ndarray:
        return t.repeat(2, axis=0).repeat(2, axis=1)

    out = tiling.run_tiled(image, plan, nearest, out_shape=(154, 182), out_channels=3, out_dtype=np.float32)
    np.testing.assert_allclose(out, nearest(image), atol=1e-6)


# ---- tiled == untiled through real exported models ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {}


def _export_tiny(name: str, folder: Path) -> Path:
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    from srkit.export import ExportOptions, export_model
    from srkit.models import registry

    spec = registry.get(name)
    params = {**spec.defaults, **TINY[name]}
    torch.manual_seed(0)
    module = spec.build(params)
    with torch.no_grad():  # strong random weights, so the output depends visibly on every input pixel
        for p in module.parameters():
            if p.ndim == 4:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))
    checkpoint = folder / f"{name}.safetensors"
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    safetensors_torch.save_file(state, str(checkpoint),
                                metadata={"srkit.arch": name, "srkit.params": json.dumps(params)})
    out = folder / f"{name}.onnx"
    export_model(str(checkpoint), out, options=ExportOptions(verify=False))
    return out


def test_every_architecture_is_tiled() -> None:
    """A newly registered architecture must get tiny hyperparameters here (or a stated reason not to)."""
    pytest.importorskip("torch")
    from srkit.models import registry

    missing = [name for name in registry.names() if name not in TINY and name not in NOT_TILED]
    assert not missing, f"add tiny hyperparameters to tests/test_tiling.py TINY for: {', '.join(missing)}"
    approximate = {name for name in TINY if registry.get(name).global_context}
    assert approximate == set(APPROXIMATE_MIN_PSNR), "every global / anchored architecture needs its bound"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", _registered())
def test_tiled_equals_untiled(arch: str, backend: str, tiny_models: dict[str, Path], photos: dict[str, np.ndarray],
                              tmp_path_factory: pytest.TempPathFactory) -> None:
    if arch in NOT_TILED:
        pytest.skip(NOT_TILED[arch])
    if arch not in TINY:
        pytest.fail(f"no tiny hyperparameters for {arch} in tests/test_tiling.py TINY")
    from srkit.runtime import Upscaler

    if backend not in Upscaler.available_backends():
        pytest.skip(f"backend {backend} not installed")
    if arch not in tiny_models:
        tiny_models[arch] = _export_tiny(arch, tmp_path_factory.mktemp(arch))
    with Upscaler(tiny_models[arch], backend=backend) as up:
        rf, multiple, scale = up.info.receptive_field, up.info.size_multiple, up.info.scale
        global_context = not meta.tiling_is_exact(up.info)
    tile = 2 * rf + 24
    tile += (-tile) % multiple
    # odd sides on purpose, large enough for 2 x 2 tiles at the widest overlap (64: 152-pixel tiles)
    h, w = max(121, tile + 19), max(135, tile + 43)
    image = np.ascontiguousarray(photos["chelsea"][:h, :w, :3]).astype(np.float32) / 255.0
    with Upscaler(tiny_models[arch], backend=backend) as up:
        untiled = up.upscale(image)
    with Upscaler(tiny_models[arch], backend=backend, tile=tile, tile_overlap=rf) as up:
        plan = up.tile_plan(*image.shape[:2])
        assert plan is not None and plan.count >= 4, "the test image must really be cut into tiles"
        tiled = up.upscale(image)
    assert untiled.shape == tiled.shape == (h * scale, w * scale, 3)
    assert float(untiled.std()) > 0.01, "a (nearly) constant output would prove nothing"
    value = quality.psnr(tiled, untiled, peak=1.0)
    bound = APPROXIMATE_MIN_PSNR[arch] if global_context else EXACT_MIN_PSNR
    assert value >= bound, f"{arch} tiled vs untiled on {backend}: {value:.1f} dB (bound {bound})"


# ---- through the bundled model: dtypes, alpha, static shapes, bounded memory -----------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiled_rgba_and_integer_dtypes_match_untiled(espcn_x3_onnx: Path, sample_rgb: np.ndarray,
                                                     dtype: type) -> None:
    from srkit.runtime import Upscaler

    rgb = sample_rgb[:90, :110].astype(dtype) * (257 if dtype == np.uint16 else 1)
    alpha = np.full(rgb.shape[:2], np.iinfo(dtype).max, dtype=dtype)
    alpha[:, :30] = 0  # a transparent band exercises the colour fill too
    rgba = np.dstack([rgb, alpha])
    with Upscaler(espcn_x3_onnx, backend="ort") as up:
        untiled = up.upscale(rgba)
    with Upscaler(espcn_x3_onnx, backend="ort", tile=40) as up:
        tiled = up.upscale(rgba)
    assert tiled.dtype == dtype and tiled.shape == (270, 330, 4)
    diff = np.abs(tiled.astype(np.int64) - untiled.astype(np.int64))
    assert diff.max() <= 1  # integer rounding of equal floats can differ by one step at most


def test_tiled_gray_stays_gray(espcn_x3_onnx: Path, sample_rgb: np.ndarray) -> None:
    from srkit.runtime import Upscaler

    gray = sample_rgb[:70, :80, 1]
    with Upscaler(espcn_x3_onnx, backend="ort", tile=32, tile_overlap=4) as up:
        out = up.upscale(gray)
    assert out.shape == (210, 240) and out.dtype == np.uint8


def test_tile_overlap_below_receptive_field_is_refused(espcn_x3_onnx: Path) -> None:
    from srkit.runtime import Upscaler

    with pytest.raises(InputError, match="receptive field"):
        Upscaler(espcn_x3_onnx, backend="ort", tile=64, tile_overlap=1)


def test_auto_tile_is_a_valid_size(espcn_x3_onnx: Path) -> None:
    from srkit.runtime import Upscaler

    up = Upscaler(espcn_x3_onnx, backend="ort", tile="auto", memory_budget=64 << 20)
    assert isinstance(up.tile, int) and up.tile >= 4 * up.tile_overlap


def test_huge_image_is_tiled_automatically(espcn_x3_onnx: Path) -> None:
    """Untiled, a 16000x12000 image would need tens of GB: the default path tiles it (and says so)."""
    from srkit.runtime import Upscaler, upscaler

    h, w = 16000, 12000  # a lazily zeroed array: no pages are touched by the planning
    big = np.zeros((h, w, 3), dtype=np.uint8)
    up = Upscaler(espcn_x3_onnx, backend="ort")
    assert up.tile is None and up.route(big) == "tiled"
    plan = up.tile_plan(h, w)
    assert plan is not None and plan.count > 100
    band_bytes = plan.tile_h * 3 * w * 3 * 3 * 4
    assert band_bytes < upscaler.UNTILED_BUDGET_BYTES  # the float band is what tiling holds at once


def test_auto_tiling_gives_the_untiled_pixels_and_says_so(espcn_x3_onnx: Path, sample_rgb: np.ndarray,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from srkit.runtime import Upscaler, upscaler

    notes: list[str] = []
    with Upscaler(espcn_x3_onnx, backend="ort") as up:
        untiled = up.upscale(sample_rgb)
    monkeypatch.setattr(upscaler, "UNTILED_BUDGET_BYTES", 1 << 20)  # as if this photo were huge
    with Upscaler(espcn_x3_onnx, backend="ort", on_note=notes.append) as up:
        assert up.route(sample_rgb) == "tiled"
        tiled = up.upscale(sample_rgb)
    assert len(notes) == 1 and "tiling it automatically" in notes[0]
    assert quality.psnr(tiled, untiled, peak=255.0) >= 50.0


def test_static_shape_model_tiles_at_its_shape(tmp_path: Path, sample_rgb: np.ndarray,
                                                espcn_x3_onnx: Path) -> None:
    pytest.importorskip("torch")
    from srkit.export import ExportOptions, export_model
    from srkit.runtime import Upscaler

    static = tmp_path / "static.onnx"
    export_model("espcn-x3", static, options=ExportOptions(static=(48, 48), verify=False))
    image = sample_rgb[:100, :130]
    with Upscaler(static, backend="ort") as up:
        assert up.tile == (48, 48)
        out = up.upscale(image)
        small = up.upscale(sample_rgb[:20, :30])  # smaller than the static shape: padded up to it
    with Upscaler(espcn_x3_onnx, backend="ort") as up:
        ref = up.upscale(image)
    assert out.shape == ref.shape and small.shape == (60, 90, 3)
    assert quality.psnr(out, ref, peak=255.0) >= 50.0


@pytest.mark.slow
def test_tiling_bounds_peak_memory(espcn_x3_onnx: Path) -> None:
    """Peak RSS of a 2000x1500 photo x3, tiled vs untiled, each in its own process (scripts/)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "measure_tiled_memory.py"
    if not script.is_file():
        pytest.skip("scripts/measure_tiled_memory.py is not in this checkout")
    peaks = {}
    for tile in ("256", "0"):
        command = [sys.executable, str(script), "--model", str(espcn_x3_onnx), "--size", "2000x1500",
                   "--tile", tile]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=900, check=True)
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        peaks[tile] = report["peak_rss_mb"] - report["peak_rss_mb_before_upscale"]
        output_mb = report["output_mb"]
    # tiled: the uint8 output plus a band and a tile; the default path ("0": no --tile) tiles a photo this big
    # automatically, so it stays within a few GB too (untiled it held several float32 copies of the output)
    assert peaks["256"] < 4 * output_mb, peaks
    assert peaks["0"] < 2500, peaks
