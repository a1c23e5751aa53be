"""``hlb report DIR``: one self-contained HTML page of a ``hlb train``, ``hlb bench`` or ``hlb
ablate`` folder, that opens offline (no script, no font, no request: the accuracy picture is a
PNG in a data URI, the per-epoch curves inline SVG, and a Content-Security-Policy forbids any
fetch). It shows the summary table (the ablation's is :mod:`hlbcli.experiments.summary`'s, cell
for cell), what ``--until-resolved`` or ``bench --target`` adds, the accuracy picture
(:mod:`hlbcli.plot`), the curves (:mod:`hlbcli.report_svg`), the settings in which the arms
differ, the environment and machine the records name (:mod:`hlbcli.report_env`), and relative links to the records (the page keeps
working when the folder moves with it). The folder is read through :mod:`hlbcli.readback`."""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hlbcli import readback, record
from hlbcli.claims import check_claim
from hlbcli.errors import UsageError
from hlbcli.layers import changes, flatten
from hlbcli.output import SYNTHETIC, pct, pts, runs_saved_line, seconds, synthetic
from hlbcli.report_env import environment_rows
from hlbcli.report_svg import curves
from hlbcli.experiments import sequential
from hlbcli.experiments.summary import SEQ_COLUMNS, columns, footnote, table_rows
from hlbcli.plot import plot_summary, plot_target

REPORT_NAME = "report.html"
HINT = "point at the --out folder of hlb train, hlb bench or hlb ablate"
#: the first column of the summary table of a ``hlb train`` or ``hlb bench`` folder
TRAIN_COLUMNS = ["runs", "n", "accuracy", "std", "ci95", "min", "max", "time s", "median time s"]


# --- reading the folder ------------------------------------------------------------------------


def _read(path: Path, fix: str) -> Any:
    """A JSON file hlb wrote, None where there is none; one that cannot be read: ``fix``."""
    try:
        return readback.read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, readback.Bad) as e:
        raise UsageError(f"{path}: {getattr(e, 'strerror', None) or e}", fix) from None


#: the numbers (or nulls) the summary table reads, of an arm or of a train summary
NUMBERS = ("mean_accuracy", "std_accuracy", "mean_train_seconds")
ARM_NUMBERS = NUMBERS + ("delta_accuracy", "delta_train_seconds")


def _check_summary(s: Any, ablation: bool) -> str | None:
    """Why ``s`` is not a summary.json hlb wrote, or None (what the page reads, checked)."""
    if not isinstance(s, dict):
        return "not a summary (not a JSON object)"
    rows = s.get("arms") if ablation else [s]
    if not isinstance(rows, list) or not rows:
        return "no arms"
    if ablation and not (isinstance(s.get("seeds"), list) and all(isinstance(x, int) for x in s["seeds"])):
        return "no list of seeds"
    for a in rows:
        name = f"arm {a['name']!r}: " if ablation and isinstance(a, dict) and isinstance(a.get("name"), str) else ""
        if not (isinstance(a, dict) and isinstance(a.get("runs"), list) and isinstance(a.get("n"), int)
                and (not ablation or isinstance(a.get("name"), str))
                and isinstance(a.get("ci95"), list) and len(a["ci95"]) == 2 and all(map(readback.number, a["ci95"]))):
            return f"{name}no name, n, ci95 or runs" if ablation else "no n, ci95 or runs"
        bad = [k for k in (ARM_NUMBERS if ablation else NUMBERS) if not readback.number(a.get(k))]
        if bad:
            return f"{name}{bad[0]} {a.get(bad[0])!r} is not a number"
    return None


class Inside:
    """What of ``folder`` the page may read and link: a path that lies inside the folder once
    links are resolved; the others are kept in ``outside``, to be named in one warning line."""

    def __init__(self, folder: Path):
        self.folder, self.root, self.outside = folder, Path(os.path.realpath(folder)), []

    def __call__(self, path: Path) -> bool:
        if not os.path.lexists(path) or Path(os.path.realpath(path)).is_relative_to(self.root):
            return True  # (a missing file, or a link loop, is the reader's to say)
        self.outside += [] if path in self.outside else [path]
        return False

    def warn(self) -> None:
        if self.outside:
            names = ", ".join(str(os.path.relpath(p, self.folder)) for p in self.outside)
            print(f"warning: hlb report: left out {len(self.outside)} file(s) that link outside {self.folder}: {names}",
                  file=sys.stderr, flush=True)


