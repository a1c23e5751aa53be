"""The trick contract's version and what each version changed, with what a trick's author does
about it: the one source of CHANGELOG.md's "For trick authors" migrations (tests/test_docs.py
holds the two together) and of ``hlb tricks list``'s note on a trick written for an older
contract (``trick(..., contract=N)``, :attr:`hlbcli.contract.TrickInfo.contract`).

A change that would break a trick is warned for one contract version first, through pluggy's
own means (a hookspec's ``warn_on_impl_args``: a ``DeprecationWarning`` when a trick that asks
for the old argument registers), and only then made."""

from __future__ import annotations

#: the contract this hlb implements
CONTRACT = 3

#: version -> the changes it made, each (what changed, what an author does: the migration)
CHANGES: dict[int, list[tuple[str, str]]] = {
    2: [
        ("hlb_evaluate and hlb_eval_forward take `final` (False: the per-epoch evaluation; True: the final one)",
         "an implementation needs no change; code that calls tm.hook.hlb_evaluate(...) or hlb_eval_forward(...) "
         "itself (a trick's test) passes final=True, else pluggy says \"hook call must provide argument 'final'\""),
        ("the last epoch's hlb_epoch_end comes after hlb_train_end and the final evaluation, its val_acc the run's",
         "write what ends a run in hlb_run_end (the run's last hook), not in hlb_train_end"),
        ("hlb_run_end(ctx, status, metrics, phases): once per run, whatever ends it", "nothing (a new hook)"),
        ("hlb_select: a selection stage before the first step", "nothing (a new hook)"),
        ("the transform order constants name slots by kind: ORDER_GEOMETRY 0, ORDER_COLOR 15, ORDER_OCCLUSION 20, "
         "ORDER_MIXING 30 (contract 1's names still import, with a DeprecationWarning)",
         "ORDER_FLIP -> ORDER_GEOMETRY, ORDER_TRANSLATE -> ORDER_GEOMETRY + 10, ORDER_COLOR_JITTER -> ORDER_COLOR, "
         "ORDER_CUTOUT -> ORDER_OCCLUSION, ORDER_CUTMIX -> ORDER_MIXING"),
    ],
    3: [
        ("hlb_update_build(parts, cfg, ctx): a trick may own the step's update (SAM, closures)", "nothing (a new hook)"),
        ("hlb_step_actions' `optimizer` argument (the first optimizer) is deprecated: a DeprecationWarning when a "
         "trick asking for it registers; contract 4 drops it",
         "take `optimizers` and use optimizers[0]"),
        ("hlb_select: the run's generator is put back after the hook (a draw there no longer moves the run's batches)",
         "nothing"),
    ],
}

#: hook -> {argument: the warning a trick asking for it gets}: the deprecations of this contract
DEPRECATED_ARGS: dict[str, dict[str, str]] = {
    "hlb_step_actions": {"optimizer": "hlb_step_actions(optimizer=...) is deprecated since contract 3 and goes in "
                                      "contract 4: take `optimizers` and use optimizers[0]"},
}


def changes_since(version: int) -> list[tuple[int, str, str]]:
    """The changes after ``version``, oldest first: (version, what changed, migration)."""
    return [(v, what, how) for v in sorted(CHANGES) if v > version for what, how in CHANGES[v]]


def contract_note(declared: int) -> str | None:
    """One line on a trick written for contract ``declared`` (0: it does not say), or None
    when it was written for this one."""
    if declared <= 0 or declared == CONTRACT:
        return None
    if declared > CONTRACT:
        return f"written for contract {declared}, newer than this hlb's {CONTRACT}: upgrade hlbcli"
    todo = [f"{how} ({what.split(':')[0]})" for _, what, how in changes_since(declared) if not how.startswith("nothing")]
    return (f"written for contract {declared} (this hlb: {CONTRACT}); see CHANGELOG.md 'For trick authors'"
            + (": " + "; ".join(todo) if todo else ""))
