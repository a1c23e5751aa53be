"""Paths the user names (``--out``, ``--data-dir``, ``--config``...): the errors a path gets
for its shape rather than its contents, as one line naming the option. Light: no torch."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from hlbcli.errors import UsageError

#: what most filesystems take for one name, in bytes, where ``pathconf`` cannot tell
NAME_MAX = 255


def _name_max(path: Path) -> int:
    for d in [path, *path.parents]:
        try:
            return int(os.pathconf(d, "PC_NAME_MAX"))
        except (OSError, ValueError):
            continue
    return NAME_MAX


def too_long_name(path: str | Path) -> str:
    """The first name in ``path`` longer than its filesystem takes, shortened for a message;
    empty when none is."""
    limit = _name_max(Path(path))
    for name in str(path).split(os.sep):
        size = len(os.fsencode(name))
        if size > limit:
            return f"'{name[:16]}...' ({size} bytes; the filesystem takes {limit})"
    return ""


def path_error(e: OSError, what: str, path: str | Path) -> UsageError | None:
    """``e`` as a one-line error naming the option (``what``) and the path when the path's
    shape caused it: a name longer than the filesystem takes, or a symbolic link loop. None for
    any other error."""
    if e.errno == errno.ENAMETOOLONG:
        name = too_long_name(path)
        why = f"a name in it is too long: {name}" if name else "a name in it is too long for the filesystem"
        return UsageError(f"{what} {path}: {why}", "shorten the file and folder names in it")
    if e.errno == errno.ELOOP:
        return UsageError(f"{what} {path}: a symbolic link in it is a link loop", "fix or remove the link, or choose another path")
    return None


def broken_link(path: str | Path, what: str, kind: str = "folder") -> UsageError | None:
    """``path`` or a folder above it that is a symbolic link to nothing: a link to a missing
    ``kind`` or a link loop, as a one-line error. None when there is none."""
    p = Path(path)
    for q in [p, *p.parents]:
        try:
            if not q.is_symlink():
                continue
            os.stat(q)
        except OSError as e:
            try:
                target = os.readlink(q)
            except OSError:
                target = "?"
            if e.errno == errno.ELOOP:
                return UsageError(f"{what} {path}: {q} is a symbolic link loop (-> {target})", "fix or remove the link, or choose another path")
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                missing = kind if q == p else "folder"
                return UsageError(
                    f"{what} {path}: {q} is a symbolic link to a missing {missing} ({target})",
                    "create its target first, remove the link, or choose another path",
                )
    return None


def expand_user(path: str | Path, what: str, hint: str = "write the folder's full path") -> Path:
    """``~`` and ``~user`` expanded; an unknown user (or no home folder) is a one-line error
    naming the option and the path."""
    p = Path(path)
    if not str(p).startswith("~"):
        return p
    try:
        return p.expanduser()
    except RuntimeError:  # pathlib: "Could not determine home directory."
        head = str(p).split(os.sep, 1)[0]
        who = f"no user '{head[1:]}'" if head != "~" else "no home folder ($HOME is not set)"
        raise UsageError(f"{what} {path}: cannot expand {head}: {who}", hint) from None


def argument_path_error(e: OSError, args: list[str]) -> UsageError | None:
    """:func:`path_error` for an ``OSError`` a command got for a path's shape (a name longer
    than the filesystem takes, a link loop), naming the option of the command line ``args``
    that gave the path; None for any other error."""
    if e.errno not in (errno.ENAMETOOLONG, errno.ELOOP) or not e.filename:
        return None
    name = os.fsdecode(e.filename)
    for i, a in enumerate(args):
        opt, eq, val = a.partition("=") if a.startswith("--") else ("", "", a)
        norm = str(Path(val)) if val else ""
        if norm and (name == norm or name.startswith(norm.rstrip("/") + "/")):
            what = opt if eq else args[i - 1] if i and args[i - 1].startswith("-") else f"hlb {args[0]}"
            return path_error(e, what, val)
    return path_error(e, "path", name)
