"""`hlb ablate` and `hlb plot`: arm planning, statistics, fast failures, a real two-arm run, Ctrl-C."""

from __future__ import annotations

import builtins
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import set_args, tiny_sets
from hlbcli import stats
from hlbcli.experiments import battery, local_backend, plan as plans, summary as summaries
from hlbcli.experiments.plan import AblateOptions, Arm, plan_arms
from hlbcli.errors import UsageError

SMOKE = ["whitening", "dirac", "noisy_bn", "bias_lr", "label_smoothing", "flip", "translate", "ema", "tta"]
# smaller still than tiny_sets: a child process spends most of its time importing torch anyway
FAST = tiny_sets("data.synthetic_train=128", "data.synthetic_test=64", "train.epochs=1")


# --- planning --------------------------------------------------------------------------------


def test_plan_arms_baseline_first_then_named():
    arms = plan_arms(SMOKE, ["ema", "tta", "ema"], ["cutmix"], False)
    assert [a.name for a in arms] == ["baseline", "-ema", "-tta", "+cutmix"]
    assert arms[1].disabled == ["ema"] and arms[3].enabled == ["cutmix"]
    assert [a.folder for a in arms] == ["baseline", "no-ema", "no-tta", "with-cutmix"]


def test_plan_arms_leave_one_out_is_one_arm_per_active_trick():
    arms = plan_arms(SMOKE, ["ema"], [], True)
    assert [a.name for a in arms] == ["baseline"] + [f"-{t}" for t in ["ema"] + [t for t in SMOKE if t != "ema"]]


@pytest.mark.parametrize(
    "disable,enable,loo,match",
    [
        (["cutmix"], [], False, "does not turn 'cutmix' on"),
        ([], ["ema"], False, "already turns 'ema' on"),
        ([], [], False, "nothing to compare"),
    ],
)
def test_plan_arms_refuses_arms_that_measure_nothing(disable, enable, loo, match):
    with pytest.raises(UsageError, match=match):
        plan_arms(SMOKE, disable, enable, loo)


