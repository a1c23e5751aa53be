"""The tables a newcomer reads (issue 36): ``--until-resolved``'s table says its verdict without
a fixed-n star beside it, in plain column names, and says when ``no effect`` cannot be reached;
the README's figure for the first look at 4 seeds is held to :mod:`hlbcli.stats`."""

from __future__ import annotations

import math
import re

import pytest

from hlbcli import stats
from hlbcli.experiments import summary as summaries


def _arm(name: str, p: float | None, seq: dict | None) -> dict:
    return {"name": name, "n": 6, "mean_accuracy": 0.9, "std_accuracy": 0.005, "ci95": [0.89, 0.91],
            "delta_accuracy": None if p is None else -0.004, "p_value": p, "p_paired": p,
            "mean_train_seconds": 2.0, "delta_train_seconds": None if p is None else 0.1,
            **({"sequential": seq} if seq else {})}


def _summary(delta: float | None, sequential: bool = True) -> dict:
    seq = {"resolved": False, "how": "open", "look": 6, "pairs": 6, "interval": [-0.011, 0.002]}
    s = {"preset": "smoke", "seeds": list(range(6)), "significance": 0.05, "partial": False,
         "arms": [_arm("baseline", None, None), _arm("-ema", 0.014, seq if sequential else None)]}
    if sequential:
        s["sequential"] = {"method": "t confidence sequence", "alpha": 0.05, "delta": delta, "max_runs": 12,
                           "looks": [3, 6, 9, 12], "runs_spent": 12, "runs_max": 24, "runs_saved": None}
    return s


def test_a_sequential_verdict_has_no_fixed_n_star_beside_it():
    s = _summary(delta=0.002)
    cols, (_, row) = summaries.columns(s), summaries.table_rows(s)
    assert cols[-2:] == ["verdict", "interval (anytime-valid, pts)"]
    cells = dict(zip(cols, row))
    assert cells["p Welch"] == "0.014" and cells["p paired"] == "0.014"  # the number stays, its star goes
    assert cells["verdict"] == "open after 6 runs" and cells["interval (anytime-valid, pts)"] == "[-1.10, +0.20]"
    note = summaries.footnote(s)
    assert "* where p <" not in note and "Δ paired CS" not in summaries.markdown(s)
    for col in ("verdict:", "interval (anytime-valid, pts):", "p Welch and p paired:"):
        assert sum(line.startswith(col) for line in note.splitlines()) == 1, note
    assert "no effect once it lies within +-0.2 points" in note and "add --delta" not in note


def test_a_fixed_plan_keeps_its_star():
    s = _summary(delta=None, sequential=False)
    cells = dict(zip(summaries.columns(s), summaries.table_rows(s)[1]))
    assert cells["p Welch"] == "0.014 *" and "verdict" not in cells
    assert "* where p < 0.05" in summaries.footnote(s)


def test_without_delta_the_table_says_no_effect_cannot_be_reached():
    note = summaries.footnote(_summary(delta=None))
    assert "no arm can be called 'no effect': add --delta D" in note
    assert "no effect once" not in note


@pytest.mark.parametrize("t,half", [(4, 3.0), (6, 1.0), (8, 0.7), (12, 0.5), (20, 0.4)])
def test_the_readmes_interval_widths_at_a_spread_of_half_a_point(t, half):
    """docs/statistics.md and the README: at alpha 0.05 and paired differences of sample std 0.5
    points, the interval at t seeds is +-half points."""
    xs = [(-1) ** i * 0.5 for i in range(t)]  # mean 0; scaled below to a sample std of exactly 0.5
    m, s = stats.mean_std(xs)
    xs = [0.5 * (x - m) / s for x in xs]
    lo, hi = stats.t_confidence_sequence(xs, 0.05)
    assert math.isclose((hi - lo) / 2, half, abs_tol=0.05)


