"""``hlb profile`` on the CPU (issue 35, item 3): the kernels (operators here) by self time, the
time by phase from the labelled step, traces that Perfetto and TensorBoard open; the step of
every other command carries no profiler range."""

from __future__ import annotations

import json

import torch

from conftest import set_args, tiny_sets

TINY = ["--preset", "smoke", *set_args(tiny_sets()), "--device", "cpu"]


def test_profile_gives_kernels_phases_and_traces(cli, tmp_path):
    out = tmp_path / "P"
    code, text, err = cli("profile", *TINY, "--steps", "3", "--skip", "2", "--out", str(out))
    assert code == 0, err
    p = json.loads((out / "profile.json").read_text())
    assert p["kind"] == "profile" and p["steps"] == 3 and p["skip"] == 2 and p["machine"]["cpu"]
    train, ev = p["parts"]["train"], p["parts"]["eval"]
    for phase in ("forward", "backward", "optimizer"):
        assert train["phases"][phase] > 0, phase
    assert train["phases"]["evaluation"] == 0 and ev["phases"]["evaluation"] > 0 and ev["phases"]["backward"] == 0
    names = [k["name"] for k in train["kernels"]]
    assert "aten::convolution_backward" in names and all(k["calls"] >= 1 for k in train["kernels"])
    shares = [k["share"] for k in train["kernels"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    for name in ("train", "eval"):
        trace = json.loads((out / f"trace-{name}.json").read_text())
        assert trace["traceEvents"]
        assert (out / "tensorboard" / f"hlb_{name}.pt.trace.json").read_bytes() == (out / f"trace-{name}.json").read_bytes()
    assert "3 training step(s): CPU time by phase" in text and "aten::convolution_backward" in text
    assert "ui.perfetto.dev" in text


def test_profile_without_the_evaluation_and_its_bad_input(cli, tmp_path):
    code, text, err = cli("profile", *TINY, "--steps", "2", "--skip", "0", "--no-eval", "--out", str(tmp_path / "P"))
    assert code == 0, err
    p = json.loads((tmp_path / "P" / "profile.json").read_text())
    assert list(p["parts"]) == ["train"] and p["steps"] == 2
    code, text, err = cli("profile", *TINY, "--skip", "8", "--out", str(tmp_path / "Q"))
    assert code == 2 and err.strip() == "error: --skip 8 leaves no step to profile: the run has 8 steps (use --skip below 8)"
    code, text, err = cli("profile", *TINY, "--out", str(tmp_path / "P"))  # a profile is not written over
    assert code == 2 and "already holds a profile" in err


def test_only_a_profiled_step_carries_profiler_ranges():
    from hlbcli.resolve import resolve
    from hlbcli.run import fit
    from hlbcli.session import open_session
    from hlbcli.step import LABELS

    cfg, tm = resolve("smoke", sets=tiny_sets())
    session = open_session(cfg, tm, "cpu")
    seen = {}
    for profiling in (False, True):
        session.profiling = profiling
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fit(session, 0)
        seen[profiling] = {e.name for e in prof.events()}
    inside = {LABELS["forward"], LABELS["optimizer"]}
    assert inside <= seen[True] and not inside & seen[False]
    assert {LABELS["data"], LABELS["evaluation"]} <= seen[False]  # once per epoch and per run, outside the step