def test_worker_slots_split_cpu_cores_or_gpus(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert local_backend.worker_slots("auto", 1) == [{}]
    slots = local_backend.worker_slots("cpu", 2)
    want = str(max(1, (os.cpu_count() or 1) // 2))
    assert slots == [{"HLB_THREADS": want, "OMP_NUM_THREADS": want}] * 2
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert local_backend.worker_slots("auto", 4) == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert local_backend.worker_slots("cuda", 1) == [{"CUDA_VISIBLE_DEVICES": "3"}]
    assert local_backend.worker_slots("cpu", 1) == [{}]  # --device cpu never takes a GPU slot


def test_child_command_passes_everything_through(tmp_path):
    opts = AblateOptions(preset="smoke", config="c.toml", sets=["a.b=1"], runs=4, seed=7, device="cpu",
                         data_dir="/d", download=False)
    cmd = local_backend.child_command(opts, Arm("-ema", disabled=["ema"]), tmp_path)
    assert cmd[:4] == [sys.executable, "-m", "hlbcli.cli", "train"]
    s = " ".join(cmd[4:])
    # the arm's config is its resolved config file, frozen when the battery starts
    for part in [f"--preset {tmp_path / 'config.json'}", "--runs 4", "--seed 7",
                 "--device cpu", "--data-dir /d", "--no-download", f"--out {tmp_path}", "--quiet"]:
        assert part in s
    assert "--config" not in s and "--set" not in s and "--disable" not in s


# --- statistics from records on disk ---------------------------------------------------------


def _fake_arm(out: Path, arm: Arm, accs, secs, statuses=None):
    d = out / "arms" / arm.folder
    d.mkdir(parents=True)
    for i, (a, t) in enumerate(zip(accs, secs)):
        st = (statuses or ["completed"] * len(accs))[i]
        rec = {"seed": i, "status": st, "accuracy": a if st == "completed" else None, "train_seconds": t}
        (d / f"run-{i:03d}-seed{i}.json").write_text(json.dumps(rec))


def test_summary_statistics_and_markdown(tmp_path):
    arms = [Arm("baseline"), Arm("-ema", disabled=["ema"])]
    base, arm = [0.90, 0.91, 0.92], [0.80, 0.82, 0.81]
    _fake_arm(tmp_path, arms[0], base, [2.0, 2.0, 2.0])
    _fake_arm(tmp_path, arms[1], arm + [0.5], [1.0, 1.5, 2.0, 9.0], statuses=["completed"] * 3 + ["interrupted"])
    opts = AblateOptions(preset="smoke", runs=4)
    s = summaries.summarize(opts, arms, tmp_path, {"baseline": "completed"}, partial=True)
    b, a = s["arms"]
    assert b["p_value"] is None and b["delta_accuracy"] is None and b["n"] == 3
    assert a["n"] == 3 and a["n_started"] == 4 and len(a["runs"]) == 4
    assert a["delta_accuracy"] == pytest.approx(0.81 - 0.91)
    assert a["p_value"] == pytest.approx(stats.welch(base, arm)[1]) and a["p_value"] < 0.05
    assert a["ci95"] == pytest.approx(list(stats.ci95(arm)))
    assert a["mean_train_seconds"] == pytest.approx(1.5) and a["delta_train_seconds"] == pytest.approx(-0.5)
    assert a["status"] == "not started" and b["status"] == "completed"
    md = summaries.markdown(s)
    assert "| -ema | 3/4 | 81.00% |" in md and "-10.00" in md and " *" in md and "PARTIAL" in md


# --- fast failures, before any training ------------------------------------------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--disable", "emma"], "unknown trick 'emma' in --disable"),
        (["--disable", "ema", "--set", "train.epochs=-3"], "train.epochs"),
        (["--disable", "ema", "--set", "ema.every=0"], "ema.every"),
        (["--disable", "cutmix"], "does not turn 'cutmix' on"),
        (["--enable", "cutmix", "--set", "cutmix.size=0"], "cutmix.size"),
        ([], "nothing to compare"),
    ],
)
def test_bad_input_fails_fast_with_exit_2(cli, tmp_path, args, needle):
    code, out, err = cli("ablate", "--preset", "smoke", *args, "--out", tmp_path / "d")
    assert code == 2, (out, err)
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()


def test_out_folder_with_an_ablation_is_refused(cli, tmp_path):
    (tmp_path / "arms" / "baseline").mkdir(parents=True)
    code, _, err = cli("ablate", "--preset", "smoke", "--disable", "ema", "--out", tmp_path)
    assert code == 2 and "already holds an ablation" in err


def test_settings_of_an_added_trick_reach_only_the_arms_with_it(cli):
    code, out, err = cli("ablate", "--preset", "smoke", "--enable", "cutmix", "--enable", "cutout",
                         "--set", "cutmix.size=5", "--dry-run")
    assert code == 0, err
    lines = {ln.split("\t")[0]: ln.split("\t")[2] for ln in out.strip().splitlines()}
    assert set(lines) == {"baseline", "+cutmix", "+cutout"}
    assert "cutmix" not in lines["baseline"] and "cutout" not in lines["baseline"]
    assert "cutmix" in lines["+cutmix"] and "cutout" not in lines["+cutmix"]
    assert "cutout" in lines["+cutout"] and "cutmix" not in lines["+cutout"]
    arms = plans.plan_battery(AblateOptions(preset="smoke", enable=["cutmix", "cutout"], sets=["cutmix.size=5"]))
    assert [a.config.get("cutmix", {}).get("size") for a in arms] == [None, 5, None]
    code, _, err = cli("ablate", "--preset", "smoke", "--enable", "cutout", "--set", "cutmix.size=5", "--dry-run")
    assert code == 2 and "trick 'cutmix' is not active" in err  # a setting no arm uses


def test_dry_run_leave_one_out_lists_one_arm_per_active_trick(cli):
    code, out, err = cli("ablate", "--preset", "smoke", "--leave-one-out", "--dry-run", "--runs", "2")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["baseline"] + [f"-{t}" for t in SMOKE]
    assert all("--runs 2 --seed 0" in ln for ln in lines)
    assert "whitening" in lines[0].split("\t")[2] and "whitening" not in lines[1].split("\t")[2]


# --- plotting --------------------------------------------------------------------------------


def _hide(monkeypatch, module: str):
    """``import module`` (and its submodules) fails, as where it is not installed."""
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named '{module}'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)


