"""The `srkit` command. Thin: heavy packages are imported inside each command, so `--help` is instant."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

from srkit import __version__
from srkit.errors import SrkitError
from srkit.meta import Precision
from srkit.qat.settings import QatSettings

PRECISIONS = click.Choice([p.value for p in Precision], case_sensitive=False)
# More threads than this is a typo, not a setting (100000 ran for minutes at load average 272)
MAX_THREADS = 4 * (os.cpu_count() or 1)
THREADS = click.IntRange(1, MAX_THREADS)
QAT_DEFAULTS = QatSettings()
# cpu, cuda, cuda:1, GPU.0, AUTO:GPU,CPU, MULTI:GPU,CPU, HETERO:GPU,CPU: a name, then optional names after ':'
_DEVICE = re.compile(r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*)?$")


class BackendChoice(click.ParamType):
    """The backend names of srkit.runtime.registry (its one list, its aliases) and `auto`; `all` for bench.
    Looked up only when an option is parsed, so `srkit --help` does not import the runtime."""

    name = "backend"

    def __init__(self, *extra: str) -> None:
        self.extra = extra

    def choices(self) -> list[str]:
        from srkit.runtime import registry

        return [*self.extra, *registry.names(), *registry.ALIASES]

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:  # ctx: click >= 8.2
        from srkit.runtime import registry

        return "[" + "|".join([*self.extra, *registry.names()]) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from srkit.runtime import registry

        name = str(value).lower()
        if name not in self.choices():
            self.fail(f"{value!r} is not a backend; choose one of: {', '.join([*self.extra, *registry.names()])}",
                      param, ctx)
        return registry.ALIASES.get(name, name)


def device_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _DEVICE.match(value):
        raise click.BadParameter(f"{value!r} is not a device name (e.g. cpu, cuda, cuda:1, GPU.0, AUTO:GPU,CPU)")
    return value


def tile_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # ASCII digits only: '²'.isdigit() is True, and int('²') fails
    if value is not None and value.strip().lower() != "auto" and not re.fullmatch(r"[0-9]+", value.strip()):
        raise click.BadParameter(f"takes a size in pixels or 'auto', not {value!r}")
    return value


def parse_hw(value: str | None, flag: str) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HxW, e.g. 256x256, not {value!r}", param_hint=flag) from None
    return h, w


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="srkit")
def cli() -> None:
    """srkit: export super-resolution models to ONNX and run them on ONNX Runtime, OpenVINO, TensorRT."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def zoo(as_json: bool) -> None:
    """List the bundled models."""
    from srkit.cli import commands

    commands.zoo(as_json)


@cli.command()
@click.argument("source")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="file to write: .onnx, or .param for ncnn (default: SOURCE stem + .onnx)")
@click.option("--arch", help="architecture, when it cannot be detected (or to confirm it)")
@click.option("--scale", type=int, help="upscaling factor, when the weights do not say")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset of the exported graph")
@click.option("--static", "static", metavar="HxW", help="fixed input size instead of dynamic axes")
@click.option("--no-verify", is_flag=True, help="skip the parity gate (not recommended)")
@click.option("--fp16", is_flag=True, help="fp16 graph, fp32 I/O; nodes that overflow fp16 stay fp32")
@click.option("--fp16-io", is_flag=True, help="with --fp16: fp16 inputs and outputs too")
@click.option("--io", "io", type=click.Choice(["tensor", "rgb8", "gray8", "rgb16"]), default="tensor",
              show_default=True,
              help="tensor: float32 NCHW 0-1 (srkit does colour and padding); rgb8/gray8/rgb16: a pipeline model, "
                   "uint8/uint16 NHWC image in and out, colour, padding and rounding inside the graph")
@click.option("--format", "out_format", type=click.Choice(["onnx", "ncnn"], case_sensitive=False),
              help="onnx, or ncnn (.param + .bin + .json sidecar, via pnnx) [default: from -o's suffix, else onnx]")
@click.option("--ncnn-fp32", is_flag=True, help="ncnn: store fp32 weights (default fp16, as ncnn's tools do)")
def export(source: str, output: str | None, arch: str | None, scale: int | None, opset: int,
           static: str | None, no_verify: bool, fp16: bool, fp16_io: bool, io: str, out_format: str | None,
           ncnn_fp32: bool) -> None:
    """Export SOURCE (a bundled name, a checkpoint, an ncnn .param, or an exported .onnx for --io) to ONNX, or to
    ncnn (-o NAME.param / --format ncnn), and verify it against PyTorch (a pipeline: against srkit's host path)."""
    from srkit.cli import commands

    commands.export(source, output, arch=arch, scale=scale, opset=opset,
                    static=parse_hw(static, "--static"), verify=not no_verify, fp16=fp16 or fp16_io,
                    fp16_io=fp16_io, io=io, out_format=out_format, ncnn_fp32=ncnn_fp32)