def load(folder: Path) -> dict:
    """What the page shows: the folder's kind, summary (and bench claim), and per arm its name,
    folder, records by seed (with their paths), the files left out, and its config. Only what
    lies inside ``folder`` once links are resolved is read (:class:`Inside`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder", HINT)
    inside = Inside(folder)
    if not inside(folder / "summary.json"):
        raise UsageError(f"{folder / 'summary.json'} links outside {folder}",
                         f"hlb report reads only what lies inside the folder: copy the file into it, or run hlb summary {folder}")
    ablation = (folder / readback.PLAN_NAME).exists() or readback.arms_hold_records(folder)
    if ablation and inside(folder / readback.PLAN_NAME):
        readback.read_plan(folder)  # says what is wrong with the plan, or that it is missing
    summary = _read(folder / "summary.json", f"rerun hlb summary {folder} to write it again")
    if summary is None:
        if ablation or any(folder.glob("run-*.json")):
            what = "run records" if readback.arms_hold_records(folder) or any(folder.glob("run-*.json")) else "an ablation plan"
            raise UsageError(f"{folder} has {what} but no summary.json", f"run hlb summary {folder} to write it")
        if (folder / "A" / "summary.json").exists() and (folder / "bench.json").exists():
            raise UsageError(f"{folder} is a hlb bench --against folder", f"run hlb report on {folder / 'A'} and on {folder / 'B'}, one page per side")
        raise UsageError(f"{folder} holds no hlb results (no summary.json)",
                         f"run hlb train --out {folder} first, or hlb bench or hlb ablate with --out {folder}")
    why = _check_summary(summary, ablation)
    if why:
        raise UsageError(f"{folder / 'summary.json'}: {why}", f"rerun hlb summary {folder} to write it again")
    fix = "rerun the hlb bench command with --resume to write it again"
    bench = None if ablation or not inside(folder / "bench.json") else _read(folder / "bench.json", fix)
    why = check_claim(bench) if bench is not None else None
    if why:
        raise UsageError(f"{folder / 'bench.json'}: {why}", fix)
    arms = []
    for a in summary["arms"] if ablation else [{**summary, "name": folder.resolve().name or "runs", "dir": "."}]:
        d = str(a.get("dir", ""))
        where = folder / d if d and ".." not in Path(d).parts and not Path(d).is_absolute() else None
        where = where if where and inside(where) else None
        found = readback.read_records(where, strict=False, read=inside) if where and where.is_dir() else readback.Records(folder)
        config = _read(where / "config.json", "rerun the hlb ablate command with --resume to write it again") \
            if where and ablation and inside(where / "config.json") else None
        runs = a["runs"]
        if not isinstance(config, dict):
            config = next((r["config"] for r in runs if isinstance(r, dict) and isinstance(r.get("config"), dict)), {})
        arms.append({"name": str(a.get("name")), "row": a, "runs": [r for r in runs if isinstance(r, dict)],
                     "found": found, "config": config})
    return {"folder": folder, "kind": "ablation" if ablation else ("bench" if isinstance(bench, dict) else "train"),
            "summary": summary, "bench": bench, "arms": arms, "inside": inside}


# --- the pieces of the page --------------------------------------------------------------------


def _e(v: Any) -> str:
    return escape(str(v))


def _table(cols: list[str] | None, rows: list[list[str]], tid: str = "", raw: bool = False) -> str:
    """An HTML table (``cols`` None: a table of keys and values, no header); ``raw``: the cells
    are HTML already (else they are escaped)."""
    head = "<thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr></thead>" if cols else ""
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in r) + "</tr>" for r in rows)
    attrs = (f' id="{tid}"' if tid else "") + ("" if cols else ' class="kv"')
    return f'<div class="wide"><table{attrs}>{head}<tbody>{body}</tbody></table></div>'


def train_row(s: dict, name: str) -> list[str]:
    lo, hi = s["ci95"]
    n = f"{s['n']}" + (f"/{s['n_started']}" if s.get("n_started", s["n"]) != s["n"] else "")
    return [name, n, pct(s.get("mean_accuracy")), pts(s.get("std_accuracy")), f"[{pts(lo)}, {pts(hi)}]" if s["n"] else "-",
            pct(s.get("min_accuracy")), pct(s.get("max_accuracy")), seconds(s.get("mean_train_seconds")),
            seconds(s.get("median_train_seconds"))]


def summary_section(rep: dict) -> str:
    s = rep["summary"]
    if rep["kind"] == "ablation":
        lines = "<br>".join(_e(line) for line in footnote(s).splitlines())  # (the sequential columns' a line each)
        return _table(columns(s), table_rows(s), "summary") + f'<p class="note">{lines}</p>'
    note = (f"accuracy, ci95, min and max in %, std in points; ci95: {s.get('ci95_method', 'the 95% t interval of the mean')}; "
            "time s: the mean of the timed seconds per run (init, training steps, final evaluation)")
    if s.get("partial"):
        note += "; PARTIAL: interrupted or failed before every run finished"
    if synthetic(s["runs"]):
        note += f"; {SYNTHETIC[1:-1]}"
    return _table(TRAIN_COLUMNS, [train_row(s, rep["arms"][0]["name"])], "summary") + f'<p class="note">{_e(note)}</p>'


def sequential_section(s: dict) -> str:
    """``--until-resolved``: each arm's verdict, runs spent and anytime-valid interval; the
    battery's runs spent and saved."""
    seq = s.get("sequential")
    if not isinstance(seq, dict):
        return ""
    rows = []
    for a in s["arms"][1:]:
        v = a.get("sequential")
        if isinstance(v, dict):
            settled = v.get("how") in (sequential.EFFECT_UP, sequential.EFFECT_DOWN, sequential.NO_EFFECT)
            rows.append([a["name"], sequential.describe(v, seq.get("delta")), "yes" if settled else "no",
                         str(a.get("n_started", a["n"])), str(v.get("pairs")), sequential.interval_text(v)])
    delta = f"; no effect: within +-{100 * seq['delta']:g} points" if seq.get("delta") else ""
    return ("<h2>Until resolved</h2>"
            + _table(["arm", "verdict", "resolved", "runs spent", "pairs", SEQ_COLUMNS[1]], rows, "sequential")
            + f'<p>{_e(runs_saved_line(seq))}</p>'
            + f'<p class="note">{_e(seq.get("method"))} at {1 - seq.get("alpha", 0.05):.0%}, valid at every look '
              f'(looks at {_e(", ".join(map(str, seq.get("looks", []))))} seeds){_e(delta)}; {_e(seq.get("reference", ""))}</p>')


