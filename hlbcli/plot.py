"""A picture of accuracy per arm, in percent: every run as a point, the mean as a bar, the 95%
interval (Student's t, clipped to 0-100%) as a whisker; the axis stays within 0-100%. Needs matplotlib, which ``pip install .`` brings."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

from hlbcli import record, stats
from hlbcli.errors import UsageError
from hlbcli.output import runs_saved, synthetic

PNG_NAME = "accuracy.png"


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


def plot_summary(summary: dict, path: Path, title: str | None = None, label: str | None = None) -> Path:
    """Draw ``summary`` into ``path`` (its suffix: the format); ``label`` names a ``hlb train``
    summary's one group (default: the folder ``path`` is in)."""
    plt = require_matplotlib()
    gs = groups(summary, label=label or Path(path).parent.name or "runs")
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(gs) + 2), 4.0), dpi=120)
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
        pad = max(0.05 * (hi - lo), 0.1)
        ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad))
    base = 100 * gs[0]["mean"] if gs and gs[0]["accs"] else None
    if base is not None and len(gs) > 1:
        ax.axhline(base, color="C0", linewidth=0.8, linestyle="--", zorder=1)
    ax.set_xticks(range(len(gs)), [f"{g['name']}\nn={len(g['accs'])}" + (f"\n{g['verdict']}" if g.get("verdict") else "")
                                   for g in gs])
    ax.set_xlim(-0.6, len(gs) - 0.4)
    ax.set_ylabel("test accuracy (%)")
    data = "\n(synthetic data: not a CIFAR-10 result)" if synthetic([r for a in summary.get("arms", [summary])
                                                                    for r in a.get("runs", [])]) else ""
    ax.set_title((title or (f"ablation of {summary.get('preset')}" if "arms" in summary else "accuracy per run")) + data)
    ax.grid(axis="y", alpha=0.3)
    seq = summary.get("sequential")
    saved = f"; until resolved: {seq['runs_spent']} runs of {seq['runs_max']}, {runs_saved(seq)}" if seq else ""
    # the legend wrapped to the figure's width (about 19 characters an inch at 7 points), room kept below
    foot = textwrap.wrap(f"points: runs; bar: mean; whiskers: 95% CI ({stats.ACCURACY_CI_SHORT})" + saved,
                         int(19 * fig.get_figwidth()))
    fig.text(0.01, 0.01, "\n".join(foot), fontsize=7, alpha=0.7)
    fig.tight_layout(rect=(0, 0.03 * len(foot), 1, 1))
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    try:
        if fmt not in fig.canvas.get_supported_filetypes():
            raise UsageError(f"--out {path}: cannot draw a .{fmt} file", "name a .png (or .svg, .pdf) file")
        record.write_bytes_with(path, lambda f: fig.savefig(f, format=fmt))  # no half-written picture
    finally:
        plt.close(fig)
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