@cli.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def info(model: str, as_json: bool) -> None:
    """Show the srkit metadata of an exported model."""
    from srkit.cli import commands

    commands.info(model, as_json)


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-m", "--model", required=True, help="exported .onnx or a bundled name")
@click.option("-o", "--output", help="output file (one input) or folder")
@click.option("--backend", type=BackendChoice("auto"), default="auto", show_default=True,
              help="runtime; auto: the first installed one that has the device")
@click.option("--device", default="cpu", show_default=True, callback=device_name,
              help="cpu, cuda[:N] (ONNX Runtime, TensorRT), GPU / NPU / AUTO:... (OpenVINO)")
@click.option("--precision", type=PRECISIONS, default="fp32", show_default=True,
              help="compute precision; auto: the fastest whose output stays within the parity budget")
@click.option("--threads", type=THREADS, help="CPU threads for the backend")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True,
              help="JPEG/WebP quality (WebP 100 = lossless)")
@click.option("--format", "out_format",
              type=click.Choice(["png", "jpg", "webp", "tiff", "bmp"], case_sensitive=False),
              help="output format for folders (default: each input's own); a file output takes its extension")
@click.option("--tile", default=None, metavar="N|auto", callback=tile_value,
              help="upscale in N x N tiles (seam-free, bounded memory); auto: sized from a 1 GiB budget")
@click.option("--tile-overlap", type=click.IntRange(0), default=None, metavar="N",
              help="context pixels per tile side, at least the model's receptive field "
                   "[default: receptive field + 8]")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
              help="same-size images per model call")
@click.option("--codec", default="libx264", show_default=True, help="video: the FFmpeg encoder")
@click.option("--crf", type=click.IntRange(0, 63), default=None,
              help="video: constant rate factor (lower = better) [default: 18 for libx264]")
@click.option("--preset", default=None, help="video: encoder speed preset (x264: ultrafast .. veryslow)")
@click.option("--ray", "use_ray", is_flag=True,
              help="run on the Ray cluster at RAY_ADDRESS (else a local Ray); pip install 'srkit[cluster]'")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="--ray: model actors [default: cluster CPUs / threads per worker]")
@click.option("--threads-per-worker", type=click.IntRange(1), default=None,
              help="--ray: backend threads per actor [default: --threads, else 1]")
@click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True,
              help="--ray: images per actor call")
@click.option("--gpus-per-worker", type=click.FloatRange(0), default=0.0, show_default=True,
              help="--ray: GPUs per actor (fractions share a GPU); > 0 runs on cuda")
def upscale(inputs: tuple[str, ...], model: str, output: str | None, backend: str, device: str,
            precision: str, threads: int | None, quality: int, out_format: str | None, tile: str | None,
            tile_overlap: int | None, batch: int, codec: str, crf: int | None, preset: str | None,
            use_ray: bool = False, workers: int | None = None, threads_per_worker: int | None = None,
            batch_size: int = 4, gpus_per_worker: float = 0.0) -> None:
    """Upscale image files, folders of images, or a video (audio copied, frame rate kept)."""
    from srkit.cli import commands

    if use_ray:
        commands.upscale_on_ray(list(inputs), model, output, backend=backend, device=device, precision=precision,
                                quality=quality, out_format=out_format, tile=tile, tile_overlap=tile_overlap,
                                workers=workers, threads_per_worker=threads_per_worker or threads or 1,
                                batch_size=batch_size, gpus_per_worker=gpus_per_worker, codec=codec, crf=crf,
                                preset=preset)
        return
    commands.upscale(list(inputs), model, output, backend=backend, device=device, precision=precision,
                     threads=threads, quality=quality, out_format=out_format, tile=tile,
                     tile_overlap=tile_overlap, batch=batch, codec=codec, crf=crf, preset=preset)


@cli.command()
@click.option("-m", "--model", required=True, help="exported .onnx or a bundled name")
@click.option("--backend", type=BackendChoice("all"), default="all", show_default=True,
              help="one backend, or all: every installed one")
@click.option("--precision", type=click.Choice([p.value for p in Precision] + ["all"], case_sensitive=False),
              default="all", show_default=True, help="all: every precision each backend can run the model at")