def claim_section(b: dict | None) -> str:
    """``hlb bench``'s claim (``bench.json``): over every record of the folder with this config."""
    if not b:
        return ""
    lo, hi = (b.get("accuracy_ci95") or [None, None])[:2]
    tlo, thi = (b.get("time_ci95") or [None, None])[:2]
    target, p, need = b.get("target"), b.get("p_value"), b.get("runs_needed")
    rows = [["runs (completed)", f"{b.get('n')}" + (f", {b['diverged']} diverged" if b.get("diverged") else "")],
            ["mean accuracy", f"{pct(b.get('accuracy_mean'))} (95% CI {pct(lo)} to {pct(hi)})"]]
    if target is not None:
        alpha = b.get("runs_needed_alpha", 0.01)
        rows += [["target", f"{100 * target:g}%"],
                 ["p, one-sided", "n/a" if p is None else f"{p:.2g} that the true mean is below the target"],
                 [f"runs needed for p < {alpha:g}", str(need) if need else "none at this mean and std"]]
    rows += [["time per run", f"{seconds(b.get('time_mean'))} s (95% CI {seconds(tlo)} to {seconds(thi)})"],
             ["claim line", str(b.get("summary_line", ""))]]
    methods = " ".join(f"{name}: {b[k]}." for k, name in (("test", "test"), ("runs_needed_method", "runs needed"),
                                                              ("timed" if b.get("timed") else "timer", "time")) if b.get(k))
    return ("<h2>Claim (bench.json)</h2><p>over every record of the folder trained with this config "
            "(the summary above: this batch's seeds)</p>") + _table(None, rows, "claim") + f'<p class="note">{_e(methods)}</p>'


