"""Pipeline models (srkit.pipeline, `srkit export --io`): the graph gives the host path's pixels on every
backend and precision srkit runs, at odd sizes; it runs without srkit; every op is one TensorRT supports."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from srkit import imaging, quality
from srkit.errors import InputError, UnsupportedModelError
from srkit.meta import Io, read_model_info
from srkit.pipeline import PIPELINE_OPS, PREFIX, PhaseForm, Rounding, compose, phase_taps, polyphase_weights
from srkit.runtime import Upscaler
from srkit.runtime import registry as backends

# onnx/onnx-tensorrt docs/operators.md at "ONNX-TensorRT 10.1 GA release" (commit 96e7811; "TensorRT 10.0 supports
# operators in the inclusive range of opset 9 to opset 20"): the row of every op a pipeline adds, and ESPCN's own,
# with the types that table lists (its ConstantOfShape row reads "INF64": INT64). The same page: "UINT8 is only
# supported as network input or output tensor types", and of these ops only Cast lists UINT8. TensorRT has no
# uint16, so `rgb16` is not for it.
TENSORRT_OPERATORS = {
    "Add": "FP32, FP16, BF16, INT32, INT64", "Cast": "FP32, FP16, BF16, INT32, INT64, UINT8, BOOL",
    "Clip": "FP32, FP16, BF16", "Concat": "FP32, FP16, BF16, INT32, INT64, BOOL",
    "ConstantOfShape": "FP32, FP16, BF16, INT32, INT64, BOOL", "Conv": "FP32, FP16, BF16",
    "DepthToSpace": "FP32, FP16, BF16, INT32, INT64", "Div": "FP32, FP16, BF16, INT32, INT64",
    "Gather": "FP32, FP16, BF16, INT32, INT64, BOOL", "Identity": "FP32, FP16, BF16, INT32, INT64, BOOL",
    "Mod": "FP32, FP16, BF16, INT32, INT64", "Mul": "FP32, FP16, BF16, INT32, INT64",
    "Pad": "FP32, FP16, BF16, INT32, INT64", "ReduceMean": "FP32, FP16, BF16, INT32, INT64",
    "Reshape": "FP32, FP16, BF16, INT32, INT64, BOOL", "Round": "FP32, FP16, BF16",
    "Shape": "FP32, FP16, BF16, INT32, INT64, BOOL", "Slice": "FP32, FP16, BF16, INT32, INT64, BOOL",
    "Sub": "FP32, FP16, BF16, INT32, INT64", "Tanh": "FP32, FP16, BF16",
    "Transpose": "FP32, FP16, BF16, INT32, INT64, BOOL", "Unsqueeze": "FP32, FP16, BF16, INT32, INT64, BOOL",
}
MIN_WITHIN_ONE_LEVEL, MIN_PSNR_DB = quality.PIPELINE_MIN_WITHIN_ONE_LEVEL, quality.PIPELINE_GATE_DB
ODD_SIZES = [(37, 53), (61, 40), (1, 5)]


def _match(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(share of values within one 8-bit level, PSNR dB) of two images of one integer dtype."""
    peak, level = (65535.0, 257) if a.dtype == np.uint16 else (255.0, 1)
    diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
    return float((diff <= level).mean()), quality.psnr(a, b, peak=peak)


def _variants() -> list[tuple[str, str]]:
    found = [("ort", "fp32"), ("openvino", "fp32")]
    if "openvino" in backends.available():
        import openvino as ov

        if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            found.append(("openvino", "bf16"))  # the model at bf16, colour and rounding at fp32 (split stages)
    return found


def _image(photo: np.ndarray, kind: Io, h: int, w: int) -> np.ndarray:
    crop = np.ascontiguousarray(photo[40 : 40 + h, 60 : 60 + w, :3])
    if kind == Io.GRAY8:
        return np.ascontiguousarray(crop[..., 1])
    if kind == Io.RGB16:
        return crop.astype(np.uint16) * 257 + 11  # low byte used too
    return crop


