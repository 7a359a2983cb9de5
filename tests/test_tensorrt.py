"""TensorRT backend: the pure parts (profile, cache key, sidecar, messages) here; build/run on a GPU only."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from srkit._optional import is_available
from srkit.cli.main import run
from srkit.errors import BackendUnavailableError, InputError
from srkit.meta import Color, Io, ModelInfo, Precision
from srkit.runtime import registry
from srkit.runtime import tensorrt as trt_backend
from srkit.runtime.tensorrt import check_device, check_precision, check_trt_version
from srkit.runtime.trt_cache import (
    EngineKey,
    GpuIdentity,
    ShapeProfile,
    cache_paths,
    check_in_profile,
    compute_profile,
    engine_key,
    file_sha256,
    read_sidecar,
    sidecar_record,
    stale_engine_message,
    stale_reasons,
)


def _cuda() -> bool:
    if not is_available("torch"):
        return False
    import torch

    return bool(torch.cuda.is_available())


HAVE_TRT_GPU = is_available("tensorrt") and _cuda()
H100 = GpuIdentity("NVIDIA H100 80GB HBM3", (9, 0))


def _info(**kw: object) -> ModelInfo:
    base = dict(arch="espcn", scale=3, in_channels=1, color=Color.Y, size_multiple=1)
    base.update(kw)
    return ModelInfo(**base)  # type: ignore[arg-type]


def _key(**changes: object) -> EngineKey:
    profile = compute_profile(_info(), tile=256)
    key = engine_key("ab" * 32, H100, "10.7.0", profile, Precision.FP16)
    return dataclasses.replace(key, **changes)


# ---- profiles ---------------------------------------------------------------------------------------
def test_profile_static_shape_is_exact() -> None:
    p = compute_profile(_info(static_shape=(120, 160), in_channels=3))
    assert p.min == p.opt == p.max == (1, 3, 120, 160)


def test_profile_from_tile_honours_size_multiple() -> None:
    p = compute_profile(_info(in_channels=3, size_multiple=4), tile=250)
    assert p.max == p.opt == (1, 3, 252, 252)  # rounded up to the multiple
    assert p.min == (1, 3, 4, 4)
    assert all(v % 4 == 0 for v in (*p.min[2:], *p.opt[2:], *p.max[2:]))


def test_profile_from_rectangular_tile() -> None:
    p = compute_profile(_info(size_multiple=2), tile=(95, 161))
    assert p.max == p.opt == (1, 1, 96, 162)


def test_pipeline_profile_is_nhwc_with_image_channels_and_no_rounding() -> None:
    """A composed pipeline takes uint8 NHWC images and pads them itself: the profile follows the image."""
    rgb = compute_profile(_info(io=Io.RGB8, size_multiple=4), max_hw=(1080, 1919))
    assert rgb.min == (1, 4, 4, 3) and rgb.max == (1, 1080, 1919, 3)  # no rounding up to the multiple
    assert rgb.opt == (1, 720, 1280, 3)
    gray = compute_profile(_info(io=Io.GRAY8), tile=(95, 161))
    assert gray.min == (1, 1, 1, 1) and gray.max == gray.opt == (1, 95, 161, 1)
    check_in_profile(rgb, (1, 359, 641, 3))
    with pytest.raises(InputError, match="outside the TensorRT engine's profile"):
        check_in_profile(rgb, (1, 1081, 641, 3))


def test_pipeline_engine_is_keyed_on_the_composed_graph(tmp_path: Path) -> None:
    """An engine built from a pipeline srkit composed in memory is cached under that graph's hash and the
    pipeline kind, beside (not instead of) the tensor model's engine."""
    import hashlib

    from srkit.runtime.base import BackendOptions

    model = tmp_path / "m.onnx"
    model.write_bytes(b"tensor model bytes")
    plain = trt_backend.TensorRTBackend(model, _info(), BackendOptions())
    graph = b"composed pipeline bytes"
    piped = trt_backend.TensorRTBackend(model, _info(io=Io.RGB8), BackendOptions(), graph=graph)
    assert plain.source_sha256() == file_sha256(model) and plain.cache_stem() == "m"
    assert piped.source_sha256() == hashlib.sha256(graph).hexdigest() and piped.cache_stem() == "m-rgb8"
    assert piped.profile().max[3] == 3 and plain.profile().max[1] == 1


