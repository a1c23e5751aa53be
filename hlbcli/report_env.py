"""``hlb report``'s environment table: what the run records say about where they ran (versions,
precision, compile) and on which machine (their ``machine`` fingerprint, :mod:`hlbcli.machine`),
the commit that trained them and the one that wrote the page. Rows of (title, text);
:mod:`hlbcli.report` draws them."""

from __future__ import annotations

import json
from typing import Any

from hlbcli.machine import runs_machine

#: what the records say about where they ran: (title, key path in a record)
ENVIRONMENT = [("device", ("device",)), ("hlbcli", ("versions", "hlbcli")), ("torch", ("versions", "torch")),
               ("torchvision", ("versions", "torchvision")), ("python", ("versions", "python")),
               ("CUDA", ("versions", "cuda")), ("precision", ("precision",)), ("compiled", ("compiled",)),
               ("compile mode", ("compile_mode",)), ("deterministic", ("deterministic",)), ("timer", ("timer",))]
#: the machine's fingerprint in the records (``machine``): (title, key)
MACHINE = [("GPU", "device"), ("GPU memory GiB", "gpu_memory_gib"), ("driver", "driver"), ("cuDNN", "cudnn"),
           ("SM clock MHz", "sm_clock_mhz"), ("memory clock MHz", "memory_clock_mhz"),
           ("application clocks locked", "clocks_locked"), ("power limit W", "power_limit_w"),
           ("persistence mode", "persistence_mode"), ("CPU", "cpu"), ("vector extensions", "vector_extensions"),
           ("torch threads", "threads"), ("MKL", "mkl"), ("oneDNN", "mkldnn")]


def _get(rec: dict, path: tuple[str, ...]) -> Any:
    for k in path:
        rec = rec.get(k) if isinstance(rec, dict) else None
    return rec


def _shown(v: Any) -> str:
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return " ".join(v) or "none"
    return "-" if v is None or v == "" else v if isinstance(v, str) else json.dumps(v)


def _seen(recs: list[dict], path: tuple[str, ...]) -> str:
    seen = list(dict.fromkeys(_shown(_get(r, path)) for r in recs))
    return "; ".join(seen) if seen else "-"


def environment_rows(rep: dict) -> tuple[list[list[str]], int]:
    """The table's rows for :func:`hlbcli.report.load`'s ``rep``, and how many records they
    come from (values that differ between records apart by ``;``)."""
    from hlbcli import __version__
    from hlbcli.claims import runs_source
    from hlbcli.record import source_commit

    recs = [r for a in rep["arms"] for r in a["runs"]]
    rows = [[title, _seen(recs, path)] for title, path in ENVIRONMENT]
    machine = runs_machine(recs)
    if machine is None:
        rows.append(["machine", "not in the records (written by an hlb that did not record it)"])
    else:
        rows += [[title, _seen(recs, ("machine", key))] for title, key in MACHINE]
        dated = sum(1 for r in recs if not isinstance(r.get("machine"), dict))
        rows.append(["machine", f"more than one: {machine['mixed']}" if "mixed" in machine else
                     "one" + (f" ({dated} record(s) do not name theirs)" if dated else "")])
    b, ran = rep["bench"], runs_source(recs)
    if ran:
        rows.append(["commit that trained", ran[0] + (" (with uncommitted changes)" if ran[1] else "") + " (run records)"])
    elif b and b.get("git_commit"):
        rows.append(["commit that trained", f"{b['git_commit']}" + (" (with uncommitted changes)" if b.get("git_dirty") else "") + " (bench.json)"])
    else:
        rows.append(["commit that trained", "not in the records (written by an hlb that did not record it)"])
    commit, dirty = source_commit()
    rows.append(["page written by", f"hlb report {__version__}, {commit}" + (" (with uncommitted changes)" if dirty else "")])
    return rows, len(recs)
