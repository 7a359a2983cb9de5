"""Hostile input, odd numbers and signals against the command line (issue 16, part A): every case ends as
one `srkit: error:` line with exit 2 (or a clean exit after a signal), loses no result and leaves no temp file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srkit._fs import atomic_path, is_temp_name, temp_affixes
from srkit.cli.main import clean_exit_on_signals, cli, run
from srkit.imageio import read_image, write_image

ROOT = Path(__file__).resolve().parents[1]


def upscale(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(["upscale", *args, "--backend", "ort"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("srkit: error:"), err
    return lines[0]


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def put(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(path, image)


@pytest.fixture(scope="module")
def photo(sample_rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(sample_rgb[:40, :52])


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


# ---- 2: two inputs, one output name ----------------------------------------------------------------------
def test_same_name_in_two_folders_is_refused_before_any_work(
    tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two = put(tmp_path / "H1" / "x.png", photo), put(tmp_path / "H2" / "x.png", photo[::-1])
    out = tmp_path / "out"
    for args in ([str(one), str(two)], [str(tmp_path / "H1"), str(tmp_path / "H2")]):
        code, _, err = upscale(capsys, *args, "-m", str(espcn_x3_onnx), "-o", str(out))
        assert code == 2
        line = one_error_line(err)
        assert str(one) in line and str(two) in line and "both be written" in line, line
        assert not out.exists()


def test_jpg_and_png_of_one_name_with_format_png_are_refused(
    tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    put(tmp_path / "in" / "a.jpg", photo)
    write_image(tmp_path / "in" / "a.png", photo[::-1])
    out = tmp_path / "out"
    code, _, err = upscale(capsys, str(tmp_path / "in"), "-m", str(espcn_x3_onnx), "-o", str(out), "--format", "png")
    assert code == 2
    line = one_error_line(err)
    assert "a.jpg" in line and "a.png" in line, line
    assert not out.exists()
    # without --format each keeps its own suffix: both results arrive
    code, out_text, err = upscale(capsys, str(tmp_path / "in"), "-m", str(espcn_x3_onnx), "-o", str(out))
    assert code == 0, err
    assert files_under(out) == ["a.jpg", "a.png"] and "upscaled 2 of 2" in out_text


def test_one_file_named_twice_is_upscaled_once(
    tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_image(tmp_path / "a.png", photo)
    code, _, err = upscale(capsys, str(src), str(src), "-m", str(espcn_x3_onnx), "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert files_under(tmp_path / "out") == ["a.png"]
    # one file and `-o folder/` (not there yet): the trailing slash says it is a folder
    code, _, err = upscale(capsys, str(src), "-m", str(espcn_x3_onnx), "-o", f"{tmp_path / 'new'}/")
    assert code == 0, err
    assert files_under(tmp_path / "new") == ["a.png"]


# ---- 5 and 6: the output folder inside the input folder; a folder with one image -------------------------
def test_output_folder_inside_the_input_folder_is_not_read_back(
    tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "a.png", photo)
    write_image(photos / "b.png", photo[::-1])
    for _ in range(2):  # the second identical run must work as the first did
        code, out, err = upscale(capsys, str(photos), "-m", str(espcn_x3_onnx), "-o", str(photos / "out"))
        assert code == 0, err
        assert "upscaled 2 of 2" in out
        assert files_under(photos / "out") == ["a.png", "b.png"]
    # -o naming the input folder itself is refused (every output would replace or sit among the inputs)
    code, _, err = upscale(capsys, str(photos), "-m", str(espcn_x3_onnx), "-o", str(photos), "--format", "jpg")
    assert code == 2 and "is the input folder" in one_error_line(err)


def test_default_output_folder_is_not_read_back(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`srkit upscale .` twice, then into another subfolder: srkit's own `upscaled_xN` is never an input."""
    put(tmp_path / "a.png", photo)
    put(tmp_path / "b.png", photo[::-1])
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        code, out, err = upscale(capsys, ".", "-m", str(espcn_x3_onnx))
        assert code == 0, err
        assert "upscaled 2 of 2" in out
        assert files_under(tmp_path / "upscaled_x3") == ["a.png", "b.png"]
    code, out, err = upscale(capsys, ".", "-m", str(espcn_x3_onnx), "-o", "again")
    assert code == 0, err
    assert "skipping upscaled_x3 (an srkit output folder)" in err
    assert "upscaled 2 of 2" in out
    assert files_under(tmp_path / "again") == ["a.png", "b.png"]


