"""Bad input through the CLI: each case exits 2 (usage) or 1 (runtime) with exactly one line
``error: ... (hint)`` on stderr and no traceback."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import set_args, tiny_sets
from hlbcli import hookimpl
from hlbcli.contract import TrickInfo
from hlbcli.errors import UsageError
from hlbcli.resolve import resolve

TINY = set_args(tiny_sets())


def install_trick(monkeypatch, name: str, **hooks) -> types.ModuleType:
    """Make ``name`` a known trick for this test: a module registered like a built-in, with
    ``hlb_trick_info`` plus the given hook functions."""
    import hlb_plugins

    info = hooks.pop("info", None) or TrickInfo(name, f"test trick {name}")
    mod = types.ModuleType(f"hlb_test_trick_{name}")
    mod.hlb_trick_info = hookimpl(lambda: info)
    for hook, fn in hooks.items():
        setattr(mod, hook, hookimpl(fn))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(hlb_plugins.BUILTINS, name, mod.__name__)
    return mod


def assert_one_line_error(code: int, err: str, want_code: int, *needles: str) -> str:
    assert code == want_code, err
    assert "Traceback" not in err
    lines = err.rstrip("\n").splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert "internal error" not in line, line
    assert re.search(r" \(.+\)$", line), f"no hint in parentheses at the end: {line}"
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    return line


def _write_batch(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n).tolist())}
    path.write_bytes(pickle.dumps(d))


@pytest.fixture
def fake_cifar(tmp_path):
    """A tiny ``cifar-10-batches-py`` folder whose third training batch is garbage."""
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _write_batch(folder / f"data_batch_{i}", 64, i)
    _write_batch(folder / "test_batch", 64, 0)
    (folder / "data_batch_3").write_bytes(b"\x80\x04this is not a pickle at all")
    return tmp_path / "data"


def _cases(tmp: Path, fake_data: Path) -> list[tuple[str, list[str], int, list[str]]]:
    (tmp / "bad.toml").write_text("[train]\nepochs = = 3\n")
    (tmp / "latin1.toml").write_bytes(b"[train]\n# caf\xe9\n")
    (tmp / "typo.toml").write_text("[train]\nepocs = 3\n")
    (tmp / "a_file").write_text("x")
    (tmp / "adir.toml").mkdir()
    smoke = ["train", "--preset", "smoke", *TINY]
    return [
        ("unknown preset", ["train", "--preset", "nope"], 2, ["unknown preset 'nope'", "smoke"]),
        ("config missing", [*smoke, "--config", tmp / "nope.toml"], 2, ["config file not found", "nope.toml"]),
        ("config unreadable", [*smoke, "--config", tmp / "latin1.toml"], 2, ["cannot be read", "latin1.toml"]),
        ("config is a folder", [*smoke, "--config", tmp / "adir.toml"], 2, ["is a directory", "adir.toml"]),
        ("config bad TOML", [*smoke, "--config", tmp / "bad.toml"], 2, ["not valid TOML", "bad.toml"]),
        ("misspelled key in file", [*smoke, "--config", tmp / "typo.toml"], 2, ["train.epocs", "did you mean 'epochs'?"]),
        ("misspelled key in --set", [*smoke, "--set", "train.batchsize=8"], 2, ["did you mean 'batch_size'?"]),
        ("misspelled section", [*smoke, "--set", "trian.epochs=3"], 2, ["trian", "did you mean 'train'?"]),
        ("misspelled trick section", [*smoke, "--set", "emma.every=3"], 2, ["did you mean 'ema'?"]),
        ("unknown key, no close match", [*smoke, "--set", "model.zzz=1"], 2, ["model.zzz", "valid: widths"]),
        ("--set of an inactive trick", [*smoke, "--set", "cutmix.size=3"], 2, ["'cutmix' is not active", "--enable cutmix"]),
        ("--set without =", [*smoke, "--set", "train.lr"], 2, ["has no '='"]),
        ("--set with no value", [*smoke, "--set", "train.epochs="], 2, ["--set train.epochs= has no value", 'train.epochs=""']),
        ("newline in a --set", [*smoke, "--set", "train.a\nb=1"], 2, ["train.a\\nb", "unknown key"]),
        ("negative lr", [*smoke, "--set", "train.lr=-0.5"], 2, ["train.lr", "greater than or equal to 0.001", "-0.5"]),
        ("infinite lr", [*smoke, "--set", "train.lr=inf"], 2, ["train.lr", "finite"]),
        ("lr not a number", [*smoke, "--set", "train.lr=fast"], 2, ["train.lr", "'fast'"]),
        ("zero epochs", [*smoke, "--set", "train.epochs=0"], 2, ["train.epochs", "greater than 0"]),
        ("negative epochs", [*smoke, "--set", "train.epochs=-3"], 2, ["train.epochs"]),
        ("batch larger than the set", [*smoke, "--set", "train.batch_size=100000"], 2, ["larger than the training set", "256"]),
        ("too many widths", [*smoke, "--set", "model.widths=[8,8,8,8,8,8]"], 2, ["model.widths", "at most"]),
        ("widths for 8px images", [*smoke, "--set", "data.synthetic_size=8", "--set", "model.widths=[8,8,8,8]"], 2, ["8px", "at most 2"]),
        ("zero width", [*smoke, "--set", "model.widths=[8,0]"], 2, ["model.widths", "positive"]),
        ("stem does not fit whitening", [*smoke, "--set", "model.stem_width=7"], 2, ["stem_width", "--disable whitening"]),
        ("tricks not a list", [*smoke, "--set", "tricks=3"], 2, ["tricks", "list"]),
        ("unknown trick in --disable", [*smoke, "--disable", "emaa"], 2, ["unknown trick 'emaa' in --disable", "known tricks"]),
        ("unknown trick in --enable", [*smoke, "--enable", "cutmx"], 2, ["unknown trick 'cutmx' in --enable", "cutmix"]),
        ("unknown trick in the list", [*smoke, "--set", 'tricks=["flip","nope"]'], 2, ["unknown trick 'nope'"]),
        ("--runs 0", [*smoke, "--runs", "0"], 2, ["--runs"]),
        ("unknown option", [*smoke, "--epochs", "3"], 2, ["No such option", "hlb train --help"]),
        ("unknown command", ["trian"], 2, ["Did you mean 'train'?"]),
        ("--out cannot be written", [*smoke, "--out", tmp / "a_file" / "sub"], 2, ["--out", "cannot be written"]),
        ("unknown device", [*smoke, "--device", "tpu"], 2, ["unknown device 'tpu'"]),
        ("unknown host_memory", [*smoke, "--set", 'train.host_memory="hold"'], 2, ["train.host_memory", "'keep'", "'system'"]),
        ("dataset folder missing",
         ["train", "--preset", "smoke", *TINY, "--set", 'data.dataset="cifar10"', "--data-dir", tmp / "empty", "--no-download"],
         2, ["cifar-10-batches-py is missing", "--data-dir"]),
        ("dataset file corrupt",
         ["train", "--preset", "smoke", *TINY, "--set", 'data.dataset="cifar10"', "--data-dir", fake_data, "--no-download"],
         1, ["data_batch_3", "corrupt"]),
    ]


def _case_names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return [c[0] for c in _cases(Path(d), Path(d))]


@pytest.mark.parametrize("name", _case_names())
def test_bad_input_is_one_line(name, cli, tmp_path, fake_cifar):
    cases = {c[0]: c for c in _cases(tmp_path, fake_cifar)}
    _, args, want, needles = cases[name]
    code, out, err = cli(*args)
    assert_one_line_error(code, err, want, *needles)


def test_error_table_is_large_enough(tmp_path):
    assert len(_cases(tmp_path, tmp_path)) >= 15


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_where_there_is_none(cli):
    code, out, err = cli("train", "--preset", "smoke", *TINY, "--device", "cuda")
    assert_one_line_error(code, err, 2, "--device cuda", "no CUDA GPU", "--device cpu")


def test_several_problems_print_a_short_table(cli):
    code, out, err = cli("config", "show", "--preset", "smoke", "--set", "train.lr=-1", "--set", "train.epoch=3")
    assert code == 2 and "Traceback" not in err
    first, *rows = err.rstrip("\n").splitlines()
    assert first.startswith("error: invalid config:") and "(+1 more)" in first
    assert len(rows) == 2 and all(r.startswith("  ") for r in rows)
    assert any("train.epoch" in r and "did you mean 'epochs'?" in r for r in rows)


def test_disabled_trick_keeps_its_settings_silently():
    """A preset's (or the user's) section for a trick that --disable turns off is accepted:
    ablation arms rely on it."""
    cfg, tm = resolve("smoke", sets=["whitening.num_images=64", "ema.every=3"], disable=["whitening", "ema"])
    assert "whitening" not in tm.trick_names() and not hasattr(cfg, "ema")
    # and --disable of a trick the preset does not use marks its settings as intentional
    cfg, tm = resolve("smoke", sets=["cutmix.size=3"], disable=["cutmix"])
    assert "cutmix" not in tm.trick_names()
    cfg, tm = resolve("smoke", sets=["cutmix.size=5"], enable=["cutmix"])
    assert cfg.cutmix.size == 5


def test_conflicting_tricks(cli, monkeypatch):
    install_trick(monkeypatch, "grumpy", info=TrickInfo("grumpy", "cannot stand EMA", conflicts=("ema",)))
    code, out, err = cli("train", "--preset", "smoke", *TINY, "--enable", "grumpy")
    assert_one_line_error(code, err, 2, "'grumpy' and 'ema' conflict", "--disable ema")
    # without ema it builds
    cfg, tm = resolve("smoke", enable=["grumpy"], disable=["ema"])
    assert "grumpy" in tm.trick_names()


def test_trick_that_needs_another(cli, monkeypatch):
    install_trick(monkeypatch, "needy", info=TrickInfo("needy", "needs cutmix", requires=("cutmix",)))
    code, out, err = cli("train", "--preset", "smoke", *TINY, "--enable", "needy")
    assert_one_line_error(code, err, 2, "'needy' needs trick 'cutmix'", "--enable cutmix")
    cfg, tm = resolve("smoke", enable=["needy", "cutmix"])
    assert {"needy", "cutmix"} <= set(tm.trick_names())


def test_relations_checked_with_extra_plugins():
    class Picky:
        @hookimpl
        def hlb_trick_info(self):
            return TrickInfo("picky", "conflicts with flip", conflicts=("flip",))

    with pytest.raises(UsageError, match="'picky' and 'flip' conflict"):
        resolve("smoke", enable=["picky"], extra={"picky": Picky()})
    cfg, tm = resolve("smoke", enable=["picky"], disable=["flip"], extra={"picky": Picky()})
    assert "picky" in tm.trick_names()


def test_debug_shows_the_traceback(cli):
    code, out, err = cli("train", "--preset", "nope", "--debug")
    assert code == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: unknown preset")


def _hlb_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("hlb")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "hlbcli.cli"]


def test_real_process_prints_no_traceback(tmp_path, fake_cifar):
    """A few cases through the installed console script, all at once: exit code, one line."""
    cases = {c[0]: c for c in _cases(tmp_path, fake_cifar)}
    picked = ["misspelled key in --set", "dataset file corrupt", "--runs 0"]
    procs = {
        name: subprocess.Popen([*_hlb_cmd(), *map(str, cases[name][1])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in picked
    }
    try:
        for name, p in procs.items():
            out, err = p.communicate(timeout=180)
            _, _, want, needles = cases[name]
            assert_one_line_error(p.returncode, err, want, *needles)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
