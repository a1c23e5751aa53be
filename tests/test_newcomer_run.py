"""What a newcomer expects of a run: progress within the epoch, a note when a GPU recipe meets a
CPU, data errors that say where hlb looked and how to get the data, where the results went,
intervals that stay within [0, 1], accuracies in percent and the table's legend."""

from __future__ import annotations

import json
import pickle
import re
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import set_args, tiny_sets
from hlbcli import estimate, progress, stats
from hlbcli.data import load_cifar, locate_cifar
from hlbcli.errors import HlbError, UsageError
from hlbcli.output import LEGEND, SYNTHETIC

TINY = ["--preset", "smoke", *set_args(tiny_sets())]
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
STEP_LINE = re.compile(r"^run 1/1 \(seed 0\): epoch [12]/2, step \d+/8 \(\d+%\), \S+ steps/s, \S+ elapsed, ETA \S+$")


# --- 1. progress within the epoch ---------------------------------------------------------------


def test_plain_progress_lines_within_the_epoch(cli, monkeypatch):
    """Not a terminal: a plain line per interval (here every step), each with the step, the
    rate and the time left; the run's table is unchanged around them."""
    monkeypatch.setenv(progress.PLAIN_EVERY_ENV, "0")
    code, out, err = cli("train", *TINY)
    assert code == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith("run 1/1 (seed 0): ")]
    steps = [ln for ln in lines if STEP_LINE.match(ln)]
    assert len(steps) == 7 and "step 1/8 (12%), - steps/s" in steps[0] and "ETA -" in steps[0]
    assert "ETA -" not in steps[-1]  # a rate once two steps are done
    assert lines[-1].startswith("run 1/1 (seed 0): 8/8 steps done, final evaluation")


def test_no_flood_at_the_default_interval_and_none_when_quiet(cli, monkeypatch):
    monkeypatch.delenv(progress.PLAIN_EVERY_ENV, raising=False)
    code, out, err = cli("train", *TINY)
    assert code == 0 and not any(STEP_LINE.match(ln) for ln in out.splitlines())  # a run of a second
    monkeypatch.setenv(progress.PLAIN_EVERY_ENV, "0")
    code, out, err = cli("train", *TINY, "--quiet")
    assert code == 0 and out == "" and err == ""


