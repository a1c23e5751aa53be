"""The data folder: where a dataset's upstream files are (``--data-dir``, ``$HLB_DATA_DIR`` or
the default folder), the download, and what is said when they are missing. Light: torchvision
is imported only to download."""

from __future__ import annotations

import os
from pathlib import Path

from hlbcli.errors import HlbError, UsageError
from hlbcli.paths import broken_link, expand_user, path_error
from hlbcli.signals import Interrupted

#: each dataset's upstream layout: folder, training files, test files, label key, classes
LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def default_data_dir() -> Path:
    return data_root(None)[0]


def data_root(data_dir: str | Path | None) -> tuple[Path, str]:
    """The data folder and where it came from (for messages): ``--data-dir``, else
    ``$HLB_DATA_DIR``, else a user cache folder."""
    if data_dir:
        return expand_user(data_dir, "--data-dir"), "--data-dir"
    env = os.environ.get("HLB_DATA_DIR")
    if env:
        return expand_user(env, "$HLB_DATA_DIR"), "$HLB_DATA_DIR"
    return _default_root(), "the default data folder"


def _default_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(expand_user("~", "the default data folder", "set $HLB_DATA_DIR or pass --data-dir") / ".cache")
    return Path(base) / "hlb" / "data"


def reraise_interrupt(e: BaseException) -> None:
    """A Ctrl-C that a library turned into an ordinary error (torch's zip writer and reader
    raise a RuntimeError from their cleanup, the interruption as its context) is raised again,
    never taken for a bad file."""
    ctx = e.__context__
    while ctx is not None:
        if isinstance(ctx, (KeyboardInterrupt, Interrupted)):
            raise ctx
        ctx = ctx.__context__


#: where each dataset's upstream archive is, for a download by hand
_URL = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}


def _download(name: str, root: Path) -> None:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    cls(root=str(root), train=True, download=True)


def _holds(root: Path, name: str) -> bool:
    folder_name, train_files, test_files, _, _ = LAYOUT[name]
    try:
        return all((root / folder_name / f).is_file() for f in train_files + test_files)
    except OSError:
        return False


def _elsewhere(name: str, root: Path, source: str) -> str:
    """The other data folders the user has the dataset in ($HLB_DATA_DIR, the default folder),
    as the start of a hint; empty when none does."""
    folder_name = LAYOUT[name][0]
    found = []
    env = os.environ.get("HLB_DATA_DIR")
    try:
        if env and source == "--data-dir":
            found.append(("$HLB_DATA_DIR", expand_user(env, "$HLB_DATA_DIR"), "drop --data-dir"))
        default = _default_root()
        found.append(("the default data folder", default, "drop --data-dir" if source == "--data-dir" and not env
                      else f"pass --data-dir {default}"))
    except HlbError:
        pass
    for what, where, how in found:
        if where != root and _holds(where, name):
            return f"{what} {where} holds '{folder_name}': {how}; or "
    return ""


def _missing(name: str, root: Path, source: str, why: str, hint_first: str, exit_usage: bool) -> HlbError:
    """The dataset is not in ``root``: the folder looked in, what happened, where else it is, and
    how to fetch it by hand. ``root`` named like the upstream folder is taken for it."""
    folder_name = LAYOUT[name][0]
    itself, target = "", root
    if root.name == folder_name:
        target = root.parent
        itself = f"{source} names the '{folder_name}' folder itself: its files belong there, and --data-dir {target} finds them; "
    hint = (f"{itself}{_elsewhere(name, root, source)}{hint_first}download {_URL[name]} and unpack it in {target}, "
            f"so that {target / folder_name} exists" + ("" if source == "--data-dir" else
                                                       f", or pass --data-dir DIR where DIR/{folder_name} exists"))
    cls = UsageError if exit_usage else HlbError
    return cls(f"{name} not found in {root} ({source}): {why}", hint)


def _created_by(root: Path) -> Path | None:
    """The highest folder of ``root`` (itself included) that does not exist yet: what creating
    ``root`` would make, and what to remove again when the download fails."""
    top = None
    for p in [root, *root.parents]:
        if os.path.lexists(p):
            break
        top = p
    return top


def _remove_new(top: Path | None) -> None:
    if top is None:
        return
    import shutil

    shutil.rmtree(top, ignore_errors=True)


def locate_cifar(name: str, data_dir: str | Path | None = None, download: bool = True, fetch: bool = True) -> list[Path]:
    """The dataset's batch files, downloaded first where missing and allowed (``fetch=False``
    only checks: ``hlb ablate`` before its arms start). Missing files without ``download``, a
    failed download, or a data folder that is a file, are one-line errors naming the folder
    looked in, another data folder that holds the dataset, and the archive to fetch by hand.
    ``--data-dir`` naming the upstream folder itself (``.../cifar-10-batches-py``) means the
    folder above it. No folder is left behind by a download that fails."""
    folder_name, train_files, test_files, _, _ = LAYOUT[name]
    root, source = data_root(data_dir)
    if root.name == folder_name and not _holds(root, name) and _holds(root.parent, name):
        root = root.parent  # the files are in root itself: root is the upstream folder
    folder = root / folder_name
    files = [folder / f for f in train_files + test_files]
    try:
        for p in (root, folder):
            if p.exists() and not p.is_dir():
                raise UsageError(
                    f"{source} {root} is not a folder: {p} is a file",
                    f"point {source} at a folder that holds (or may receive) '{folder_name}'",
                )
        if all(f.is_file() for f in files):
            return files
    except OSError as e:
        err = path_error(e, source, root)
        if err:
            raise err from None
        raise
    link = broken_link(root, source)
    if link:
        raise link
    odd = next((f for f in files if f.is_dir()), None)
    if odd is not None:
        raise UsageError(f"{odd} is a folder where a {name} batch file should be ({source} {root})",
                         "remove that folder and restore the file from the upstream archive (or remove the whole folder to download again)")
    missing = folder if not folder.is_dir() else next(f for f in files if not f.is_file())
    if root.name == folder_name and not folder.is_dir():  # the upstream folder itself, incomplete
        missing = next((root / f for f in train_files + test_files if not (root / f).is_file()), missing)
    if not download:
        raise _missing(name, root, source, f"{missing} is missing", "drop --no-download to fetch it; or ", True)
    if not fetch:
        return files
    created = _created_by(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_new(created)
        raise UsageError(
            f"cannot create the data folder {root} ({source}): {e.strerror or e}",
            f"pass --data-dir to a folder you can write to, or put '{folder_name}' there",
        ) from None
    try:
        _download(name, root)
    except BaseException as e:
        _remove_new(created)
        if not isinstance(e, Exception):
            raise
        reraise_interrupt(e)
        raise _missing(name, root, source, f"{missing} is missing and the download failed ({e.__class__.__name__}: {e})",
                       "", False) from None
    return files
