"""Datasets as uint8 tensors: CIFAR-10/100 from the upstream python layout, and a seeded
synthetic set for tests and demos."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import signal
import time
from pathlib import Path

import numpy as np
import torch

from hlbcli.contract import Dataset
from hlbcli.errors import HlbError
from hlbcli.record import write_bytes_with
from hlbcli.evaluation import normalize  # noqa: F401 (re-exported: the one copy is the trick API's)
from hlbcli.datadir import LAYOUT as _LAYOUT
from hlbcli.datadir import data_root, default_data_dir, locate_cifar  # noqa: F401 (re-exported)
from hlbcli.datadir import reraise_interrupt as _reraise_interrupt
from hlbcli.signals import held_signals

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

def _get(d: dict, key: str):
    if key in d:
        return d[key]
    if key.encode() in d:
        return d[key.encode()]
    raise KeyError(key)


_BAD_DATA_HINT = "restore the file from the upstream archive, or fix what wrote it"


def _bad(path: Path, what: str) -> HlbError:
    return HlbError(f"dataset file {path}: {what}", _BAD_DATA_HINT)


def check_images(path: Path, data) -> torch.Tensor:
    """Upstream CIFAR pixels: integers in 0..255, (N, 3072) rows in channel-first order (or
    already (N, 3, 32, 32)). Anything else is an error naming the file, not a silent cast."""
    a = np.asarray(data)
    if a.dtype.kind not in "iu":
        raise _bad(path, f"pixels are {a.dtype}, not integers 0..255 (CIFAR batches hold uint8)")
    if a.ndim == 2 and a.shape[1] == 3 * 32 * 32:
        a = a.reshape(-1, 3, 32, 32)
    elif a.ndim == 4 and a.shape[1:] == (32, 32, 3):
        raise _bad(path, f"images are {tuple(a.shape)}, channels last; CIFAR batches are (N, 3072) rows, channels first")
    elif not (a.ndim == 4 and a.shape[1:] == (3, 32, 32)):
        raise _bad(path, f"images have shape {tuple(a.shape)}, not (N, 3072)")
    if a.size and (int(a.min()) < 0 or int(a.max()) > 255):
        raise _bad(path, f"pixel values run from {int(a.min())} to {int(a.max())}, outside 0..255")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8))


def check_labels(path: Path, labels, num_classes: int) -> torch.Tensor:
    """Labels: a flat sequence of integers in 0..K-1 (a float label is an error, not truncated)."""
    y = np.asarray(labels)
    if y.size == 0:
        y = y.astype(np.int64)
    if y.ndim != 1:
        raise _bad(path, f"labels have shape {tuple(y.shape)}, not (N,)")
    if y.dtype.kind not in "iu":
        raise _bad(path, f"labels are {y.dtype}, not integers")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise _bad(path, f"labels run from {int(y.min())} to {int(y.max())}, outside 0..{num_classes - 1}")
    return torch.from_numpy(y.astype(np.int64))


#: the only globals a CIFAR python batch references: numpy's array (and scalar) reconstruction,
#: under numpy 1's and numpy 2's module names; ``_frombuffer`` for protocol 5 pickles,
#: ``_codecs.encode`` for bytes in a protocol 2 pickle written by Python 3
_PICKLE_GLOBALS = frozenset(
    [(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
       ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")]
)


class _RefusedGlobal(Exception):
    pass


class _BatchUnpickler(pickle.Unpickler):
    """A pickle may call any function it names while it loads: a CIFAR batch needs numpy's
    array reconstruction and nothing else, so nothing else is found."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        f = open(path, "rb")
    except PermissionError:
        raise HlbError(f"dataset file {path} cannot be read: permission denied (the file itself is not at fault)",
                       "make it readable (chmod a+r), or run as a user who may read it") from None
    except IsADirectoryError:
        raise HlbError(f"dataset file {path} is a folder, not a CIFAR batch file",
                       "remove that folder and restore the file from the upstream archive") from None
    try:
        with f:
            d = _BatchUnpickler(f, encoding="bytes").load()
        data = _get(d, "data")
        labels = _get(d, label_key)
        images = check_images(path, data)
        labels = check_labels(path, labels, num_classes)
    except HlbError:
        raise
    except _RefusedGlobal as e:
        raise HlbError(
            f"dataset file {path} is not a plain CIFAR batch: its pickle calls {e}, which hlb refuses to run",
            "a data folder's pickles run code when loaded: restore the file from the upstream archive, and check who wrote it",
        ) from None
    except Exception as e:
        _reraise_interrupt(e)
        raise HlbError(
            f"dataset file {path} is corrupt or not a CIFAR batch ({e.__class__.__name__}: {e})",
            "delete the folder and download again, or restore the file",
        ) from None
    if len(images) != len(labels):
        raise HlbError(f"dataset file {path} has {len(images)} images but {len(labels)} labels", "restore the file")
    if len(images) == 0:
        raise _bad(path, "holds no images")
    return images, labels