@click.option("--size", default="1080p", show_default=True, help="720p/1080p/4k (output) or WxH (input)")
@click.option("--dataset", type=click.Path(file_okay=False), help="folder of high-resolution images")
@click.option("--int8-model", type=click.Path(dir_okay=False),
              help="int8 model quantized from MODEL (default: MODEL-int8-BACKEND.onnx or MODEL-int8.onnx "
              "beside it, if present)")
@click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True),
              help="PyTorch weights MODEL was exported from, for the torch rows and parity "
              "(bundled models need none)")
@click.option("--ncnn-model", type=click.Path(dir_okay=False),
              help="ncnn export of MODEL's network for the ncnn rows (default: MODEL-stem.param or "
              "MODEL-stem-xN.param beside it, if present)")
@click.option("--no-quality", is_flag=True, help="skip PSNR-Y/SSIM-Y on the dataset (speed and parity only)")
@click.option("--threads", type=THREADS, help="CPU threads for every backend (default: theirs)")
@click.option("--min-time", type=float, default=2.0, show_default=True, help="seconds of timed calls per figure")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="write the report as JSON")
@click.option("--markdown", "md_out", type=click.Path(dir_okay=False), help="write the results as a Markdown table")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), help="write fps against PSNR as a PNG")
@click.option("--target-fps", type=click.FloatRange(min=0, min_open=True),
              help="judge the recommended result's model-call fps against this")
@click.option("--target-e2e-fps", type=click.FloatRange(min=0, min_open=True),
              help="judge the best end-to-end fps against this")
@click.option("--target-speedup", type=click.FloatRange(min=0, min_open=True),
              help="judge the recommended result's speed-up over PyTorch eager fp32 against this")
@click.option("--target-peak", type=click.FloatRange(0, 100, min_open=True),
              help="judge every fp32 ONNX Runtime / OpenVINO result's % of its measured peak against this")
def bench(model: str, backend: str, precision: str, size: str, dataset: str | None, int8_model: str | None,
          checkpoint: str | None, ncnn_model: str | None, no_quality: bool, threads: int | None, min_time: float,
          json_out: str | None, md_out: str | None, plot_out: str | None, target_fps: float | None,
          target_e2e_fps: float | None, target_speedup: float | None, target_peak: float | None) -> None:
    """Measure speed, memory and quality of a model per backend and precision.

    With --target-* the report also says which goal was met, and by how much each one was missed."""
    from srkit.bench.report import Targets
    from srkit.cli import commands

    targets = Targets(fps=target_fps, e2e_fps=target_e2e_fps, speedup=target_speedup, pct_of_peak=target_peak)
    commands.bench(model, backend, precision, size, dataset, threads, min_time, json_out, md_out,
                   plot_out=plot_out, int8_model=int8_model, checkpoint=checkpoint, quality=not no_quality,
                   targets=targets, ncnn_model=ncnn_model)


@cli.command()
@click.argument("model")
@click.option("--calib", type=click.Path(file_okay=False),
              help="folder of calibration images (default: the built-in CC0 photos, validated on the others)")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="int8 ONNX to write (default: MODEL-int8-BACKEND.onnx)")
@click.option("--backend", type=click.Choice(["ort", "openvino", "trt"], case_sensitive=False), default="ort",
              show_default=True, help="the runtime the int8 model is made for")
@click.option("--method",
              help="ort/trt: minmax, entropy, percentile; openvino: performance, mixed, accuracy-control")
@click.option("--max-psnr-drop", type=float, help="PSNR-Y budget in dB vs fp32 (default 0.3)")
@click.option("--min-parity", type=float, help="parity budget in dB vs fp32 output (default 35)")
@click.option("--budget", "budget_mode", type=click.Choice(["drop", "parity"]),
              help="drop: PSNR-Y vs ground truth; parity: vs the fp32 output (default: GAN archs -> parity)")
@click.option("--samples", type=click.IntRange(1), default=64, show_default=True, help="calibration patches")
@click.option("--patch", type=click.IntRange(1), default=64, show_default=True, help="patch side (LR pixels)")
@click.option("--search", type=click.Choice(["auto", "greedy", "blocks", "layers"], case_sensitive=False),
              default="auto", show_default=True,
              help="which convs stay float when all-int8 misses the budget. greedy: up to 4 candidate convs, "
              "re-quantized per attempt; blocks: quantize once, measure each block's (e.g. each dense block's) "
              "error alone on small crops, keep the worst error per unit of work in float; layers: blocks with "
              "one conv each (slow on big models); auto: greedy up to 12 convs, blocks above")
@click.option("--seed", type=int, default=0, show_default=True,
              help="random seed of the calibration patches (--qat: of the training patches and weights)")