# ---- the chroma filter is Pillow's bicubic ----------------------------------------------------------
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_polyphase_chroma_equals_pillow_bicubic(scale: int) -> None:
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    # the chroma part of a pipeline on its own: zero pad, grouped conv, DepthToSpace, / the same of ones
    weights = numpy_helper.from_array(polyphase_weights(scale, 1), "w")
    pads = numpy_helper.from_array(np.array([0, 0, 2, 2, 0, 0, 2, 2], np.int64), "pads")
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]), helper.make_node("Conv", ["p", "w"], ["c"]),
             helper.make_node("DepthToSpace", ["c"], ["y"], blocksize=scale, mode="CRD")]
    graph = helper.make_graph(nodes, "chroma", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weights, pads])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(scale)
    plane = rng.random((23, 31), dtype=np.float32)
    num = session.run(None, {"x": plane[None, None]})[0][0, 0]
    den = session.run(None, {"x": np.ones_like(plane)[None, None]})[0][0, 0]
    ours = num / den
    pillow = imaging.resize_bicubic(plane, 23 * scale, 31 * scale)
    assert np.abs(ours - pillow).max() < 2e-6  # float rounding, borders included
    assert np.allclose(phase_taps(scale).sum(axis=1), 1.0)  # cubic convolution is a partition of unity


# ---- pixels: the pipeline equals the host path --------------------------------------------------------
@pytest.mark.parametrize(("backend", "precision"), _variants())
@pytest.mark.parametrize("kind", [Io.RGB8, Io.GRAY8, Io.RGB16])
def test_pipeline_equals_host_path(espcn_x3_onnx: Path, photos: dict[str, np.ndarray], backend: str,
                                   precision: str, kind: Io) -> None:
    if backend not in backends.available():
        pytest.skip(f"backend {backend} is not installed")
    photo = next(iter(photos.values()))
    with Upscaler(espcn_x3_onnx, backend=backend, precision=precision) as piped, \
            Upscaler(espcn_x3_onnx, backend=backend, precision=precision, pipeline=False) as host:
        for h, w in ODD_SIZES:
            image = _image(photo, kind, h, w)
            assert piped.route(image) == "pipeline" and host.route(image) == "host"
            got, want = piped.upscale(image), host.upscale(image)
            assert got.shape == want.shape == (*(3 * h, 3 * w), *image.shape[2:]) and got.dtype == image.dtype
            within, psnr = _match(got, want)
            assert within >= MIN_WITHIN_ONE_LEVEL and psnr >= MIN_PSNR_DB, (h, w, within, psnr)
        assert kind.value in piped.describe()["pipelines"]


