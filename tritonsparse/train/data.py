"""Datasets for the trainer, held in memory as tensors.

* ``"digits"``: scikit-learn's 8x8 digits (1797 images, 10 classes), embedded in
  scikit-learn, no download. Fixed stratified 80/20 split, standardised.
* ``"cifar10"`` / ``"cifar100"``: read from ``data_dir`` in the standard python-pickle
  format (``cifar-10-batches-py/{data_batch_1..5,test_batch}`` or
  ``cifar-100-python/{train,test}``; ``data_dir`` may also be that folder itself).
  Training batches get the usual random crop (padding 4) and horizontal flip.
* ``"synthetic"``: Gaussian class prototypes plus noise, any input shape; for tests
  and benchmarks.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "cifar10", "cifar100", "synthetic")
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class Dataset:
    """A dataset in memory: ``x_*`` (N, *input_shape) float32 or uint8 (then scaled by
    ``mean``/``std`` per channel when batched), ``y_*`` (N,) int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: bool = False
    mean: tuple | None = None
    std: tuple | None = None

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    def batch(self, split: str, idx: torch.Tensor, device, generator: torch.Generator | None = None):
        """The examples ``idx`` of ``split`` ("train" or "test") on ``device``, normalised
        (and augmented, for training batches of an augmented set, using ``generator``)."""
        x = (self.x_train if split == "train" else self.x_test)[idx]
        y = (self.y_train if split == "train" else self.y_test)[idx]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
            if split == "train" and self.augment:
                x = _crop_flip(x, generator)
            mean = torch.tensor(self.mean).view(1, -1, 1, 1)
            std = torch.tensor(self.std).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _crop_flip(x: torch.Tensor, generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, per image."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
    rows = (dy + torch.arange(h)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    cols = dx + torch.arange(w)
    cols = torch.where(flip, cols.flip(1), cols).view(n, 1, 1, w).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def load_digits() -> Dataset:
    """scikit-learn's digits: (1, 8, 8) inputs, fixed stratified 80/20 split, standardised."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    x = d.data.astype(np.float32) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.2, random_state=0, stratify=d.target)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-3
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    as_img = lambda a: torch.from_numpy(np.ascontiguousarray(a)).view(-1, 1, 8, 8)  # noqa: E731
    return Dataset("digits", as_img(x_tr), torch.from_numpy(y_tr).long(), as_img(x_te), torch.from_numpy(y_te).long(), 10)


def _unpickle(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def load_cifar(name: str, data_dir) -> Dataset:
    """CIFAR-10/100 from ``data_dir`` (python-pickle format); raises FileNotFoundError
    naming the expected files when they are missing."""
    if data_dir is None:
        raise ValueError(f"dataset={name!r} needs --data-dir pointing at the extracted python version of {name}")
    root = Path(data_dir).expanduser()
    sub, files, label_key = (("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels")
                             if name == "cifar10" else ("cifar-100-python", ["train", "test"], b"fine_labels"))
    folder = root / sub if (root / sub).is_dir() else root
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"data_dir={str(data_dir)!r}: {name} needs the python-pickle files {', '.join(files)} in {folder} "
            f"(or in {root / sub}); missing: {', '.join(missing)}. Download and extract the 'python version' "
            f"from https://www.cs.toronto.edu/~kriz/cifar.html")

    def read(parts):
        xs, ys = [], []
        for p in parts:
            d = _unpickle(folder / p)
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    x_tr, y_tr = read(files[:-1])
    x_te, y_te = read(files[-1:])
    return Dataset(name, x_tr, y_tr, x_te, y_te, 10 if name == "cifar10" else 100, augment=True,
                   mean=_CIFAR_MEAN, std=_CIFAR_STD)


def make_synthetic(input_shape=(1, 8, 8), num_classes: int = 10, n_train: int = 512, n_test: int = 256,
                   noise: float = 1.0, seed: int = 0) -> Dataset:
    """Gaussian class prototypes plus ``noise`` (learnable, not trivially separable)."""
    g = torch.Generator().manual_seed(seed)
    input_shape = tuple(int(s) for s in input_shape)
    protos = torch.randn(num_classes, *input_shape, generator=g)

    def draw(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        return protos[y] + noise * torch.randn(n, *input_shape, generator=g), y

    (x_tr, y_tr), (x_te, y_te) = draw(n_train), draw(n_test)
    return Dataset("synthetic", x_tr, y_tr, x_te, y_te, num_classes)


def load_dataset(name: str, data_dir=None, synthetic_shape=(1, 8, 8), seed: int = 0) -> Dataset:
    """Load ``name`` (one of ``DATASETS``); ``data_dir`` is needed for CIFAR."""
    if name == "digits":
        return load_digits()
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, data_dir)
    if name == "synthetic":
        return make_synthetic(synthetic_shape, seed=seed)
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
