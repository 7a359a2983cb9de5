"""Command bodies. Imported only when a command runs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


import click

from srkit._fs import atomic_path, refuse_overwriting_inputs
from srkit.cli._models import resolve_onnx
from srkit.cli._progress import progress
from srkit.errors import InputError, SrkitError


def echo(text: str = "") -> None:
    click.echo(text)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


# ---- zoo -------------------------------------------------------------------------------------------
def zoo(as_json: bool) -> None:
    from srkit.models import zoo as bundled

    entries = bundled.entries()
    if as_json:
        echo(json.dumps({name: e.record for name, e in entries.items()}, indent=2))
        return
    rows = []
    for e in entries.values():
        v = e.record.get("validation", {})
        rows.append([e.name, e.arch, f"x{e.scale}", f"{e.parameters:,}", f"{v.get('psnr_y', float('nan')):.2f}",
                     f"{v.get('bicubic_psnr_y', float('nan')):.2f}", f"{v.get('gain_db', float('nan')):+.2f}",
                     e.origin])
    echo(table(rows, ["name", "arch", "scale", "params", "PSNR-Y", "bicubic", "gain dB", "weights"]))
    echo("\nPSNR-Y: mean over held-out CC0 photos (chelsea, coffee, rocket), BT.601 Y, border = scale cropped.")


# ---- export ----------------------------------------------------------------------------------------
def export(source: str, output: str | None, *, arch: str | None, scale: int | None, opset: int,
           static: tuple[int, int] | None, verify: bool) -> None:
    from srkit.export import ExportOptions, export_model

    options = ExportOptions(opset=opset, static=static, verify=verify)
    with progress(None, f"exporting {source}"):
        result = export_model(source, output, arch=arch, scale=scale, options=options)
    info = result.info
    echo(f"wrote {result.path}  ({info.arch} x{info.scale}, {info.color.value.upper()}, opset {info.opset}, "
         f"{'static ' + 'x'.join(map(str, static)) if static else 'dynamic batch/height/width'})")
    echo("graph: " + ", ".join(f"{op} x{n}" for op, n in sorted(result.nodes.items())))
    if result.parity:
        p = result.parity
        psnr = "inf" if p.psnr_db == float("inf") else f"{p.psnr_db:.1f} dB"
        echo(f"parity vs PyTorch fp32 ({p.backend}): max abs {p.max_abs:.2e}, PSNR {psnr}, "
             f"shapes {', '.join('x'.join(map(str, s)) for s in p.shapes)}  [gate {p.gate}: passed]")
    else:
        echo("parity: NOT verified (--no-verify)")
    echo(f"done in {result.seconds:.1f} s")


# ---- info ------------------------------------------------------------------------------------------
def info(model: str, as_json: bool) -> None:
    from srkit.meta import read_model_info

    data = read_model_info(model).to_json()
    if as_json:
        echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if value in (None, {}, ""):
            continue
        echo(f"{key:>16}: {json.dumps(value) if isinstance(value, dict | list) else value}")


# ---- upscale ---------------------------------------------------------------------------------------
def plan_outputs(inputs: list[str], output: str | None, scale: int) -> list[tuple[Path, Path]]:
    """(input file, output file) pairs. One file in: -o is a file (or an existing folder); else a folder."""
    from srkit.imageio import is_image_path

    sources: list[tuple[Path, Path]] = []  # (file, path relative to the output root)
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            images = [p for p in files if is_image_path(p)]
            for skipped in sorted(set(files) - set(images)):
                print(f"srkit: warning: skipping {skipped} (not an image)", file=sys.stderr)
            sources += [(p, p.relative_to(path)) for p in images]
        elif path.is_file():
            if not is_image_path(path):
                raise InputError(f"{path}: unsupported input type {path.suffix!r}")
            sources.append((path, Path(path.name)))
        else:
            raise InputError(f"input not found: {path}")
    if not sources:
        raise InputError("no images to upscale")
    single = len(inputs) == 1 and not Path(inputs[0]).is_dir()
    if single and (output is None or not Path(output).is_dir()):
        src = sources[0][0]
        dst = Path(output) if output else src.with_name(f"{src.stem}_x{scale}{src.suffix}")
        return [(src, dst)]
    root = Path(output) if output else Path(f"upscaled_x{scale}")
    return [(src, root / rel) for src, rel in sources]


def upscale(inputs: list[str], model: str, output: str | None, *, backend: str, device: str, precision: str,
            threads: int | None, quality: int) -> None:
    from srkit.imageio import read_image, write_image
    from srkit.runtime import Upscaler

    model_path = resolve_onnx(model)
    up = Upscaler(model_path, backend=backend, device=device, precision=precision, threads=threads)
    jobs = plan_outputs(inputs, output, up.scale)
    all_inputs = [src for src, _ in jobs]
    for _, dst in jobs:
        refuse_overwriting_inputs(dst, all_inputs)
    failures: list[str] = []
    start = time.perf_counter()
    with up, progress(len(jobs), "upscaling") as advance:
        described = up.describe()
        print(f"srkit: {described['backend']} on {described['device']}, {described['precision']}",
              file=sys.stderr)
        for src, dst in jobs:
            try:
                image = read_image(src)
                result = up.upscale(image)
                dst.parent.mkdir(parents=True, exist_ok=True)
                write_image(dst, result, quality=quality)
                if len(jobs) == 1:
                    echo(f"{src} ({image.shape[1]}x{image.shape[0]}) -> {dst} ({result.shape[1]}x{result.shape[0]})")
            except SrkitError as exc:
                if len(jobs) == 1:
                    raise
                failures.append(f"{src}: {exc}")
                print(f"srkit: error: {src}: {exc}", file=sys.stderr)
            advance()
    if len(jobs) > 1:
        done = len(jobs) - len(failures)
        echo(f"upscaled {done} of {len(jobs)} images into {jobs[0][1].parent if done else output} "
             f"in {time.perf_counter() - start:.1f} s")
    if failures:
        raise InputError(f"{len(failures)} of {len(jobs)} images failed (listed above)")


# ---- bench -----------------------------------------------------------------------------------------
def bench(model: str, backend: str, precision: str, size: str, dataset: str | None, threads: int | None,
          min_time: float, json_out: str | None, md_out: str | None) -> None:
    from srkit.bench.report import render_markdown, render_summary
    from srkit.bench.runner import BenchConfig, resolve_backends, run_bench, size_for_output
    from srkit.meta import read_model_info

    model_path = resolve_onnx(model)
    info = read_model_info(model_path)
    for out in (json_out, md_out):
        if out:
            from srkit._fs import check_writable

            check_writable(Path(out))
    backends = resolve_backends(backend.lower())
    config = BenchConfig(model=model_path, backends=backends, precision=precision,
                         input_size=size_for_output(info, size), dataset=Path(dataset) if dataset else None,
                         threads=threads, min_time_s=min_time)
    with progress(len(backends), "benchmarking") as advance:
        report = run_bench(config, progress=lambda name: advance(description=f"benchmarking {name}"))
    _write_text(json_out, json.dumps(report, indent=2) + "\n")
    _write_text(md_out, render_markdown(report))
    echo(render_summary(report))
    if all(r.get("error") for r in report["results"]):
        raise SrkitError("no backend could run the model: " + "; ".join(r["error"] for r in report["results"]))


def _write_text(path: str | None, text: str) -> None:
    if not path:
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text)


