"""Datasets for fine-tuning experiments: Fashion-MNIST, CIFAR-10, ImageNet / any ImageFolder.

Read from the files as distributed (no conversion step):

* Fashion-MNIST: gzipped (or plain) IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
  from Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``), a
  folder you name, or torchvision's download layout (``ROOT/FashionMNIST/raw``).
* CIFAR-10: the python pickle batches ``data_batch_1..5``, ``test_batch``, ``batches.meta``
  (``ROOT`` or ``ROOT/cifar-10-batches-py``), as torchvision downloads them.
* ImageNet and any ``ImageFolder`` tree (``ROOT/train/<class>/*.JPEG``, ``ROOT/val/...``).

Transforms fit the model: resize to ``image_size`` (done once, at load, for the in-memory
datasets while they fit in 1 GiB resized; per item beyond), 1 -> 3 channels (or 3 -> 1), normalisation by the dataset's (or ImageNet's) mean
and std, optional flip + padded random crop. Random draws use torch's global RNG, which
:func:`lrdnb.train.fit` reseeds per epoch, so a resumed run sees the same data.

Example:
    >>> train = load_dataset("fashion-mnist", split="train", image_size=32, subset=1000)  # doctest: +SKIP
    >>> x, y = train[0]; x.shape  # doctest: +SKIP
    torch.Size([3, 32, 32])
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "CACHE_DIR",
    "STATS",
    "TensorImageDataset",
    "read_idx",
    "load_dataset",
    "make_loaders",
]

DATASETS = ("fashion-mnist", "cifar10", "imagenet", "folder")
SPLITS = ("train", "test")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path.home() / ".cache" / "lrdnb" / "datasets"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: (mean, std) per channel of the raw images in [0, 1].
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
NORMALIZE = ("dataset", "imagenet", None)
#: In-memory datasets are stored resized up to this size (uint8 bytes); beyond, items are resized when read.
_MAX_RESIZED_BYTES = 1 << 30
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}  # IDX is big-endian


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (the MNIST format; gzipped if the name ends in ``.gz``) into a tensor."""
    import numpy as np

    path = Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dt = np.dtype(_IDX_DTYPES[raw[2]])
    data = np.frombuffer(raw, dtype=dt, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says shape {dims}, file holds {data.size} values")
    return torch.from_numpy(data.astype(dt.newbyteorder("=")).reshape(dims))


class TensorImageDataset(Dataset):
    """Images held in memory as ``uint8 [N, C, H, W]``; converted per item to normalised floats.

    Args:
        images: ``uint8 [N, C, H, W]``.
        labels: ``int64 [N]``.
        mean, std: per input channel, for images scaled to [0, 1]; ``None`` = no normalisation.
        channels: channels of the returned images (1 -> 3 repeats the grey channel; 3 -> 1
            takes the ITU-R 601 luma).
        augment: random horizontal flip and a random crop after ``H // 8`` zero padding.
        classes: class names.
        resize_to: resize each item to this side when read (for sizes too big to store resized).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels: int = 3,
        augment: bool = False,
        classes: Sequence[str] = (),
        resize_to: int | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {list(images.shape)}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.images, self.labels = images, labels.long()
        self.channels, self.augment, self.classes, self.resize_to = channels, augment, list(classes), resize_to
        c = images.shape[1]
        self.mean = None if mean is None else torch.tensor(_fit_stats(mean, c, channels)).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(_fit_stats(std, c, channels)).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float().div_(255)
        if self.resize_to is not None and x.shape[-1] != self.resize_to:
            x = F.interpolate(x[None], size=(self.resize_to,) * 2, mode="bilinear", antialias=True, align_corners=False)[0]
        if x.shape[0] != self.channels:
            x = x.expand(3, -1, -1) if self.channels == 3 else (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
        if self.augment:
            x = _flip_crop(x)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.contiguous(), int(self.labels[i])


def _fit_stats(v: Sequence[float], have: int, want: int) -> list[float]:
    v = list(v)
    if len(v) == want:
        return v
    if len(v) == 1:
        return v * want
    return [sum(v) / len(v)] * want  # 3 stats, 1 channel wanted


def _flip_crop(x: torch.Tensor) -> torch.Tensor:
    if torch.rand(()) < 0.5:
        x = x.flip(-1)
    h, w = x.shape[-2:]
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad))
    i, j = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
    return xp[:, i:i + h, j:j + w]


def _resize_uint8(images: torch.Tensor, size: int | None, chunk: int = 2048) -> torch.Tensor:
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    out = []
    for part in images.split(chunk):
        y = F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(y.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def _subset_indices(n: int, subset: int | None, seed: int) -> torch.Tensor | None:
    if subset is None or subset >= n:
        return None
    if subset < 1:
        raise ValueError(f"subset must be a positive number of images, got {subset}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:subset].sort().values


def _missing(name: str, looked: Sequence[Path], how: str) -> FileNotFoundError:
    where = "\n  ".join(str(p) for p in looked) or "(no folder given)"
    return FileNotFoundError(f"{name} not found. Looked in:\n  {where}\nTo get it: {how}")


def _find_fashion_mnist(root: Path | None, split: str) -> Path:
    stem = "train" if split == "train" else "t10k"
    if root is not None:
        cands = [root, root / "FashionMNIST" / "raw", root / "fashion-mnist"]
    else:
        cands = [FASHION_MNIST_DIR, CACHE_DIR / "FashionMNIST" / "raw"]
    for d in cands:
        for suffix in (".gz", ""):
            if (d / f"{stem}-images-idx3-ubyte{suffix}").exists() and (d / f"{stem}-labels-idx1-ubyte{suffix}").exists():
                return d / f"{stem}-images-idx3-ubyte{suffix}"
    raise _missing(
        "Fashion-MNIST", cands,
        "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, installs /usr/share/datasets/fashion-mnist), "
        "or load_dataset('fashion-mnist', download=True) (torchvision download into root or "
        f"{CACHE_DIR}), or pass root= a folder holding {stem}-images-idx3-ubyte.gz and {stem}-labels-idx1-ubyte.gz",
    )


def _load_fashion_mnist(root: Path | None, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    try:
        img_path = _find_fashion_mnist(root, split)
    except FileNotFoundError:
        if not download:
            raise
        import torchvision

        torchvision.datasets.FashionMNIST(str(root or CACHE_DIR), train=split == "train", download=True)
        img_path = _find_fashion_mnist(root or CACHE_DIR, split)
    lab_path = img_path.with_name(img_path.name.replace("images-idx3", "labels-idx1"))
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{img_path}: expected images [N, H, W] and labels [N], got {list(images.shape)}, {list(labels.shape)}")
    return images.unsqueeze(1), labels.long(), list(FASHION_CLASSES)


def _find_cifar10(root: Path | None) -> Path:
    base = root if root is not None else CACHE_DIR
    cands = [base, base / "cifar-10-batches-py"]
    for d in cands:
        if (d / "test_batch").exists() and (d / "data_batch_1").exists():
            return d
    raise _missing(
        "CIFAR-10 (python version)", cands,
        "load_dataset('cifar10', root=..., download=True) (torchvision download), or unpack "
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and pass root= the cifar-10-batches-py folder",
    )


def _load_cifar10(root: Path | None, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    try:
        d = _find_cifar10(root)
    except FileNotFoundError:
        if not download:
            raise
        import torchvision

        torchvision.datasets.CIFAR10(str(root or CACHE_DIR), train=split == "train", download=True)
        d = _find_cifar10(root or CACHE_DIR)
    files = [d / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [d / "test_batch"]
    xs, ys = [], []
    for f in files:
        if not f.exists():
            raise _missing(f"CIFAR-10 batch {f.name}", [d], "re-download or unpack the complete archive")
        with open(f, "rb") as fh:  # the official format is a pickle; only open files you trust
            batch = pickle.load(fh, encoding="bytes")
        xs.append(torch.as_tensor(batch[b"data"], dtype=torch.uint8).reshape(-1, 3, 32, 32))
        ys.append(torch.as_tensor(batch.get(b"labels", batch.get(b"fine_labels")), dtype=torch.long))
    classes: list[str] = []
    if (d / "batches.meta").exists():
        with open(d / "batches.meta", "rb") as fh:
            classes = [c.decode() for c in pickle.load(fh, encoding="bytes")[b"label_names"]]
    return torch.cat(xs), torch.cat(ys), classes


def _image_folder(name: str, root: Path | None, split: str, image_size: int | None, channels: int, mean, std, augment: bool) -> Dataset:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    if root is None:
        raise _missing(name, [], f"pass root= a folder laid out as ROOT/{'train' if split == 'train' else 'val'}/<class>/<image>")
    sub = ("train",) if split == "train" else ("val", "test")
    cands = [root / s for s in sub] + ([root] if name == "folder" else [])
    folder = next((c for c in cands if c.is_dir() and any(p.is_dir() for p in c.iterdir())), None)
    if folder is None:
        raise _missing(name, cands, "pass root= a folder laid out as ROOT/<split>/<class>/<image> (torchvision ImageFolder)")
    size = image_size or 224
    if augment:
        tf = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    else:
        tf = [T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size)] if name == "imagenet" else [T.Resize((size, size))]
    if channels == 1:
        tf.append(T.Grayscale(1))
    tf.append(T.ToTensor())
    if mean is not None:
        tf.append(T.Normalize(_fit_stats(mean, 3, channels), _fit_stats(std, 3, channels)))
    return ImageFolder(str(folder), transform=T.Compose(tf))


def load_dataset(
    name: str = "fashion-mnist",
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    channels: int = 3,
    subset: int | None = None,
    seed: int = 0,
    download: bool = False,
    normalize: str | None = "dataset",
    augment: bool = False,
) -> Dataset:
    """Load a dataset split with transforms that fit a model.

    Args:
        name: ``"fashion-mnist"``, ``"cifar10"``, ``"imagenet"`` or ``"folder"`` (any ImageFolder).
        root: where the files are; ``None`` = Debian's Fashion-MNIST path, else ``~/.cache/lrdnb/datasets``.
        split: ``"train"`` or ``"test"`` (``val`` folder for ImageNet).
        image_size: square side the images are resized to; ``None`` = native (224 for folders).
        channels: 3 (grey images repeated) or 1.
        subset: keep this many images, a random choice fixed by ``seed`` (same set every call).
        seed: seed of the subset.
        download: let torchvision download Fashion-MNIST / CIFAR-10 when not found.
        normalize: ``"dataset"`` (its own mean/std), ``"imagenet"`` (for pretrained weights) or ``None``.
        augment: random flip + padded crop (random resized crop for folders); for training.

    Returns:
        A map-style dataset of ``(float [channels, S, S], label)`` with a ``classes`` attribute.

    Raises:
        FileNotFoundError: the files are missing; the message says where it looked and how to get them.
        ValueError: an unknown name, split or normalisation.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {list(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    if normalize not in NORMALIZE:
        raise ValueError(f"unknown normalize {normalize!r}; valid: {list(NORMALIZE)}")
    root = Path(root).expanduser() if root is not None else None
    stats_key = "imagenet" if normalize == "imagenet" or name in ("imagenet", "folder") else name
    mean, std = STATS[stats_key] if normalize else (None, None)
    if name in ("imagenet", "folder"):
        ds = _image_folder(name, root, split, image_size, channels, mean, std, augment)
        idx = _subset_indices(len(ds), subset, seed)
        if idx is None:
            return ds
        out = Subset(ds, idx.tolist())
        out.classes = ds.classes  # type: ignore[attr-defined]
        return out
    loader = _load_fashion_mnist if name == "fashion-mnist" else _load_cifar10
    images, labels, classes = loader(root, split, download)
    idx = _subset_indices(len(labels), subset, seed)
    if idx is not None:
        images, labels = images[idx], labels[idx]
    lazy = image_size is not None and images.shape[0] * images.shape[1] * image_size**2 > _MAX_RESIZED_BYTES
    if not lazy:
        images = _resize_uint8(images, image_size)
    return TensorImageDataset(images, labels, mean, std, channels=channels, augment=augment, classes=classes,
                              resize_to=image_size if lazy else None)


def make_loaders(
    name: str = "fashion-mnist",
    root: str | Path | None = None,
    image_size: int | None = None,
    channels: int = 3,
    batch_size: int = 64,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
    download: bool = False,
    normalize: str | None = "dataset",
    augment: bool = False,
    test_batch_size: int | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled) and test loaders of :func:`load_dataset`.

    The train loader shuffles with torch's global RNG (no private generator), so
    :func:`lrdnb.train.fit`, which reseeds it from ``(seed, epoch)``, gets the same order per
    epoch in a resumed run as in an uninterrupted one.
    """
    common: dict[str, Any] = dict(name=name, root=root, image_size=image_size, channels=channels, seed=seed, download=download, normalize=normalize)
    train = load_dataset(split="train", subset=train_subset, augment=augment, **common)
    test = load_dataset(split="test", subset=test_subset, **common)
    kw: dict[str, Any] = dict(num_workers=num_workers, persistent_workers=num_workers > 0)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=False, **kw),
        DataLoader(test, batch_size=test_batch_size or batch_size, shuffle=False, **kw),
    )