def picture(s: dict, label: str) -> str:
    """The accuracy picture, :func:`hlbcli.plot.plot_summary`'s PNG as a data URI."""
    if not any(a["n"] for a in s.get("arms", [s])):
        return '<p class="note">no completed run: nothing to draw.</p>'
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_summary(s, Path(tmp) / "accuracy.png", label=label).read_bytes()
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="accuracy" alt="accuracy per arm" src="data:image/png;base64,{data}">'


def _value(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False) if v is not _ABSENT else "(absent)"


_ABSENT = object()


def config_section(arms: list[dict]) -> str:
    """What each arm adds, removes and sets against the first (:func:`hlbcli.layers.changes`),
    then every differing key side by side, and the first arm's config in full."""
    flat = [(a["name"], flatten(a["config"])) for a in arms]
    base = flat[0][1]
    keys = [k for k in dict.fromkeys(key for _, f in flat for key in f)
            if any(f.get(k, _ABSENT) != base.get(k, _ABSENT) for _, f in flat[1:])]
    whole = _table(["key", "value"], [[k, _value(v)] for k, v in sorted(base.items())])
    whole = f"<details><summary>the {_e(flat[0][0])} config in full ({len(base)} keys)</summary>{whole}</details>"
    if len(flat) == 1:
        return f"<p>{_e(arms[0]['name'])}: one config.</p>{whole}"
    if not keys:
        return f"<p>The arms' configs are the same.</p>{whole}"
    said = [(a["name"], changes(arms[0]["config"], a["config"])) for a in arms[1:]]
    rows = [[name, ", ".join(c["adds"]) or "-", ", ".join(c["removes"]) or "-", "; ".join(c["sets"]) or "-"]
            for name, c in said]
    rows_keys = [[k, _value(base.get(k, _ABSENT)), *(_value(f.get(k, _ABSENT)) if f.get(k, _ABSENT) != base.get(k, _ABSENT) else "="
                                                     for _, f in flat[1:])] for k in keys]
    return (_table(["arm", "adds tricks", "removes tricks", "sets"], rows, "changes")
            + f'<p class="note">what each arm does that {_e(flat[0][0])} does not: a trick added or removed takes its '
              "settings with it; sets: every other setting that differs, from -> to</p>"
            + f"<details><summary>every key that differs ({len(keys)})</summary>"
            + _table(["key", *(n for n, _ in flat)], rows_keys, "configs")
            + f'<p class="note">flattened keys; = the same as {_e(flat[0][0])}; from each arm\'s config.json</p></details>'
            + whole)


def environment_section(rep: dict) -> str:
    """The records' environment and machine (:mod:`hlbcli.report_env`)."""
    rows, n = environment_rows(rep)
    return _table(None, rows, "environment") + f'<p class="note">from the {n} run record(s) summarised (values apart by ; where they differ)</p>'


def _href(path: Path, page: Path) -> str:
    # realpath, not Path.resolve: no error on a link loop
    return quote(Path(os.path.relpath(os.path.realpath(path), os.path.realpath(page.parent))).as_posix())


