"""Dataset loaders on tiny files written in the real formats: IDX (gz), CIFAR pickle batches, PNG folders."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lrdnb.data import FASHION_MNIST_DIR, STATS, TensorImageDataset, load_dataset, make_loaders, read_idx


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    codes = {np.dtype("uint8"): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    (gzip.open if gz else open)(path, "wb").write(header + array.tobytes())


def fake_fashion(root: Path, n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", imgs)
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", labels)
        out[stem] = imgs
    return out


def test_read_idx_formats(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "a", a, gz=False)
    b = np.array([[1, -2], [70000, 3]], dtype=">i4")
    write_idx(tmp_path / "b.gz", b)
    assert torch.equal(read_idx(tmp_path / "a.gz"), torch.from_numpy(a))
    assert torch.equal(read_idx(tmp_path / "a"), torch.from_numpy(a))
    assert read_idx(tmp_path / "b.gz").tolist() == [[1, -2], [70000, 3]]
    (tmp_path / "bad").write_bytes(b"\x1f\x00\x08\x01abcd")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_folder_pixels_and_labels(tmp_path):
    raw = fake_fashion(tmp_path)
    ds = load_dataset("fashion-mnist", root=tmp_path, split="train", channels=3)
    assert len(ds) == 20 and ds.classes[9] == "Ankle boot"
    x, y = ds[3]
    assert x.shape == (3, 28, 28) and y == 3
    mean, std = STATS["fashion-mnist"][0][0], STATS["fashion-mnist"][1][0]
    want = (torch.from_numpy(raw["train"][3]).float() / 255 - mean) / std
    assert torch.allclose(x[0], want) and torch.equal(x[0], x[2])  # grey repeated to 3 channels
    test = load_dataset("fashion-mnist", root=tmp_path, split="test", channels=1, image_size=32, normalize=None)
    x, _ = test[0]
    assert len(test) == 10 and x.shape == (1, 32, 32) and 0 <= x.min() and x.max() <= 1


def test_torchvision_layout_is_found(tmp_path):
    raw_dir = tmp_path / "FashionMNIST" / "raw"
    raw_dir.mkdir(parents=True)
    fake_fashion(raw_dir)
    assert len(load_dataset("fashion-mnist", root=tmp_path, split="test")) == 10


def test_subset_is_reproducible(tmp_path):
    fake_fashion(tmp_path, n_train=50)
    a = load_dataset("fashion-mnist", root=tmp_path, subset=10, seed=1)
    b = load_dataset("fashion-mnist", root=tmp_path, subset=10, seed=1)
    c = load_dataset("fashion-mnist", root=tmp_path, subset=10, seed=2)
    assert len(a) == 10 and torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    with pytest.raises(ValueError, match="subset"):
        load_dataset("fashion-mnist", root=tmp_path, subset=0)


def test_missing_dataset_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("fashion-mnist", root=tmp_path / "nowhere")
    assert "nowhere" in str(e.value) and "apt-get install dataset-fashion-mnist" in str(e.value) and "download=True" in str(e.value)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="ImageFolder"):
        load_dataset("folder", root=tmp_path)
    with pytest.raises(ValueError, match="cifar10"):
        load_dataset("mnist-3d")
    with pytest.raises(ValueError, match="train"):
        load_dataset("cifar10", split="val")


def fake_cifar(root: Path, per_batch: int = 4) -> np.ndarray:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        first = data if first is None else first
        batch = {b"batch_label": name.encode(), b"labels": [i % 10 for i in range(per_batch)],
                 b"data": data, b"filenames": [b"x.png"] * per_batch}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog",
                                      b"horse", b"ship", b"truck"], b"num_vis": 3072}, f)
    return first


def test_cifar10_pickle_batches(tmp_path):
    first = fake_cifar(tmp_path)
    train = load_dataset("cifar10", root=tmp_path, split="train", normalize=None)
    test = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", split="test", image_size=16)
    assert len(train) == 20 and len(test) == 4 and train.classes[0] == "airplane"
    x, y = train[1]
    # row layout: 1024 red, 1024 green, 1024 blue, each row-major 32x32
    assert torch.allclose(x, torch.from_numpy(first[1]).float().reshape(3, 32, 32) / 255) and y == 1
    assert test[0][0].shape == (3, 16, 16)
    grey = load_dataset("cifar10", root=tmp_path, split="test", channels=1)
    assert grey[0][0].shape == (1, 32, 32)


def test_image_folder_pngs(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    ds = load_dataset("folder", root=tmp_path, split="test", image_size=8)
    assert len(ds) == 6 and ds.classes == ["cat", "dog"]
    x, y = ds[4]
    assert x.shape == (3, 8, 8) and y == 1
    sub = load_dataset("imagenet", root=tmp_path, split="train", image_size=8, subset=4, seed=0, channels=1)
    assert len(sub) == 4 and sub[0][0].shape == (1, 8, 8) and sub.classes == ["cat", "dog"]


def test_make_loaders_and_augment_determinism(tmp_path):
    fake_fashion(tmp_path)
    tr, te = make_loaders("fashion-mnist", root=tmp_path, image_size=16, batch_size=8, augment=True)
    x, y = next(iter(tr))
    assert x.shape == (8, 3, 16, 16) and len(te.dataset) == 10
    ds = tr.dataset
    assert isinstance(ds, TensorImageDataset)
    torch.manual_seed(5)
    a = ds[0][0]
    torch.manual_seed(5)
    assert torch.equal(a, ds[0][0])


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="Debian Fashion-MNIST not installed")
def test_real_fashion_mnist_debian_path():
    ds = load_dataset("fashion-mnist", split="test", image_size=32, subset=100)
    assert len(ds) == 100 and ds[0][0].shape == (3, 32, 32)
    assert len(ds.labels.unique()) == 10


def test_large_sizes_resize_per_item(tmp_path, monkeypatch):
    import lrdnb.data as D

    raw = fake_fashion(tmp_path)
    eager = load_dataset("fashion-mnist", root=tmp_path, split="test", image_size=40)
    monkeypatch.setattr(D, "_MAX_RESIZED_BYTES", 100)
    lazy = load_dataset("fashion-mnist", root=tmp_path, split="test", image_size=40)
    assert lazy.images.shape[-1] == 28 and eager.images.shape[-1] == 40
    assert lazy[2][0].shape == (3, 40, 40)
    assert (lazy[2][0] - eager[2][0]).abs().max() < 0.02  # eager rounds to uint8 after resizing
