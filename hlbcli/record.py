"""Run records and summaries, written atomically."""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from stat import S_ISREG
from typing import Any

from hlbcli.errors import HlbError, UsageError
from hlbcli.paths import broken_link, path_error
from hlbcli import __version__

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None


def versions() -> dict[str, str]:
    import pluggy
    import pydantic
    import torch
    import torchvision

    return {
        "hlbcli": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pydantic": pydantic.__version__,
        "pluggy": pluggy.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda or "",
    }


def source_commit() -> tuple[str, bool]:
    """``git rev-parse HEAD`` of the source hlbcli runs from and whether tracked files differ
    from it, when that source is the top of a git checkout; else ("not a git checkout", False)."""
    import hlbcli

    src = Path(hlbcli.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != src:
            return "not a git checkout", False  # an installed copy inside some other repository
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout", False


def _clean(obj: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask can only be read by setting it


def _write_atomic(path: Path, write, mode: str = "w", prefix: str | None = None) -> None:
    """Write through ``write(file)`` to a temporary file in the same folder, flush it to disk,
    then rename it over ``path``: a reader (or a killed process) never sees a half-written
    file, and a failure leaves no temporary behind. A failing disk (full, read-only, gone) is
    an :class:`HlbError` naming the path. ``prefix``: the temporary's name before its random
    part (default ``.NAME.``)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix or f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; the usual mode, on our own file
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise


def _write_error(path: Path, e: OSError) -> HlbError:
    why = e.strerror or str(e)
    hint = "free some space, or choose another --out" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "choose a folder you can write to"
    return HlbError(f"cannot write {path}: {why}", hint)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temporary file, then rename): never a half-written file."""
    text = json.dumps(_clean(data), indent=2, allow_nan=False) + "\n"  # serialise before touching disk
    _write_atomic(path, lambda f: f.write(text))


def write_text(path: Path, text: str) -> None:
    """Write text atomically, like :func:`write_json`."""
    _write_atomic(path, lambda f: f.write(text))


def write_bytes_with(path: Path, write, prefix: str | None = None) -> None:
    """Write a binary file atomically through ``write(file)`` (a figure's ``savefig``, say)."""
    _write_atomic(path, write, mode="wb", prefix=prefix)


# --- claiming an output folder ---------------------------------------------------------------

LOCK_NAME = ".hlb-lock"


class Claim:
    """An exclusive hold on an output folder: ``flock`` on ``DIR/.hlb-lock``, which holds the
    owner's pid. The kernel drops the lock when the process ends, however it ends; a clean
    release also removes the file."""

    def __init__(self, folder: Path, fd: int):
        self.folder, self.fd = folder, fd

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def release(self) -> None:
        """Remove the lock file, while still locked (a waiter then sees a new file, not ours),
        only where it is still the very file this claim locked: one removed by hand may have
        been replaced by another hlb's, which is that one's to remove. The check and the unlink
        are two calls: a file swapped in between them (a hand removal and a new claim, within
        microseconds) is removed all the same; rename-then-check would instead leave the path
        empty for a moment, letting a third in."""
        if self.fd < 0:
            return
        try:
            if _same_file(self.fd, self.path):
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim(out: str | Path, what: str = "--out") -> Claim:
    """Create ``out`` and take it for this process, before any training starts. Another hlb
    holding it is a one-line error naming its pid."""
    p = Path(out)
    try:
        if p.exists() and not p.is_dir():
            raise UsageError(f"{what} {p} is a file, not a folder", "choose a folder")
        if not p.is_dir():
            link = broken_link(p, what)
            if link:
                raise link
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise path_error(e, what, p) or UsageError(f"{what} {p} cannot be written: {e.strerror or e}", "choose a folder you can write to") from None
    while True:
        try:
            fd = _open_lock(p / LOCK_NAME, what, p)
        except OSError as e:
            raise UsageError(f"{what} {p} cannot be written: {e.strerror or e}", "choose a folder you can write to") from None
        if not _lock(fd):
            holder = _read_pid(fd)
            os.close(fd)
            who = f"another hlb (pid {holder})" if holder else "another hlb"
            raise UsageError(f"{what} {p} is in use by {who}", f"wait for it to finish, or choose another {what}")
        if _same_file(fd, p / LOCK_NAME):
            break
        os.close(fd)  # the holder removed the file as we locked it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as e:
        os.close(fd)
        raise UsageError(f"{what} {p} cannot be written: {e.strerror or e}", "choose a folder with free space you can write to") from None
    return Claim(p, fd)


def _open_lock(lock: Path, what: str, folder: Path) -> int:
    """Open (or create) the lock file without following a symbolic link: a link planted there
    would have hlb truncate its target and write a pid into it. A link, or anything but a plain
    file of one name, is refused naming it."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o666)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(lock):
            raise _planted(what, folder, lock, f"a symbolic link (to {os.readlink(lock)})") from None
        raise
    st = os.fstat(fd)
    why = "not a regular file" if not S_ISREG(st.st_mode) else f"a file with {st.st_nlink} names (hard links)" if st.st_nlink > 1 else ""
    if why:
        os.close(fd)
        raise _planted(what, folder, lock, why)
    return fd


def _planted(what: str, folder: Path, lock: Path, why: str) -> UsageError:
    return UsageError(
        f"{what} {folder}: its lock file {lock} is {why}; hlb refuses to write through it",
        "hlb makes it a plain file: remove it after checking who put it there, or choose another folder",
    )


def _lock(fd: int) -> bool:
    if fcntl is None:  # no flock (Windows): no claim, as before
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` (itself, not a link's target) is still the file open as ``fd``."""
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


#: the kinds of ``--out`` folder, each command's own: what a refusal says one holds, and the
#: command that goes on with it (None: none does)
FOLDER_KINDS = {
    "batch": ("the records of an hlb train or hlb bench batch", "hlb train or hlb bench with --resume"),
    "ablation": ("an ablation", "hlb ablate with --resume"),
    "alternation": ("the A/B records of hlb bench --against", None),
    "search": ("a search", "hlb search with --resume"),
    "profile": ("a profile (hlb profile)", None),
}


def folder_kinds(folder: Path) -> list[str]:
    """What ``folder`` holds, of :data:`FOLDER_KINDS`: a profile (``profile.json``), a search (``search.json``), an ablation (``ablation.json``, or
    anything in ``arms/``), ``hlb bench --against``'s sides (records or a summary in ``A/`` or
    ``B/``), a batch (records at the top, or a summary.json that is not an ablation's)."""
    f = Path(folder)
    if (f / "search.json").exists() or (f / "search.db").exists():
        return ["search"]  # its trials' records lie in arms/, its summary at the top
    if (f / "profile.json").exists():
        return ["profile"]
    kinds = []
    if (f / "ablation.json").exists() or ((f / "arms").is_dir() and any((f / "arms").iterdir())):
        kinds.append("ablation")
    if any(f.glob("[AB]/run-*.json")) or (f / "A" / "summary.json").exists() or (f / "B" / "summary.json").exists():
        kinds.append("alternation")
    if any(f.glob("run-*.json")) or ((f / "summary.json").exists() and "ablation" not in kinds):
        kinds.append("batch")
    return kinds


def check_out(folder: Path, kind: str, resume: bool) -> bool:
    """Refuse an ``--out`` folder that holds another command's records (another of
    :data:`FOLDER_KINDS` than ``kind``), or, without ``resume``, records of its own kind, rather
    than mix them or write over what they claim. Returns whether it holds ``kind``'s records
    (what ``--resume`` goes on with)."""
    held = folder_kinds(folder)
    other = next((k for k in held if k != kind), None)
    if other:
        what, how = FOLDER_KINDS[other]
        raise UsageError(f"--out {folder} holds {what}",
                         f"choose another --out{f', or go on with it: {how}' if how else ''}")
    if held and not resume:
        raise UsageError(f"--out {folder} already holds {FOLDER_KINDS[kind][0]}",
                         "pass --resume to keep its finished runs and train the rest, or choose a new folder"
                         if FOLDER_KINDS[kind][1] else "choose a new folder")
    return bool(held)
