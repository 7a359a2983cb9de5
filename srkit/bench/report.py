"""Report rendering: a Markdown table a README can include, and a one-screen terminal summary with the
recommended backend and precision for this machine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from srkit.bench import baselines
from srkit.errors import SrkitError
from srkit.quality import (  # the defaults; a report carries the gates it was run with
    FLOAT_GATE_DB,
    INT8_GATE_DB,
    PARITY_GATES_DB,
    gate_family,
)
from srkit.runtime import registry


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table (left-aligned columns, a dashed rule under the header); the CLI shares it."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


# (header, key, format); "p50"/"p95" live under latency_ms
COLUMNS = [
    ("backend", "backend", "s"),
    ("device", "device", "s"),
    ("precision", "precision", "s"),
    ("fps", "fps", ".1f"),
    ("p50 ms", "p50", ".1f"),
    ("p95 ms", "p95", ".1f"),
    ("e2e fps", "e2e_fps", ".1f"),
    ("e2e/call", "e2e_ratio", ".2f"),
    ("e2e path", "e2e_path", "s"),
    ("host e2e fps", "e2e_host_fps", ".1f"),
    ("compile s", "compile_s", ".2f"),
    ("GFLOP/s", "achieved_gflops", ".0f"),
    ("peak", "peak_gflops", ".0f"),
    ("% peak", "pct_of_peak", ".0f"),
    ("PSNR-Y", "psnr_y", ".2f"),
    ("SSIM-Y", "ssim_y", ".4f"),
    ("bicubic", "bicubic_psnr_y", ".2f"),
    ("parity dB", "parity_psnr_db", ".1f"),
    ("max abs", "parity_max_abs", ".1e"),
    ("NaN", "nan_count", "d"),
    ("peak RSS MB", "peak_rss_mb", ".0f"),
]
# the terminal summary keeps to one screen: no SSIM, no bicubic column (it is printed once below)
SUMMARY_DROP = {"ssim_y", "bicubic_psnr_y", "p95", "peak_gflops"}


def _value(result: dict[str, Any], key: str) -> Any:
    if key in ("p50", "p95"):
        return result.get("latency_ms", {}).get(key)
    return result.get(key)


def _cell(result: dict[str, Any], key: str, spec: str) -> str:
    value = _value(result, key)
    if key == "parity_psnr_db" and value is None and result.get("detail", {}).get("parity_identical"):
        return "identical"
    return str(value) if spec == "s" else _fmt(value, spec)


def _cells(result: dict[str, Any], columns: list[tuple[str, str, str]] = COLUMNS) -> list[str]:
    return [_cell(result, key, spec) for _, key, spec in columns]


def gate_for(report: dict[str, Any], precision: str) -> float:
    gates = report.get("settings", {}).get("parity_gates_db", PARITY_GATES_DB)
    return float(gates[gate_family(precision)])


def fp32_psnr_y(report: dict[str, Any]) -> float | None:
    """PSNR-Y of the fp32 reference against ground truth: PyTorch fp32, else the best fp32 row."""
    base = reference_baseline(report)
    if base is not None and base.get("psnr_y") is not None:
        return float(base["psnr_y"])
    return max((float(r["psnr_y"]) for r in report["results"] if not r.get("error")
                and r.get("precision") == "fp32" and r.get("psnr_y") is not None), default=None)


def within_psnr_budget(report: dict[str, Any], result: dict[str, Any]) -> bool:
    """A PSNR-trained model's reduced precision may cost at most `max_psnr_drop_db` of PSNR-Y against ground
    truth (GAN-trained models have no such budget: null in the settings)."""
    budget = report.get("settings", {}).get("max_psnr_drop_db")
    reference = fp32_psnr_y(report)
    if budget is None or reference is None or result.get("psnr_y") is None:
        return True
    return bool(reference - result["psnr_y"] <= budget + 1e-9)


def passes_gate(report: dict[str, Any], result: dict[str, Any]) -> bool:
    if result.get("nan_count", 0) or not within_psnr_budget(report, result):
        return False
    parity = result.get("parity_psnr_db")
    if parity is not None:
        return bool(parity >= gate_for(report, result["precision"]))
    # null parity: bit-exact output, or no PyTorch reference to compare with (then speed alone decides)
    no_reference = not report.get("settings", {}).get("reference", "").startswith("PyTorch")
    return bool(result.get("detail", {}).get("parity_identical")) or no_reference


def deployable(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Measured results (not the PyTorch reference) that pass their parity gate and budget with no NaN."""
    return [r for r in report["results"]
            if not r.get("error") and r.get("fps") and not _is_reference(r["backend"]) and passes_gate(report, r)]