def load_cifar(name: str, data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    """CIFAR-10 or CIFAR-100 from ``<data_dir>/<upstream folder>``, checked, decoded once and
    cached as a tensor file beside it (one cache per dataset; none where the folder is
    read-only)."""
    _, train_files, test_files, label_key, k = _LAYOUT[name]
    files = locate_cifar(name, data_dir, download)
    folder = files[0].parent
    stamp = hashlib.sha1("".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files).encode()).hexdigest()[:12]
    cache = folder / f"{CACHE_PREFIX}{stamp}.pt"
    remove_leftovers(folder)
    if cache.exists():
        try:
            t = torch.load(cache, weights_only=True)
            if _cache_ok(t, k):
                check_not_flat(name, folder, t["xtr"])
                return Dataset(name, t["xtr"], t["ytr"], t["xte"], t["yte"], k, *_stats(name))
        except HlbError:
            raise
        except Exception as e:
            _reraise_interrupt(e)  # a bad cache is rebuilt below; a Ctrl-C while reading it is not
    tr = [_read_batch(folder / f, label_key, k) for f in train_files]
    te = [_read_batch(folder / f, label_key, k) for f in test_files]
    xtr, ytr = torch.cat([a for a, _ in tr]), torch.cat([b for _, b in tr])
    xte, yte = torch.cat([a for a, _ in te]), torch.cat([b for _, b in te])
    check_not_flat(name, folder, xtr)
    _write_cache(cache, {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte})
    return Dataset(name, xtr, ytr, xte, yte, k, *_stats(name))


def check_not_flat(name: str, folder: Path, images: torch.Tensor) -> None:
    """Training images that are each one constant value (all zero, say) leave nothing to learn
    and drive the loss to NaN: refused at load, naming the folder. The first 256 images decide
    for a real dataset (40 ms for all of CIFAR-10 otherwise)."""
    flat = images.flatten(1)
    for part in (flat[:256], flat):
        if not (len(part) and bool((part.amax(1) == part.amin(1)).all())):
            return
    what = "all zero" if not bool(flat.any()) else "each a single constant value"
    raise HlbError(
        f"dataset {name} in {folder}: its {len(flat)} training images are {what} (flat images, nothing to learn)",
        "restore the files from the upstream archive, or fix what wrote them",
    )


CACHE_PREFIX = ".hlb-cache-"


def _cache_ok(t: dict, k: int) -> bool:
    """A cache holds what a decode gives: uint8 images, labels in 0..K-1, both sets non-empty."""
    ok = all(isinstance(t.get(n), torch.Tensor) for n in ("xtr", "ytr", "xte", "yte"))
    return ok and t["xtr"].dtype == torch.uint8 and len(t["ytr"]) > 0 and len(t["yte"]) > 0 and all(
        int(t[n].min()) >= 0 and int(t[n].max()) < k for n in ("ytr", "yte")
    )