def test_a_single_run_prints_no_interval(cli, tmp_path):
    fast = ["--set", "train.epochs=1", "--set", "data.synthetic_train=1024", "--set", "data.synthetic_test=256"]
    code, out, err = cli("train", "--preset", "smoke", *fast, "--device", "cpu")
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("1 run(s):"))
    assert "(n = 1: no interval)" in line and "95% CI" not in line and "std" not in line
    code, out, err = cli("train", "--preset", "smoke", *fast, "--set", "data.synthetic_train=256", "--device", "cpu", "--runs", "2")
    assert code == 0, err
    assert "95% CI [" in next(ln for ln in out.splitlines() if ln.startswith("2 run(s):"))


def test_a_single_runs_claim_has_no_interval():
    from hlbcli.claims import claim_line, format_claim

    rep = {"n": 1, "accuracy_mean": 0.4, "accuracy_ci95": [0.4, 0.4], "target": None, "diverged": 0,
           "time_mean": 1.5, "time_ci95": [1.5, 1.5], "git_commit": "not a git checkout", "git_dirty": False,
           "device": "cpu", "torch": "2", "timer": "wall"}
    for text in (claim_line(rep, "smoke"), format_claim(rep)):
        assert "95% CI" not in text and "n = 1: no interval" in text
    assert "95% CI 30.00-50.00" in claim_line({**rep, "n": 2, "accuracy_ci95": [0.3, 0.5]}, "smoke")


def test_a_partial_ablations_plot_says_so_and_spans_two_points(monkeypatch, tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    from hlbcli import plot

    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    s = _summary(delta=None, sequential=False)
    s["partial"] = True
    for a, accs in zip(s["arms"], ([0.900, 0.901], [0.899])):
        a.update(n=len(accs), runs=[{"seed": i, "status": "completed", "accuracy": x} for i, x in enumerate(accs)],
                 mean_accuracy=sum(accs) / len(accs), ci95=[min(accs), max(accs)])
    plot.plot_summary(s, tmp_path / "a.png")
    ax = figs[-1].axes[0]
    assert "PARTIAL (3 of 12 runs)" in ax.get_title()
    lo, hi = ax.get_ylim()
    assert hi - lo >= plot.MIN_SPAN - 1e-9 and lo <= 89.9 and hi >= 90.1
    s["partial"] = False
    plot.plot_summary(s, tmp_path / "b.png")
    assert "PARTIAL" not in figs[-1].axes[0].get_title()


def _fits(text: str, width: int = 160) -> None:
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    assert "…" not in text, text


@pytest.mark.parametrize("live", [False, True])
@pytest.mark.parametrize("delta", [None, 0.002])
def test_the_ablation_table_fits_160_columns_without_cutting_a_cell(live, delta):
    from rich.console import Console

    s = _summary(delta)
    s["arms"].append({**s["arms"][1], "name": "tta->othertta"})
    s["arms"].append({**s["arms"][1], "name": "model.widths=[64,256,256],train.lr=0.5",
                      "sequential": {**s["arms"][1]["sequential"], "how": "no effect"}})
    console = Console(width=160, record=True, force_terminal=True, color_system=None)
    console.print(summaries.rich_table(s, live=live))
    text = console.export_text()
    _fits(text)
    for cell in ("[89.00, 91.00]", "[-1.10, +0.20]", "0.014", "90.00%", "tta->othertta"):
        assert cell in text
    assert "model.widths=[64,256," in text and "256],train.lr=0.5" in text  # the long name folds, whole


def test_the_train_output_fits_160_columns(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    code, out, err = cli("train", "--preset", "smoke", "--set", "train.epochs=2", "--set", "data.synthetic_train=256",
                         "--set", "data.synthetic_test=128", "--device", "cpu", "--runs", "2")
    assert code == 0, err
    # the per-epoch table fits; the prose lines (the legend, the summary) are soft-wrapped on
    # purpose: a terminal wraps them, a log keeps them whole
    table = [ln for ln in out.splitlines() if re.match(r"\s+(epoch|\d+)\s", ln)]
    assert len(table) == 2 * 3  # a header and two epochs per run
    _fits("\n".join(table))
    assert "…" not in out
