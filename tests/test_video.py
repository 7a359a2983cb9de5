"""Video: a short clip made here with PyAV (real photos, an AAC track) through `srkit upscale`."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from srkit import quality  # noqa: E402
from srkit.cli.main import run  # noqa: E402
from srkit.data import write_sample_clip  # noqa: E402
from srkit.errors import InputError  # noqa: E402
from srkit.meta import read_model_info  # noqa: E402
from srkit.runtime import Upscaler  # noqa: E402
from srkit.runtime.container import (  # noqa: E402
    Route,
    VideoProbe,
    check_encoder,
    check_video_output,
    probe,
    route_for,
)
from srkit.runtime.frames import VideoFrames, VideoSink, write_frames  # noqa: E402
from srkit.runtime.video import VideoOptions, frames_of, upscale_video  # noqa: E402

FRAMES, FPS, W, H = 12, 12, 64, 48


def _write_clip(path: Path, photos: dict[str, np.ndarray], *, audio: bool = True) -> Path:
    """12 frames 64x48 panning across the bundled CC0 photos, H.264, plus a 1 s AAC tone."""
    assert photos  # the same photos write_sample_clip pans across
    return write_sample_clip(path, size=(W, H), frames=FRAMES, fps=FPS, audio=audio)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> Path:
    return _write_clip(tmp_path_factory.mktemp("video") / "clip.mp4", photos)


def _packets(path: Path, kind: str, index: int = 0) -> list[tuple[int | None, bytes]]:
    with av.open(str(path)) as c:
        stream = {"audio": c.streams.audio, "subtitle": c.streams.subtitles, "video": c.streams.video}[kind][index]
        return [(p.pts, bytes(p)) for p in c.demux(stream) if p.dts is not None]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return quality.psnr(a, b, peak=255.0)


def _no_video_threads() -> bool:
    return not any(t.name.startswith("srkit-video") for t in threading.enumerate())


def test_cli_video_keeps_frames_rate_duration_and_audio(
    clip: Path, espcn_x3_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "big.mp4"
    assert run(["upscale", str(clip), "-m", str(espcn_x3_onnx), "-o", str(out), "--crf", "12"]) == 0
    assert "audio copied" in capsys.readouterr().out
    src, dst = probe(clip), probe(out)
    assert (dst.width, dst.height) == (3 * W, 3 * H)
    assert dst.frames == src.frames == FRAMES
    assert dst.rate == src.rate == Fraction(FPS)
    assert dst.duration_s == pytest.approx(src.duration_s, abs=1 / FPS)
    assert dst.has_audio and dst.audio_codec == "aac"
    # the audio is remuxed, not re-encoded: the same packets with the same timestamps
    assert _packets(out, "audio") == _packets(clip, "audio")
    # every frame keeps its presentation timestamp (packets come in decode order, B-frames reorder them)
    assert sorted(p for p, _ in _packets(out, "video")) == sorted(p for p, _ in _packets(clip, "video"))
    assert not list(tmp_path.glob(".*part*"))  # no temp file left beside the output


def test_video_frames_match_image_upscaling(clip: Path, espcn_x3_onnx: Path, tmp_path: Path) -> None:
    """Both paths (Y plane through the model; RGB through Upscaler.upscale) give the image result, up to
    H.264 compression, and each other."""
    expected = None
    outputs = {}
    with Upscaler(espcn_x3_onnx, backend="ort") as up:
        expected = [up.upscale(f) for f in frames_of(clip)]
        for fast in (True, False):
            out = tmp_path / f"out-{fast}.mp4"
            seen: list[tuple[int, float]] = []
            result = upscale_video(
                up,
                clip,
                out,
                options=VideoOptions(crf=8, yuv_fast_path=fast),
                progress=lambda done, fps, seen=seen: seen.append((done, fps)),
            )
            assert result.path_taken == ("yuv" if fast else "rgb")
            assert [d for d, _ in seen] == list(range(1, FRAMES + 1)) and all(f > 0 for _, f in seen)
            assert result.frames == FRAMES
            outputs[fast] = list(frames_of(out))
    for fast, frames in outputs.items():
        assert len(frames) == FRAMES
        assert min(_psnr(e, f) for e, f in zip(expected, frames, strict=True)) > 30, fast
    assert min(_psnr(a, b) for a, b in zip(outputs[True], outputs[False], strict=True)) > 30


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_portrait_phone_video_keeps_its_display_rotation(tmp_path: Path, espcn_x3_onnx: Path, suffix: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Phones store portrait video landscape plus a display matrix; losing it would show the result sideways."""
    src = write_sample_clip(tmp_path / "portrait.mp4", size=(W, H), frames=3, fps=FPS, audio=False, rotation=-90)
    assert probe(src).rotation == 270
    out = tmp_path / f"up{suffix}"
    assert run(["upscale", str(src), "-m", str(espcn_x3_onnx), "-o", str(out)]) == 0
    assert "display rotation 270 degrees kept" in capsys.readouterr().out
    with av.open(str(out)) as container:
        first = next(container.decode(video=0))
        assert (first.width, first.height, first.rotation % 360) == (3 * W, 3 * H, 270)
    assert probe(out).rotation == 270
    plain = write_sample_clip(tmp_path / "plain.mp4", size=(W, H), frames=2, fps=FPS, audio=False)
    assert probe(plain).rotation == 0