def _hide_matplotlib(monkeypatch):
    _hide(monkeypatch, "matplotlib")


def test_plot_without_matplotlib_says_how_to_get_it(cli, tmp_path, monkeypatch):
    _hide_matplotlib(monkeypatch)
    code, _, err = cli("plot", tmp_path)
    assert code == 2
    assert err.strip() == "error: plotting needs matplotlib (pip install 'hlbcli[plot]')"
    # ablate --plot checks before training anything
    code, _, err = cli("ablate", "--preset", "smoke", "--disable", "ema", "--plot", "--out", tmp_path / "d")
    assert code == 2 and "pip install 'hlbcli[plot]'" in err and not (tmp_path / "d").exists()


def test_plot_writes_a_png(cli, tmp_path):
    pytest.importorskip("matplotlib")
    arms = [Arm("baseline"), Arm("-ema", disabled=["ema"])]
    _fake_arm(tmp_path, arms[0], [0.9, 0.91, 0.92], [1, 1, 1])
    _fake_arm(tmp_path, arms[1], [0.8, 0.85], [1, 1])
    s = summaries.summarize(AblateOptions(preset="smoke"), arms, tmp_path, {}, partial=False)
    (tmp_path / "summary.json").write_text(json.dumps(s))
    code, out, err = cli("plot", tmp_path)
    assert code == 0, err
    png = tmp_path / "accuracy.png"
    assert out.strip() == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    code, _, err = cli("plot", tmp_path / "nowhere")
    assert code == 2 and "no summary.json" in err


# --- the real thing --------------------------------------------------------------------------


