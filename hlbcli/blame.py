"""A trick's bug is named as the trick's: what its hooks raise or return, and what its code in
the training step raises, becomes one :class:`~hlbcli.errors.TrickBug` line that names the
trick, where it comes from, the hook and what went wrong.

Every hook implementation of a trick is wrapped once, when the trick registers
(:func:`guard_impls`): the wrapper runs the implementation, turns an exception (``SystemExit``
included) into a ``TrickBug`` and checks the result against what the hook's spec asks for.
Hooks run at build time and at epoch boundaries, never inside a step, so the wrapper costs
nothing per step. Code a trick placed in the step (transforms, step actions) is found from the
traceback (:func:`culprit`) when a run fails.
"""

from __future__ import annotations

import inspect
import math
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from hlbcli.errors import HlbError, TrickBug
from hlbcli.signals import raised_by_code
from hlbcli import contract

__all__ = ["guard_impls", "guarded", "culprit", "memory_error", "check_result", "what_it_is"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _got(value: Any) -> str:
    return f"{_short(value)} ({type(value).__name__})"


def what_it_is(value: Any) -> str:
    """What an entry point loaded, for a line saying it is not what was due: ``the module
    pkg.mod``, ``the class pkg.Thing``, ``3 (int)``."""
    if isinstance(value, ModuleType):
        return f"the module {value.__name__}"
    if isinstance(value, type):
        return f"the class {value.__module__}.{value.__qualname__}"
    if callable(value):
        return f"the {type(value).__name__} {getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
    return _got(value)


def _items(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_evaluate(r: Any) -> str | None:
    if not isinstance(r, dict):
        return f"returned {_got(r)}, not a dict with 'accuracy' and 'loss'"
    acc = r.get("accuracy")
    if isinstance(acc, bool) or not isinstance(acc, (int, float)):
        return f"returned accuracy {_got(acc)}, not a number"
    if not (math.isfinite(acc) and 0.0 <= acc <= 1.0):
        return f"returned accuracy {acc!r}, outside [0, 1]"
    loss = r.get("loss")
    if loss is not None and (isinstance(loss, bool) or not isinstance(loss, (int, float))):
        return f"returned loss {_got(loss)}, not a number"
    return None


def _expect(kinds: Callable[[], tuple], what: str, many: bool = False) -> Callable[[Any], str | None]:
    """A check that the result (or, with ``many``, each item of a list result) is one of
    ``kinds()`` (a thunk: the types are imported when first checked, not at import)."""

    def check(r: Any) -> str | None:
        for item in (_items(r) if many else [r]):
            if not isinstance(item, kinds()):
                return f"returned {_got(item)} where {what} is due"
        return None

    return check


def _contract():
    return contract


def _torch():
    import torch

    return torch


def _check_config_model(r: Any) -> str | None:
    from pydantic import BaseModel

    ok = isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], str) and isinstance(r[1], type) and issubclass(r[1], BaseModel)
    return None if ok else f"returned {_got(r)} where (section name, Settings subclass) or None is due"


def _check_callable(r: Any) -> str | None:
    return None if callable(r) else f"returned {_got(r)} where a function is due"


def _check_groups(r: Any) -> str | None:
    if not isinstance(r, list) or not all(isinstance(g, dict) and "params" in g for g in r):
        return f"returned {_got(r)} where a list of parameter-group dicts (each with 'params') is due"
    return None


#: what each hook's result must be (None, "no result", is always allowed where pluggy allows it)
RESULT_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "hlb_trick_info": _expect(lambda: (_contract().TrickInfo,), "a TrickInfo"),
    "hlb_config_model": _check_config_model,
    "hlb_dataset_build": _expect(lambda: (_contract().Dataset,), "a Dataset"),
    "hlb_batch_transforms": _expect(lambda: (_contract().Transform,), "a Transform or a list of them", many=True),
    "hlb_model_build": _expect(lambda: (_torch().nn.Module,), "a torch.nn.Module"),
    "hlb_loss_build": _check_callable,
    "hlb_param_groups": _check_groups,
    "hlb_optimizer_build": _expect(lambda: (_torch().optim.Optimizer,), "an optimizer or a list of them", many=True),
    "hlb_lr_schedule": _expect(lambda: (_torch().Tensor,), "a tensor of multipliers"),
    "hlb_step_actions": _expect(lambda: (_contract().StepAction,), "a StepAction or a list of them", many=True),
    "hlb_update_build": _check_callable,
    "hlb_eval_forward": _check_callable,
    "hlb_evaluate": _check_evaluate,
}


def check_result(hook: str, result: Any) -> str | None:
    """What is wrong with ``result`` as ``hook``'s, or None."""
    check = RESULT_CHECKS.get(hook)
    return None if result is None or check is None else check(result)


def _bug(trick: str, origin: str, hook: str, what: str) -> TrickBug:
    return TrickBug(f"trick '{trick}' ({origin}) {what} in {hook}", trick)


