"""`hlb plot` (and `hlb ablate --plot`, `hlb report`'s picture): long arm names fit the picture,
and nothing of matplotlib's reaches the terminal raw."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from hlbcli.plot import arm_label, plot_summary

pytest.importorskip("matplotlib")

#: a --vary arm of many settings, and one long name without a comma
SETTINGS = ",".join(f"train.setting_number_{i}={i / 1000:g}" for i in range(14))
LONG = [SETTINGS, SETTINGS.replace("=", "=1"), "x" * 400]


def _summary(names: list[str]) -> dict:
    runs = [{"seed": s, "status": "completed", "accuracy": 0.9 - 0.01 * s, "train_seconds": 1.0} for s in range(3)]
    return {"preset": "smoke", "arms": [{"name": n, "runs": runs} for n in ["baseline", *names]]}


def test_arm_labels_break_after_commas_and_are_cut_with_an_ellipsis():
    assert arm_label("train.lr=1.5,train.momentum=0.8", 20) == "train.lr=1.5,\ntrain.momentum=0.8"
    assert arm_label("-ema", 20) == "-ema"
    cut = arm_label(SETTINGS, 28).splitlines()
    assert len(cut) == 6 and all(len(line) <= 28 for line in cut) and cut[-1].endswith("…")
    assert cut[0] == "train.setting_number_0=0,"


def test_long_arm_names_fit_without_a_matplotlib_warning(hlb_proc, tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps(_summary(LONG)))
    p = hlb_proc("plot", tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stderr == "" and "Tight layout" not in p.stderr and "UserWarning" not in p.stderr
    png = tmp_path / "accuracy.png"
    assert p.stdout.strip() == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # in-process too (as hlb ablate --plot and hlb report draw it), many arms: matplotlib says nothing
    plot_summary(_summary(LONG * 3), tmp_path / "many.png")
    assert capsys.readouterr().err == "" and (tmp_path / "many.png").stat().st_size > 5000


def test_what_matplotlib_says_is_one_warning_line_of_hlb(cli, tmp_path, monkeypatch):
    import matplotlib.figure

    def complain(self, *a, **k):
        warnings.warn("Tight layout not applied. The margins cannot be made large enough.\nsecond line", UserWarning)

    monkeypatch.setattr(matplotlib.figure.Figure, "tight_layout", complain)
    (tmp_path / "summary.json").write_text(json.dumps(_summary(["-ema"])))
    code, out, err = cli("plot", tmp_path)
    assert code == 0 and Path(out.strip()).is_file()
    assert err == f"warning: {tmp_path / 'accuracy.png'}: drawn as it is, but matplotlib said: Tight layout not applied. " \
                  "The margins cannot be made large enough.\n"
