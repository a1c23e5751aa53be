"""Dataset loading from the upstream python layouts, on small fake files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from hlbcli.data import default_data_dir, load_cifar, synthetic


def _batch(path, n, label_key, k, bytes_keys, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, k, size=n).tolist()
    d = {"data": data, label_key: labels}
    if bytes_keys:
        d = {key.encode(): v for key, v in d.items()}
    with open(path, "wb") as f:
        pickle.dump(d, f)
    return data, labels


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar10_layout(tmp_path, bytes_keys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    parts = [_batch(folder / f"data_batch_{i}", 6, "labels", 10, bytes_keys, i) for i in range(1, 6)]
    _batch(folder / "test_batch", 4, "labels", 10, bytes_keys, 9)
    ds = load_cifar("cifar10", tmp_path, download=False)
    assert ds.train_images.shape == (30, 3, 32, 32) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (4, 3, 32, 32) and ds.num_classes == 10
    # channel-major rows, as upstream: the first 1024 values are the red plane
    assert torch.equal(ds.train_images[0, 0].flatten(), torch.as_tensor(parts[0][0][0, :1024]))
    assert ds.train_labels.tolist()[:6] == parts[0][1]
    assert list(folder.glob(".hlb-cache-*.pt"))  # decoded once, cached
    again = load_cifar("cifar10", tmp_path, download=False)
    assert torch.equal(again.train_images, ds.train_images)


def test_cifar100_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _batch(folder / "train", 8, "fine_labels", 100, True, 1)
    _batch(folder / "test", 3, "fine_labels", 100, True, 2)
    ds = load_cifar("cifar100", tmp_path, download=False)
    assert ds.num_classes == 100 and len(ds.train_labels) == 8 and len(ds.test_labels) == 3


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HLB_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path


def test_synthetic_is_seeded_and_learnable_shaped():
    a = synthetic(64, 16, num_classes=5, seed=3)
    b = synthetic(64, 16, num_classes=5, seed=3)
    c = synthetic(64, 16, num_classes=5, seed=4)
    assert torch.equal(a.train_images, b.train_images) and not torch.equal(a.train_images, c.train_images)
    assert a.train_images.dtype == torch.uint8 and a.train_labels.max() < 5
    # class-dependent: per-class mean colours differ far more than the noise within a class
    x = a.train_images.float().mean((2, 3))
    means = torch.stack([x[a.train_labels == k].mean(0) for k in range(5) if (a.train_labels == k).any()])
    assert means.std(0).mean() > 5