def raised(trick: str, origin: str, hook: str, e: BaseException) -> TrickBug:
    """The ``TrickBug`` for an exception a trick's code raised."""
    if isinstance(e, SystemExit):
        what = f"called sys.exit({e.code!r})"
    else:
        text = " ".join(str(e).split())
        what = f"raised {e.__class__.__name__}" + (f": {text[:300]}" if text else "")
    return _bug(trick, origin, hook, what)


def _passes(e: BaseException) -> bool:
    """Exceptions a guard lets through unchanged: hlb's own errors (a TrickError for a bad
    user value, a bug already named) and what is not an error (Ctrl-C, a generator closing);
    a ``KeyboardInterrupt`` no Ctrl-C sent is the trick's own."""
    if isinstance(e, HlbError) or memory_error(e) is not None:
        return True
    return not isinstance(e, (Exception, SystemExit)) and not raised_by_code(e)


def guarded(fn: Callable, trick: str, origin: str, hook: str) -> Callable:
    """``fn`` (a plain hook implementation of ``trick``) with its errors named and its result
    checked."""

    def call(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:
            if _passes(e):
                raise
            raise raised(trick, origin, hook, e) from e
        return _checked(result, trick, origin, hook)

    return call


def _checked(result: Any, trick: str, origin: str, hook: str) -> Any:
    wrong = check_result(hook, result)
    if wrong:
        raise _bug(trick, origin, hook, wrong)
    return result


def _guard_wrapper(fn: Callable, trick: str, origin: str, hook: str, files: tuple[str, ...]) -> Callable:
    """A ``wrapper=True`` implementation (a generator): what it returns is checked; what it
    raises is its own only when raised from its files (an error of the implementations it
    wraps passes through it unchanged)."""

    def guarded(*args, **kwargs):
        try:
            result = yield from fn(*args, **kwargs)
        except BaseException as e:
            if _passes(e) or not _raised_in(e, files):
                raise
            raise raised(trick, origin, hook, e) from e
        return _checked(result, trick, origin, hook)

    return guarded


def trick_files(plugin: object) -> tuple[str, ...]:
    """The source files (or, for a package, its folder) of a trick's plugin object."""
    module = plugin if isinstance(plugin, ModuleType) else sys.modules.get(type(plugin).__module__)
    if module is None:
        return ()
    paths = list(getattr(module, "__path__", []) or [])
    file = getattr(module, "__file__", None)
    if not paths and file:
        paths = [file]
    return tuple(str(Path(p).resolve()) for p in paths)


def _in_files(filename: str, files: tuple[str, ...]) -> bool:
    try:
        f = str(Path(filename).resolve())
    except (OSError, RuntimeError):
        return False
    return any(f == p or f.startswith(p.rstrip("/") + "/") for p in files)


def _raised_in(e: BaseException, files: tuple[str, ...]) -> bool:
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and _in_files(frames[-1].filename, files)


def guard_impls(pm, plugin: object, trick: str, origin: str) -> None:
    """Wrap every hook implementation of the registered ``plugin`` (see the module doc)."""
    files = trick_files(plugin)
    for caller in pm.get_hookcallers(plugin) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin or impl.hookwrapper:
                continue
            fn = impl.function
            if impl.wrapper or inspect.isgeneratorfunction(fn):
                wrapped = _guard_wrapper(fn, trick, origin, caller.name, files)
            else:
                wrapped = guarded(fn, trick, origin, caller.name)
            object.__setattr__(impl, "function", wrapped)


def culprit(e: BaseException, tricks: dict[str, tuple[str, ...]]) -> str | None:
    """The trick (name -> its files) whose code is the innermost frame of ``e``'s traceback
    that belongs to any trick, or None."""
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        for name, files in tricks.items():
            if files and _in_files(frame.filename, files):
                return name
    return None


def raised_in_torch(e: BaseException) -> bool:
    """Whether the innermost frame of ``e`` is torch's own code (an op that overflowed), not a
    trick's or hlb's Python."""
    import torch

    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and _in_files(frames[-1].filename, tuple(str(Path(p).resolve()) for p in torch.__path__))


#: the messages of the allocators' out-of-memory errors (CUDA's, the CPU's, MPS's)
_OOM = ("out of memory", "can't allocate memory", "not enough memory", "cannot allocate memory")


def memory_error(e: BaseException) -> str | None:
    """The allocator's words when ``e`` is an out-of-memory error, else None."""
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None)
    if isinstance(e, MemoryError) or (oom_type is not None and isinstance(e, oom_type)):
        return " ".join(str(e).split())[:200] or "out of memory"
    if isinstance(e, RuntimeError) and any(s in str(e).lower() for s in _OOM):
        return " ".join(str(e).split())[:200]
    return None


def raised_natively(e: BaseException) -> bool:
    """Whether ``e`` came out of a native op (torch's C++ kernels: no Python frame of its own,
    so the innermost frame is a call, not a ``raise`` statement)."""
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and not (frames[-1].line or "").lstrip().startswith("raise")