def test_ablate_disable_ema_three_runs(cli, tmp_path):
    """The checked command: two arms, n = 3 each, the same seeds, six run records."""
    out_dir = tmp_path / "D"
    plot = ["--plot"] if importlib.util.find_spec("matplotlib") else []
    code, out, err = cli("ablate", "--preset", "smoke", "--disable", "ema", "--runs", "3", *set_args(FAST), *plot,
                         "--out", out_dir)
    assert code == 0, err
    if plot:
        assert (out_dir / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    table = [ln.split() for ln in out.splitlines()]
    header = next(i for i, r in enumerate(table) if r[:2] == ["arm", "n"])
    assert [table[header + 1][0], table[header + 2][0]] == ["baseline", "-ema"]
    s = json.loads((out_dir / "summary.json").read_text())
    assert [a["name"] for a in s["arms"]] == ["baseline", "-ema"]
    assert [a["n"] for a in s["arms"]] == [3, 3]
    assert sum(len(a["runs"]) for a in s["arms"]) == 6
    assert [r["seed"] for r in s["arms"][0]["runs"]] == [r["seed"] for r in s["arms"][1]["runs"]] == [0, 1, 2]
    base, arm = s["arms"]
    assert "ema" in base["runs"][0]["tricks"] and "ema" not in arm["runs"][0]["tricks"]
    assert arm["disabled"] == ["ema"] and arm["enabled"] == []
    assert base["p_value"] is None
    accs = lambda a: [r["accuracy"] for r in a["runs"]]  # noqa: E731
    assert arm["p_value"] == pytest.approx(stats.welch(accs(base), accs(arm))[1], nan_ok=True)
    by_seed = lambda a: {r["seed"]: r["accuracy"] for r in a["runs"]}  # noqa: E731
    assert arm["p_paired"] == pytest.approx(stats.paired(by_seed(base), by_seed(arm))[1], nan_ok=True)
    assert arm["n_paired"] == 3 and base["p_paired"] is None
    # each record names its arm and the code that trained it
    from hlbcli.record import source_commit

    assert [r["arm"] for a in s["arms"] for r in a["runs"]] == ["baseline"] * 3 + ["-ema"] * 3
    assert {(r["git_commit"], r["git_dirty"]) for a in s["arms"] for r in a["runs"]} == {source_commit()}
    # progress over the battery, as plain lines (not a terminal): one per run, one per arm
    assert sum(1 for ln in out.splitlines() if re.match(r"\[\d/6 runs, \S+ elapsed, ETA \S+\] arm ", ln)) == 6
    assert "[6/6 runs" in out and "arm -ema done: n 3, accuracy" in out
    assert arm["delta_accuracy"] == pytest.approx(arm["mean_accuracy"] - base["mean_accuracy"])
    for key in ("std_accuracy", "ci95", "mean_train_seconds"):
        assert key in arm
    assert s["partial"] is False
    assert "| -ema | 3 |" in (out_dir / "summary.md").read_text()


def test_ctrl_c_keeps_finished_runs_and_prints_the_partial_table(tmp_path):
    """SIGINT once the baseline has a finished run: exit 130, the runs kept, the partial table."""
    out_dir = tmp_path / "D"
    cmd = [sys.executable, "-m", "hlbcli.cli", "ablate", "--preset", "smoke", "--disable", "ema", "--runs", "50",
           "--device", "cpu", *set_args(FAST), "--out", str(out_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        first = out_dir / "arms" / "baseline" / "run-000-seed0.json"
        while not first.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no run finished in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)  # a busy machine: the stop waits up to 15 s per child
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    # on stderr, as an error line: --quiet prints it too
    assert "error: interrupted by SIGINT" in err and "--resume" in err and "Traceback" not in err
    assert "baseline" in out and "-ema" in out and "PARTIAL" in out
    s = json.loads((out_dir / "summary.json").read_text())
    assert s["partial"] is True
    base, arm = s["arms"]
    assert 1 <= base["n"] < 50 and base["status"] == "interrupted"
    assert base["n"] == len([r for r in base["runs"] if r["status"] == "completed"])
    assert arm["n"] == 0 and arm["status"] == "not started"


# --- the scheduler, with stand-in children (no torch: fast) ----------------------------------

FAKE_CHILD = r"""
import json, os, sys, time
out, runs, fail = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
t0 = time.time()
time.sleep(0.6)
if fail:
    if sys.argv[4:] == ["silent"]:  # dies without a word (os._exit in its code)
        os._exit(9)
    print("error: trick 'boom' (hlb-boom 1.0) raised ValueError: boom in hlb_epoch_end (a hint)", file=sys.stderr)
    sys.exit(1)
for i in range(runs):
    rec = {"seed": i, "status": "completed", "accuracy": 0.5 + 0.01 * i + (0.1 if "no-" in out else 0),
           "train_seconds": 1.0, "threads": os.environ.get("HLB_THREADS"), "t0": t0, "t1": time.time()}
    with open(os.path.join(out, f"run-{i:03d}-seed{i}.json"), "w") as f:
        json.dump(rec, f)
"""


def _fake_children(monkeypatch, fail_arm=None, *how):
    def fake(opts, arm, arm_dir):
        return [sys.executable, "-c", FAKE_CHILD, str(arm_dir), str(opts.runs), "1" if arm.name == fail_arm else "0", *how]

    monkeypatch.setattr(local_backend, "child_command", fake)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)


def test_workers_run_arms_in_parallel_with_a_share_of_the_cores(monkeypatch, tmp_path):
    _fake_children(monkeypatch)
    opts = AblateOptions(preset="smoke", disable=["ema", "tta"], runs=3, workers=3, device="cpu", out=tmp_path)
    summary, code = battery.run_ablation(opts)
    assert code == 0
    assert [a["name"] for a in summary["arms"]] == ["baseline", "-ema", "-tta"]
    assert all(a["n"] == 3 and a["status"] == "completed" for a in summary["arms"])
    runs = [a["runs"][0] for a in summary["arms"]]
    assert {r["threads"] for r in runs} == {str(max(1, (os.cpu_count() or 1) // 3))}
    assert max(r["t0"] for r in runs) < min(r["t1"] for r in runs), "the three arms did not overlap"
    assert summary["arms"][1]["delta_accuracy"] == pytest.approx(0.1)
    assert json.loads((tmp_path / "summary.json").read_text())["arms"][2]["n"] == 3


def test_a_failed_arm_is_reported_and_the_others_kept(cli, monkeypatch, tmp_path):
    """The battery's error line is the failed arm's own (a trick's bug, named), from its log."""
    _fake_children(monkeypatch, fail_arm="-ema")
    code, out, err = cli("ablate", "--preset", "smoke", "--disable", "ema", "--disable", "tta", "--out", tmp_path)
    assert code == 1
    line = "trick 'boom' (hlb-boom 1.0) raised ValueError: boom in hlb_epoch_end (a hint)"
    assert f"arm -ema: exit 1 after 0/3 runs: error: {line}" in out
    assert err == f"error: arm -ema: {line}\n"
    s = json.loads((tmp_path / "summary.json").read_text())
    assert [a["n"] for a in s["arms"]] == [3, 0, 3] and s["partial"] is True
    assert s["arms"][1]["status"] == "failed (exit 1)"


def test_an_arm_that_dies_without_a_word_is_named_by_its_exit(cli, monkeypatch, tmp_path):
    _fake_children(monkeypatch, "-ema", "silent")
    code, out, err = cli("ablate", "--preset", "smoke", "--disable", "ema", "--runs", "1", "--out", tmp_path)
    assert code == 1
    assert err == f"error: arm -ema: exit 9 with no error line (see {tmp_path / 'arms' / 'no-ema' / 'train.log'})\n"


def test_hlb_threads_sets_torch_threads(monkeypatch):
    import torch

    from hlbcli.cli_options import threads_from_env

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("HLB_THREADS", "2")
        threads_from_env()
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("HLB_THREADS", "x")
        with pytest.raises(UsageError, match="HLB_THREADS"):
            threads_from_env()  # an error, no longer ignored
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --- the Ray backend's options, without Ray (tests/test_ray.py runs it on a local instance) ----


def test_ray_backend_without_ray_says_how_to_get_it(cli, tmp_path, monkeypatch):
    _hide(monkeypatch, "ray")
    code, _, err = cli("ablate", "--preset", "smoke", "--disable", "ema", "--backend", "ray", "--out", tmp_path / "d")
    assert code == 2 and not (tmp_path / "d").exists()
    assert err.strip() == ("error: --backend ray needs Ray, which is not installed "
                           "(pip install 'hlbcli[ray]', here and on every node of the cluster)")


@pytest.mark.parametrize("args,needle", [
    (["--backend", "slurm"], "--backend slurm: unknown backend (choose one of: local, ray)"),
    (["--address", "10.0.0.1:6379"], "--address is an option of the Ray backend (add --backend ray, or drop it)"),
    (["--block", "4"], "--block is an option of the Ray backend"),
    (["--retries", "0"], "--retries is an option of the Ray backend"),
    (["--backend", "ray", "--block", "0"], "--block"),
])
def test_ray_options_are_checked(cli, tmp_path, args, needle):
    code, _, err = cli("ablate", "--preset", "smoke", "--disable", "ema", *args, "--out", tmp_path / "d")
    assert code == 2 and needle in err and not (tmp_path / "d").exists()


def test_blocks_cut_seeds_in_order():
    from hlbcli.experiments.ray_backend import blocks, seed_span

    assert blocks([0, 1, 2, 3, 4], 2) == [[0, 1], [2, 3], [4]]
    assert blocks([3, 7], 10) == [[3, 7]] and blocks([], 3) == []
    assert (seed_span([4]), seed_span([0, 1, 2])) == ("seed 4", "seeds 0..2")