def test_tensorrt_takes_no_16_bit_pipelines() -> None:
    cls = trt_backend.TensorRTBackend
    assert cls.runs_pipelines and Io.RGB16 not in cls.pipeline_ios and cls.pipeline_phase_form is None


def test_profile_default_covers_1080p_and_batch() -> None:
    p = compute_profile(_info(size_multiple=2), batch=4)
    assert p.max[2] >= 1080 and p.max[3] >= 1920
    assert p.opt[0] == p.max[0] == 4 and p.min[0] == 1
    assert p.opt[2] <= p.max[2] and p.opt[3] <= p.max[3]
    small = compute_profile(_info(), max_hw=(100, 200))
    assert small.opt == small.max == (1, 1, 100, 200)  # the preferred shape never exceeds the max


def test_profile_rejects_bad_sizes() -> None:
    with pytest.raises(InputError, match="smaller than the model's size multiple"):
        compute_profile(_info(size_multiple=4), tile=2)
    with pytest.raises(InputError, match="batch"):
        compute_profile(_info(), batch=0)


def test_input_outside_profile_is_a_clear_error() -> None:
    p = compute_profile(_info(), tile=64)
    check_in_profile(p, (1, 1, 64, 40))
    with pytest.raises(InputError, match=r"outside the TensorRT engine's profile .*--tile"):
        check_in_profile(p, (1, 1, 65, 40))
    with pytest.raises(InputError, match="outside"):
        check_in_profile(p, (1, 3, 64, 64))  # wrong channel count


def test_profile_json_round_trip_and_tag() -> None:
    p = compute_profile(_info(), tile=128)
    assert ShapeProfile.from_json(json.loads(json.dumps(p.to_json()))) == p
    assert p.tag() != compute_profile(_info(), tile=256).tag()


# ---- cache keys -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "cd" * 32},
        {"gpu_name": "NVIDIA A100-SXM4-40GB"},
        {"compute_capability": "8.0"},
        {"trt_version": "11.0.0"},
        {"profile": compute_profile(_info(), tile=512)},
        {"precision": "int8"},
    ],
)
def test_every_key_field_changes_the_digest(change: dict[str, object]) -> None:
    assert _key().digest() != _key(**change).digest()
    assert _key().digest() == _key().digest()


def test_cache_paths_name_model_and_profile_but_not_gpu(tmp_path: Path) -> None:
    key = _key()
    paths = cache_paths(tmp_path, "espcn-x3", key)
    assert paths.engine.name.startswith("espcn-x3-" + key.model_sha256[:12])
    assert paths.sidecar.name == paths.engine.name + ".json"
    # a new TensorRT finds the same engine file (and sees it is stale), but a separate timing cache
    upgraded = cache_paths(tmp_path, "espcn-x3", _key(trt_version="11.0.0"))
    assert upgraded.engine == paths.engine
    assert upgraded.timing_cache != paths.timing_cache
    other_profile = cache_paths(tmp_path, "espcn-x3", _key(profile=compute_profile(_info(), tile=512)))
    assert other_profile.engine != paths.engine
    assert other_profile.timing_cache == paths.timing_cache  # timing caches are model/profile independent


def test_file_sha256_matches_hashlib(espcn_x3_onnx: Path) -> None:
    import hashlib

    assert file_sha256(espcn_x3_onnx) == hashlib.sha256(espcn_x3_onnx.read_bytes()).hexdigest()


