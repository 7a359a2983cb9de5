"""Report rendering: a Markdown table and a one-screen terminal summary with a recommendation."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


COLUMNS = [
    ("backend", "backend", "s"), ("device", "device", "s"), ("precision", "precision", "s"),
    ("fps", "fps", ".1f"), ("p50 ms", "p50", ".2f"), ("e2e fps", "e2e_fps", ".1f"),
    ("compile s", "compile_s", ".2f"), ("PSNR-Y", "psnr_y", ".2f"), ("SSIM-Y", "ssim_y", ".4f"),
    ("bicubic", "bicubic_psnr_y", ".2f"), ("parity dB", "parity_psnr_db", ".1f"),
    ("max abs", "parity_max_abs", ".1e"), ("peak RSS MB", "peak_rss_mb", ".0f"),
]


def _cells(result: dict[str, Any]) -> list[str]:
    cells = []
    for _, key, spec in COLUMNS:
        value = result.get("latency_ms", {}).get("p50") if key == "p50" else result.get(key)
        cells.append(str(value) if spec == "s" else _fmt(value, spec))
    return cells


def render_markdown(report: dict[str, Any]) -> str:
    m, s = report["model"], report["settings"]
    lines = [
        f"Model `{m['arch']}` x{m['scale']} ({m['color']}), input {s['input_size'][0]}x{s['input_size'][1]} -> "
        f"output {s['output_size'][0]}x{s['output_size'][1]}; machine: {report['machine']['cpu']}, "
        f"{report['machine']['cores']} cores.",
        "",
        "| " + " | ".join(c[0] for c in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for r in report["results"]:
        if r.get("error"):
            lines.append(f"| {r['backend']} | {r['device']} | {r['precision']} | skipped: {r['error']} |")
        else:
            lines.append("| " + " | ".join(_cells(r)) + " |")
    lines += ["", f"fps: model call after warm-up; e2e: uint8 image in and out through `Upscaler.upscale`. "
              f"Quality on {s['dataset']}; LR by {s['resize_kernel']}. Parity against {s['reference']}."]
    return "\n".join(lines) + "\n"


def recommend(report: dict[str, Any], min_parity_db: float = 40.0) -> dict[str, Any] | None:
    ok = [r for r in report["results"] if not r.get("error") and r.get("fps") and r["backend"] != "torch"
          and (r.get("parity_psnr_db") is None or r["parity_psnr_db"] >= min_parity_db) and r["nan_count"] == 0]
    return max(ok, key=lambda r: r["fps"]) if ok else None


def render_summary(report: dict[str, Any]) -> str:
    from srkit.cli.commands import table  # plain-text table shared with the other commands

    rows = [_cells(r) if not r.get("error") else [r["backend"], r["device"], r["precision"], "skipped: " + r["error"]]
            + [""] * (len(COLUMNS) - 4) for r in report["results"]]
    text = table(rows, [c[0] for c in COLUMNS])
    best = recommend(report)
    torch = next((r for r in report["results"] if r["backend"] == "torch" and r.get("fps")), None)
    if best:
        ratio = f", {best['fps'] / torch['fps']:.1f}x PyTorch eager" if torch else ""
        text += (f"\n\nrecommended here: {best['backend']} {best['precision']} "
                 f"({best['fps']:.1f} fps model call{ratio})")
    return text