#: a cache temporary whose writer still runs is removed when it is this old (its pid reused)
LEFTOVER_SECONDS = 3600
_TMP_NAME = re.compile(r"\.pt\.(\d+)\.[^.]*\.tmp$")  # CACHE.pt.<writer's pid>.<random>.tmp


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    try:  # a killed writer nobody has reaped yet is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def remove_leftovers(folder: Path) -> None:
    """Remove the cache temporaries of writers that are gone (killed with SIGKILL, or by a
    power cut: about 50 MB each), and any older than :data:`LEFTOVER_SECONDS`. A temporary
    named without a pid (an older hlb's) goes by age alone."""
    try:
        temps = list(folder.glob(f"{CACHE_PREFIX}*.tmp"))
    except OSError:
        return
    now = time.time()
    for p in temps:
        m = _TMP_NAME.search(p.name)
        pid = int(m.group(1)) if m else None
        try:
            old = now - p.lstat().st_mtime > LEFTOVER_SECONDS
            if old or (pid is not None and pid != os.getpid() and not _alive(pid)):
                p.unlink()
        except OSError:
            pass


def _write_cache(cache: Path, tensors: dict) -> None:
    """Write the cache through a temporary file of its own (named with this process's pid, so
    that a later run can tell a dead writer's leftover), then remove older caches of the
    folder. A folder that cannot take it (read-only, full) only costs the decode next time:
    no error, no temporary left. Stop signals are held while it writes (torch's writer turns an
    interruption inside it into a RuntimeError, which would pass for a full disk) and obeyed
    right after, the temporary removed: the run stops as for any Ctrl-C."""
    with held_signals() as got:
        _write_cache_file(cache, tensors)
    for signum in got[:1]:
        signal.raise_signal(signum)  # to the handler in force again: Interrupted while training


def _write_cache_file(cache: Path, tensors: dict) -> None:
    try:  # the temporary is named with this process's pid (remove_leftovers reads it)
        write_bytes_with(cache, lambda f: torch.save(tensors, f), prefix=f"{cache.name}.{os.getpid()}.")
    except (HlbError, RuntimeError) as e:  # a disk that cannot take it; torch's writer says "full" as a RuntimeError
        _reraise_interrupt(e)
        return
    for old in cache.parent.glob(f"{CACHE_PREFIX}*.pt"):
        if old != cache:
            try:
                old.unlink()
            except OSError:
                pass


def _stats(name: str):
    return (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)


def synthetic(
    n_train: int = 4096,
    n_test: int = 1024,
    num_classes: int = 10,
    size: int = 32,
    noise: float = 0.25,
    seed: int = 0,
) -> Dataset:
    """A learnable, seeded dataset: each class has its own colour pair and a shape (a square,
    a bar or a ring) at a random place, with pixel noise. Same seed, same pixels."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.rand(num_classes, 2, 3, generator=g)  # (class, fg/bg, rgb)
    shapes = torch.arange(num_classes) % 3
    n = n_train + n_test
    labels = torch.randint(0, num_classes, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy = torch.randint(size // 4, size - size // 4, (n, 1, 1), generator=g)
    cx = torch.randint(size // 4, size - size // 4, (n, 1, 1), generator=g)
    r = size // 6
    dy, dx = (yy[None] - cy).abs(), (xx[None] - cx).abs()
    square = (dy <= r) & (dx <= r)
    bar = (dy <= r // 2) & (dx <= 2 * r)
    dist = ((yy[None] - cy) ** 2 + (xx[None] - cx) ** 2).float().sqrt()
    ring = (dist <= r + 1) & (dist >= r - 1)
    s = shapes[labels].view(n, 1, 1)
    mask = torch.where(s == 0, square, torch.where(s == 1, bar, ring)).unsqueeze(1).float()
    fg = palette[labels, 0].view(n, 3, 1, 1)
    bg = palette[labels, 1].view(n, 3, 1, 1)
    img = mask * fg + (1 - mask) * bg + noise * torch.randn(n, 3, size, size, generator=g)
    img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    mean = tuple((img[:n_train].float() / 255).mean(dim=(0, 2, 3)).tolist())
    std = tuple((img[:n_train].float() / 255).std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    return Dataset(
        "synthetic", img[:n_train], labels[:n_train], img[n_train:], labels[n_train:], num_classes, mean, std
    )