def test_folder_holding_one_image(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    write_image(tmp_path / "in" / "sub" / "x.png", photo)
    code, _, err = upscale(capsys, str(tmp_path / "in"), "-m", str(espcn_x3_onnx), "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert files_under(tmp_path / "out") == ["sub/x.png"]
    assert read_image(tmp_path / "out" / "sub" / "x.png").shape == (120, 156, 3)


# ---- 9: absurd numbers -------------------------------------------------------------------------------------
ABSURD = {
    "threads-huge": ["upscale", "{img}", "-m", "{model}", "--threads", "100000"],
    "threads-negative": ["upscale", "{img}", "-m", "{model}", "--threads", "-1"],
    "threads-zero": ["upscale", "{img}", "-m", "{model}", "--threads", "0"],
    "device-multi-empty": ["upscale", "{img}", "-m", "{model}", "--backend", "openvino", "--device", "MULTI:"],
    "tile-superscript": ["upscale", "{img}", "-m", "{model}", "--tile", "²"],
    "bench-size": ["bench", "-m", "{model}", "--size", "100000x100000"],
    "bench-threads": ["bench", "-m", "{model}", "--threads", "100000"],
    "bench-threads-negative": ["bench", "-m", "{model}", "--threads", "-1"],
    "export-static": ["export", "espcn-x3", "-o", "{tmp}/big.onnx", "--static", "100000x100000"],
    "output-extension": ["upscale", "{img}", "-m", "{model}", "-o", "{tmp}/out.txt"],
}


@pytest.mark.parametrize("case", sorted(ABSURD))
def test_absurd_numbers_are_one_error_line(case: str, tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    img = write_image(tmp_path / "in.png", photo)
    args = [a.format(img=img, model=espcn_x3_onnx, tmp=tmp_path) for a in ABSURD[case]]
    start = time.perf_counter()
    assert run(args) == 2
    one_error_line(capsys.readouterr().err)  # and no info line before it: refused before the model ran
    assert time.perf_counter() - start < 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


@pytest.mark.parametrize(("codec", "name", "fragment"), [
    ("aac", "out.mp4", "encodes audio, not video"),
    ("libx264", "clip.webm", "cannot hold libx264"),
])
def test_codec_that_does_not_fit_is_refused_before_work(
    codec: str, name: str, fragment: str, tmp_path: Path, espcn_x3_onnx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("av")
    from srkit.data import write_sample_clip

    clip = write_sample_clip(tmp_path / "clip.mp4", size=(32, 24), frames=2, fps=12, audio=False)
    capsys.readouterr()
    code, _, err = upscale(capsys, str(clip), "-m", str(espcn_x3_onnx), "-o", str(tmp_path / name), "--codec", codec)
    assert code == 2
    assert fragment in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


# ---- 10: signals -------------------------------------------------------------------------------------------
def _srkit_process(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "srkit", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(found: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not found():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached the point to interrupt"
        time.sleep(0.05)


def _assert_clean_signal_exit(proc: subprocess.Popen[str], signum: int) -> None:
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"srkit: error: terminated by {signal.Signals(signum).name}", err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_mid_video_removes_the_half_written_file(signum: int, tmp_path: Path, espcn_x3_onnx: Path) -> None:
    pytest.importorskip("av")
    from srkit.data import write_sample_clip

    clip = write_sample_clip(tmp_path / "clip.mp4", size=(320, 240), frames=240, fps=24, audio=False)
    out = tmp_path / "out"
    out.mkdir()
    proc = _srkit_process(["upscale", str(clip), "-m", str(espcn_x3_onnx), "-o", str(out / "big.mp4"),
                           "--backend", "ort", "--threads", "1"], tmp_path)
    _wait_for(lambda: any(p.name.endswith(".part.mp4") for p in out.iterdir()), proc)
    time.sleep(0.3)  # frames are being written into it
    _assert_clean_signal_exit(proc, signum)
    assert list(out.iterdir()) == []


def test_sigterm_mid_quantize_removes_its_temp_folder(tmp_path: Path, espcn_x3_onnx: Path) -> None:
    pytest.importorskip("onnxruntime.quantization")
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = _srkit_process(["quantize", str(espcn_x3_onnx), "-o", str(tmp_path / "q.onnx"), "--samples", "8",
                           "--patch", "32", "--max-psnr-drop", "0.001"], tmp_path, env={"TMPDIR": str(temp)})
    _wait_for(lambda: any(p.name.startswith("srkit-quant-") for p in temp.iterdir()), proc)
    _assert_clean_signal_exit(proc, signal.SIGTERM)
    assert [p.name for p in temp.iterdir() if p.name.startswith("srkit-")] == []  # (.ses: a library's, not ours)
    assert not (tmp_path / "q.onnx").exists()


def test_ignored_hangup_stays_ignored() -> None:
    """Under nohup SIGHUP is ignored by the parent's choice; srkit must not start to die of it."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or what an earlier test's library left in this process
    try:
        with clean_exit_on_signals():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            if before is signal.SIG_DFL:  # srkit installs its own where nothing else has
                assert signal.getsignal(signal.SIGTERM) is not before
        assert signal.getsignal(signal.SIGTERM) is before  # restored after the command
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_folder_walk_skips_srkit_temp_files(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    put(tmp_path / "in" / "a.png", photo)
    prefix, suffix = temp_affixes(tmp_path / "in" / "b.png")  # a killed run's leftover, named as atomic_path does
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=tmp_path / "in")
    os.close(fd)
    Image.fromarray(photo).save(name, format="PNG")
    assert is_temp_name(Path(name).name)
    code, _, err = upscale(capsys, str(tmp_path / "in"), "-m", str(espcn_x3_onnx), "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert "warning" not in err
    assert files_under(tmp_path / "out") == ["a.png"]


# ---- 13: long names, the extension checked first, animated and multi-page inputs ---------------------------
def test_longest_legal_output_name_is_written(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    src = write_image(tmp_path / "in.png", photo)
    name = "é" * 60 + "a" * 129 + ".png"  # 253 bytes in UTF-8
    assert len(name.encode()) == 253
    code, _, err = upscale(capsys, str(src), "-m", str(espcn_x3_onnx), "-o", str(tmp_path / name))
    assert code == 0, err
    assert read_image(tmp_path / name).shape == (120, 156, 3)
    prefix, suffix = temp_affixes(tmp_path / name)
    assert len((prefix + "x" * 8 + suffix).encode()) < 100 and suffix == ".part.png"
    assert is_temp_name(prefix + "abcd_123" + suffix)


def _animated(kind: str, path: Path, photo: np.ndarray) -> Path:
    frames = [Image.fromarray(photo), Image.fromarray(np.ascontiguousarray(photo[::-1]))]
    options = {"duration": 100} if kind in ("apng", "webp") else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], **options)
    return path


# GIF is not an input format of srkit; these are the ones that can hold several frames
@pytest.mark.parametrize(("kind", "name"), [("apng", "anim.png"), ("webp", "anim.webp"), ("tiff", "pages.tif")])
def test_animated_or_multipage_input_says_only_the_first_frame_is_used(
    kind: str, name: str, tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _animated(kind, tmp_path / name, photo)
    dst = tmp_path / f"out{src.suffix}"
    code, _, err = upscale(capsys, str(src), "-m", str(espcn_x3_onnx), "-o", str(dst))
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("srkit: warning:")]
    assert len(warnings) == 1 and "2 frames" in warnings[0] and "only the first" in warnings[0], err
    with Image.open(dst) as img:
        assert getattr(img, "n_frames", 1) == 1 and img.size == (156, 120)


# ---- 14: file modes follow the umask -------------------------------------------------------------------------
@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_outputs_get_the_mode_the_umask_gives(mask: int, mode: int, umask: None, tmp_path: Path,
                                              espcn_x3_onnx: Path, photo: np.ndarray,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    src = write_image(tmp_path / "in.png", photo)
    existing = write_image(tmp_path / "existing.png", photo)
    os.chmod(existing, 0o644)
    os.umask(mask)
    for dst in (tmp_path / "new.png", existing):
        code, _, err = upscale(capsys, str(src), "-m", str(espcn_x3_onnx), "-o", str(dst))
        assert code == 0, err
        assert dst.stat().st_mode & 0o777 == mode, oct(dst.stat().st_mode)
    report = tmp_path / "report.txt"
    with atomic_path(report) as tmp:
        tmp.write_text("x")
    assert report.stat().st_mode & 0o777 == mode


# ---- 17: noise -----------------------------------------------------------------------------------------------
def test_fp16_export_default_name_does_not_replace_fp32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "espcn-x2.onnx").write_bytes(b"the fp32 export stands here")
    assert run(["export", "espcn-x2", "--fp16"]) == 0, capsys.readouterr().err
    assert (tmp_path / "espcn-x2.onnx").read_bytes() == b"the fp32 export stands here"
    assert (tmp_path / "espcn-x2-fp16.onnx").is_file()


def test_image_like_output_for_a_folder_is_refused(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "a.png", photo)
    write_image(tmp_path / "in" / "b.png", photo)
    for inputs in ([str(tmp_path / "in")], [str(tmp_path / "in" / "a.png"), str(tmp_path / "in" / "b.png")]):
        code, _, err = upscale(capsys, *inputs, "-m", str(espcn_x3_onnx), "-o", str(tmp_path / "x.png"))
        assert code == 2 and "names an image file" in one_error_line(err)
        assert not (tmp_path / "x.png").exists()


def test_bench_and_upscale_take_the_same_backend_names(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from srkit.runtime import registry

    src = write_image(tmp_path / "in.png", photo)
    assert run(["bench", "-m", str(espcn_x3_onnx), "--backend", "nonsense", "--min-time", "0.1", "--no-quality"]) == 2
    assert "Invalid value for '--backend'" in one_error_line(capsys.readouterr().err)
    # an alias of the registry works for upscale as it does for bench
    assert run(["upscale", str(src), "-m", str(espcn_x3_onnx), "--backend", "onnxruntime"]) == 0
    capsys.readouterr()
    for command, extra in (("upscale", "auto"), ("bench", "all")):
        param = next(p for p in cli.commands[command].params if p.name == "backend")
        for name in [extra, *registry.names(), *registry.ALIASES]:
            assert param.type.convert(name, param, None) == registry.ALIASES.get(name, name)


def test_every_option_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    missing = [f"{name} {opt.opts[0]}" for name, command in cli.commands.items() for opt in command.params
               if opt.param_type_name == "option" and not getattr(opt, "help", None)]
    assert missing == []
    for name in cli.commands:
        assert run([name, "--help"]) == 0
        text = capsys.readouterr().out
        assert text.startswith(f"Usage: srkit {name}")
        if name in ("upscale", "bench"):
            assert "--backend [" in text and "|ort|" in text


def test_pyproject_all_extra_and_spdx_licence() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert "quant" in extras["all"][0].split("[")[1]  # `srkit[all]` can run `srkit quantize --backend openvino`
    assert project["project"]["license"] == "Apache-2.0"  # an SPDX string: no setuptools deprecation box
    assert any(r.startswith("setuptools>=77") for r in project["build-system"]["requires"])
