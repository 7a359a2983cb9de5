"""`srkit bench --plot OUT.png`: speed against quality per backend/precision (matplotlib, Agg, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from srkit._fs import atomic_path
from srkit._optional import require
from srkit.quality import FLOAT_GATE_DB, PARITY_GATES_DB

# a parity of +inf (bit-exact) cannot sit on a finite axis: draw it this many dB above the best finite one
IDENTICAL_HEADROOM_DB = 10.0
PRECISION_MARKERS = {"fp32": "o", "bf16": "s", "fp16": "D", "int8": "^"}
# label positions tried around a point, in points (dx, dy, horizontal alignment), best first
LABEL_SPOTS = [(7, 4, "left"), (7, -12, "left"), (-7, 4, "right"), (-7, -12, "right"), (7, 14, "left"),
               (7, -22, "left"), (-7, 14, "right"), (-7, -22, "right"), (0, 24, "center"), (0, -32, "center")]


def _marker(precision: str) -> str:
    return PRECISION_MARKERS.get(precision.split("+", 1)[0], "o")


def _label(result: dict[str, Any]) -> str:
    device = "" if result.get("device", "cpu") == "cpu" else f"/{result['device']}"
    return f"{result['backend']}{device} {result['precision']}"


def _place_labels(ax: Any, points: list[tuple[float, float, str]], fontsize: float = 8) -> None:
    """Greedy placement: each label takes the first spot around its point that overlaps no label placed
    before it and no other point (neighbouring fps values otherwise overprint)."""
    fig = ax.figure
    fig.canvas.draw()  # final limits, so data -> pixel transforms hold
    to_px = ax.transData.transform
    px_per_pt = fig.dpi / 72.0
    char_w, line_h = 0.6 * fontsize * px_per_pt, 1.3 * fontsize * px_per_pt
    dots = [tuple(to_px((x, y))) for x, y, _ in points]
    pad = 7 * px_per_pt  # about a marker radius
    taken: list[tuple[float, float, float, float]] = []

    def overlaps(box: tuple[float, float, float, float]) -> int:
        x0, y0, x1, y1 = box
        hits = sum(1 for a in taken if not (x1 < a[0] or a[2] < x0 or y1 < a[1] or a[3] < y0))
        hits += sum(1 for px, py in dots if x0 - pad < px < x1 + pad and y0 - pad < py < y1 + pad)
        return hits

    for (x, y, text), (px, py) in zip(points, dots, strict=True):
        width = len(text) * char_w
        best: tuple[float, tuple[int, int, str], tuple[float, float, float, float]] | None = None
        for dx, dy, ha in LABEL_SPOTS:
            left = px + dx * px_per_pt - {"left": 0.0, "right": width, "center": width / 2}[ha]
            bottom = py + dy * px_per_pt
            box = (left, bottom, left + width, bottom + line_h)
            score = overlaps(box)
            if best is None or score < best[0]:
                best = (score, (dx, dy, ha), box)
            if score == 0:
                break
        assert best is not None
        (dx, dy, ha), box = best[1], best[2]
        taken.append(box)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=fontsize)


def _reference_line(ax: Any, y: float, text: str, style: str) -> None:
    ax.axhline(y, color="grey", linestyle=style, linewidth=1)
    ax.annotate(text, (0.01, y), xycoords=("axes fraction", "data"), xytext=(0, 3),
                textcoords="offset points", fontsize=8, color="grey")


def write_plot(report: dict[str, Any], path: str | Path) -> Path:
    """Two panels sharing a log fps axis: PSNR-Y against ground truth (with bicubic as a line) and parity
    against PyTorch fp32 (with the parity gates as lines). One labelled point per backend/precision."""
    matplotlib = require("matplotlib", extra="bench", purpose="--plot")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in report["results"] if not r.get("error") and r.get("fps")]
    fig, (ax_q, ax_p) = plt.subplots(1, 2, figsize=(13, 6.2), dpi=110)
    backends = sorted({r["backend"] for r in rows})
    colours = {b: plt.get_cmap("tab10")(i) for i, b in enumerate(backends)}
    finite = [r["parity_psnr_db"] for r in rows if r.get("parity_psnr_db") is not None]
    identical_at = (max(finite) if finite else FLOAT_GATE_DB) + IDENTICAL_HEADROOM_DB

    quality_points, parity_points = [], []
    for r in sorted(rows, key=lambda r: r["fps"]):
        style = {"color": colours[r["backend"]], "marker": _marker(r["precision"]), "s": 70, "zorder": 3,
                 "edgecolors": "black", "linewidths": 0.5}
        if r.get("psnr_y") is not None:
            ax_q.scatter(r["fps"], r["psnr_y"], **style)
            quality_points.append((r["fps"], r["psnr_y"], _label(r)))
        parity = r.get("parity_psnr_db")
        bit_exact = parity is None and bool(r.get("detail", {}).get("parity_identical"))
        if bit_exact:
            parity = identical_at
        if parity is not None:
            ax_p.scatter(r["fps"], parity, **style)
            parity_points.append((r["fps"], parity, _label(r) + (" (bit-exact)" if bit_exact else "")))

    bicubic = next((r["bicubic_psnr_y"] for r in rows if r.get("bicubic_psnr_y") is not None), None)
    if bicubic is not None:
        _reference_line(ax_q, bicubic, f"bicubic {bicubic:.2f} dB", "--")
    gates = report.get("settings", {}).get("parity_gates_db", PARITY_GATES_DB)
    for name, db in gates.items():
        _reference_line(ax_p, db, f"{name} gate {db:g} dB", ":")

    ax_q.set(ylabel="PSNR-Y vs ground truth (dB)", title="quality on the benchmark photos")
    ax_p.set(ylabel="parity PSNR vs PyTorch fp32 (dB)", title="parity with the PyTorch reference")
    # 2, 5, 20 rather than 2x10^0; minor ticks labelled at 2 and 5 only, so they never crowd
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    minor = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else "")
    for ax in (ax_q, ax_p):
        ax.set_xscale("log")
        ax.set_xlabel("model-call fps (log scale)")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(minor)
        ax.tick_params(axis="x", which="minor", labelsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.3, y=0.15)
    handles = [plt.Line2D([], [], linestyle="", marker="o", color=colours[b], label=b) for b in backends]
    handles += [plt.Line2D([], [], linestyle="", marker=m, color="black", label=p)
                for p, m in PRECISION_MARKERS.items() if any(r["precision"].startswith(p) for r in rows)]
    fig.legend(handles=handles, loc="lower center", ncols=len(handles), fontsize=9, frameon=False)
    s, m, machine = report["settings"], report["model"], report["machine"]
    (in_w, in_h), (out_w, out_h) = s["input_size"], s["output_size"]
    fig.suptitle(f"{m['arch']} x{m['scale']}, {in_w}x{in_h} -> {out_w}x{out_h}  |  {machine['cpu']}, "
                 f"{machine['cores']} cores", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _place_labels(ax_q, quality_points)
    _place_labels(ax_p, parity_points)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
