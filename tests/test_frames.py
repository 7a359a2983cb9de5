"""One frame pipeline: `encode_image`, `Upscaler.upscale_frames`, the file and video sources and sinks
(srkit.runtime.frames) and `upscale_files` (srkit.runtime.files), on real photos and a real ESPCN export."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srkit.errors import InputError
from srkit.imageio import encode_image, read_image, write_image
from srkit.runtime import Upscaler
from srkit.runtime.files import FilePlan, Status, plan_files, upscale_file, upscale_files
from srkit.runtime.frames import ImageFiles, ImageFileSink, write_frames


@pytest.fixture(scope="module")
def photo(sample_rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(sample_rgb[:40, :52])


@pytest.fixture(scope="module")
def up(espcn_x3_onnx: Path) -> Iterator[Upscaler]:
    with Upscaler(espcn_x3_onnx, backend="ort") as upscaler:
        yield upscaler


# ---- encode_image ----------------------------------------------------------------------------------------
PILLOW_FORMATS = {".png": {}, ".bmp": {}, ".tif": {}, ".jpg": {"quality": 80, "subsampling": "4:2:0"},
                  ".webp": {"quality": 80, "lossless": False}}


@pytest.mark.parametrize("suffix", sorted(PILLOW_FORMATS))
@pytest.mark.parametrize("kind", ["rgb", "gray", "rgba"])
def test_encode_image_is_the_file_writers_bytes(tmp_path: Path, photo: np.ndarray, suffix: str, kind: str) -> None:
    image = {"rgb": photo, "gray": np.ascontiguousarray(photo[..., 1]),
             "rgba": np.dstack([photo, np.linspace(0, 255, photo.shape[1], dtype=np.uint8)[None].repeat(40, 0)])}[kind]
    data = encode_image(image, suffix, quality=80)
    written = write_image(tmp_path / f"out{suffix}", image, quality=80).read_bytes()
    assert data == written
    # and what Pillow writes into a file itself (the writer before encode_image existed)
    kept = image[..., :3] if suffix == ".jpg" and kind == "rgba" else image
    Image.fromarray(kept).save(tmp_path / f"pillow{suffix}", **PILLOW_FORMATS[suffix])
    assert data == (tmp_path / f"pillow{suffix}").read_bytes()
    if suffix in (".png", ".tif"):  # lossless, alpha included: the pixels come back
        decoded = np.asarray(Image.open(io.BytesIO(data)))
        np.testing.assert_array_equal(decoded, image)


def test_encode_image_deep_and_float_formats(tmp_path: Path, photo: np.ndarray) -> None:
    pytest.importorskip("cv2")
    deep = (photo.astype(np.uint16) * 257 + 7).astype(np.uint16)
    floats = photo.astype(np.float32) / 255
    icc = b"not a real profile but carried as bytes"
    for image, suffix, kwargs in ((deep, ".png", {"icc_profile": icc}), (deep, ".tif", {}), (floats, ".tif", {})):
        data = encode_image(image, suffix, **kwargs)
        assert data == write_image(tmp_path / f"x{suffix}", image, **kwargs).read_bytes()
        back = read_image(tmp_path / f"x{suffix}")
        assert back.dtype == image.dtype
        np.testing.assert_array_equal(back, image)


def test_encode_image_format_names(photo: np.ndarray) -> None:
    png = encode_image(photo, "png")
    assert png == encode_image(photo, ".png") == encode_image(photo, "PNG") == encode_image(photo, ".PNG")
    assert png.startswith(b"\x89PNG")
    assert encode_image(photo, "jpeg")[:2] == encode_image(photo, "jpg")[:2] == b"\xff\xd8"
    with pytest.raises(InputError, match="unsupported image format 'gif'"):
        encode_image(photo, "gif")
    with pytest.raises(InputError, match="quality must be 1-100"):
        encode_image(photo, "jpg", quality=0)


# ---- upscale_frames --------------------------------------------------------------------------------------
def _frames(photo: np.ndarray) -> list[np.ndarray]:
    """Seven different frames, two shapes interleaved (so batches mix shapes)."""
    return [np.ascontiguousarray(np.roll(photo, 3 * i, axis=1)[: 40 - 8 * (i % 2)]) for i in range(7)]


@pytest.mark.parametrize("batch", [1, 3])
def test_upscale_frames_in_order_and_equal_to_upscale(up: Upscaler, photo: np.ndarray, batch: int) -> None:
    frames = _frames(photo)
    expected = [up.upscale(f) for f in frames]
    got = list(up.upscale_frames(iter(frames), batch=batch))
    assert len(got) == len(frames)
    for e, g in zip(expected, got, strict=True):
        assert g.shape == e.shape
        assert np.abs(g.astype(np.int16) - e.astype(np.int16)).max() <= 1  # batched: float rounding at most


def test_upscale_frames_reads_at_most_a_batch_ahead(up: Upscaler, photo: np.ndarray) -> None:
    pulled = 0

    def source() -> Iterator[np.ndarray]:
        nonlocal pulled
        for frame in _frames(photo):
            pulled += 1
            yield frame

    out = up.upscale_frames(source(), batch=2)
    next(out)
    assert pulled == 2
    next(out)
    assert pulled == 2
    next(out)
    assert pulled == 4


def test_upscale_frames_source_error_after_the_frames_before_it(up: Upscaler, photo: np.ndarray) -> None:
    def source() -> Iterator[np.ndarray]:
        yield photo
        yield photo[:32]
        raise InputError("cannot read frame 3")

    got: list[np.ndarray] = []
    with pytest.raises(InputError, match="cannot read frame 3"):
        for frame in up.upscale_frames(source(), batch=4):
            got.append(frame)
    assert [g.shape for g in got] == [(120, 156, 3), (96, 156, 3)]


def test_upscale_frames_model_error_is_raised_at_its_frame(up: Upscaler, photo: np.ndarray) -> None:
    floats = photo.astype(np.float32) / 255
    bad = floats.copy()
    bad[5, 5, 0] = np.nan  # refused by Upscaler.upscale: one NaN would spread over a block
    got: list[np.ndarray] = []
    with pytest.raises(InputError, match="input image"):
        for frame in up.upscale_frames([floats, floats, bad, floats], batch=4):
            got.append(frame)
    assert len(got) == 2  # the batch failed as a whole; the frames before the bad one still came out
    np.testing.assert_allclose(got[0], up.upscale(floats), atol=1e-5)
    with pytest.raises(InputError, match="batch must be at least 1"):
        next(up.upscale_frames([photo], batch=0))


def test_image_files_through_frames_into_numbered_files(tmp_path: Path, up: Upscaler, photo: np.ndarray) -> None:
    paths = [write_image(tmp_path / f"in{i}.png", f) for i, f in enumerate(_frames(photo)[:3])]
    source = ImageFiles(paths)
    assert len(source) == 3
    with ImageFileSink.numbered(tmp_path / "out", "{index:03d}.png") as sink:
        count = write_frames(up.upscale_frames(source), sink)
    assert count == 3 and [p.name for p in sink.written] == ["000.png", "001.png", "002.png"]
    for path, written in zip(paths, sink.written, strict=True):
        np.testing.assert_array_equal(read_image(written), up.upscale(read_image(path)))
    with pytest.raises(InputError, match="more frames than output paths"):
        write_frames([photo, photo], ImageFileSink([tmp_path / "only.png"]))


# ---- upscale_files ---------------------------------------------------------------------------------------
def _tree(root: Path, photo: np.ndarray) -> None:
    (root / "a" / "b").mkdir(parents=True)
    write_image(root / "one.png", photo)
    write_image(root / "a" / "two.jpg", photo[:, ::-1])
    write_image(root / "a" / "b" / "three.png", photo[::-1])
    write_image(root / "a" / "b" / "odd.png", photo[:30, :31])


def test_upscale_files_reports_each_file_and_a_bad_one_fails_alone(tmp_path: Path, up: Upscaler,
                                                                    photo: np.ndarray) -> None:
    _tree(tmp_path / "in", photo)
    (tmp_path / "in" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    seen: list[str] = []
    report = upscale_files(up, [tmp_path / "in"], tmp_path / "out", batch=3,
                           on_outcome=lambda o: seen.append(o.src.name))
    assert (report.items, report.done, report.failed, report.skipped) == (5, 4, 1, 0)
    assert sorted(seen) == sorted(o.src.name for o in report.outcomes)
    plan = plan_files([tmp_path / "in"], tmp_path / "out", scale=3)
    assert [o.src for o in report.outcomes] == [src for src, _ in plan.jobs]  # the plan's order
    (failure,) = report.failures
    assert failure.src.name == "broken.png" and failure.status == Status.FAILED
    assert failure.reason.startswith("cannot read image") and "broken.png" in failure.reason
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["a/b/odd.png", "a/b/three.png", "a/two.jpg", "one.png"]
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "one.png"), up.upscale(photo))
    assert report.images_per_s > 0


def test_upscale_files_resumes_with_skip_existing(tmp_path: Path, up: Upscaler, photo: np.ndarray) -> None:
    _tree(tmp_path / "in", photo)
    first = upscale_files(up, [tmp_path / "in"], tmp_path / "out")
    assert first.done == 4
    (tmp_path / "out" / "one.png").unlink()
    stale = tmp_path / "out" / "a" / ".two.abcdefgh.part.jpg"  # a killed writer's leftover beside an output
    stale.write_bytes(b"half")
    again = upscale_files(up, [tmp_path / "in"], tmp_path / "out", skip_existing=True)
    assert (again.done, again.skipped) == (1, 3)
    assert [o.src.name for o in again.outcomes if o.status == Status.DONE] == ["one.png"]
    assert not stale.exists()
    one = upscale_file(up, tmp_path / "in" / "one.png", tmp_path / "out" / "one.png", skip_existing=True)
    assert one.status == Status.SKIPPED
    missing = upscale_file(up, tmp_path / "in" / "nope.png", tmp_path / "out" / "nope.png")
    assert missing.status == Status.FAILED and "not found" in missing.reason


def test_upscale_files_refuses_colliding_names_before_any_work(tmp_path: Path, up: Upscaler,
                                                               photo: np.ndarray) -> None:
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "a.jpg", photo)
    write_image(tmp_path / "in" / "a.png", photo)
    with pytest.raises(InputError, match="would both be written to"):
        upscale_files(up, [tmp_path / "in"], tmp_path / "out", out_format="png")
    assert not (tmp_path / "out").exists()


def test_upscale_files_never_reads_its_output_tree(tmp_path: Path, up: Upscaler, photo: np.ndarray) -> None:
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "x.png", photo)
    for _ in range(2):
        report = upscale_files(up, [tmp_path / "in"], tmp_path / "in" / "big")
        assert [o.src.name for o in report.outcomes] == ["x.png"] and report.done == 1


def test_plan_files_is_the_plan_the_cli_makes(tmp_path: Path, photo: np.ndarray) -> None:
    src = write_image(tmp_path / "p.png", photo)
    plan = plan_files([src], scale=3)
    assert plan == FilePlan([(src, tmp_path / "p_x3.png")], single=True)
    with pytest.raises(InputError, match="overwrite"):
        plan_files([src], src, scale=3)
    with pytest.raises(InputError, match="unsupported output extension"):
        plan_files([src], tmp_path / "p.txt", scale=3)