@click.option("--qat", is_flag=True,
              help="quantization-aware fine-tuning (NNCF) of MODEL's weights (a checkpoint or bundled name): "
              "every conv int8, symmetric Q/DQ for ort, openvino and trt")
@click.option("--data", type=click.Path(file_okay=False),
              help="--qat: folder of training images (default: the built-in calibration photos)")
@click.option("--steps", type=click.IntRange(0), default=QAT_DEFAULTS.steps, show_default=True,
              help="--qat: fine-tuning steps")
@click.option("--lr", "qat_lr", type=click.FloatRange(min=0, min_open=True), default=QAT_DEFAULTS.lr,
              show_default=True, help="--qat: peak learning rate (cosine to zero)")
@click.option("--batch", "qat_batch", type=click.IntRange(1), default=QAT_DEFAULTS.batch, show_default=True,
              help="--qat: patches per step")
def quantize(model: str, calib: str | None, output: str | None, backend: str, method: str | None,
             max_psnr_drop: float | None, min_parity: float | None, budget_mode: str | None, samples: int,
             patch: int, search: str, seed: int, qat: bool, data: str | None, steps: int, qat_lr: float,
             qat_batch: int) -> None:
    """int8 model calibrated on real images, with its PSNR cost measured and bounded.

    With --qat the weights are fine-tuned with fake quantization on the images in --data first; the budget
    still compares the int8 model with the original fp32 model."""
    from srkit.cli import commands

    if qat:
        if calib or method or search != "auto":
            raise click.UsageError("--qat trains on --data; --calib, --method and --search are for post-training "
                                   "int8")
        commands.quantize_qat(model, data, output, backend=backend, max_psnr_drop=max_psnr_drop,
                              min_parity=min_parity, budget_mode=budget_mode,
                              settings=QatSettings(steps=steps, lr=qat_lr, batch=qat_batch, seed=seed))
        return
    if data:
        raise click.UsageError("--data is the --qat training folder; post-training int8 calibrates on --calib")
    commands.quantize(model, calib, output, backend=backend, method=method, max_psnr_drop=max_psnr_drop,
                      min_parity=min_parity, budget_mode=budget_mode, samples=samples, patch=patch, seed=seed,
                      search=search)


def _fail(message: str, code: int = 2) -> int:
    print(f"srkit: error: {message}", file=sys.stderr)
    return code


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread so that everything unwinds as for Ctrl-C: `atomic_path`
    removes its half-written temp file, temp folders are deleted, video threads are stopped. A BaseException
    like KeyboardInterrupt, so no `except Exception` swallows it, but not one: click would turn it into Abort."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once, as the sender wants
    raise Terminated(signum)


@contextmanager
def clean_exit_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP -> Terminated, for the time of one command; handlers are restored afterwards. A signal
    the parent chose to ignore (nohup) stays ignored, and only the main thread can take handlers."""
    wanted = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    installed: dict[int, Any] = {}
    try:
        for signum in wanted:
            try:
                if signal.getsignal(signum) is signal.SIG_DFL:
                    installed[signum] = signal.signal(signum, _terminate)
            except ValueError:  # not the main thread
                break
        yield
    finally:
        for signum, previous in installed.items():
            signal.signal(signum, previous)


@contextmanager
def library_warnings_to_stderr() -> Iterator[None]:
    """The library's warnings (the "srkit" logger: a file skipped, an animated image cut to one frame) as
    `srkit: warning:` lines on stderr while a command runs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("srkit: warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    log = logging.getLogger("srkit")
    propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point: user errors become one `srkit: error:` line and exit 2; never a traceback for them.
    SIGTERM and SIGHUP end a run like Ctrl-C: temp files removed, one line, exit 128 + the signal number."""
    try:
        with clean_exit_on_signals(), library_warnings_to_stderr():
            cli.main(args=list(argv) if argv is not None else None, prog_name="srkit", standalone_mode=False)
    except Terminated as exc:
        return _fail(f"terminated by {signal.Signals(exc.signum).name}", 128 + exc.signum)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        return _fail("aborted", 130)
    except click.ClickException as exc:
        return _fail(exc.format_message())
    except SrkitError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except MemoryError:
        return _fail("out of memory; try tiling (--tile) or a smaller input")
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except Exception as exc:  # a bug in srkit, not a user error
        if os.environ.get("SRKIT_DEBUG"):
            raise
        return _fail(f"internal error: {type(exc).__name__}: {exc} (set SRKIT_DEBUG=1 for a traceback)", 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run())