# ---- the sidecar -----------------------------------------------------------------------------------
def test_fresh_sidecar_validates(tmp_path: Path) -> None:
    key = _key()
    record = json.loads(json.dumps(sidecar_record(key, build_s=1.5, engine_sha256="e" * 64)))
    assert stale_reasons(record, key, "e" * 64) == []
    assert record["digest"] == key.digest()


def test_stale_sidecar_names_what_changed() -> None:
    record = sidecar_record(_key(), build_s=1.0, engine_sha256="e" * 64)
    reasons = stale_reasons(record, _key(trt_version="11.0.0", gpu_name="NVIDIA L4"), "e" * 64)
    assert "TensorRT version 10.7.0 != 11.0.0" in reasons
    assert "GPU NVIDIA H100 80GB HBM3 != NVIDIA L4" in reasons
    assert len(reasons) == 2


def test_missing_corrupt_or_tampered_sidecar_is_stale(tmp_path: Path) -> None:
    key = _key()
    assert stale_reasons(None, key) == ["it has no readable metadata sidecar"]
    bad = tmp_path / "x.engine.json"
    bad.write_text("{not json")
    assert read_sidecar(bad) is None
    assert read_sidecar(tmp_path / "missing.json") is None
    old_format = {**sidecar_record(key, build_s=1.0, engine_sha256="e" * 64), "format": 0}
    assert "format" in stale_reasons(old_format, key)[0]
    record = sidecar_record(key, build_s=1.0, engine_sha256="e" * 64)
    assert stale_reasons(record, key, "f" * 64) == [
        "the engine file does not match its sidecar (modified or truncated)"
    ]


def test_stale_engine_message_is_one_actionable_line(tmp_path: Path) -> None:
    msg = stale_engine_message(tmp_path / "m.engine", ["TensorRT version 10.7.0 != 11.0.0"])
    assert "\n" not in msg
    assert "m.engine" in msg and "10.7.0 != 11.0.0" in msg and "trt_rebuild=True" in msg


# ---- the cache on disk (srkit.runtime.trt_cache, no GPU needed) --------------------------------------------
def test_stored_engine_is_found_and_a_stale_one_is_rebuilt_or_refused(tmp_path: Path) -> None:
    from srkit.runtime.trt_cache import cached_engine, store_engine

    key = _key()
    paths = cache_paths(tmp_path, "model", key)
    assert cached_engine(paths, key, rebuild=True) is None  # nothing cached yet
    store_engine(paths, key, b"engine bytes", build_s=2.5, timing_cache=b"timings")
    assert paths.timing_cache.read_bytes() == b"timings"
    assert json.loads(paths.sidecar.read_text())["build_s"] == 2.5
    assert cached_engine(paths, key, rebuild=False) == b"engine bytes"
    other = _key(trt_version="11.0.0")  # same file names (the version lives in the sidecar), another TensorRT
    assert cache_paths(tmp_path, "model", other).engine == paths.engine
    assert cached_engine(paths, other, rebuild=True) is None
    with pytest.raises(BackendUnavailableError, match=r"stale \(TensorRT version 10.7.0 != 11.0.0\)"):
        cached_engine(paths, other, rebuild=False)
    paths.engine.write_bytes(b"engine bytes, truncated")
    with pytest.raises(BackendUnavailableError, match="does not match its sidecar"):
        cached_engine(paths, key, rebuild=False)
    assert not list(tmp_path.glob(".*part*"))


