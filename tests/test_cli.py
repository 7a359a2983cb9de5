"""The command line as users meet it: exit codes, one-line errors, nothing left behind, instant --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srkit import quality
from srkit.cli.main import run


def srkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SRKIT_CACHE": str(Path(cwd or ".").resolve() / ".cache")}
    return subprocess.run([sys.executable, "-m", "srkit", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def assert_user_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("srkit: error:"), proc.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_help_is_fast_and_imports_no_heavy_package() -> None:
    code = (
        "import json, sys; from srkit.cli.main import run; rc = run(['--help']); "
        "heavy = [m for m in ('torch', 'onnxruntime', 'openvino', 'tensorrt', 'onnx', 'av', 'nncf') "
        "if m in sys.modules]; print(json.dumps([rc, heavy]), file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == [0, []], proc.stderr
    assert "export" in proc.stdout and "upscale" in proc.stdout
    # speed is not asserted in unit tests; `python -X importtime -m srkit --help` shows the import cost


def test_zoo_lists_bundled_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["zoo", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["espcn-x3"]["validation"]["gain_db"] > 0
    assert run(["zoo"]) == 0
    out = capsys.readouterr().out
    assert "test gain" in out and "validation set" in out and "no choice looked at" in out
    assert "int8 dB" in out and data["espcn-x3"]["int8"]["psnr_drop_db"] <= 0.3


def test_bundled_name_at_int8_runs_the_shipped_int8_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`-m espcn-x3 --precision int8` needs no `srkit quantize`: the all-int8 model shipped with it runs."""
    out = tmp_path / "x3.png"
    sample = Path(__file__).parents[1] / "srkit" / "data" / "sample.png"
    for backend in ("ort", "openvino"):
        assert run(["upscale", str(sample), "-m", "espcn-x3", "--precision", "int8", "--backend", backend,
                    "-o", str(out)]) == 0
        assert f"{backend} on cpu, int8" in capsys.readouterr().err
        assert Image.open(out).size == (600, 450)
        out.unlink()


def test_export_upscale_info_round_trip(tmp_path: Path) -> None:
    model = tmp_path / "e.onnx"
    proc = srkit("export", "espcn-x3", "-o", str(model), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "parity vs PyTorch fp32" in proc.stdout and "passed" in proc.stdout
    photo = tmp_path / "photo.png"
    Image.open(Path(__file__).parents[1] / "srkit" / "data" / "sample.png").save(photo)
    for backend in ("ort", "openvino"):
        out = tmp_path / f"out-{backend}.png"
        proc = srkit("upscale", str(photo), "-m", str(model), "--backend", backend, "-o", str(out), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert Image.open(out).size == (600, 450)
    a = np.asarray(Image.open(tmp_path / "out-ort.png"))
    b = np.asarray(Image.open(tmp_path / "out-openvino.png"))
    assert quality.psnr(a, b, peak=255.0) >= 50.0
    info = srkit("info", str(model), "--json", cwd=tmp_path)
    assert json.loads(info.stdout)["scale"] == 3


def test_bundled_name_is_exported_on_the_fly(tmp_path: Path) -> None:
    photo = tmp_path / "p.png"
    Image.fromarray(np.full((8, 9, 3), 99, np.uint8)).save(photo)
    proc = srkit("upscale", str(photo), "-m", "espcn-x2", "--backend", "ort", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "p_x2.png").size == (18, 16)


def test_never_overwrites_the_input(tmp_path: Path, espcn_x3_onnx: Path) -> None:
    photo = tmp_path / "p.png"
    Image.fromarray(np.full((8, 9, 3), 99, np.uint8)).save(photo)
    before = photo.read_bytes()
    proc = srkit("upscale", str(photo), "-m", str(espcn_x3_onnx), "-o", str(photo), cwd=tmp_path)
    assert_user_error(proc, "refusing to overwrite")
    assert photo.read_bytes() == before


@pytest.mark.parametrize("content,fragment", [
    (b"", "empty"),
    (b"\x80\x02}q\x00.garbage", "not a readable PyTorch checkpoint"),
    (b"PK\x03\x04truncated zip", "not a readable PyTorch checkpoint"),
])
def test_bad_checkpoints(tmp_path: Path, content: bytes, fragment: str) -> None:
    ckpt = tmp_path / "bad.pth"
    ckpt.write_bytes(content)
    proc = srkit("export", str(ckpt), "-o", str(tmp_path / "x.onnx"), cwd=tmp_path)
    assert_user_error(proc, fragment)
    assert not (tmp_path / "x.onnx").exists()


def test_truncated_real_checkpoint(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from srkit.models.espcn import ESPCN

    ckpt = tmp_path / "espcn.pth"
    torch.save(ESPCN(3).state_dict(), ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    proc = srkit("export", str(ckpt), "-o", str(tmp_path / "x.onnx"), cwd=tmp_path)
    assert_user_error(proc, "truncated or corrupt")
    assert not (tmp_path / "x.onnx").exists()


def test_user_errors_are_one_line(tmp_path: Path, espcn_x3_onnx: Path) -> None:
    assert_user_error(srkit("upscale", "missing.png", "-m", str(espcn_x3_onnx), cwd=tmp_path), "not found")
    assert_user_error(srkit("export", "nope-x9", cwd=tmp_path), "neither a file nor a bundled model")
    assert_user_error(srkit("info", "missing.onnx", cwd=tmp_path), "not found")
    assert_user_error(srkit("upscale", "x.png", cwd=tmp_path), "Missing option")
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(photo)
    assert_user_error(srkit("upscale", str(photo), "-m", str(espcn_x3_onnx), "-o",
                            str(tmp_path / "no" / "such" / "dir.png"), cwd=tmp_path), "does not exist")
    corrupt = tmp_path / "c.png"
    corrupt.write_bytes(photo.read_bytes()[:40])  # a truncated PNG
    assert_user_error(srkit("upscale", str(corrupt), "-m", str(espcn_x3_onnx), cwd=tmp_path), "cannot read image")


def test_unwritable_output_folder(tmp_path: Path, espcn_x3_onnx: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can write into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(photo)
    assert_user_error(srkit("upscale", str(photo), "-m", str(espcn_x3_onnx), "-o", str(locked / "o.png"),
                            cwd=tmp_path), "not writable")


def test_bench_json_keys(tmp_path: Path, espcn_x3_onnx: Path) -> None:
    started = time.perf_counter()
    proc = srkit("bench", "-m", str(espcn_x3_onnx), "--backend", "ort", "--size", "64x48", "--min-time", "0.05",
                 "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    result = report["results"][0]
    for key in ("backend", "device", "precision", "input_size", "fps", "latency_ms", "e2e_fps", "compile_s",
                "peak_rss_mb", "psnr_y", "ssim_y", "bicubic_psnr_y", "parity_psnr_db", "parity_max_abs",
                "nan_count"):
        assert key in result, key
    assert result["input_size"] == [64, 48] and result["nan_count"] == 0
    # the bench measures, through the whole runtime, the gain the zoo recorded at training time
    from srkit.models import zoo

    recorded = zoo.get("espcn-x3").record["validation"]
    assert result["psnr_y"] == pytest.approx(recorded["psnr_y"], abs=0.05)
    assert result["bicubic_psnr_y"] == pytest.approx(recorded["bicubic_psnr_y"], abs=0.01)
    assert result["parity_psnr_db"] >= 50
    assert time.perf_counter() - started < 300