@pytest.fixture(scope="module")
def rgb_x2_multiple2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RGB RRDBNet x2 (pixel-unshuffle first: inputs padded to a multiple of 2 inside the graph)."""
    from test_tiling import _export_tiny

    return _export_tiny("rrdbnet", tmp_path_factory.mktemp("rgbmodel"))


@pytest.mark.parametrize("kind", [Io.RGB8, Io.GRAY8])
def test_rgb_model_with_size_multiple(rgb_x2_multiple2: Path, photos: dict[str, np.ndarray], kind: Io) -> None:
    info = read_model_info(rgb_x2_multiple2)
    assert info.size_multiple == 2
    photo = list(photos.values())[1]
    for backend in ("ort", "openvino"):
        if backend not in backends.available():
            continue
        with Upscaler(rgb_x2_multiple2, backend=backend) as piped, \
                Upscaler(rgb_x2_multiple2, backend=backend, pipeline=False) as host:
            for h, w in [(37, 53), (20, 33)]:  # odd: padded by reflection in the graph, cropped back
                image = _image(photo, kind, h, w)
                got, want = piped.upscale(image), host.upscale(image)
                assert got.shape == want.shape == (2 * h, 2 * w, *image.shape[2:])
                within, psnr = _match(got, want)
                assert within >= MIN_WITHIN_ONE_LEVEL and psnr >= MIN_PSNR_DB, (backend, h, w, within, psnr)
            tiny = _image(photo, kind, 1, 7)  # smaller than the size multiple: the host path, same result
            assert piped.route(tiny) == "host" and piped.upscale(tiny).shape[:2] == (2, 14)


def test_batches_go_through_the_pipeline(espcn_x3_onnx: Path, sample_rgb: np.ndarray) -> None:
    images = [np.ascontiguousarray(sample_rgb[i : i + 30, 10:51]) for i in (0, 40, 80)]
    with Upscaler(espcn_x3_onnx, backend="ort") as up:
        batch = up.upscale_batch(images)
        singles = [up.upscale(im) for im in images]
    for a, b in zip(batch, singles, strict=True):
        assert a.shape == (90, 123, 3) and np.array_equal(a, b)


@pytest.mark.parametrize("kind", [Io.RGB8, Io.GRAY8])
def test_quantize_rounding_gives_the_portable_pixels(espcn_x3_onnx: Path, sample_rgb: np.ndarray, kind: Io) -> None:
    """ONNX Runtime's pipelines round with one QuantizeLinear; the exported files with Round, Clip, Cast."""
    import onnx
    import onnxruntime as ort

    model, info = onnx.load(str(espcn_x3_onnx)), read_model_info(espcn_x3_onnx)
    image = _image(sample_rgb, kind, 45, 61)
    image = image[None] if kind == Io.RGB8 else image[None, ..., None]
    outs = []
    for rounding in Rounding:
        graph = compose(model, info, kind, rounding=rounding)
        assert ("QuantizeLinear" in {n.op_type for n in graph.graph.node}) == (rounding == Rounding.QUANTIZE)
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        outs.append(session.run(None, {"image": image})[0])
    diff = np.abs(outs[0].astype(int) - outs[1].astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.9999


@pytest.mark.parametrize("kind", [Io.RGB8, Io.GRAY8, Io.Y8])
@pytest.mark.parametrize("rounding", list(Rounding))
@pytest.mark.parametrize("form", list(PhaseForm))
def test_phase_space_tail_gives_the_same_pixels(espcn_x3_onnx: Path, sample_rgb: np.ndarray, kind: Io,
                                                rounding: Rounding, form: PhaseForm) -> None:
    """In memory, ESPCN's last DepthToSpace is left out and colour and rounding run on its s*s output phases,
    then one 8-bit DepthToSpace: the float tail's pixels, batch of 2, an odd size, in either phase form (the
    CHANNELS one with no 5-D tensor), also when the graph is cut in three stages (OpenVINO at bf16)."""
    import onnx
    import onnxruntime as ort

    from srkit.pipeline import split

    model, info = onnx.load(str(espcn_x3_onnx)), read_model_info(espcn_x3_onnx)
    image = _image(sample_rgb, Io.GRAY8 if kind == Io.Y8 else kind, 45, 61)
    image = np.stack([image, image[::-1]]) if kind == Io.RGB8 else np.stack([image, image[::-1]])[..., None]

    def run(graph: object, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
        return session.run(None, feed)

    plain = compose(model, info, kind, rounding=rounding)
    phased = compose(model, info, kind, rounding=rounding, phase_form=form)
    d2s = [n for n in phased.graph.node if n.op_type == "DepthToSpace"]
    # the model's own and the chroma's float ones are gone; CHANNELS puts RGB phases in place by a Transpose
    assert [n.name[: len(PREFIX)] for n in d2s] == ([] if form == PhaseForm.CHANNELS and kind == Io.RGB8
                                                    else [PREFIX])
    if form == PhaseForm.CHANNELS:  # no tensor of rank 5 anywhere
        shapes = onnx.shape_inference.infer_shapes(phased).graph.value_info
        assert all(len(v.type.tensor_type.shape.dim) != 5 for v in shapes)
    def assert_same_pixels(got: np.ndarray, expected: np.ndarray) -> None:
        # ONNX Runtime may fold the gain into the model's last Conv once no DepthToSpace sits between them
        # (measured: 2 of 49410 pixels one level apart for y8), so "the same" is the rounding test's bound
        diff = np.abs(got.astype(int) - expected.astype(int))
        assert got.shape == expected.shape and diff.max() <= 1 and (diff == 0).mean() >= 0.9999

    expected = run(plain, {"image": image})[0]
    assert_same_pixels(run(phased, {"image": image})[0], expected)
    stages = split(phased)
    phases = run(stages.model, {stages.model_input: run(stages.pre, {"image": image})[0]})[0]
    assert phases.shape == (2, 9, 45, 61)  # the cut is at the phases
    assert_same_pixels(run(stages.post, {stages.model_output: phases, "image": image})[0], expected)


# ---- the file: export, metadata, int8 and fp16 ---------------------------------------------------------
@pytest.fixture(scope="module")
def rgb8_model(espcn_x3_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from srkit.export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("pipeline") / "espcn-x3-rgb8.onnx"
    result = export_model(str(espcn_x3_onnx), out, options=ExportOptions(io=Io.RGB8))
    assert result.pipeline is not None and result.pipeline.within_one_level >= MIN_WITHIN_ONE_LEVEL
    return out


def test_exported_pipeline_describes_itself(rgb8_model: Path) -> None:
    import onnx

    info = read_model_info(rgb8_model)
    assert info.io == Io.RGB8 and info.scale == 3
    assert json.loads(info.extra["pipeline_parity"])["psnr_db"] >= MIN_PSNR_DB
    model = onnx.load(str(rgb8_model))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, inp.type.tensor_type.elem_type) == ("image", onnx.TensorProto.UINT8)
    assert (out.name, out.type.tensor_type.elem_type) == ("upscaled", onnx.TensorProto.UINT8)
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][3] == 3


def _tensorrt_type_errors(model: Any, *, added_only: bool = False) -> list[str]:
    """Every node (`added_only`: every node the pipeline added) whose data input (its first) has a type
    TensorRT's table does not list for that op."""
    import onnx

    names = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.INT32: "INT32",
             onnx.TensorProto.INT64: "INT64", onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.BOOL: "BOOL",
             onnx.TensorProto.UINT16: "UINT16", onnx.TensorProto.INT8: "INT8"}
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types |= {t.name: t.data_type for t in graph.initializer}
    errors = []
    for node in graph.node:
        if added_only and not node.name.startswith(PREFIX):
            continue
        listed = TENSORRT_OPERATORS.get(node.op_type, "")
        kind = names.get(types.get(node.input[0], -1), "?")
        if kind not in listed.split(", "):
            errors.append(f"{node.op_type} {node.name} takes {kind}; TensorRT lists {listed or 'no such op'}")
    return errors