def test_plain_lines_every_thirty_seconds_of_a_fake_clock():
    class Console:
        is_terminal = False
        lines: list[str] = []

        def print(self, text, markup=False):
            self.lines.append(text)

    t = [0.0]
    c = Console()
    p = progress.StepProgress(c, "run 1/1 (seed 0)", now=lambda: t[0], every=30)
    with p:
        for step in range(1, 101):  # a step every 2 s: a line every 15 steps
            t[0] += 2.0
            p(step, 200, 1 + (step - 1) // 50, 4)
    assert len(c.lines) == 6
    assert c.lines[0] == "run 1/1 (seed 0): epoch 1/4, step 15/200 (8%), 0.5 steps/s, 30s elapsed, ETA 6m10s"


def test_progress_seconds_must_be_a_number(cli, monkeypatch):
    monkeypatch.setenv(progress.PLAIN_EVERY_ENV, "often")
    code, out, err = cli("train", *TINY)
    assert code == 2 and err.strip() == "error: HLB_PROGRESS_SECONDS='often' is not a number of seconds (set it to a number >= 0, or unset it)"


def test_fit_reports_every_step_host_side_only():
    """``on_step`` gets the host's step counter after each step, never a tensor."""
    from hlbcli.resolve import resolve
    from hlbcli.run import fit
    from hlbcli.session import open_session

    cfg, tm = resolve("smoke", sets=tiny_sets())
    seen = []
    res = fit(open_session(cfg, tm, "cpu"), 0, on_step=lambda *a: seen.append(a))
    assert res.status == "completed"
    assert seen == [(s, 8, 1 + (s - 1) // 4, 2) for s in range(1, 9)]
    assert all(type(v) is int for a in seen for v in a)


def test_bench_shows_progress_on_stderr(cli, monkeypatch, tmp_path):
    monkeypatch.setenv(progress.PLAIN_EVERY_ENV, "0")
    code, out, err = cli("bench", *TINY, "--runs", "1")
    assert code == 0, err
    assert any(STEP_LINE.match(ln) for ln in err.splitlines())
    assert not any(STEP_LINE.match(ln) for ln in out.splitlines())  # stdout: the report alone


# --- 2. a GPU recipe on the CPU -----------------------------------------------------------------


def _cfg(preset: str):
    from hlbcli.resolve import resolve

    return resolve(preset)[0]


def test_gpu_recipe_note_for_94_and_none_for_mini_or_smoke():
    from hlbcli.experiments.batch import TrainOptions, _cpu_note

    def session(preset, device="cpu", dataset="cifar10"):
        ds = SimpleNamespace(name=dataset, train_labels=range(50000), test_labels=range(10000))
        return SimpleNamespace(device=torch.device(device), dataset=ds, cfg=_cfg(preset))

    threads = torch.get_num_threads()
    note = _cpu_note(session("94"), TrainOptions(preset="94"))
    assert note is not None and note.startswith("note: 94 is a GPU recipe; on this CPU a run takes roughly ")
    assert note.endswith(" minutes (--preset mini: about "
                         f"{estimate.minutes(estimate.cpu_seconds(estimate.MINI, 4, 50000, 10000, threads))})")
    if threads == estimate.REFERENCE_THREADS:  # the 2-core reference: about 14 minutes measured
        assert "roughly 14 minutes" in note
    assert _cpu_note(session("mini"), TrainOptions(preset="mini")) is None
    assert _cpu_note(session("smoke", dataset="synthetic"), TrainOptions(preset="smoke")) is None
    assert _cpu_note(session("94", device="meta"), TrainOptions(preset="94")) is None  # not the CPU
    more = _cpu_note(session("96"), TrainOptions(preset="96", runs=3))
    assert more is not None and ", 3 runs roughly " in more


def test_the_estimate_scales_mini_by_passes_and_width():
    mini = estimate.cpu_seconds(estimate.MINI, 4, 50000, 10000, estimate.REFERENCE_THREADS)
    assert mini == pytest.approx(estimate.MINI_CPU_SECONDS)
    assert estimate.forward_macs(estimate.MINI) == 17084448  # counted by hand from model.Net's convs
    wide = dict(estimate.MINI, widths=[64, 256, 256])
    assert estimate.cpu_seconds(wide, 4, 50000, 10000, 2) == pytest.approx(
        mini * (estimate.forward_macs(wide) / estimate.forward_macs(estimate.MINI)) ** estimate.WIDTH_EXPONENT)
    assert estimate.cpu_seconds(estimate.MINI, 8, 50000, 10000, 2) > 1.9 * mini


def test_ablate_says_the_note_before_its_arms(tmp_path):
    from hlbcli.experiments.local_backend import cpu_note
    from hlbcli.experiments.plan import AblateOptions
    from hlbcli.config import to_dict

    config = to_dict(_cfg("94"))
    note = cpu_note(AblateOptions(preset="94", device="cpu"), config, 6)
    assert note and note.startswith("note: 94 is a GPU recipe") and ", 6 runs roughly " in note
    assert cpu_note(AblateOptions(preset="mini", device="cpu"), to_dict(_cfg("mini")), 6) is None
    assert cpu_note(AblateOptions(preset="94", device="cuda"), config, 6) is None


# --- 3. data errors -----------------------------------------------------------------------------


def _files(root: Path, real: bool = False) -> Path:
    """``root/cifar-10-batches-py`` with its six files (empty, or small real batches)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            if real:
                pickle.dump({"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}, f)
    return folder


@pytest.fixture
def no_default_data(tmp_path, monkeypatch):
    monkeypatch.delenv("HLB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "hlb" / "data"


def _unreachable(monkeypatch):
    import hlbcli.datadir

    calls = []

    def download(name, root):
        calls.append(root)
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"half")  # what a cut download leaves
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(hlbcli.datadir, "_download", download)
    return calls


def test_no_download_names_the_folder_and_the_archive(tmp_path, no_default_data):
    d = tmp_path / "dta"
    with pytest.raises(UsageError) as e:
        locate_cifar("cifar10", d, download=False)
    assert e.value.line() == (
        f"cifar10 not found in {d} (--data-dir): {d / 'cifar-10-batches-py'} is missing (drop --no-download to fetch "
        f"it; or download {URL} and unpack it in {d}, so that {d / 'cifar-10-batches-py'} exists)")
    assert not d.exists() and not no_default_data.exists()


def test_a_failed_download_leaves_no_folder(tmp_path, no_default_data, monkeypatch):
    calls = _unreachable(monkeypatch)
    d = tmp_path / "typo" / "dta"
    with pytest.raises(HlbError) as e:
        locate_cifar("cifar10", d)
    assert calls == [d] and not (tmp_path / "typo").exists()  # created for the download, removed
    line = e.value.line()
    assert line.startswith(f"cifar10 not found in {d} (--data-dir): {d / 'cifar-10-batches-py'} is missing and the "
                           "download failed (URLError: <urlopen error [Errno -2] Name or service not known>)")
    assert line.endswith(f"(download {URL} and unpack it in {d}, so that {d / 'cifar-10-batches-py'} exists)")
    # the default folder: not created, not left empty
    with pytest.raises(HlbError) as e:
        locate_cifar("cifar10", None)
    assert not (tmp_path / "cache").exists()
    assert f"not found in {no_default_data} (the default data folder)" in e.value.line()
    assert e.value.line().endswith("or pass --data-dir DIR where DIR/cifar-10-batches-py exists)")
    # a folder that was there stays, with what the download left
    (tmp_path / "there").mkdir()
    with pytest.raises(HlbError):
        locate_cifar("cifar10", tmp_path / "there")
    assert (tmp_path / "there").is_dir()


def test_the_message_names_the_default_folder_that_holds_the_data(cli, tmp_path, no_default_data, monkeypatch):
    _files(no_default_data)
    d = tmp_path / "dta"
    code, out, err = cli("train", *TINY, "--set", 'data.dataset="cifar10"', "--data-dir", d, "--no-download")
    assert code == 2 and err.count("\n") == 1
    assert f"(the default data folder {no_default_data} holds 'cifar-10-batches-py': drop --data-dir; or " in err
    assert URL in err and not d.exists()
    monkeypatch.setenv("HLB_DATA_DIR", str(tmp_path / "env"))
    _files(tmp_path / "env")
    with pytest.raises(UsageError) as e:
        locate_cifar("cifar10", d, download=False)
    assert f"($HLB_DATA_DIR {tmp_path / 'env'} holds 'cifar-10-batches-py': drop --data-dir; or " in e.value.line()


def test_data_dir_naming_the_upstream_folder_itself(tmp_path, no_default_data):
    folder = _files(tmp_path / "data", real=True)
    ds = load_cifar("cifar10", folder, download=False)  # recognised: its parent is the data folder
    assert len(ds.train_labels) == 20 and len(ds.test_labels) == 4
    half = tmp_path / "half" / "cifar-10-batches-py"
    half.mkdir(parents=True)
    (half / "data_batch_1").write_bytes(b"")
    with pytest.raises(UsageError) as e:
        locate_cifar("cifar10", half, download=False)
    assert e.value.line().startswith(
        f"cifar10 not found in {half} (--data-dir): {half / 'data_batch_2'} is missing (--data-dir names the "
        f"'cifar-10-batches-py' folder itself: its files belong there, and --data-dir {half.parent} finds them; ")
    assert f"unpack it in {half.parent}, so that {half} exists)" in e.value.line()


# --- 4. where the results went ------------------------------------------------------------------


def test_train_says_where_the_results_went(cli, tmp_path):
    code, out, err = cli("train", *TINY, "--runs", "2", "--out", tmp_path / "o")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == (
        f"results in {tmp_path / 'o'} (summary.json, 2 run record(s); accuracies there are fractions)")
    code, out, err = cli("train", *TINY)
    assert code == 0 and out.strip().splitlines()[-1] == "nothing saved (add --out DIR to keep the run records)"
    code, out, err = cli("train", *TINY, "--out", tmp_path / "q", "--quiet")
    assert code == 0 and out == ""


def test_quiet_errors_still_say_where_finished_runs_are(cli, tmp_path):
    import signal

    from hlbcli.experiments.tail import kept_line
    from hlbcli.signals import Interrupted

    e = Interrupted(signal.SIGINT)
    assert kept_line(e, 2, tmp_path, "go on") == f"interrupted by SIGINT: 2 finished run(s) kept in {tmp_path} (go on)"
    assert kept_line(e, 2, None, "go on") == "interrupted by SIGINT: 2 finished run(s) not saved (no --out) (go on)"
    code, out, err = cli("train", *TINY, "--runs", "2", "--out", tmp_path / "o", "--quiet", "--set", "train.lr=1e300")
    assert code == 1 and out == ""  # both runs diverge: each error line names its record
    assert f"(its record: {tmp_path / 'o' / 'run-000-seed0.json'}; the batch goes on)" in err
    assert f"(its record: {tmp_path / 'o' / 'run-001-seed1.json'}; the batch goes on)" in err


# --- 5. intervals within [0, 1]; synthetic data said --------------------------------------------


def test_accuracy_interval_is_clipped():
    lo, hi = stats.ci95([0.80, 0.90])
    assert 0 < lo < 0.25 and hi > 1.45  # the t interval of two runs reaches past 1
    assert stats.accuracy_ci95([0.80, 0.90]) == (lo, 1.0)
    assert stats.ci95([0.40, 0.90])[0] < 0 and stats.accuracy_ci95([0.40, 0.90]) == (0.0, 1.0)
    assert stats.accuracy_ci95([0.85, 0.851, 0.852]) == pytest.approx(stats.ci95([0.85, 0.851, 0.852]))
    assert all(x != x for x in stats.accuracy_ci95([]))


def test_two_runs_give_an_interval_within_0_1_everywhere(cli, tmp_path):
    code, out, err = cli("train", *TINY, "--runs", "2", "--out", tmp_path / "t")
    assert code == 0, err
    s = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert 0 <= s["ci95"][0] <= s["ci95"][1] <= 1 and s["ci95_method"] == stats.ACCURACY_CI
    assert all(0 <= r["accuracy"] <= 1 for r in s["runs"])  # the files keep fractions
    line = next(ln for ln in out.splitlines() if ln.startswith("2 run(s): "))
    assert re.search(r"accuracy mean \d+\.\d\d% std \d+\.\d\d pts min \d+\.\d\d% 95% CI \[\d+\.\d\d%, \d+\.\d\d%\] "
                     r"\(t, clipped to 0-100%\)", line), line
    assert line.endswith(SYNTHETIC)
    code, out, err = cli("bench", *TINY, "--runs", "2", "--out", tmp_path / "b")
    assert code == 0, err
    rep = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert 0 <= rep["accuracy_ci95"][0] <= rep["accuracy_ci95"][1] <= 1 and rep["accuracy_ci95_method"] == stats.ACCURACY_CI
    assert "(t, clipped to 0-100%)" in out and SYNTHETIC in out
    assert "on synthetic data, not a CIFAR-10 result" in rep["summary_line"]


def test_ablation_table_in_percent_clipped_and_labelled_synthetic(tmp_path):
    from hlbcli.experiments.summary import footnote, table_rows

    runs = lambda accs: [{"seed": i, "status": "completed", "accuracy": a, "train_seconds": 1.0,  # noqa: E731
                          "config": {"data": {"dataset": "synthetic"}}} for i, a in enumerate(accs)]
    from hlbcli.experiments.plan import Arm
    from hlbcli.experiments.summary import arm_stats

    base = arm_stats(Arm("baseline"), runs([0.40, 0.90]), None)
    arm = arm_stats(Arm("-ema"), runs([0.70, 0.95]), base)
    assert base["ci95"] == [0.0, 1.0] and arm["ci95"] == [0.0, 1.0]
    for row in (base, arm):
        row["runs"] = runs([0.8])
    summary = {"arms": [base, arm], "seeds": [0, 1]}
    assert table_rows(summary)[1][2:6] == ["82.50%", "17.68", "[0.00, 100.00]", "+17.50"]
    note = footnote(summary)
    assert note.startswith("accuracy and ci95 in %, std and Δ acc in points; ci95: the 95% t interval of the mean, "
                           "clipped to 0-100%; ")
    assert note.endswith("; synthetic data: not a CIFAR-10 result")


def test_plot_axis_stays_within_0_100_percent(tmp_path, monkeypatch):
    import matplotlib.figure

    from hlbcli.plot import plot_summary

    seen = []
    save = matplotlib.figure.Figure.savefig

    def savefig(fig, *a, **k):
        ax = fig.axes[0]
        seen.append((ax.get_ylim(), ax.get_ylabel()))
        return save(fig, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    for accs in ([0.80, 0.90], [0.40, 0.90], [0.05, 0.10, 0.02]):
        runs = [{"seed": i, "status": "completed", "accuracy": a} for i, a in enumerate(accs)]
        plot_summary({"runs": runs}, tmp_path / "a.png")
        assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert [label for _, label in seen] == ["test accuracy (%)"] * 3
    (lo1, hi1), (lo2, hi2), (lo3, hi3) = [lim for lim, _ in seen]
    assert 0 <= lo1 < 80 and 90 < hi1 <= 100  # the interval reaches past 100%: the axis stops there
    assert (lo2, hi2) == (0, 100) and lo3 == 0 and 10 < hi3 < 100


# --- 6. percent on screen; the legend -----------------------------------------------------------


def test_percent_everywhere_on_screen_and_one_legend(cli):
    code, out, err = cli("train", *TINY, "--runs", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines.count(LEGEND) == 1
    legend = lines.index(LEGEND)
    assert lines[legend - 1].split()[0] == "2" and lines[legend + 1].startswith("accuracy ")  # under run 1's table
    rows = [ln.split() for ln in lines if re.match(r"^\s+[12] ", ln)]
    assert len(rows) == 4 and all(re.fullmatch(r"\d+\.\d\d%", r[2]) for r in rows)
    assert all(re.fullmatch(r"\d+\.\d\d%", r[3]) for r in rows)  # smoke evaluates every epoch
    assert len([ln for ln in lines if re.fullmatch(r"accuracy \d+\.\d\d% in \S+s \(init .*\)", ln)]) == 2
    assert not re.search(r"\b0\.\d{4}\b", out)  # no fraction printed as an accuracy
    assert "'-' where not measured (train.eval_every_epoch=false)" in LEGEND and "seconds: timed seconds" in LEGEND
