"""What a newcomer expects of the command line: ``hlb --version``, ``--debug`` shown in the help,
"did you mean" for a misspelt trick, the brackets a list setting needs, pictures without an
extra, and how to set up on a CPU-only machine."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import Field

from hlbcli.config import Settings, validate
from hlbcli.errors import ConfigError, UsageError

ROOT = Path(__file__).resolve().parents[1]


# --- hlb --version, hlb --help ------------------------------------------------------------------


def test_version_prints_hlb_and_torch_versions_and_exits_0(cli):
    code, out, err = cli("--version")
    assert code == 0 and err == ""
    assert out == f"hlb {md.version('hlbcli')} (torch {md.version('torch')})\n"


def test_version_as_a_real_process(hlb_proc):
    res = hlb_proc("--version", timeout=60)
    assert res.returncode == 0 and res.stderr == ""
    assert re.fullmatch(r"hlb \d+\.\d+\.\d+\S* \(torch \S+\)\n", res.stdout)


def test_help_shows_the_global_options_debug_and_version(cli):
    code, out, _ = cli("--help")
    assert code == 0
    text = " ".join(out.replace("│", " ").split())
    assert "--debug" in text and "traceback" in text and "HLB_DEBUG=1" in text
    assert "--version" in text


def test_debug_still_works_anywhere_on_the_line(cli):
    code, _, err = cli("config", "show", "--preset", "nosuch", "--debug")
    assert code == 2 and "Traceback" in err and err.splitlines()[-1].startswith("error: unknown preset 'nosuch'")


# --- did you mean -------------------------------------------------------------------------------


@pytest.mark.parametrize("args, wrong, flag, meant", [
    (["config", "show", "--preset", "smoke", "--disable", "emaa"], "emaa", "--disable", "ema"),
    (["config", "show", "--preset", "smoke", "--enable", "cutmx"], "cutmx", "--enable", "cutmix"),
    (["tricks", "show", "emaa"], "emaa", "tricks show", "ema"),
    (["tricks", "list", "--disable", "flp"], "flp", "--disable", "flip"),
    (["tricks", "list", "--preset", "smoke", "--swap", "emaa=cutout"], "emaa", "--swap", "ema"),
    (["ablate", "--preset", "smoke", "--disable", "emaa", "--dry-run"], "emaa", "--disable", "ema"),
    (["ablate", "--preset", "smoke", "--swap", "tta=cutot", "--dry-run"], "cutot", "--swap", "cutout"),
    (["config", "show", "--preset", "smoke", "--disable", "builtin:emaa"], "builtin:emaa", "--disable", "builtin:ema"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_misspelt_trick_gets_did_you_mean(cli, args, wrong, flag, meant):
    code, out, err = cli(*args)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"error: unknown trick '{wrong}' in {flag}, did you mean '{meant}'? (known tricks: ")


def test_a_name_like_no_trick_lists_them_without_a_guess(cli):
    code, _, err = cli("config", "show", "--preset", "smoke", "--disable", "zzzz")
    assert code == 2 and "did you mean" not in err
    assert err.startswith("error: unknown trick 'zzzz' in --disable (known tricks: ")


# --- a list setting without brackets --------------------------------------------------------------


@pytest.mark.parametrize("value, fix", [
    ("32,64,64", "[32,64,64]"),
    ("32", "[32]"),
    ("[32,64,64]", None),  # the right way: no error
])
def test_set_a_list_without_brackets_says_to_write_them(cli, value, fix):
    code, out, err = cli("config", "show", "--preset", "smoke", "--set", f"model.widths={value}")
    if fix is None:
        assert code == 0 and "widths = [32, 64, 64]" in out
        return
    assert code == 2
    assert err == f"error: --set model.widths={value}: model.widths takes a list (write --set model.widths={fix})\n"


def test_vary_a_list_without_brackets_says_to_write_them(cli):
    code, _, err = cli("ablate", "--preset", "smoke", "--vary", "model.widths=32", "--dry-run")
    assert code == 2
    assert err == "error: --vary model.widths=32: model.widths takes a list (write --vary model.widths=[32])\n"


class _Listy(Settings):
    names: list[str] = Field(default_factory=list)
    pair: tuple[int, int] = (1, 2)


@pytest.mark.parametrize("key, value, line", [
    ("names", "a,b", """--set listy.names=a,b: listy.names takes a list (write --set 'listy.names=["a","b"]')"""),
    ("pair", "3,4", "--set listy.pair=3,4: listy.pair takes a list (write --set listy.pair=[3,4])"),
    ("pair", 3, "--set listy.pair=3: listy.pair takes a list (write --set listy.pair=[3])"),
])
def test_any_list_field_gets_the_hint(key, value, line):
    """Not the widths alone: any list- or tuple-typed field, a trick's included."""
    data = {"listy": {key: value}}
    with pytest.raises(UsageError) as e:
        validate(data, {"listy": _Listy}, set(), {f"listy.{key}": f"--set listy.{key}"})
    assert not isinstance(e.value, ConfigError) and e.value.line() == line


def test_a_list_from_a_config_file_gets_the_brackets_in_its_row(cli, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[model]\nwidths = "32,64"\n')
    code, _, err = cli("config", "show", "--preset", "smoke", "--config", f)
    assert code == 2
    assert err.startswith("error: invalid config: model.widths: takes a list (got '32,64'; write it in brackets: [32,64])")


# --- pictures without an extra; set-up on a CPU-only machine --------------------------------------


def test_matplotlib_comes_with_a_plain_install():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [re.split(r"[<>=!~ ;\[]", d)[0].lower() for d in project["dependencies"]]
    assert "matplotlib" in deps
    assert project["optional-dependencies"]["plot"] == []  # the old extra still installs (nothing more)
    import matplotlib  # noqa: F401  (a plain install has it)


def test_the_docs_no_longer_send_users_to_the_plot_extra(cli):
    readme = (ROOT / "README.md").read_text()
    assert "hlbcli[plot]" not in readme
    _, out, _ = cli("ablate", "--help")
    assert "extra" not in " ".join(out.replace("│", " ").split()).split("--plot", 1)[1].split("--", 1)[0]


def test_readme_tells_a_cpu_user_to_install_the_cpu_torch_first():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in setup
    assert setup.index("download.pytorch.org/whl/cpu") < setup.rindex("pip install .")


def test_a_closed_pipe_on_stdout_is_silent():
    """`hlb train --help | head -2`: rich raises SystemExit when stdout closes; no error line."""
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("hlb")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hlbcli.cli"]
    p = subprocess.Popen([*cmd, "train", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(20)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    assert "error" not in err, err
