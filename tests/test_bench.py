import json
import math

from conftest import set_args, tiny_sets


def test_hlb_bench_reports_phases(cli, tmp_path):
    code, out, err = cli("bench", "--preset", "smoke", "--runs", "2", *set_args(tiny_sets()), "--out", tmp_path)
    assert code == 0, err
    assert "accuracy  mean" in out and "phases" in out and "train steps" in out
    rep = json.loads((tmp_path / "bench.json").read_text())
    assert rep["n"] == 2
    assert rep["precision"] == "fp32" and "precision fp32, eager" in out  # auto on the CPU
    from hlbcli.hostmem import glibc

    s = json.loads((tmp_path / "summary.json").read_text())
    want = "keep" if glibc() else "system"  # auto on the CPU
    assert {r["host_memory"] for r in s["runs"]} == {want} and rep["host_memory"] == want and f"host memory {want}" in out
    batch = 2000 if want == "keep" else 128  # eval_batch_size auto on the CPU, by the allocator
    assert rep["eval_batch_size"] == batch and f"(batch {batch})" in out
    for key in ("accuracy_mean", "accuracy_std", "accuracy_min", "time_mean", "time_median", "phase_init_mean", "phase_train_mean", "phase_eval_mean"):
        assert rep[key] is not None and math.isfinite(rep[key]), key
    # the timed figure is the sum of the timed phases
    for r in s["runs"]:
        assert abs(sum(r["phases"].values()) - r["train_seconds"]) < 1e-6


def test_overhead_benchmark_prints_a_ratio(capsys):
    from hlbcli.bench import main

    main(["overhead", "--widths", "8,8,8", "--batch-size", "32", "--steps", "2", "--trials", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert "ratio" in out and "core" in out and "94-step" in out


def test_ops_benchmark_ends_with_the_ratio_line(capsys):
    from hlbcli.bench import main

    main(["ops", "--steps", "5", "--precision", "fp32", "--detail"])
    lines = capsys.readouterr().out.strip().splitlines()
    last = lines[-1]
    assert last.startswith("ATen ops per step: hlb ") and "ratio" in last
    ratio = float(last.rsplit(" ", 1)[1])
    assert 0 < ratio <= 1.0
    assert any(line.startswith("aten.") for line in lines)  # --detail lists the differences
