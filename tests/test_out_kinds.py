"""An --out folder belongs to the kind of command that wrote it: a batch (hlb train or hlb
bench), an ablation (hlb ablate), hlb bench --against's A/B sides. Another kind refuses it, with
or without --resume, in one line naming what it holds, and writes nothing there."""

from __future__ import annotations

import json

import pytest

from conftest import set_args, tiny_sets
from hlbcli import record
from test_errors import assert_one_line_error

F = ["--preset", "smoke", *set_args(tiny_sets("train.epochs=1"))]
BENCH = ["bench", *F, "--runs", "1"]
AGAINST = [*BENCH, "--against", "smoke", "--against-set", "train.lr=5.0"]
ABLATE = ["ablate", *F, "--disable", "ema", "--runs", "1"]
TRAIN = ["train", *F]

HOLDS = {"alternation": "holds the A/B records of hlb bench --against",
         "batch": "holds the records of an hlb train or hlb bench batch",
         "ablation": "holds an ablation"}


def _files(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".hlb-lock"}


def _refused(cli, d, kind, *commands):
    before = _files(d)
    for cmd in commands:
        for resume in ([], ["--resume"]):
            if resume and "--against" in cmd:
                continue  # --against takes no --resume
            code, out, err = cli(*cmd, "--out", d, *resume)
            assert_one_line_error(code, err, 2, f"--out {d} {HOLDS[kind]}", "choose another --out")
    assert _files(d) == before  # bench.json (the claim) and every record as they were


def test_a_bench_against_folder_is_refused_by_bench_train_and_ablate(cli, tmp_path):
    d = tmp_path / "AG"
    code, out, err = cli(*AGAINST, "--out", d)
    assert code == 0, err
    assert record.folder_kinds(d) == ["alternation"]
    _refused(cli, d, "alternation", BENCH, TRAIN, ABLATE)
    code, out, err = cli(*AGAINST, "--out", d)  # its own kind: refused too, it cannot go on
    assert_one_line_error(code, err, 2, "already holds the A/B records", "choose a new folder")


def test_a_bench_folder_is_refused_by_bench_against_and_ablate(cli, tmp_path):
    d = tmp_path / "B"
    code, out, err = cli(*BENCH, "--out", d)
    assert code == 0, err
    assert record.folder_kinds(d) == ["batch"]
    _refused(cli, d, "batch", AGAINST, ABLATE)
    code, out, err = cli(*BENCH, "--out", d, "--runs", "2", "--resume")  # its own kind goes on
    assert code == 0, err
    assert json.loads((d / "bench.json").read_text())["n"] == 2


def _ablation(d):
    (d / "arms" / "baseline").mkdir(parents=True)
    (d / "ablation.json").write_text("{}")
    (d / "summary.json").write_text("{}")
    return d


@pytest.mark.parametrize("layout", ["plan", "arms"])
def test_an_ablation_folder_is_refused_by_train_bench_and_bench_against(cli, tmp_path, layout):
    d = _ablation(tmp_path / "A")
    (d / ("arms/baseline" if layout == "plan" else "ablation.json")).rename(tmp_path / "gone")  # either is enough
    assert record.folder_kinds(d) == ["ablation"]  # its summary.json is the ablation's, not a batch's
    _refused(cli, d, "ablation", TRAIN, BENCH, AGAINST)


def test_records_at_the_top_beside_an_ablation_name_the_other_kind(tmp_path):
    d = _ablation(tmp_path / "A")
    (d / "run-000-seed0.json").write_text("{}")
    assert record.folder_kinds(d) == ["ablation", "batch"]
    for kind, other in (("ablation", "batch"), ("batch", "ablation")):
        with pytest.raises(Exception, match=HOLDS[other]):
            record.check_out(d, kind, resume=True)