def test_every_pipeline_op_is_in_tensorrts_onnx_table_with_its_types(rgb8_model: Path, espcn_x3_onnx: Path,
                                                                     rgb_x2_multiple2: Path) -> None:
    """The exported pipeline, and what srkit composes in memory for TensorRT, use only ops of onnx-tensorrt's
    table on types it lists for them: the 8-bit image is read and written by a Cast only."""
    import onnx

    from srkit.runtime.tensorrt import TensorRTBackend as trt

    assert set(TENSORRT_OPERATORS) >= PIPELINE_OPS
    for path, kinds in ((espcn_x3_onnx, [Io.RGB8, Io.GRAY8, Io.Y8]), (rgb_x2_multiple2, [Io.RGB8, Io.GRAY8])):
        model, info = onnx.load(str(path)), read_model_info(path)
        for kind in kinds:
            for composed in (compose(model, info, kind),
                             compose(model, info, kind, rounding=trt.pipeline_rounding,
                                     phase_form=trt.pipeline_phase_form)):
                added = [n for n in composed.graph.node if n.name.startswith(PREFIX)]
                assert {n.op_type for n in added} <= set(TENSORRT_OPERATORS)
                assert _tensorrt_type_errors(composed, added_only=True) == []
                eight_bit = [n.op_type for n in added if {"image", "upscaled"} & {*n.input, *n.output}]
                assert eight_bit == ["Cast", "Cast"], eight_bit
    assert _tensorrt_type_errors(onnx.load(str(rgb8_model))) == []
    # what the check catches: srkit's in-memory CPU form moves 8-bit pixels, which TensorRT cannot take
    cpu_form = compose(onnx.load(str(espcn_x3_onnx)), read_model_info(espcn_x3_onnx), Io.RGB8,
                       rounding=Rounding.QUANTIZE, phase_form=PhaseForm.PLANES)
    assert any("UINT8" in e for e in _tensorrt_type_errors(cpu_form))


