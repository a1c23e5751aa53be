"""A picture of accuracy per arm, in percent: every run as a point, the mean as a bar, the 95%
interval (Student's t, clipped to 0-100%) as a whisker; the axis stays within 0-100%. Needs matplotlib, which ``pip install .`` brings."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

from hlbcli import record, stats
from hlbcli.errors import UsageError
from hlbcli.output import runs_saved, synthetic

PNG_NAME = "accuracy.png"
#: the width of an arm's slot on the x axis, in inches, at least and at most (long arm names
#: widen it); the characters of a label an inch (matplotlib's 10 points); the lines of a label
#: (a longer one is cut)
ARM_INCHES, LABEL_PER_INCH, LABEL_LINES = (1.1, 2.4), 12, 6


def require_matplotlib():
    """Import matplotlib with a headless backend, or fail with one line saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plotting needs matplotlib", "pip install 'hlbcli[plot]'") from None
    return plt


def load_summary(folder: Path) -> dict:
    path = Path(folder)
    if path.is_dir():
        path = path / "summary.json"
    if not path.is_file():
        raise UsageError(f"no summary.json in {folder}", "point at the --out folder of hlb ablate or hlb train")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is not a readable summary: {e}", "rerun the command that wrote it") from None


def groups(summary: dict, label: str = "runs") -> list[dict[str, Any]]:
    """(name, accuracies, mean, ci95) per arm; a ``hlb train`` summary is one group."""
    arms = summary.get("arms")
    if arms is None:
        arms = [{"name": label, "runs": summary.get("runs", [])}]
    out = []
    for a in arms:
        accs = [r["accuracy"] for r in a.get("runs", []) if r.get("status") == "completed" and r.get("accuracy") is not None]
        mean, _ = stats.mean_std(accs)
        out.append({"name": a["name"], "accs": accs, "mean": mean, "ci95": stats.accuracy_ci95(accs),
                    "verdict": (a.get("sequential") or {}).get("how")})  # --until-resolved
    return out


def arm_label(name: str, width: int, lines: int = LABEL_LINES) -> str:
    """``name`` wrapped to ``width`` characters a line, broken after its commas where it can
    (a ``--vary`` arm's ``KEY=VALUE,KEY=VALUE``), at most ``lines`` lines (the last one cut with
    an ellipsis): so that long arm names fit under their arm."""
    out: list[str] = []
    for part in re.split(r"(?<=,)", name):
        if out and len(out[-1]) + len(part) <= width:
            out[-1] += part
        else:
            out += textwrap.wrap(part, width) or ([part] if part else [])
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][: width - 1] + "…"
    return "\n".join(out)


#: the least span of the accuracy axis, in points
MIN_SPAN = 2.0


def partial_mark(summary: dict) -> str:
    """``PARTIAL (k of n runs)`` for a summary of a stopped command, else ``""``."""
    if not summary.get("partial"):
        return ""
    if "arms" in summary:
        k, n = sum(a.get("n", 0) for a in summary["arms"]), len(summary["arms"]) * len(summary.get("seeds") or [])
    else:
        k, n = summary.get("n", 0), summary.get("runs_requested") or summary.get("n", 0)
    return f"PARTIAL ({k} of {n} runs)"


