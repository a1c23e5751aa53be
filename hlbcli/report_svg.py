"""``hlb report``'s per-epoch curves as inline SVG: one chart per measure (test accuracy after
each epoch, train loss), each run a thin line in its arm's colour, the arm's mean per epoch a
thick one. Plain SVG text, nothing fetched, every string escaped."""

from __future__ import annotations

import math
from html import escape

#: matplotlib's tab10, so an arm's colour reads like the pictures matplotlib draws
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
#: the measures drawn: (key in a record's ``epochs`` rows, title, in percent)
MEASURES = [("val_acc", "test accuracy after each epoch (%, no TTA)", True), ("train_loss", "train loss", False)]


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round values from ``lo`` to ``hi``: steps of 1, 2 or 5 times a power of ten."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / most
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _label(v: float) -> str:
    return f"{v:.6g}"


def series(arms: list[tuple[str, list[dict]]], key: str, scale: float) -> list[dict]:
    """The lines of one measure: each run's ``(epoch, value)`` points, then each arm's mean per
    epoch over the runs that have a value there. ``arms``: (name, run records) in order."""
    lines, means = [], []
    for i, (name, runs) in enumerate(arms):
        per_epoch: dict[int, list[float]] = {}
        for rec in runs:
            pts = [(row["epoch"], scale * row[key]) for row in rec.get("epochs") or []
                   if isinstance(row, dict) and _num(row.get("epoch")) and _num(row.get(key))]
            for x, y in pts:
                per_epoch.setdefault(x, []).append(y)
            if pts:
                lines.append({"label": f"{name}, seed {rec.get('seed')}", "color": color(i), "points": pts, "bold": False})
        if per_epoch:
            mean = [(x, sum(ys) / len(ys)) for x, ys in sorted(per_epoch.items())]
            means.append({"label": f"{name} (mean of {len(runs)})", "color": color(i), "points": mean, "bold": True,
                          "under": i == 0 and len(arms) > 1})
    return lines + means


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _plot_area(title: str, width: int, height: int, bottom: int, x0: float, x1: float, y0: float, y1: float):
    """A chart's start: the SVG's head and title, the frame, the y grid with its labels; and the
    x and y scales and the plot area (left, top, width, height)."""
    left, right, top = 56, 12, 28
    pw, ph = width - left - right, height - top - bottom
    sx = lambda x: left + pw * (x - x0) / (x1 - x0)  # noqa: E731
    sy = lambda y: top + ph * (1 - (y - y0) / (y1 - y0))  # noqa: E731
    out = [f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
           f"<title>{escape(title)}</title>", f'<text x="{left}" y="16" class="ctitle">{escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    for v in ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{sy(v) + 4:.1f}" class="ytick">{escape(_label(v))}</text>')
    return out, sx, sy, (left, top, pw, ph)


def line_chart(lines: list[dict], title: str, width: int = 520, height: int = 300) -> str:
    """An SVG chart of ``lines`` (dicts: label, color, points, bold), epochs on x."""
    pts = [p for ln in lines for p in ln["points"]]
    if not pts:
        return f'<p class="note">{escape(title)}: no per-epoch values in the records.</p>'
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    pad = 0.05 * (y1 - y0) or max(abs(y0) * 0.05, 0.01)
    x1 = x1 if x1 > x0 else x0 + 1
    out, sx, sy, (left, top, pw, ph) = _plot_area(title, width, height, 40, x0, x1, y0 - pad, y1 + pad)
    for v in ticks(x0, x1, most=min(10, max(1, int(x1 - x0)))):
        if abs(v - round(v)) < 1e-9:  # whole epochs only
            x = sx(v)
            out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" class="xtick">{int(round(v))}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" class="xlabel">epoch</text>')
    for ln in lines:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ln["points"])
        cls = ("mean under" if ln.get("under") else "mean") if ln["bold"] else "run"
        tip = f"<title>{escape(ln['label'])}</title>"
        if len(ln["points"]) == 1:  # one epoch: a dot, not an invisible line
            (x, y), r = ln["points"][0], 4 if ln["bold"] else 2
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{r}" fill="{ln["color"]}" class="{cls}">{tip}</circle>')
        else:
            out.append(f'<polyline points="{path}" stroke="{ln["color"]}" class="{cls}">{tip}</polyline>')
    out.append("</svg>")
    return "".join(out)


def legend(names: list[str]) -> str:
    """The arms' colours, as HTML beside the charts."""
    items = "".join(f'<span class="key"><span class="swatch" style="background:{color(i)}"></span>{escape(n)}</span>'
                    for i, n in enumerate(names))
    under = " (the first arm's wider, so that an arm on the same values shows it)" if len(names) > 1 else ""
    return f'<p class="legend">{items} <span class="note">thin: one run; thick: the arm\'s mean per epoch{under}</span></p>'


def curves(arms: list[tuple[str, list[dict]]]) -> str:
    """Both measures' charts and the legend, as HTML."""
    charts = "".join(line_chart(series(arms, key, 100.0 if pct else 1.0), title) for key, title, pct in MEASURES)
    return legend([name for name, _ in arms]) + f'<div class="charts">{charts}</div>'


def scatter(points: list[dict], title: str, xlabel: str, width: int = 520, height: int = 340) -> str:
    """An SVG scatter of ``points`` (dicts: x, y, label, color, big); the title names y."""
    pts = [p for p in points if _num(p["x"]) and _num(p["y"])]
    if not pts:
        return f'<p class="note">{escape(title)}: no points.</p>'
    x0, x1 = min(p["x"] for p in pts), max(p["x"] for p in pts)
    y0, y1 = min(p["y"] for p in pts), max(p["y"] for p in pts)
    px, py = 0.08 * (x1 - x0) or 0.5, 0.08 * (y1 - y0) or 0.5
    out, sx, sy, (left, top, pw, ph) = _plot_area(title, width, height, 44, x0 - px, x1 + px, y0 - py, y1 + py)
    for v in ticks(x0 - px, x1 + px):
        out.append(f'<text x="{sx(v):.1f}" y="{top + ph + 16}" class="xtick">{escape(_label(v))}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" class="xlabel">{escape(xlabel)}</text>')
    for p in pts:
        out.append(f'<circle cx="{sx(p["x"]):.1f}" cy="{sy(p["y"]):.1f}" r="{5 if p.get("big") else 3}" fill="{p["color"]}">'
                   f"<title>{escape(p['label'])}</title></circle>")
    out.append("</svg>")
    return "".join(out)