def test_pipeline_model_file_runs_through_upscaler(rgb8_model: Path, espcn_x3_onnx: Path,
                                                   sample_rgb: np.ndarray) -> None:
    image = np.ascontiguousarray(sample_rgb[:41, :67])
    with Upscaler(rgb8_model, backend="ort") as up, Upscaler(espcn_x3_onnx, backend="ort", pipeline=False) as host:
        got = up.upscale(image)
        within, psnr = _match(got, host.upscale(image))
        assert got.shape == (123, 201, 3) and within >= MIN_WITHIN_ONE_LEVEL and psnr >= MIN_PSNR_DB
        with pytest.raises(InputError, match="pipeline model"):
            up.upscale(image.astype(np.uint16))  # an rgb8 file takes 8-bit RGB only, and says so


def test_int8_model_keeps_its_qdq_nodes(espcn_x3_onnx: Path, tmp_path: Path, sample_rgb: np.ndarray) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Crops(CalibrationDataReader):
        def __init__(self) -> None:
            y = imaging.rgb_to_y(imaging.to_float(sample_rgb))
            self.feeds = iter([{"input": y[None, None, i : i + 32, :48].astype(np.float32)} for i in (0, 50, 100)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    int8 = tmp_path / "int8.onnx"
    quantize_static(str(espcn_x3_onnx), str(int8), Crops(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    model = onnx.load(str(int8))
    for key, value in ((p.key, p.value) for p in onnx.load(str(espcn_x3_onnx)).metadata_props):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if key != "srkit.precision" else "int8"
    onnx.save(model, str(int8))
    info = read_model_info(int8)
    piped = compose(model, info, Io.RGB8)
    ops = {n.op_type for n in piped.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    image = np.ascontiguousarray(sample_rgb[:33, :45])
    with Upscaler(int8, backend="ort", precision="int8") as up, \
            Upscaler(int8, backend="ort", precision="int8", pipeline=False) as host:
        within, psnr = _match(up.upscale(image), host.upscale(image))
        assert up.route(image) == "pipeline" and within >= MIN_WITHIN_ONE_LEVEL and psnr >= MIN_PSNR_DB


def test_fp16_model_gets_a_pipeline(tmp_path: Path, sample_rgb: np.ndarray) -> None:
    pytest.importorskip("torch")
    from srkit.export import ExportOptions, export_model

    out = tmp_path / "espcn-fp16-rgb8.onnx"
    result = export_model("espcn-x3", out, options=ExportOptions(fp16=True, io=Io.RGB8))
    info = read_model_info(out)
    assert info.io == Io.RGB8 and info.precision.value == "fp16" and result.pipeline is not None
    with Upscaler(out, backend="ort", precision="fp16") as up:
        assert up.upscale(np.ascontiguousarray(sample_rgb[:20, :30])).shape == (60, 90, 3)


def test_io_refusals(rgb8_model: Path, espcn_x3_onnx: Path, tmp_path: Path) -> None:
    import onnx

    from srkit.export import ExportOptions, export_model

    with pytest.raises(InputError, match="already a pipeline"):
        export_model(str(rgb8_model), tmp_path / "twice.onnx", options=ExportOptions(io=Io.GRAY8))
    with pytest.raises(InputError, match="--io"):
        export_model(str(espcn_x3_onnx), tmp_path / "same.onnx")
    with pytest.raises(InputError, match="Y-channel"):
        from test_tiling import _export_tiny

        rgb = _export_tiny("srvgg", tmp_path)
        compose(onnx.load(str(rgb)), read_model_info(rgb), Io.Y8)
    with pytest.raises(InputError, match="unknown --io"):
        Io.parse("rgba8")


# ---- portable: plain runtimes, no srkit ----------------------------------------------------------------
PLAIN_RUNTIME_SCRIPT = r"""
import sys
sys.modules["srkit"] = None  # srkit cannot be imported in this process
try:
    import srkit  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("srkit was importable")
import numpy as np
from PIL import Image
model, image_path, out_path, runtime = sys.argv[1:5]
image = np.asarray(Image.open(image_path).convert("RGB"))[None]      # uint8 [1, H, W, 3]
if runtime == "onnxruntime":
    import onnxruntime as ort
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    big = session.run(None, {"image": image})[0][0]                    # uint8 [3H, 3W, 3]
else:
    import openvino as ov
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    big = compiled(image)[0][0]
Image.fromarray(big).save(out_path)
"""


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_plain_runtime_without_srkit_gets_srkit_upscales_pixels(rgb8_model: Path, espcn_x3_onnx: Path,
                                                               sample_rgb: np.ndarray, tmp_path: Path,
                                                               runtime: str) -> None:
    pytest.importorskip(runtime)
    from srkit.imageio import read_image, write_image

    src = tmp_path / "in.png"
    write_image(src, np.ascontiguousarray(sample_rgb[:57, :83]))
    plain = tmp_path / "plain.png"
    proc = subprocess.run([sys.executable, "-c", PLAIN_RUNTIME_SCRIPT, str(rgb8_model), str(src), str(plain), runtime],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ours = tmp_path / "srkit.png"
    cli = subprocess.run([sys.executable, "-m", "srkit", "upscale", str(src), "-m", str(espcn_x3_onnx), "-o", str(ours),
                          "--backend", "ort"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    within, psnr = _match(read_image(plain), read_image(ours))
    assert within >= MIN_WITHIN_ONE_LEVEL and psnr >= MIN_PSNR_DB


# ---- threads and lying metadata -----------------------------------------------------------------------
@pytest.mark.parametrize(("backend", "precision"), _variants())
def test_pipeline_is_safe_from_many_threads(espcn_x3_onnx: Path, sample_rgb: np.ndarray, backend: str,
                                            precision: str) -> None:
    if backend not in backends.available():
        pytest.skip(f"backend {backend} is not installed")
    images = [np.ascontiguousarray(np.roll(sample_rgb[:40, :56], 7 * i, axis=1)) for i in range(6)]
    with Upscaler(espcn_x3_onnx, backend=backend, precision=precision) as up:
        expected = [up.upscale(im) for im in images]
        failures: list[str] = []

        def work(k: int) -> None:
            for j in range(5):
                i = (k + j) % len(images)
                if not np.array_equal(up.upscale(images[i]), expected[i]):
                    failures.append(f"thread {k} call {j} got another image")

        threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not failures


def test_metadata_that_lies_about_the_scale_is_refused(espcn_x3_onnx: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(espcn_x3_onnx))
    for prop in model.metadata_props:
        if prop.key == "srkit.scale":
            prop.value = "2"
    liar = tmp_path / "liar.onnx"
    onnx.save(model, str(liar))
    for backend in ("ort", "openvino"):
        if backend in backends.available():
            with pytest.raises(UnsupportedModelError, match="says x2"), Upscaler(liar, backend=backend):
                pass