def plot_summary(summary: dict, path: Path, title: str | None = None, label: str | None = None) -> Path:
    """Draw ``summary`` into ``path`` (its suffix: the format); ``label`` names a ``hlb train``
    summary's one group (default: the folder ``path`` is in)."""
    plt = require_matplotlib()
    gs = groups(summary, label=label or Path(path).parent.name or "runs")
    # each arm's slot wide enough for its name in LABEL_LINES - 2 lines (wrapping wastes some) and
    # for its longest KEY=VALUE, within ARM_INCHES
    names = [str(g["name"]) for g in gs]
    need = max([len(n) / (LABEL_LINES - 2) for n in names] + [len(k) for n in names for k in re.split(r"(?<=,)", n)], default=0)
    slot = min(max(ARM_INCHES[0], need / LABEL_PER_INCH), ARM_INCHES[1])
    labels = [arm_label(n, int(LABEL_PER_INCH * slot)) for n in names]
    tall = 0.17 * max(0, max((lb.count("\n") for lb in labels), default=0) - 1)  # a line of 10 points, beyond two
    fig, ax = plt.subplots(figsize=(max(4.0, slot * len(gs) + 2), 4.0 + tall), dpi=120)
    shown: list[float] = []  # every value drawn, in percent: the axis's range
    for i, g in enumerate(gs):
        n = len(g["accs"])
        if n:
            # spread the points sideways by a fixed pattern (no randomness: same data, same picture)
            xs = [i + (0.3 * (k / (n - 1) - 0.5) if n > 1 else 0.0) for k in range(n)]
            ys = [100 * a for a in g["accs"]]
            ax.scatter(xs, ys, s=14, alpha=0.6, color="C0" if i == 0 else "C1", zorder=2)
            mean, lo, hi = 100 * g["mean"], 100 * g["ci95"][0], 100 * g["ci95"][1]
            ax.errorbar([i], [mean], yerr=[[mean - lo], [hi - mean]], fmt="_", color="black",
                        markersize=22, capsize=6, linewidth=1.5, zorder=3)
            shown += [*ys, lo, hi]
    if shown:
        lo, hi = min(shown), max(shown)
        pad = max(0.05 * (hi - lo), 0.1, (MIN_SPAN - (hi - lo)) / 2)  # a few close runs: no magnified noise
        ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad))
    base = 100 * gs[0]["mean"] if gs and gs[0]["accs"] else None
    if base is not None and len(gs) > 1:
        ax.axhline(base, color="C0", linewidth=0.8, linestyle="--", zorder=1)
    ax.set_xticks(range(len(gs)), [f"{lb}\nn={len(g['accs'])}" + (f"\n{g['verdict']}" if g.get("verdict") else "")
                                   for g, lb in zip(gs, labels)])
    ax.set_xlim(-0.6, len(gs) - 0.4)
    ax.set_ylabel("test accuracy (%)")
    data = "\n(synthetic data: not a CIFAR-10 result)" if synthetic([r for a in summary.get("arms", [summary])
                                                                    for r in a.get("runs", [])]) else ""
    head = title or (f"ablation of {summary.get('preset')}" if "arms" in summary else "accuracy per run")
    mark = partial_mark(summary)
    data = (f"\n{mark}" if mark else "") + data  # a line of its own: never wrapped apart
    ax.set_title("\n".join(textwrap.wrap(head, int(9 * fig.get_figwidth()))) + data)  # 12 points: about 9 an inch
    ax.grid(axis="y", alpha=0.3)
    seq = summary.get("sequential")
    saved = f"; until resolved: {seq['runs_spent']} runs of {seq['runs_max']}, {runs_saved(seq)}" if seq else ""
    # the legend wrapped to the figure's width (about 19 characters an inch at 7 points), room kept below
    foot = textwrap.wrap(f"points: runs; bar: mean; whiskers: 95% CI ({stats.ACCURACY_CI_SHORT})" + saved,
                         int(19 * fig.get_figwidth()))
    fig.text(0.01, 0.01, "\n".join(foot), fontsize=7, alpha=0.7)
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    try:
        if fmt not in fig.canvas.get_supported_filetypes():
            raise UsageError(f"--out {path}: cannot draw a .{fmt} file", "name a .png (or .svg, .pdf) file")
        with warnings.catch_warnings(record=True) as said:  # matplotlib's words become one line of ours
            warnings.simplefilter("always")
            fig.tight_layout(rect=(0, 0.03 * len(foot), 1, 1))
            record.write_bytes_with(path, lambda f: fig.savefig(f, format=fmt))  # no half-written picture
    finally:
        plt.close(fig)
    for w in dict.fromkeys(str(w.message).splitlines()[0] for w in said if str(w.message)):
        print(f"warning: {path}: drawn as it is, but matplotlib said: {w}", file=sys.stderr, flush=True)
    return path


def plot_target(folder: Path, out: str | Path | None, name: str = PNG_NAME) -> Path:
    """Where the picture (or ``hlb report``'s page, ``name``) goes: ``--out FILE``; ``--out DIR``
    or ``DIR/`` is ``DIR/NAME``; none is ``FOLDER/NAME``. A folder that does not exist is an
    error, not created."""
    if out is None:
        return (folder if folder.is_dir() else folder.parent) / name
    text = str(out)
    p = Path(text)
    if text.endswith(("/", os.sep)) or p.is_dir():
        if not p.is_dir():
            raise UsageError(f"--out {text}: no such folder",
                             f"create it first, or write --out {text.rstrip('/' + os.sep)}{Path(name).suffix}")
        return p / name
    parent = p.parent
    if not parent.is_dir():
        raise UsageError(f"--out {p}: the folder {parent} does not exist", "create it first, or choose another --out")
    return p


def plot_dir(folder: Path, out: str | Path | None = None) -> Path:
    summary = load_summary(folder)
    target = plot_target(Path(folder), out)
    require_matplotlib()
    return plot_summary(summary, target)
