"""``hlb report DIR`` of a search's folder: the trials' table, the trials as points (accuracy
against time, each a paired difference from the baseline; the best, or the Pareto front,
marked), the confirmation, and the environment of the baseline's runs. One offline page, as
:mod:`hlbcli.report` writes for train, bench and ablate folders (its pieces reused)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from hlbcli import record
from hlbcli.errors import UsageError
from hlbcli.experiments.search_summary import COLUMNS, footnote, table_rows
from hlbcli.plot import plot_target
from hlbcli.report import REPORT_NAME, _table, environment_section, page_html
from hlbcli.report_svg import PALETTE, scatter


def is_search(folder: Path) -> bool:
    return (Path(folder) / "search.json").is_file()


def _points(summary: dict) -> list[dict]:
    best = set(summary["best"])
    out = []
    for t in summary["trials"]:
        if t.get("n"):
            mark = 2 if t["number"] in best else (0 if t["state"] == "complete" else 1)
            out.append({"x": t.get("time_diff"), "y": 100 * t["diff"] if t.get("diff") is not None else None,
                        "big": t["number"] in best, "color": [PALETTE[0], PALETTE[7], PALETTE[3]][mark],
                        "label": f"trial {t['number']} ({t['state']}): {t['changes']}"})
    return out


def render(folder: Path, summary: dict) -> str:
    title = f"Search over preset {summary['preset']} ({summary['objective']}) — {folder.resolve().name}"
    which = "the Pareto front" if summary["objective"] == "pareto" else "the best"
    conf = summary.get("confirmation") or {}
    baseline = [json.loads(p.read_text()) for p in sorted((folder / "arms" / "baseline").glob("run-*.json"))][:1]
    rep = {"arms": [{"runs": baseline}], "summary": summary, "bench": None}
    parts = [
        f"<h1>{escape(title)}</h1>",
        '<p class="warn">partial: the search stopped before its trials were done</p>' if summary.get("partial") else "",
        f'<p class="note">{escape(str(folder))}</p>', "<h2>Trials</h2>", _table(COLUMNS, table_rows(summary), "trials"),
        f'<p class="note">{escape(footnote({**summary, "confirmation": None}))}</p>'.replace("\n", "<br>"),
        "<h2>Accuracy against time</h2>",
        scatter(_points(summary), f"accuracy difference (pts) of each trial (red: {which}; grey: pruned)",
                "time difference (s)"),
        "<h2>Confirmation</h2>",
        (f'<p class="note">{escape(chr(10).join(conf.get("lines", [])))}</p>'.replace("\n", "<br>") if conf else
         '<p class="note">not confirmed yet: hlb search --confirm DIR</p>')
        + (f'<p class="note">its runs: hlb report {escape(str(folder / "confirm"))}</p>' if (folder / "confirm").is_dir() else ""),
        "<h2>Environment</h2>", environment_section(rep) if baseline else "",
    ]
    return page_html(title, parts)


def write_search_report(folder: Path, out: str | Path | None = None) -> Path:
    folder = Path(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UsageError(f"{folder} holds a search without a readable summary.json",
                         f"rerun the search with --resume to write it again (hlb search ... --out {folder} --resume)") from None
    if not isinstance(summary, dict) or summary.get("kind") != "search" or not isinstance(summary.get("trials"), list):
        raise UsageError(f"{folder / 'summary.json'} is not a search's summary", "rerun the search with --resume to write it again")
    page = plot_target(folder, out, REPORT_NAME)
    record.write_text(page, render(folder, summary))
    return page