def test_ort_takes_its_tensorrt_profile_from_the_cache_module_not_the_backend() -> None:
    import ast

    import srkit.runtime.ort as ort_module

    tree = ast.parse(Path(ort_module.__file__).read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "srkit.runtime.trt_cache" in modules and "srkit.runtime.tensorrt" not in modules


# ---- checks and messages ----------------------------------------------------------------------------
def test_version_device_and_precision_checks() -> None:
    check_trt_version("10.13.0.35")
    check_trt_version("11.0.0")
    with pytest.raises(BackendUnavailableError, match=r"too old.*srkit\[trt\]"):
        check_trt_version("8.6.1")
    assert check_device("cuda") == 0 and check_device("cuda:1") == 1
    with pytest.raises(BackendUnavailableError, match=r"CUDA GPU.*openvino"):
        check_device("cpu")
    check_precision(Precision.AUTO, Precision.FP16)
    with pytest.raises(InputError, match="strongly typed"):
        check_precision(Precision.FP16, Precision.FP32)


@pytest.mark.skipif(is_available("tensorrt"), reason="TensorRT is installed here")
def test_registry_hides_trt_when_not_installed() -> None:
    assert "trt" not in registry.available()
    assert registry.backend_class("tensorrt") is trt_backend.TensorRTBackend
    with pytest.raises(BackendUnavailableError, match=r"pip install 'srkit\[trt\]'"):
        registry.pick("trt", "cuda")


@pytest.mark.skipif(is_available("tensorrt"), reason="TensorRT is installed here")
def test_cli_trt_without_tensorrt_is_one_error_line(
    espcn_x3_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from srkit.data import sample_image_path

    out = tmp_path / "out.png"
    code = run(
        [
            "upscale",
            str(sample_image_path()),
            "-m",
            str(espcn_x3_onnx),
            "-o",
            str(out),
            "--backend",
            "trt",
            "--device",
            "cuda",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("srkit: error:")
    assert "pip install 'srkit[trt]'" in err[0]
    assert not out.exists()


# ---- the real thing ---------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.skipif(not HAVE_TRT_GPU, reason="needs TensorRT and a CUDA GPU")
def test_trt_engine_builds_caches_and_matches_ort(espcn_x3_onnx: Path, tmp_path: Path) -> None:
    from srkit.runtime import Upscaler

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    with Upscaler(espcn_x3_onnx, backend="ort") as ref:
        expected = ref.upscale(image).astype(np.float64)
    with Upscaler(espcn_x3_onnx, backend="trt", device="cuda", cache_dir=tmp_path, tile=128) as up:
        got = up.upscale(image).astype(np.float64)
        assert up.describe()["engine_source"] == "built"
    assert np.abs(got - expected).max() <= 1
    with Upscaler(espcn_x3_onnx, backend="trt", device="cuda", cache_dir=tmp_path, tile=128) as again:
        assert again.describe()["engine_source"] == "cache"
    sidecar = next(tmp_path.glob("*.engine.json"))
    record = json.loads(sidecar.read_text())
    record["key"]["trt_version"] = "0.0.0"
    sidecar.write_text(json.dumps(record))
    with pytest.raises(BackendUnavailableError, match="stale"):
        Upscaler(
            espcn_x3_onnx, backend="trt", device="cuda", cache_dir=tmp_path, tile=128, trt_rebuild=False
        ).backend.activate()


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.skipif(not HAVE_TRT_GPU, reason="needs TensorRT and a CUDA GPU")
def test_trt_runs_the_uint8_pipeline_with_the_host_paths_pixels(espcn_x3_onnx: Path, tmp_path: Path) -> None:
    """Untiled 8-bit images go through the composed pipeline engine (uint8 NHWC in and out, a Cast at each
    end) and give the host path's pixels; 16-bit images take the host path (TensorRT has no uint16)."""
    from srkit.runtime import Upscaler

    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (61, 47, 3), dtype=np.uint8)
    with Upscaler(espcn_x3_onnx, backend="trt", device="cuda", cache_dir=tmp_path) as up:
        assert up.route(image) == "pipeline" and up.route(image.astype(np.uint16) * 257) == "host"
        piped, host = up.upscale(image), up.upscale(image, pipeline=False)
        assert any(p.name.startswith(f"{espcn_x3_onnx.stem}-rgb8") for p in tmp_path.glob("*.engine"))
    diff = np.abs(piped.astype(int) - host.astype(int))
    assert piped.dtype == np.uint8 and piped.shape == (183, 141, 3)
    assert (diff <= 1).mean() >= 0.999
