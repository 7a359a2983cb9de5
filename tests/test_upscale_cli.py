"""`srkit upscale` on real image files written by the tests: bit depth, gray, alpha, EXIF, ICC, folders,
batches, tiling and the error contract (one `srkit: error:` line, exit 2, no partial file)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from srkit.cli.main import run
from srkit.imageio import ORIENTATION_TAG, load_image, read_image, write_image


def upscale(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(["upscale", *args, "--backend", "ort"])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("srkit: error:")]


@pytest.fixture(scope="module")
def photo(sample_rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(sample_rgb[:40, :52])


def test_16bit_png_in_gives_16bit_png_out(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cv2 = pytest.importorskip("cv2")
    deep = (photo.astype(np.uint16) * 257 + 100).astype(np.uint16)
    src = write_image(tmp_path / "deep.png", deep)
    dst = tmp_path / "big.png"
    code, _, err = upscale(capsys, str(src), "-m", str(espcn_x3_onnx), "-o", str(dst))
    assert code == 0, err
    out = cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (120, 156, 3)
    # the low byte carries information: not an 8-bit image stored in 16 bits
    assert len(np.unique(out % 257)) > 10


def test_gray_in_gives_gray_out(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                capsys: pytest.CaptureFixture[str]) -> None:
    src = write_image(tmp_path / "gray.png", np.ascontiguousarray(photo[..., 1]))
    code, _, err = upscale(capsys, str(src), "-m", str(espcn_x3_onnx))
    assert code == 0, err
    with Image.open(tmp_path / "gray_x3.png") as img:
        assert img.mode == "L" and img.size == (156, 120)


def _rgba_with_hidden_colour(photo: np.ndarray, hidden: tuple[int, int, int]) -> np.ndarray:
    h, w = photo.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    inside = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
    rgb = photo.copy()
    rgb[~inside] = hidden  # the colour stored under alpha == 0 is arbitrary; it must not matter
    return np.dstack([rgb, np.where(inside, 255, 0).astype(np.uint8)])


def test_rgba_in_gives_rgba_out_with_clean_alpha_edge(tmp_path: Path, espcn_x3_onnx: Path,
                                                      photo: np.ndarray,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    outs = []
    for name, hidden in (("magenta", (255, 0, 255)), ("black", (0, 0, 0))):
        src = write_image(tmp_path / f"{name}.png", _rgba_with_hidden_colour(photo, hidden))
        code, _, err = upscale(capsys, str(src), "-m", str(espcn_x3_onnx))
        assert code == 0, err
        outs.append(read_image(tmp_path / f"{name}_x3.png"))
    magenta, black = outs
    assert magenta.shape == (120, 156, 4)
    np.testing.assert_array_equal(magenta[..., 3], black[..., 3])
    visible = magenta[..., 3] > 0
    # no colour bleeds in from under the transparent pixels: the visible result does not depend on it
    np.testing.assert_array_equal(magenta[..., :3][visible], black[..., :3][visible])
    # a clean edge: fully opaque inside, fully transparent outside, a thin ramp between
    alpha = magenta[..., 3]
    assert alpha[60, 78] == 255 and alpha[0, 0] == 0
    partial = ((alpha > 0) & (alpha < 255)).sum()
    perimeter = 2 * np.pi * (min(40, 52) / 3) * 3
    assert partial < 3 * perimeter * 3, f"{partial} half-transparent pixels: a smeared edge"


def test_exif_rotated_jpeg_comes_out_upright(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6  # stored turned 90 degrees counter-clockwise
    src = tmp_path / "phone.jpg"
    Image.fromarray(np.ascontiguousarray(np.rot90(photo, 1))).save(src, quality=95, exif=exif.tobytes())
    code, _, err = upscale(capsys, str(src), "-m", str(espcn_x3_onnx), "-o", str(tmp_path / "up.png"))
    assert code == 0, err
    out = read_image(tmp_path / "up.png")
    assert out.shape == (120, 156, 3)  # upright: as wide as the photo, not as tall
    from srkit.runtime import Upscaler

    with Upscaler(espcn_x3_onnx, backend="ort") as up:
        reference = up.upscale(photo)
    assert np.abs(out.astype(np.int16) - reference.astype(np.int16)).mean() < 5


def test_icc_profile_carried_to_output(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = write_image(tmp_path / "tagged.jpg", photo, icc_profile=icc)
    code, _, err = upscale(capsys, str(src), "-m", str(espcn_x3_onnx), "-o", str(tmp_path / "out.webp"))
    assert code == 0, err
    assert load_image(tmp_path / "out.webp").icc_profile == icc


def test_tiled_cli_matches_untiled(tmp_path: Path, espcn_x3_onnx: Path, sample_rgb: np.ndarray,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    src = write_image(tmp_path / "in.png", sample_rgb)
    assert upscale(capsys, str(src), "-m", str(espcn_x3_onnx), "-o", str(tmp_path / "a.png"))[0] == 0
    code, _, err = upscale(capsys, str(src), "-m", str(espcn_x3_onnx), "-o", str(tmp_path / "b.png"),
                           "--tile", "64", "--tile-overlap", "6")
    assert code == 0, err
    a, b = read_image(tmp_path / "a.png"), read_image(tmp_path / "b.png")
    assert np.abs(a.astype(np.int16) - b.astype(np.int16)).max() <= 1


def test_bad_tile_options_are_user_errors(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    src = write_image(tmp_path / "in.png", photo)
    for extra in (["--tile", "huge"], ["--tile", "64", "--tile-overlap", "1"]):
        code, _, err = upscale(capsys, str(src), "-m", str(espcn_x3_onnx), *extra)
        assert code == 2 and len(error_lines(err)) == 1, err
    assert not (tmp_path / "in_x3.png").exists()


def _tree(root: Path, photo: np.ndarray) -> None:
    (root / "a" / "b").mkdir(parents=True)
    write_image(root / "one.png", photo)
    write_image(root / "a" / "two.jpg", photo[:, ::-1])
    write_image(root / "a" / "b" / "three.png", photo[::-1])
    write_image(root / "a" / "b" / "odd.png", photo[:30, :31])
    (root / "notes.txt").write_text("not an image")


def test_folder_in_folder_out_same_tree(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    _tree(tmp_path / "in", photo)
    code, out, err = upscale(capsys, str(tmp_path / "in"), "-m", str(espcn_x3_onnx),
                             "-o", str(tmp_path / "out"))
    assert code == 0, err
    out_root = tmp_path / "out"
    written = sorted(str(p.relative_to(out_root)) for p in out_root.rglob("*") if p.is_file())
    assert written == ["a/b/odd.png", "a/b/three.png", "a/two.jpg", "one.png"]
    assert "skipping" in err and "notes.txt" in err
    assert "upscaled 4 of 4" in out
    assert read_image(tmp_path / "out" / "a" / "b" / "odd.png").shape == (90, 93, 3)


def test_batch_gives_the_same_files(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    _tree(tmp_path / "in", photo)
    for batch in ("1", "3"):
        code, _, err = upscale(capsys, str(tmp_path / "in"), "-m", str(espcn_x3_onnx),
                               "-o", str(tmp_path / f"out{batch}"), "--batch", batch, "--format", "png")
        assert code == 0, err
    for path in (tmp_path / "out1").rglob("*.png"):
        other = tmp_path / "out3" / path.relative_to(tmp_path / "out1")
        np.testing.assert_array_equal(read_image(path), read_image(other))
    assert (tmp_path / "out3" / "a" / "two.png").is_file()  # --format changed the suffix


def test_failing_file_reported_rest_done(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _tree(tmp_path / "in", photo)
    (tmp_path / "in" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (tmp_path / "in" / "empty.jpg").touch()
    code, out, err = upscale(capsys, str(tmp_path / "in"), "-m", str(espcn_x3_onnx),
                             "-o", str(tmp_path / "out"), "--batch", "2")
    assert code == 2
    errors = error_lines(err)
    assert any("broken.png" in line for line in errors) and any("empty.jpg" in line for line in errors)
    assert "2 of 6 images failed" in errors[-1]
    assert "upscaled 4 of 6" in out
    assert len([p for p in (tmp_path / "out").rglob("*") if p.is_file()]) == 4
    assert not list((tmp_path / "out").rglob(".*part*"))


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0" + b"\x00" * 64])
def test_bad_single_file_one_error_line_no_output(tmp_path: Path, espcn_x3_onnx: Path, content: bytes,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.jpg"
    src.write_bytes(content)
    code, _, err = upscale(capsys, str(src), "-m", str(espcn_x3_onnx))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("srkit: error:"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jpg"]


def test_unwritable_output_is_a_clean_error(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = write_image(tmp_path / "in.png", photo)
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    code, _, err = upscale(capsys, str(src), "-m", str(espcn_x3_onnx), "-o", str(blocker / "out.png"))
    assert code == 2 and len(error_lines(err)) == 1, err
    _tree(tmp_path / "in", photo)
    code, _, err = upscale(capsys, str(tmp_path / "in"), "-m", str(espcn_x3_onnx), "-o", str(blocker / "sub"))
    assert code == 2 and len(error_lines(err)) == 1, err
    assert blocker.read_text() == "x"


def test_input_never_overwritten(tmp_path: Path, espcn_x3_onnx: Path, photo: np.ndarray,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    src = write_image(tmp_path / "in.png", photo)
    before = src.read_bytes()
    code, _, err = upscale(capsys, str(src), "-m", str(espcn_x3_onnx), "-o", str(src))
    assert code == 2 and "overwrite" in err
    assert src.read_bytes() == before


def test_python_m_srkit_exit_code_and_stderr(tmp_path: Path, espcn_x3_onnx: Path) -> None:
    src = tmp_path / "empty.png"
    src.touch()
    proc = subprocess.run([sys.executable, "-m", "srkit", "upscale", str(src), "-m", str(espcn_x3_onnx)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("srkit: error:") and "empty" in proc.stderr
