"""The parts of scripts/match_original.py and scripts/originals.py that do not need an original
script (those live in the ignored external/ folder): the patching, the name mapping, the sign-free
whitening comparison, the epoch summary, and that the state transfer and comparison see a
one-step difference and nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import match_original as mo  # noqa: E402
import originals  # noqa: E402


def test_patches_apply_and_a_missing_one_names_itself(monkeypatch):
    monkeypatch.setitem(originals.PATCHES, "fake", ("x.py", [("widths = 64", "widths = {w0}"), ("half()", "float()")]))
    out = originals.source("fake", "widths = 64\nnet.half()\n", [8, 16, 16], 2, extra=[("float()", "double()")])
    assert out == "widths = 8\nnet.double()\n"
    with pytest.raises(SystemExit, match="'half\\(\\)' is not in it"):
        originals.source("fake", "widths = 64\n", [8, 16, 16], 2)


def test_every_hlb_name_maps_to_the_originals_layout():
    from hlbcli.model import Net

    net = Net([8, 16, 16], 10)
    names = {mo.original_name(k) for k in net.state_dict()}
    assert "whiten.weight" in names and "whiten.bias" in names and "head.weight" in names
    assert {"layers.1.conv1.weight", "layers.3.norm2.running_var"} <= names
    assert not any(n.startswith(("stem.", "groups.")) for n in names)


def test_whitening_match_ignores_each_filters_sign_and_nothing_else():
    torch.manual_seed(0)
    half = torch.randn(12, 3, 2, 2)
    bank = torch.cat([half, -half])
    signs = torch.tensor([1.0, -1.0] * 6).view(-1, 1, 1, 1)
    flipped = torch.cat([half * signs, -half * signs])
    assert mo.whitening_match(flipped, bank) == 0.0
    nudged = flipped.clone()
    nudged[3, 0, 0, 0] += 0.01
    assert mo.whitening_match(nudged, bank) > 1e-3


def test_epoch_stats_sees_mirrors_and_moves():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    same = mo.epoch_stats(x, x)
    assert same["mirrored"] == 0.0 and same["moved (rms)"] == 0.0
    half = torch.where((torch.arange(64) % 2 == 0).view(-1, 1, 1, 1), x.flip(-1), x)
    r = mo.epoch_stats(half, x)
    assert r["mirrored"] == 0.5 and r["moved (rms)"] == 0.0
    r = mo.epoch_stats(x + 0.1, x)
    assert abs(r["moved (rms)"] - 0.1) < 1e-5


def _step(model, opt, x, y):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("lr_factor, expect_difference", [(1.0, False), (1.01, True)])
def test_a_step_from_the_same_state_shows_only_what_differs(lr_factor, expect_difference):
    """Two copies of a net, one SGD step each from the same weights and momentum (put in with
    load_state): identical when the steps are, about the lr's 1% apart when not."""
    from hlbcli.model import Net

    torch.manual_seed(0)
    a, b = Net([8, 16, 16], 10), Net([8, 16, 16], 10)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1 * lr_factor, momentum=0.9)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    _step(a, opt_a, x, y)  # a has momentum buffers now
    state = mo.snapshot(a, [opt_a])
    assert any(k.startswith("momentum:") for k in state)
    mo.load_state(b, [opt_b], state, lambda k: k)
    assert mo.compare(mo.snapshot(b, [opt_b]), state, lambda k: k)[0][0] == 0.0
    _step(a, opt_a, x, y)
    _step(b, opt_b, x, y)
    worst = mo.compare(mo.snapshot(b, [opt_b]), mo.snapshot(a, [opt_a]), lambda k: k)[0][0]
    assert (worst > 1e-4) if expect_difference else (worst == 0.0)


def test_the_side_by_side_table_takes_each_sides_runs():
    """Welch pairs nothing: a side with more runs than the other counts them all, and says so."""
    import cpu_side_by_side as sbs
    from hlbcli.stats import welch_difference

    hlb, orig = [0.80, 0.82], [0.83, 0.84, 0.82]
    rows = [{"seed": i, **({"hlb": {"accuracy": hlb[i], "seconds": 10.0}} if i < 2 else {}),
             "hiverge": {"accuracy": orig[i], "seconds": 20.0}} for i in range(3)]
    res = {"recipe": "94-record", "label": "94-record (label)", "widths": "32,64,64", "epochs": 4, "threads": 1,
           "date": "2026-12-07", "commit": "abc1234", "cpu": "cpu", "command": "cmd", "rows": rows}
    out = sbs.table([res])
    line = next(l for l in out.splitlines() if l.startswith("| 94-record (label)"))
    d = welch_difference(orig, hlb)
    assert "| 2 / 3 |" in line and f"{100 * d['mean']:+.2f}" in line and "| 0.500 [" in line


def test_the_seeds_cifar10_reader_takes_a_copy_pickled_anew(tmp_path):
    """tysam-code's main.py reads CIFAR-10 through torchvision, which refuses files whose checksums
    are not upstream's (../shared's copy is pickled anew); the reader the runner gives it checks only
    that the files are there, and reads them."""
    import pickle

    import numpy as np
    import torchvision

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, _ in torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 9]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    with pytest.raises(RuntimeError, match="corrupted"):
        torchvision.datasets.CIFAR10(str(tmp_path), train=False)
    test = originals._cifar10_as_stored()(str(tmp_path), train=False)
    assert len(test) == 4 and test.targets == [0, 1, 2, 9] and test.classes[9] == "c9"
    assert len(originals._cifar10_as_stored()(str(tmp_path), train=True)) == 20
    (folder / "data_batch_3").unlink()
    with pytest.raises(RuntimeError, match="not found"):
        originals._cifar10_as_stored()(str(tmp_path), train=True)
