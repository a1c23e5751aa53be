"""The trick contract moves without breaking its authors: a version a trick declares, flagged by
`hlb tricks list` when older; deprecations warned through pluggy's own means one contract ahead;
each change's migration in CHANGELOG.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hlbcli import hookimpl, testing
from hlbcli.contract import CONTRACT, StepAction, TrickInfo, trick
from hlbcli.contract_history import CHANGES, changes_since, contract_note
from test_errors import install_trick

ROOT = Path(__file__).resolve().parent.parent


class OldActions:
    """Asks for hlb_step_actions' deprecated ``optimizer``."""

    hlb_trick_info, hlb_config_model = trick("old_actions", "uses the first optimizer", contract=2)

    def __init__(self):
        self.seen = None

    @hookimpl
    def hlb_step_actions(self, optimizer):
        self.seen = optimizer
        return [StepAction("noop", lambda step: None)]


def test_a_deprecated_argument_warns_through_pluggy_and_still_works():
    trick_ = OldActions()
    with pytest.warns(DeprecationWarning, match=r"optimizers\[0\]"):
        tm = testing.manager(trick_)
    assert tm.deprecated["old_actions"] and "contract 4" in tm.deprecated["old_actions"][0]
    with pytest.warns(DeprecationWarning):  # at each registration
        cfg, tm = testing.resolve_config(trick_)
    plan = testing.plan(testing.session(cfg, tm))
    assert trick_.seen is plan.optimizers[0]


def test_the_current_built_in_tricks_use_nothing_deprecated(recwarn):
    cfg, tm = testing.resolve_config(preset="94-record", tiny=False)
    assert tm.deprecated == {}
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning) and "contract" in str(w.message)]


def test_contract_note_names_the_changes_since_and_what_to_do():
    assert contract_note(0) is None and contract_note(CONTRACT) is None
    note = contract_note(CONTRACT - 1)
    assert f"written for contract {CONTRACT - 1} (this hlb: {CONTRACT})" in note
    assert "optimizers[0]" in note  # the migration of the deprecation, not the new hooks
    assert "upgrade hlbcli" in contract_note(CONTRACT + 1)
    assert [v for v, _, _ in changes_since(1)] == sorted(v for v in CHANGES for _ in CHANGES[v])


def test_tricks_list_flags_a_trick_written_for_an_older_contract(cli, monkeypatch):
    install_trick(monkeypatch, "oldie", info=TrickInfo("oldie", "written long ago", contract=2))
    install_trick(monkeypatch, "newish", info=TrickInfo("newish", "written now", contract=CONTRACT))
    code, out, err = cli("tricks", "list")
    assert code == 0, err
    assert re.search(r"^oldie \*\s", out, flags=re.M) and re.search(r"^newish\s", out, flags=re.M)
    assert f"written for an older trick contract (this hlb: contract {CONTRACT})" in out
    assert "oldie (" in out and "written for contract 2" in out and "newish (" not in out
    code, out, err = cli("tricks", "show", "oldie")
    assert code == 0 and "contract: written for contract 2" in out


def test_every_contract_change_is_in_the_changelog_with_its_migration():
    text = (ROOT / "CHANGELOG.md").read_text()
    authors = text[text.index("### For trick authors"):text.index("### For users")]
    flat = re.sub(r"\s+", " ", authors)
    for version, changes in CHANGES.items():
        for what, how in changes:
            assert f"contract {version}: {what}. Migration: {how}." in flat, (version, what)
    assert f"`hlbcli.contract.CONTRACT` (now {CONTRACT})" in flat
