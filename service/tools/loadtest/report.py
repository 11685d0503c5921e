"""A self-contained HTML report: latency over time and histograms, as inline SVG."""

from __future__ import annotations

import html
import json
from typing import Any

from smallfirst.service.tools.loadtest.samples import Sample

COLORS = {"ask": "#3a6ea5", "type": "#d9822b"}
W, H, PAD = 720, 240, 40


def _scatter(samples: list[Sample], duration: float) -> str:
    points = [(s.scheduled, s.ttft_ms, s.workload) for s in samples if s.ttft_ms is not None]
    if not points:
        return "<p>No first tokens were received.</p>"
    top = max(p[1] for p in points) * 1.1 or 1
    dots = "".join(
        f'<circle cx="{PAD + (x / max(duration, 1e-9)) * (W - 2 * PAD):.1f}" cy="{H - PAD - (y / top) * (H - 2 * PAD):.1f}" '
        f'r="2.5" fill="{COLORS.get(w, "#555")}" opacity="0.7"><title>{w} {y:.0f} ms at {x:.1f} s</title></circle>'
        for x, y, w in points
    )
    return _frame(dots, f"{top:.0f} ms", "time to first token over the run (s)", f"{duration:.0f} s")


def _histogram(values: list[float], label: str, color: str, bins: int = 30) -> str:
    if not values:
        return f"<p>No {html.escape(label)} values.</p>"
    low, high = min(values), max(values)
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - low) / width))] += 1
    peak = max(counts)
    bar_w = (W - 2 * PAD) / bins
    bars = "".join(
        f'<rect x="{PAD + i * bar_w:.1f}" y="{H - PAD - (c / peak) * (H - 2 * PAD):.1f}" width="{bar_w - 1:.1f}" '
        f'height="{(c / peak) * (H - 2 * PAD):.1f}" fill="{color}"><title>{low + i * width:.0f}–{low + (i + 1) * width:.0f} ms: {c}</title></rect>'
        for i, c in enumerate(counts)
    )
    return _frame(bars, str(peak), f"{label} (ms), {low:.0f} to {high:.0f}", f"{high:.0f}")


def _frame(content: str, y_label: str, x_label: str, x_max: str) -> str:
    return (
        f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">'
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#888"/>'
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#888"/>'
        f'<text x="{PAD}" y="{PAD - 8}" font-size="11">{html.escape(y_label)}</text>'
        f'<text x="{W / 2}" y="{H - 10}" font-size="11" text-anchor="middle">{html.escape(x_label)}</text>'
        f'<text x="{W - PAD}" y="{H - PAD + 14}" font-size="11" text-anchor="end">{html.escape(x_max)}</text>'
        f"{content}</svg>"
    )


def _table(summary: dict[str, Any]) -> str:
    rows = []
    for scope, f in summary.items():
        for metric in ("sources_ms", "ttft_ms", "itl_ms", "e2e_ms"):
            d = f[metric]
            rows.append(f"<tr><td>{scope}</td><td>{metric}</td>" + "".join(
                f"<td>{'' if d[k] is None else d[k]}</td>" for k in ("p50", "p95", "p99", "max", "n")) + "</tr>")
    return ("<table><tr><th>workload</th><th>figure</th><th>p50</th><th>p95</th><th>p99</th><th>max</th><th>n</th></tr>"
            + "".join(rows) + "</table>")


def render(samples: list[Sample], summary: dict[str, Any], settings: dict[str, Any], duration: float) -> str:
    measured = [s for s in samples if not s.warmup]
    histograms = "".join(
        f"<h3>{w}</h3>" + _histogram([s.ttft_ms for s in measured if s.workload == w and s.ttft_ms is not None],
                                     "time to first token", COLORS.get(w, "#555"))
        + _histogram([v for s in measured if s.workload == w for v in s.itl_ms], "inter-token latency", COLORS.get(w, "#555"))
        for w in sorted({s.workload for s in measured})
    )
    legend = " ".join(f'<span style="color:{c}">● {w}</span>' for w, c in COLORS.items())
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>smallfirst load test</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#1d232b}}table{{border-collapse:collapse}}
td,th{{border:1px solid #dde1e6;padding:.25rem .6rem;text-align:right}}pre{{background:#f6f7f9;padding:1rem;overflow:auto}}</style>
</head><body><h1>smallfirst load test</h1>
<p>{html.escape(json.dumps(settings))}</p>
<h2>Latency over time</h2><p>{legend}</p>{_scatter(measured, duration)}
<h2>Figures</h2>{_table(summary)}
<h2>Histograms</h2>{histograms}
<h2>Summary</h2><pre>{html.escape(json.dumps(summary, indent=2))}</pre>
</body></html>"""