def records_section(rep: dict, page: Path) -> str:
    folder, out = rep["folder"], []
    files = [folder / n for n in ("summary.json", "summary.md", "bench.json", readback.PLAN_NAME)
             if (folder / n).is_file() and rep["inside"](folder / n)]
    out.append("<p>" + " ".join(f'<a href="{_href(p, page)}">{_e(p.name)}</a>' for p in files) + "</p>")
    for a in rep["arms"]:
        found = a["found"]
        rows = [[_e(s), _e(r.get("status")), _e(pct(r.get("accuracy"))), _e(seconds(r.get("train_seconds"))),
                 f'<a class="record" href="{_href(p, page)}">{_e(p.name)}</a>'] for s, (p, r) in sorted(found.runs.items())]
        rows += [["-", "left out", "-", "-", f'<a class="record" href="{_href(p, page)}">{_e(p.name)}</a>: {_e(why)}']
                 for p, why in found.left_out()]
        out.append(f"<h3>{_e(a['name'])}</h3>" + (_table(["seed", "status", "accuracy", "train s", "record"], rows, raw=True)
                                                  if rows else '<p class="note">no run records</p>'))
    for r in rep["summary"].get("rejected") or []:
        if isinstance(r, dict):
            out.append(f'<p class="note">left out of the summary: {_e(r.get("file"))}: {_e(r.get("why"))}</p>')
    return "".join(out)


# --- the page ------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0 auto;max-width:1100px;padding:16px 24px}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}h3{font-size:15px;margin:14px 0 4px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}th,td{padding:3px 9px;border-bottom:1px solid #e4e4e4;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}.kv td+td,#configs td,#configs th{text-align:left;white-space:normal}
.kv td:first-child{color:#555;padding-right:18px}
th{background:#f4f4f4}.wide{overflow-x:auto}.note{color:#666;font-size:12px}.warn{background:#fff4d6;padding:6px 10px}
img{max-width:100%;border:1px solid #eee}.charts{display:flex;flex-wrap:wrap;gap:16px}
.chart .frame{fill:none;stroke:#999}.chart .grid{stroke:#eee}.chart text{font-size:11px;fill:#444}
.chart .ytick{text-anchor:end}.chart .xtick,.chart .xlabel{text-anchor:middle}.chart .ctitle{font-size:13px;fill:#222}
.chart .run{fill:none;stroke-width:1;opacity:.35}.chart .mean{fill:none;stroke-width:2.5}.chart .under{stroke-width:6}
.legend .key{margin-right:14px}.swatch{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
"""
#: nothing but the page itself: no request leaves it, even by mistake
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render(rep: dict, page: Path) -> str:
    s, kind = rep["summary"], rep["kind"]
    preset = s.get("preset") or (rep["bench"] or {}).get("preset")
    title = {"ablation": f"Ablation of preset {preset}", "bench": f"hlb bench of preset {preset}",
             "train": "hlb train results"}[kind] + f" — {rep['folder'].resolve().name}"
    banner = ""
    if synthetic([r for a in rep["arms"] for r in a["runs"]]):
        banner += f'<p class="warn">{_e(SYNTHETIC[1:-1])}</p>'
    if s.get("partial"):
        banner += '<p class="warn">partial: interrupted or failed before every run finished</p>'
    arms = [(a["name"], a["runs"]) for a in rep["arms"]]
    parts = [
        f"<h1>{_e(title)}</h1>", banner, f'<p class="note">{_e(rep["folder"])}</p>',
        "<h2>Summary</h2>", summary_section(rep), sequential_section(s) if kind == "ablation" else "",
        claim_section(rep["bench"]),
        "<h2>Accuracy per arm</h2>" if kind == "ablation" else "<h2>Accuracy per run</h2>", picture(s, rep["arms"][0]["name"]),
        "<h2>Per-epoch curves</h2>", curves(arms),
        "<h2>Configs</h2>" if kind == "ablation" else "<h2>Config</h2>", config_section(rep["arms"]),
        "<h2>Environment</h2>", environment_section(rep),
        "<h2>Records</h2>", records_section(rep, page),
    ]
    return page_html(title, parts)


def page_html(title: str, parts: list[str]) -> str:
    """The one offline page around ``parts`` (HTML already): nothing fetched, the CSP says so."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>{''.join(parts)}</body></html>\n")


def write_report(folder: Path, out: str | Path | None = None) -> Path:
    """Write the page (``FOLDER/report.html``, or ``--out``: a file, or a folder to write
    report.html into) and return its path."""
    rep = load(Path(folder))
    page = plot_target(Path(folder), out, REPORT_NAME)
    html = render(rep, page)
    rep["inside"].warn()
    record.write_text(page, html)
    return page
