"""Datasets as uint8 tensors: CIFAR-10/100 from the upstream python layout, and a seeded
synthetic set for tests and demos."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import torch

from hlbcli.contract import Dataset
from hlbcli.errors import HlbError, UsageError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def default_data_dir() -> Path:
    env = os.environ.get("HLB_DATA_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hlb" / "data"


def _get(d: dict, key: str):
    if key in d:
        return d[key]
    if key.encode() in d:
        return d[key.encode()]
    raise KeyError(key)


def _read_batch(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = _get(d, "data")
        labels = _get(d, label_key)
        images = torch.as_tensor(data, dtype=torch.uint8).reshape(-1, 3, 32, 32)
        labels = torch.as_tensor(list(labels), dtype=torch.long)
    except HlbError:
        raise
    except Exception as e:
        raise HlbError(
            f"dataset file {path} is corrupt or not a CIFAR batch ({e.__class__.__name__}: {e})",
            "delete the folder and download again, or restore the file",
        ) from None
    if len(images) != len(labels):
        raise HlbError(f"dataset file {path} has {len(images)} images but {len(labels)} labels", "restore the file")
    return images, labels


def _download(name: str, root: Path) -> None:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        cls(root=str(root), train=True, download=True)
    except Exception as e:
        raise HlbError(
            f"could not download {name} into {root}: {e.__class__.__name__}: {e}",
            f"put the upstream '{_LAYOUT[name][0]}' folder there and pass --data-dir {root}",
        ) from None


def load_cifar(name: str, data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    """CIFAR-10 or CIFAR-100 from ``<data_dir>/<upstream folder>``, decoded once and cached
    as a tensor file beside it."""
    folder_name, train_files, test_files, label_key, k = _LAYOUT[name]
    root = Path(data_dir) if data_dir else default_data_dir()
    folder = root / folder_name
    files = [folder / f for f in train_files + test_files]
    if not all(f.exists() for f in files):
        if not download:
            missing = folder if not folder.is_dir() else next(f for f in files if not f.exists())
            raise UsageError(
                f"{name} not found: {missing} is missing",
                f"drop --no-download to fetch it into {root}, or pass --data-dir to a folder holding '{folder_name}'",
            )
        root.mkdir(parents=True, exist_ok=True)
        _download(name, root)
    stamp = hashlib.sha1("".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files).encode()).hexdigest()[:12]
    cache = folder / f".hlb-cache-{stamp}.pt"
    if cache.exists():
        try:
            t = torch.load(cache, weights_only=True)
            return Dataset(name, t["xtr"], t["ytr"], t["xte"], t["yte"], k, *_stats(name))
        except Exception:
            pass  # a bad cache is rebuilt below
    tr = [_read_batch(folder / f, label_key) for f in train_files]
    te = [_read_batch(folder / f, label_key) for f in test_files]
    xtr, ytr = torch.cat([a for a, _ in tr]), torch.cat([b for _, b in tr])
    xte, yte = torch.cat([a for a, _ in te]), torch.cat([b for _, b in te])
    try:
        tmp = cache.with_suffix(".tmp")
        torch.save({"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte}, tmp)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only data folder only costs the decode next time
    return Dataset(name, xtr, ytr, xte, yte, k, *_stats(name))


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


def normalize(images: torch.Tensor, mean, std, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float, normalised per channel, in ``dtype``."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return ((images.float() / 255 - m) / s).to(dtype)