def recommend(report: dict[str, Any]) -> dict[str, Any] | None:
    """The fastest deployable result."""
    return max(deployable(report), key=lambda r: r["fps"], default=None)


def _is_reference(backend: str) -> bool:
    return backend == registry.reference()


def _judged_by_peak(backend: str) -> bool:
    try:
        return registry.backend_class(backend).judged_by_peak
    except SrkitError:  # a report from a build with a backend this one does not have
        return False


def reference_baseline(report: dict[str, Any]) -> dict[str, Any] | None:
    """The reference backend's fp32 CPU row (PyTorch eager): what "x eager fp32" divides by."""
    return next(
        (
            r
            for r in report["results"]
            if _is_reference(r["backend"])
            and r.get("fps")
            and r["precision"] == "fp32"
            and r.get("device", "cpu") == "cpu"
        ),
        None,
    )


@dataclass(frozen=True)
class Targets:
    """Speed goals to judge a report against (`srkit bench --target-*`); None = not judged."""

    fps: float | None = None  # model call of the recommended (fastest deployable) result
    e2e_fps: float | None = None  # the best end-to-end fps of a deployable result
    speedup: float | None = None  # recommended result's fps / PyTorch eager fp32 on the CPU
    pct_of_peak: float | None = None  # every fp32 ONNX Runtime / OpenVINO result, % of its measured peak

    def any(self) -> bool:
        return any(v is not None for v in (self.fps, self.e2e_fps, self.speedup, self.pct_of_peak))


def check_targets(report: dict[str, Any], targets: Targets) -> list[dict[str, Any]]:
    """One verdict per target: what was wanted, what was measured (by which result), met or not, and the
    measured / wanted ratio, so a miss says by how much."""
    best = recommend(report)
    verdicts = []

    def verdict(name: str, wanted: float, measured: float | None, by: str) -> None:
        verdicts.append({"target": name, "wanted": wanted, "measured": measured, "by": by,
                         "met": measured is not None and measured >= wanted,
                         "ratio": None if measured is None else measured / wanted})

    def label(r: dict[str, Any] | None) -> str:
        return f"{r['backend']} {r['precision']}" if r else "no deployable result"

    if targets.fps is not None:
        verdict("model-call fps", targets.fps, best["fps"] if best else None, label(best))
    if targets.e2e_fps is not None:
        e2e = max((r for r in deployable(report) if r.get("e2e_fps")), key=lambda r: r["e2e_fps"], default=None)
        verdict("end-to-end fps", targets.e2e_fps, e2e["e2e_fps"] if e2e else None, label(e2e))
    if targets.speedup is not None:
        base = reference_baseline(report)
        speedup = best["fps"] / base["fps"] if best and base else None
        verdict("x PyTorch eager fp32", targets.speedup, speedup,
                label(best) if base else "no PyTorch fp32 CPU result to compare with")
    if targets.pct_of_peak is not None:
        for r in report["results"]:
            if r.get("error") or not _judged_by_peak(r["backend"]) or r["precision"] != "fp32":
                continue
            verdict("% of fp32 peak", targets.pct_of_peak, r.get("pct_of_peak"), label(r))
    return verdicts


def render_targets(verdicts: list[dict[str, Any]]) -> list[str]:
    lines = []
    for v in verdicts:
        measured = "not measured" if v["measured"] is None else f"{v['measured']:.1f}"
        outcome = "met" if v["met"] else (
            "MISSED" + (f" ({v['ratio']:.2f} of the target)" if v["ratio"] is not None else ""))
        lines.append(f"{v['target']} >= {v['wanted']:g}: {measured} ({v['by']}): {outcome}")
    return lines


def describe_setup(report: dict[str, Any]) -> str:
    m, s, mach = report["model"], report["settings"], report["machine"]
    # the 1-minute load average at the start and the end: on a shared machine it says how far to trust fps
    start, end = (mach.get("load_avg") or [None])[0], (mach.get("load_avg_end") or [None])[0]
    load = f", load average {start} at the start" if start is not None else ""
    load += f", {end} at the end" if end is not None else ""
    return (
        f"Model `{m['arch']}` x{m['scale']} ({m['color'].upper()}), input {s['input_size'][0]}x"
        f"{s['input_size'][1]} -> output {s['output_size'][0]}x{s['output_size'][1]}; "
        f"machine: {mach['cpu']}, {mach['cores']} cores{load}."
    )


