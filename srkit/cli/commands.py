"""Command bodies. Imported only when a command runs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from srkit._fs import atomic_path, refuse_overwriting_inputs
from srkit.cli._models import resolve_onnx
from srkit.cli._progress import progress
from srkit.errors import InputError, SrkitError
from srkit.jobs import load_input, make_output_root

if TYPE_CHECKING:
    from srkit.bench.report import Targets
    from srkit.calibration.quantize import QuantizeResult
    from srkit.cluster import ClusterOptions
    from srkit.imageio import ImageFile
    from srkit.qat.settings import QatSettings
    from srkit.runtime import Upscaler
    from srkit.runtime.files import FileOutcome


def echo(text: str = "") -> None:
    click.echo(text)


def table(rows: list[list[str]], header: list[str]) -> str:
    from srkit.bench.report import table as plain_table

    return plain_table(rows, header)


# ---- zoo -------------------------------------------------------------------------------------------
def zoo(as_json: bool) -> None:
    from srkit.models import zoo as bundled

    entries = bundled.entries()
    if as_json:
        echo(json.dumps({name: e.record for name, e in entries.items()}, indent=2))
        return
    rows = []
    classical = ("nearest", "bilinear", "lanczos")
    for e in entries.values():
        v = e.record.get("validation", {})
        others = [f"{e.baselines_psnr_y[k]:.2f}" if k in e.baselines_psnr_y else "-" for k in classical]
        test = f"{e.test_gain_db:+.2f}" if e.test_gain_db is not None else "-"
        int8 = f"-{e.int8_drop_db:.2f}" if e.int8_drop_db is not None else "-"
        rows.append([e.name, e.arch, f"x{e.scale}", f"{e.parameters:,}", f"{v.get('psnr_y', float('nan')):.2f}",
                     f"{v.get('bicubic_psnr_y', float('nan')):.2f}", f"{v.get('gain_db', float('nan')):+.2f}",
                     test, *others, int8, e.origin])
    echo(table(rows, ["name", "arch", "scale", "params", "PSNR-Y", "bicubic", "gain dB", "test gain", *classical,
                      "int8 dB", "weights"]))
    from srkit.data import HELD_OUT

    echo(f"\nPSNR-Y: mean over the {len(HELD_OUT)} held-out CC0 photos ({', '.join(HELD_OUT)}), BT.601 Y, "
         "border = scale cropped; gain over bicubic. These photos chose between training recipes, so they are a "
         "validation set. test gain: the same measure on 12 natural photos (Debian's mate-backgrounds, nature/, "
         "long side 720) that no training run and no choice looked at (scripts/train_bundled.py --test). nearest, "
         "bilinear, lanczos: Pillow's filters on the held-out low-resolution images. int8 dB: the PSNR-Y cost of "
         "the all-int8 model shipped with it (`--precision int8` runs it; made by `srkit quantize NAME --qat`).")


# ---- export ----------------------------------------------------------------------------------------
def export(source: str, output: str | None, *, arch: str | None, scale: int | None, opset: int,
           static: tuple[int, int] | None, verify: bool, fp16: bool = False, fp16_io: bool = False,
           io: str = "tensor", out_format: str | None = None, ncnn_fp32: bool = False) -> None:
    from srkit.export import ExportOptions, export_model
    from srkit.export.ncnn import NcnnExportResult
    from srkit.meta import Io
    from srkit.pipeline import describe_io

    if static is not None:
        refuse_oversized_static(source, static, scale)
    # the default name carries -fp16 / -rgb8...: an fp16 or pipeline export never replaces the plain one
    options = ExportOptions(opset=opset, static=static, verify=verify, fp16=fp16, fp16_io=fp16_io,
                            io=Io.parse(io), format=out_format, ncnn_fp32=ncnn_fp32)
    with progress(None, f"exporting {source}"):
        result = export_model(source, output, arch=arch, scale=scale, options=options)
    if isinstance(result, NcnnExportResult):  # it says how to feed and use its files
        for line in result.summary():
            echo(line)
        return
    info = result.info
    echo(f"wrote {result.path}  ({info.arch} x{info.scale}, {info.color.value.upper()}, opset {info.opset}, "
         f"{'static ' + 'x'.join(map(str, static)) if static else 'dynamic batch/height/width'})")
    echo("graph: " + ", ".join(f"{op} x{n}" for op, n in sorted(result.nodes.items())))
    if result.checks:
        echo("checks: " + ", ".join(f"{name} {verdict}" for name, verdict in result.checks.items()))
    if "fp32_nodes" in info.extra:
        kept = json.loads(info.extra["fp32_nodes"])
        io = "fp16" if fp16_io else "fp32"
        echo(f"precision: fp16 ({io} inputs/outputs), {len(kept)} node(s) kept fp32 for range"
             + (f": {', '.join(kept[:6])}{' ...' if len(kept) > 6 else ''}" if kept else ""))
    if result.parity:
        p = result.parity
        psnr = "inf" if p.psnr_db == float("inf") else f"{p.psnr_db:.1f} dB"
        echo(f"parity vs PyTorch fp32 ({p.backend}): max abs {p.max_abs:.2e}, PSNR {psnr}, "
             f"shapes {', '.join('x'.join(map(str, s)) for s in p.shapes)}  [gate {p.gate}: passed]")
    elif result.pipeline is None:
        echo("parity: NOT verified (--no-verify)")
    if options.io != Io.TENSOR:
        echo(f"io: {describe_io(options.io)}")
        echo(result.pipeline.summary() + "  [gate: passed]" if result.pipeline else "pipeline: NOT verified (--no-verify)")
    echo(f"done in {result.seconds:.1f} s")


# ---- info ------------------------------------------------------------------------------------------
def info(model: str, as_json: bool) -> None:
    from srkit.meta import read_model_info
    from srkit.pipeline import describe_io

    model_info = read_model_info(model)
    data = model_info.to_json()
    if as_json:
        echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if value in (None, {}, ""):
            continue
        if key == "io":
            value = describe_io(model_info.io)
        echo(f"{key:>16}: {json.dumps(value) if isinstance(value, dict | list) else value}")


# ---- upscale ---------------------------------------------------------------------------------------
def upscale(inputs: list[str], model: str, output: str | None, *, backend: str, device: str, precision: str,
            threads: int | None, quality: int, out_format: str | None = None, tile: str | None = None,
            tile_overlap: int | None = None, batch: int = 1, codec: str = "libx264", crf: int | None = None,
            preset: str | None = None) -> None:
    from srkit.runtime import Upscaler
    from srkit.runtime.container import is_video_path
    from srkit.runtime.files import Status, plan_files, upscale_files

    model_path = resolve_onnx(model, other_formats=True, precision=precision)
    up = Upscaler(model_path, backend=backend, device=device, precision=precision, threads=threads,
                  tile=tile, tile_overlap=tile_overlap, on_note=lambda note: print(f"srkit: {note}", file=sys.stderr))
    if len(inputs) == 1 and is_video_path(inputs[0]):
        _upscale_video(up, Path(inputs[0]), output, codec=codec, crf=crf, preset=preset)
        return
    plan = plan_files(inputs, output, scale=up.scale, out_format=out_format)
    if len(plan.jobs) == 1:
        loaded = load_input(plan.jobs[0][0])  # a bad input fails before the model loads
        if not plan.single:  # a folder that holds one image still gets its output folder
            make_output_root(plan.jobs)
        _upscale_one(up, plan.jobs[0], loaded, quality)
        return
    make_output_root(plan.jobs)
    start = time.perf_counter()
    with up, progress(len(plan.jobs), "upscaling", unit="images") as advance:
        _say_what_runs(up)

        def on_outcome(outcome: FileOutcome) -> None:
            if outcome.status == Status.FAILED:
                print(f"srkit: error: {outcome.src}: {outcome.reason}", file=sys.stderr)
            advance()

        report = upscale_files(up, plan, quality=quality, batch=batch, on_outcome=on_outcome)
    seconds = time.perf_counter() - start  # from before the model loads, as the count of images/s always was
    echo(f"upscaled {report.done} of {report.items} images into {plan.root} in {seconds:.1f} s "
         f"({report.done / seconds if seconds > 0 else 0.0:.2f} images/s)")
    if report.failed:
        raise InputError(f"{report.failed} of {report.items} images failed (listed above)")


def _say_what_runs(up: Upscaler) -> None:
    described = up.describe()
    tile = up.tile
    shape = (tile, tile) if isinstance(tile, int) else tile
    tiling = f", tiles {shape[0]}x{shape[1]} overlap {up.tile_overlap}" if shape else ""
    print(f"srkit: {described['backend']} on {described['device']}, {described['precision']}{tiling}",
          file=sys.stderr)
    choice = getattr(up.backend, "choice", None)  # --precision auto: say what was measured and chosen
    if choice is not None:
        print(f"srkit: {choice.summary()}", file=sys.stderr)


def _upscale_video(up: Upscaler, src: Path, output: str | None, *, codec: str, crf: int | None,
                   preset: str | None) -> None:
    from srkit.runtime.container import check_encoder, check_video_output, probe
    from srkit.runtime.video import VideoOptions, default_output, upscale_video

    info = probe(src)  # a corrupt or missing video, or a bad encoder or container, fails before the model loads
    dst = default_output(src, output, up.scale)
    check_encoder(codec, crf)
    check_video_output(dst, codec)
    refuse_overwriting_inputs(dst, [src])
    options = VideoOptions(codec=codec, crf=crf, preset=preset)
    total = info.frames or (round(info.duration_s * info.rate) if info.duration_s and info.rate else None)
    with up, progress(total, f"upscaling {src.name}", unit="frames") as advance:
        _say_what_runs(up)
        result = upscale_video(up, src, dst, options=options, progress=lambda done, fps: advance())
    rate = f"{float(result.rate):g} fps" if result.rate else "variable rate"
    full = (result.input_size[0] * up.scale, result.input_size[1] * up.scale)
    kept = "".join([
        ", 10-bit" if "10" in result.pix_fmt else "",
        f", cropped from {full[0]}x{full[1]}: 4:2:0 needs even sides" if result.output_size != full else "",
        f", {result.copied}" if result.copied else "",
        f", display rotation {result.rotation} degrees kept" if result.rotation else "",
    ])
    echo(f"{src} ({result.input_size[0]}x{result.input_size[1]}, {result.frames} frames, {rate}) -> {dst} "
         f"({result.output_size[0]}x{result.output_size[1]}{kept}) in {result.seconds:.1f} s "
         f"({result.fps:.1f} frames/s)")
    if info.frames and result.frames < info.frames:
        print(f"srkit: warning: {src}: its header announces {info.frames} frames but only {result.frames} could be "
              "decoded (a truncated file?); the output holds those", file=sys.stderr)


def _upscale_one(up: Upscaler, job: tuple[Path, Path], loaded: ImageFile, quality: int) -> None:
    from srkit._fs import check_writable
    from srkit.runtime.files import write_result

    src, dst = job
    check_writable(dst)  # before the work, not after it
    image = loaded.pixels
    plan = up.tile_plan(*image.shape[:2])
    with up, progress(plan.count if plan else None, f"upscaling {src.name}", unit="tiles") as advance:
        _say_what_runs(up)
        result = up.upscale(image, on_tile=advance)
    write_result(dst, result, quality=quality, icc_profile=loaded.icc_profile)
    echo(f"{src} ({image.shape[1]}x{image.shape[0]}) -> {dst} ({result.shape[1]}x{result.shape[0]})")


def upscale_on_ray(inputs: list[str], model: str, output: str | None, *, backend: str, device: str, precision: str,
                   quality: int, out_format: str | None, tile: str | None, tile_overlap: int | None,
                   workers: int | None, threads_per_worker: int, batch_size: int, gpus_per_worker: float,
                   codec: str = "libx264", crf: int | None = None, preset: str | None = None) -> None:
    """`srkit upscale --ray`: the same (input, output) plan as one machine, run by srkit.cluster on Ray."""
    from srkit._optional import require
    from srkit.meta import read_model_info
    from srkit.runtime.container import is_video_path
    from srkit.runtime.files import plan_files

    require("ray", extra="cluster", purpose="--ray")
    from srkit.cluster import MANIFEST_NAME, ClusterOptions, upscale_folder_on_ray

    model_path = resolve_onnx(model)
    scale = read_model_info(model_path).scale
    options = ClusterOptions(backend=backend, device=None if gpus_per_worker > 0 and device == "cpu" else device,
                             precision=precision, tile=tile, tile_overlap=tile_overlap, quality=quality,
                             workers=workers, threads_per_worker=threads_per_worker, batch_size=batch_size,
                             gpus_per_worker=gpus_per_worker)
    if len(inputs) == 1 and is_video_path(inputs[0]):
        _upscale_video_on_ray(Path(inputs[0]), output, model_path, scale, options, codec=codec, crf=crf,
                              preset=preset)
        return
    plan = plan_files(inputs, output, scale=scale, out_format=out_format)
    jobs = plan.jobs
    make_output_root(jobs)
    root = plan.root
    with progress(len(jobs), "upscaling on Ray", unit="images") as advance:
        def on_item(row: dict[str, object]) -> None:
            if row["status"] == "failed":
                print(f"srkit: error: {row['src']}: {row['reason']}", file=sys.stderr)
            advance()

        report = upscale_folder_on_ray(jobs, model_path, options, manifest=root / MANIFEST_NAME, on_item=on_item)
    for node_id, node in sorted(report.nodes.items(), key=lambda kv: kv[1].ip):
        echo(f"node {node.ip} ({node_id[:12]}): {node.done} done, {node.skipped} skipped, {node.failed} failed "
             f"by {len(node.workers)} worker(s)")
    pool = f"{report.workers} worker{'s' if report.workers != 1 else ''}"
    echo(f"upscaled {report.done} of {report.items} images on Ray ({report.address}, {pool}, "
         f"{report.backend} {report.precision}; {report.skipped} already done) into {root} in {report.seconds:.1f} s "
         f"({report.images_per_s:.2f} images/s); manifest {root / MANIFEST_NAME}")
    if report.failed:
        raise InputError(f"{report.failed} of {report.items} images failed (listed above)")


def _upscale_video_on_ray(src: Path, output: str | None, model_path: Path, scale: int, options: ClusterOptions, *,
                          codec: str, crf: int | None, preset: str | None) -> None:
    from srkit.cluster.video import upscale_video_on_ray
    from srkit.runtime.container import check_encoder, probe
    from srkit.runtime.video import VideoOptions, default_output

    probe(src)  # a corrupt or missing video, or a bad encoder, fails before Ray starts
    check_encoder(codec, crf)
    dst = default_output(src, output, scale)
    refuse_overwriting_inputs(dst, [src])
    with progress(None, f"upscaling {src.name} on Ray"):
        video_options = VideoOptions(codec=codec, crf=crf, preset=preset)
        result = upscale_video_on_ray(src, dst, model_path, options, video_options=video_options)
    rate = f"{float(result.rate):g} fps" if result.rate else "variable rate"
    echo(f"{src} ({result.input_size[0]}x{result.input_size[1]}, {result.frames} frames, {rate}) -> {dst} "
         f"({result.output_size[0]}x{result.output_size[1]}{', ' + result.copied if result.copied else ''}) "
         f"in {result.seconds:.1f} s ({result.fps:.1f} frames/s); {result.segments} segments on "
         f"{len(result.nodes)} node(s)")


# ---- sizes -----------------------------------------------------------------------------------------
def working_set_bytes(width: int, height: int, scale: int, features: int) -> int:
    """A whole-image model call's memory, roughly: two float32 feature maps at the input size, the float32
    output and its copy (the same model as `--tile auto` sizes its tiles with)."""
    return width * height * (4 * 2 * max(features, 1) + 4 * 3 * scale * scale * 2)


def refuse_oversized_job(label: str, width: int, height: int, scale: int, *, features: dict | None) -> None:
    """An untiled size (bench --size, export --static) that cannot fit in this machine's memory is refused
    before the work, not left to the OOM killer."""
    from srkit._system import available_memory_bytes
    from srkit.runtime.tiling import DEFAULT_FEATURES, features_of

    need = working_set_bytes(width, height, scale, features_of(features) if features else DEFAULT_FEATURES)
    free = available_memory_bytes() or 8 << 30
    if need > free:
        raise InputError(f"{label}: a whole {width}x{height} (WxH) input at x{scale} needs about {_gib(need)} of "
                         f"memory, and {_gib(free)} is free; choose a smaller size")


def refuse_oversized_static(source: str, static: tuple[int, int], scale: int | None) -> None:
    """export --static: the parity gate runs the model at that size, in PyTorch and ONNX Runtime."""
    from srkit.models import zoo

    entry = zoo.get(source) if zoo.is_bundled(source) else None
    refuse_oversized_job(f"--static {static[0]}x{static[1]}", static[1], static[0],
                         scale or (entry.scale if entry else 4), features=entry.params if entry else None)


def _gib(n: int) -> str:
    return f"{n / (1 << 30):,.1f} GiB"


# ---- bench -----------------------------------------------------------------------------------------
def bench(model: str, backend: str, precision: str, size: str, dataset: str | None, threads: int | None,
          min_time: float, json_out: str | None, md_out: str | None, *, plot_out: str | None = None,
          int8_model: str | None = None, checkpoint: str | None = None, quality: bool = True,
          targets: Targets | None = None, ncnn_model: str | None = None) -> None:
    from srkit._fs import check_writable
    from srkit.bench.report import check_targets, render_markdown, render_summary
    from srkit.bench.runner import BenchConfig, plan_variants, resolve_backends, run_bench, size_for_output
    from srkit.meta import read_model_info

    model_path = resolve_onnx(model)
    info = read_model_info(model_path)
    from srkit.models import zoo as bundled

    shipped = bundled.get(model).int8 if bundled.is_bundled(model) else None
    if int8_model is None and shipped is not None:
        int8_model = str(shipped)  # the shipped all-int8 model is the int8 rows' model
    for out in (json_out, md_out, plot_out):
        if out:
            check_writable(Path(out))
    if plot_out:
        from srkit._optional import require

        require("matplotlib", extra="bench", purpose="--plot")  # fail before minutes of benchmarking
    input_size = size_for_output(info, size)
    refuse_oversized_job(f"--size {size}", *input_size, info.scale, features=info.params)
    config = BenchConfig(model=model_path, backends=resolve_backends(backend.lower()), precision=precision,
                         input_size=input_size, dataset=Path(dataset) if dataset else None,
                         threads=threads, min_time_s=min_time, peak_min_time_s=min(0.5, min_time),
                         int8_model=Path(int8_model) if int8_model else None,
                         checkpoint=Path(checkpoint) if checkpoint else None, quality=quality,
                         backend_models={"ncnn": Path(ncnn_model)} if ncnn_model else {})
    steps = len(plan_variants(config, info)) + 1  # + the PyTorch reference
    with progress(steps, "benchmarking") as advance:
        report = run_bench(config, progress=lambda name: advance(description=f"benchmarking {name}"))
    if targets is not None and targets.any():
        report["targets"] = check_targets(report, targets)
    _write_text(json_out, json.dumps(report, indent=2) + "\n")
    _write_text(md_out, render_markdown(report))
    if plot_out:
        from srkit.bench.plot import write_plot

        write_plot(report, plot_out)
    echo(render_summary(report))
    if all(r.get("error") for r in report["results"]):
        raise SrkitError("no backend could run the model: " + "; ".join(r["error"] for r in report["results"]))


# ---- quantize --------------------------------------------------------------------------------------
def quantize(model: str, calib: str | None, output: str | None, *, backend: str, method: str | None,
             max_psnr_drop: float | None, min_parity: float | None, budget_mode: str | None, samples: int,
             patch: int, seed: int, search: str = "auto") -> None:
    from srkit.calibration import quantize as run_quantize

    model_path = resolve_onnx(model)
    if output is None and not Path(model).is_file():  # a bundled name: write here, not into the cache
        output = f"{model}-int8-{backend.lower()}.onnx"
    with progress(None, f"quantizing {model} for {backend}") as advance:
        def note(message: str) -> None:
            advance(0, description=message)  # the attempts are listed in the report below

        result = run_quantize(model_path, output, calibration=calib, backend=backend, method=method,
                              max_psnr_drop=max_psnr_drop, min_parity_db=min_parity, budget_mode=budget_mode,
                              samples=samples, patch=patch, seed=seed, search=search, progress=note)
    _report_quantized(result)


def _report_quantized(result: QuantizeResult) -> None:
    m = result.measurement
    echo(f"wrote {result.path}  (int8 for {result.backend.value}, method {result.method})")
    echo(f"calibration: {result.calibration}")
    echo(f"validation ({', '.join(result.validation)}): {m.describe(result.budget)}  "
         f"[budget {result.budget.describe()}: met]")
    if result.blocks is not None and result.blocks.errors:
        _report_block_errors(result)
    for attempt in result.log.attempts:
        echo(f"  tried {attempt.describe_kept()}: {attempt.measurement.describe(result.budget)}"
             + ("" if attempt.held else "  (over budget)"))
    if result.blocks is not None and result.blocks.float_groups:
        echo(f"groups kept in float: {', '.join(result.blocks.float_groups)}")
    share = result.info.extra.get("quant_int8_work")
    echo(f"kept in float: {', '.join(result.kept_float) or 'none'}"
         + (f"  (int8 share of the conv work: {float(share):.0%})" if share else ""))
    echo(f"done in {result.seconds:.1f} s")


def _report_block_errors(result: QuantizeResult, shown: int = 8) -> None:
    """The groups whose int8 error (each alone in int8, on the search crops) is largest, and the cheapest."""
    from srkit.calibration.mixed import mse_to_db

    assert result.blocks is not None
    errors = sorted(result.blocks.errors, key=lambda e: -e.mse)
    echo(f"sensitivity ({len(errors)} groups, each alone in int8, parity on the search crops):")
    rows = errors if len(errors) <= 2 * shown else [*errors[:shown], None, *errors[-shown // 2:]]
    for e in rows:
        echo("  ..." if e is None else f"  {e.group.name}: {mse_to_db(e.mse):.2f} dB")


def quantize_qat(model: str, data: str | None, output: str | None, *, backend: str,
                 max_psnr_drop: float | None, min_parity: float | None, budget_mode: str | None,
                 settings: QatSettings) -> None:
    from srkit.qat.run import quantize_aware

    with progress(None, f"QAT of {model} for {backend}") as advance:
        def note(message: str) -> None:
            advance(0, description=message)

        result = quantize_aware(model, output, data=data, backend=backend, settings=settings,
                                max_psnr_drop=max_psnr_drop, min_parity_db=min_parity, budget_mode=budget_mode,
                                progress=note)
    _report_quantized(result)


def _write_text(path: str | None, text: str) -> None:
    if not path:
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text)