def _write_frames(path: Path, size: tuple[int, int], pix_fmt: str, codec: str, photos: dict[str, np.ndarray]) -> Path:
    """Four frames of a real photo in a pixel format write_sample_clip does not make (odd sides, 10-bit)."""
    w, h = size
    photo = next(iter(photos.values()))[:h, :w]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for i in range(4):
            rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(photo, i, axis=1)), format="rgb24")
            container.mux(stream.encode(rgb.reformat(format=pix_fmt)))
        container.mux(stream.encode(None))
    return path


def test_ten_bit_video_stays_ten_bit(tmp_path: Path, espcn_x3_onnx: Path, photos: dict[str, np.ndarray],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    src = _write_frames(tmp_path / "ten.mkv", (W, H), "yuv420p10le", "libx265", photos)
    out = tmp_path / "ten_x3.mkv"
    assert run(["upscale", str(src), "-m", str(espcn_x3_onnx), "-o", str(out), "--codec", "libx265",
                "--crf", "4"]) == 0
    assert "10-bit" in capsys.readouterr().out
    assert probe(out).pix_fmt == "yuv420p10le"
    with av.open(str(src)) as a, av.open(str(out)) as b, Upscaler(espcn_x3_onnx, backend="ort") as up:
        pairs = zip(a.decode(video=0), b.decode(video=0), strict=True)
        for before, after in pairs:  # the 16-bit image path, up to x265 at CRF 4
            expected = up.upscale(before.to_ndarray(format="rgb48le")).astype(np.float64) / 257
            got = after.to_ndarray(format="rgb48le").astype(np.float64) / 257
            assert got.shape == (3 * H, 3 * W, 3) and _psnr(expected, got) > 35


def test_odd_sided_video_is_cropped_to_even_for_420(tmp_path: Path, espcn_x3_onnx: Path,
                                                    photos: dict[str, np.ndarray],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    src = _write_frames(tmp_path / "odd.mkv", (W + 1, H + 1), "yuv444p", "libx264", photos)
    out = tmp_path / "odd_x3.mp4"
    assert run(["upscale", str(src), "-m", str(espcn_x3_onnx), "-o", str(out)]) == 0
    assert f"cropped from {3 * W + 3}x{3 * H + 3}" in capsys.readouterr().out
    got = probe(out)
    assert (got.width, got.height, got.pix_fmt) == (3 * W + 2, 3 * H + 2, "yuv420p")
    assert len(list(frames_of(out))) == 4


def test_video_without_audio_and_to_mkv(
    photos: dict[str, np.ndarray], espcn_x3_onnx: Path, tmp_path: Path
) -> None:
    silent = _write_clip(tmp_path / "silent.mp4", photos, audio=False)
    out = tmp_path / "silent.mkv"
    with Upscaler(espcn_x3_onnx, backend="ort") as up:
        result = upscale_video(up, silent, out)
    assert not result.audio_copied
    info = probe(out)
    assert info.frames in (None, FRAMES) and len(list(frames_of(out))) == FRAMES
    assert not info.has_audio


def test_subtitle_tracks_are_copied_with_the_audio(espcn_x3_onnx: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Every subtitle track goes through unchanged (same cues, same times), next to the audio; a container that
    cannot hold them is refused before any frame, naming the track, and leaves nothing."""
    src = write_sample_clip(tmp_path / "film.mkv", size=(48, 32), frames=12, subtitles=("one", "two", "three"))
    out = tmp_path / "film_x3.mkv"
    assert run(["upscale", str(src), "-m", str(espcn_x3_onnx), "-o", str(out)]) == 0
    assert "audio and subtitles copied" in capsys.readouterr().out
    assert probe(out).subtitle_codecs == ("srt",)
    cues = _packets(out, "subtitle")
    assert [text for _, text in cues] == [b"one", b"two", b"three"] and cues == _packets(src, "subtitle")
    assert _packets(out, "audio") == _packets(src, "audio")
    assert len(list(frames_of(out))) == 12
    mp4 = tmp_path / "film_x3.mp4"
    assert run(["upscale", str(src), "-m", str(espcn_x3_onnx), "-o", str(mp4)]) == 2
    err = capsys.readouterr().err
    assert "the subtitle track (srt) cannot be copied into .mp4" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["film.mkv", "film_x3.mkv"]


def test_corrupt_video_is_a_clean_error(
    clip: Path, espcn_x3_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(clip.read_bytes()[:2000])  # the index (moov) is at the end: unreadable
    out = tmp_path / "out.mp4"
    assert run(["upscale", str(bad), "-m", str(espcn_x3_onnx), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("srkit: error: cannot read video") and len(err) == 1
    assert not out.exists() and not list(tmp_path.glob(".*part*"))


def test_error_mid_stream_stops_every_stage_and_leaves_nothing(clip: Path, tmp_path: Path) -> None:
    """A model exported for another frame size fails on the first frame: the decoder and encoder threads
    stop, the error reaches the caller, and no output (or temp file) is left."""
    from srkit.export import ExportOptions, export_model

    static = export_model("espcn-x3", tmp_path / "static.onnx", options=ExportOptions(static=(24, 32))).path
    out = tmp_path / "out.mp4"
    with Upscaler(static, backend="ort") as up, pytest.raises(InputError, match="24x32"):
        upscale_video(up, clip, out, options=VideoOptions(queue_size=2))
    assert not out.exists() and not list(tmp_path.glob(".*part*"))
    assert _no_video_threads()


def test_encoder_options_are_checked() -> None:
    assert check_encoder("libx264", None) == {"crf": "18"}
    assert check_encoder("libvpx-vp9", 31) == {"crf": "31", "b": "0"}
    assert check_encoder("mpeg4", None) == {}
    with pytest.raises(InputError, match="no video encoder 'nope'"):
        check_encoder("nope", None)
    with pytest.raises(InputError, match="--crf applies to"):
        check_encoder("mpeg4", 20)


def test_bad_codec_or_output_is_one_error_line(
    clip: Path, espcn_x3_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.mp4"
    assert run(["upscale", str(clip), "-m", str(espcn_x3_onnx), "-o", str(out), "--codec", "nope"]) == 2
    assert capsys.readouterr().err.strip().startswith("srkit: error: no video encoder")
    with Upscaler(espcn_x3_onnx, backend="ort") as up:
        with pytest.raises(InputError, match="video output"):
            upscale_video(up, clip, tmp_path / "out.png")
        webm = tmp_path / "out.webm"  # WebM cannot hold the AAC track, which is copied, never re-encoded
        with pytest.raises(InputError, match=r"audio track \(aac\) cannot be copied into \.webm"):
            upscale_video(up, clip, webm, options=VideoOptions(codec="libvpx-vp9"))
    assert not out.exists() and not webm.exists() and not list(tmp_path.glob(".*part*"))


# ---- the frame seam on video (srkit.runtime.frames) and the container helpers -------------------------------
def test_video_frames_through_upscale_frames_into_a_video_sink(clip: Path, espcn_x3_onnx: Path,
                                                               tmp_path: Path) -> None:
    source = VideoFrames(clip)
    assert (source.probe.width, source.probe.height, source.probe.frames) == (W, H, FRAMES)
    out = tmp_path / "frames.mkv"
    with Upscaler(espcn_x3_onnx, backend="ort") as up:
        expected = [up.upscale(f) for f in source]  # iterable more than once
        with VideoSink(out, rate=source.probe.rate, crf=8) as sink:
            assert write_frames(up.upscale_frames(source, batch=4), sink) == FRAMES
    got = list(VideoFrames(out))
    assert len(got) == FRAMES and got[0].shape == (3 * H, 3 * W, 3)
    assert min(_psnr(e, g) for e, g in zip(expected, got, strict=True)) > 30
    info = probe(out)
    assert info.rate == Fraction(FPS) and not info.has_audio
    assert not list(tmp_path.glob(".*part*"))


def test_video_sink_leaves_nothing_on_an_error(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    frame = np.ascontiguousarray(next(iter(photos.values()))[:48, :64])
    out = tmp_path / "x.mp4"
    with pytest.raises(InputError, match="the first was 64x48"), VideoSink(out, rate=FPS) as sink:
        sink.write(frame)
        sink.write(frame[:40])
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(InputError, match="no frames to write"), VideoSink(out) as sink:
        pass
    with pytest.raises(InputError, match="cannot hold libx264"):
        VideoSink(tmp_path / "x.webm", codec="libx264")
    with pytest.raises(InputError, match="takes RGB uint8 or uint16"):
        VideoSink(out).write(frame.astype(np.float32))


def test_route_is_decided_from_the_model_and_the_header(espcn_x3_onnx: Path) -> None:
    y_model = read_model_info(espcn_x3_onnx)

    def header(pix_fmt: str, w: int = 64, h: int = 48) -> VideoProbe:
        return VideoProbe(w, h, None, None, None, pix_fmt, False, None)

    assert route_for(y_model, header("yuv420p")) == Route.YUV
    assert route_for(y_model, header("yuv420p"), yuv_fast_path=False) == Route.RGB
    assert route_for(y_model, header("yuv420p", w=65)) == Route.RGB  # 4:2:0 with an odd side
    assert route_for(y_model, header("yuv444p")) == Route.RGB
    assert route_for(y_model, header("yuv420p10le")) == Route.RGB48
    with pytest.raises(InputError, match="unsupported video output"):
        check_video_output(Path("x.gif"))


def test_sample_clip(tmp_path: Path) -> None:
    clip = write_sample_clip(tmp_path / "c.mp4", size=(32, 24), frames=5, fps=10)
    info = probe(clip)
    assert (info.width, info.height, info.frames, info.rate, info.audio_codec) == (32, 24, 5, 10, "aac")
    assert len(list(frames_of(clip))) == 5