NOTES = [
    "**fps**, **p50/p95**: the model call alone (NCHW float32 in and out) after warm-up at this shape; "
    "**e2e fps**: a uint8 RGB image in and out through `Upscaler.upscale` (colour conversion and padding "
    "included); **e2e/call** = e2e fps / fps; **e2e path**: `pipeline` when colour, padding and rounding ran "
    "inside the graph (srkit.pipeline), `host` when numpy did them; **host e2e fps**: the host path measured "
    "in the same run, for comparison.",
    "**compile s**: session / compiled-model build time, not in any fps.",
    "**GFLOP/s**: FLOPs counted from the ONNX graph at this input size x fps; **peak**: the best GFLOP/s "
    "of a large Conv / MatMul on the same backend at the same precision, measured in the same process "
    "just after; **% peak** = GFLOP/s / peak.",
    "**parity dB / max abs**: against PyTorch fp32 on the same input (identical = bit-exact).",
    "**Recommended**: the fastest row (not PyTorch) with no NaN that passes its parity gate "
    f"({FLOAT_GATE_DB:g} dB float, {INT8_GATE_DB:g} dB int8) and, for a PSNR-trained model, keeps PSNR-Y within "
    "the report's `max_psnr_drop_db` of fp32.",
    "**peak RSS MB**: the peak resident memory of a fresh process that loaded only this backend and ran only "
    "this row (Python, numpy and the backend's libraries included), not a delta.",
]


def render_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        describe_setup(report),
        "",
        "| " + " | ".join(c[0] for c in COLUMNS) + " |",
        "|" + "|".join("---" if c[2] == "s" else "---:" for c in COLUMNS) + "|",
    ]
    for r in report["results"]:
        if r.get("error"):
            lines.append(
                f"| {r['backend']} | {r['device']} | {r['precision']} | skipped: {r['error']} |"
                + " |" * (len(COLUMNS) - 4)
            )
        else:
            lines.append("| " + " | ".join(_cells(r)) + " |")
    lines += [
        "",
        *(f"- {n}" for n in NOTES),
        f"- Quality: PSNR-Y / SSIM-Y on {s['dataset']}; LR by {s['resize_kernel']}. "
        f"Parity reference: {s['reference']}.",
    ]
    if s.get("baselines_psnr_y"):
        lines.append(f"- Classical upscalers, PSNR-Y on the same images: {baselines.describe(s['baselines_psnr_y'])}.")
    if best := recommend(report):
        lines += [
            "",
            f"Recommended here: **{best['backend']} {best['precision']}** ({_ratio_text(report, best)}).",
        ]
    if report.get("targets"):
        lines += ["", "Targets:", "", *(f"- {line}" for line in render_targets(report["targets"]))]
    return "\n".join(lines) + "\n"


def _ratio_text(report: dict[str, Any], best: dict[str, Any]) -> str:
    text = f"{best['fps']:.1f} fps model call, {best['e2e_fps']:.1f} fps end to end"
    base = reference_baseline(report)
    if base:
        text += f", {best['fps'] / base['fps']:.1f}x PyTorch eager fp32"
    return text


def render_summary(report: dict[str, Any]) -> str:
    columns = [c for c in COLUMNS if c[1] not in SUMMARY_DROP]
    rows = [
        _cells(r, columns)
        if not r.get("error")
        else [r["backend"], r["device"], r["precision"], "skipped: " + r["error"][:80]]
        + [""] * (len(columns) - 4)
        for r in report["results"]
    ]
    text = describe_setup(report).replace("`", "") + "\n\n" + table(rows, [c[0] for c in columns])
    bicubic = next(
        (r["bicubic_psnr_y"] for r in report["results"] if r.get("bicubic_psnr_y") is not None), None
    )
    if classical := report["settings"].get("baselines_psnr_y"):
        text += f"\n\nclassical upscalers, PSNR-Y on the same images: {baselines.describe(classical)}"
    elif bicubic is not None:
        text += f"\n\nbicubic PSNR-Y on the same images: {bicubic:.2f} dB"
    best = recommend(report)
    if best:
        text += f"\nrecommended here: {best['backend']} {best['precision']} ({_ratio_text(report, best)})"
    else:
        text += "\nno deployable result passed its parity gate"
    if report.get("targets"):
        text += "\ntargets:\n" + "\n".join(f"  {line}" for line in render_targets(report["targets"]))
    return text
