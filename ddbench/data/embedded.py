"""Array datasets that need no image files: scikit-learn's digits, Fashion-MNIST and MNIST (IDX files).

They make every method runnable end to end on a laptop CPU. Ids are "<split>/<index>" into the split's arrays;
`list_files` orders them by class, then by index (the order the DC code's `indices_class[c][:n]` uses).
"""
from __future__ import annotations

import gzip
import os
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from .images import resize_tensor
from .spec import DatasetSpec, check_split

# ---------------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------------

FASHION_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
DIGIT_CLASSES = tuple(str(d) for d in range(10))
# IDX file stems per split (Fashion-MNIST and MNIST use the same names); ".gz" optional.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The digits card's resolution (part of the dataset identity): the 8×8 images are upsampled once to 16 px.
# 16 px keeps every pixel of the data (2× per side) at a quarter of the arithmetic of 32 px; ConvNet-3 ends on
# a 2×2 map. Before 2026-12 it was 32 (another cell: docs/datasets.md "Digits at 16 px").
DIGITS_SIZE = 16
DIGITS_TEST_EVERY = 4  # within each class, in load_digits order, ranks 3, 7, 11, ... are the test split
# Pixel mean / std of the digits train split after scaling and upsampling to DIGITS_SIZE (tests recompute them).
DIGITS_MEAN, DIGITS_STD = (0.3049,), (0.3183,)
FASHION_MEAN, FASHION_STD = (0.2861,), (0.3530,)  # DC / DSA / DM reference code
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


# ---------------------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------------------


def digits_spec(name: str, *, imagenet_root=None, data_root=None) -> DatasetSpec:
    return DatasetSpec(name=name, classes=DIGIT_CLASSES, resolution=DIGITS_SIZE, channels=1, mean=DIGITS_MEAN,
                       std=DIGITS_STD, kind="embedded", root=None, imagenet_index=None, test_resolution=DIGITS_SIZE)


def fashion_spec(name: str, *, imagenet_root=None, data_root=None) -> DatasetSpec:
    root = data_root or os.environ.get("DDBENCH_FASHION_ROOT") or FASHION_DEFAULT_ROOT
    hint = ("pass --data-root DIR or set DDBENCH_FASHION_ROOT, or install the Debian package "
            f"dataset-fashion-mnist (files under {FASHION_DEFAULT_ROOT})")  # fmt: skip
    return _idx_spec(name, root, FASHION_CLASSES, FASHION_MEAN, FASHION_STD, hint)


def mnist_spec(name: str, *, imagenet_root=None, data_root=None) -> DatasetSpec:
    root = data_root or os.environ.get("DDBENCH_MNIST_ROOT")
    hint = "pass --data-root DIR or set DDBENCH_MNIST_ROOT to a folder with the four MNIST IDX files"
    if not root:
        raise DataError(f"dataset 'mnist' needs its IDX files and no folder was given: {hint}")
    return _idx_spec(name, root, DIGIT_CLASSES, MNIST_MEAN, MNIST_STD, hint)


def _idx_spec(name, root, classes, mean, std, hint) -> DatasetSpec:
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise DataError(f"dataset {name!r}: folder {root_path} does not exist; {hint}")
    missing = [stem for split in IDX_FILES for stem in IDX_FILES[split] if _find_idx(root_path, stem) is None]
    if missing:
        raise DataError(f"dataset {name!r}: {root_path} lacks {', '.join(missing)} (.gz or raw); {hint}")
    return DatasetSpec(name=name, classes=classes, resolution=28, channels=1, mean=mean, std=std,
                       kind="embedded", root=str(root_path), imagenet_index=None, test_resolution=28)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Arrays of a split: uint8 N×1×H×W images, int64 N labels
# ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def digits_arrays(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn digits (values 0–16) scaled to 0–255 and upsampled 8 -> DIGITS_SIZE (bilinear, no antialias)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy(data.images.astype(np.float32))[:, None] * (255.0 / 16.0)  # N×1×8×8 in [0, 255]
    y = torch.from_numpy(data.target.astype(np.int64))
    rank = torch.empty_like(y)  # position of each sample within its class, in load_digits order
    for c in range(10):
        where = (y == c).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    keep = (rank % DIGITS_TEST_EVERY == DIGITS_TEST_EVERY - 1) == (split == "test")
    x = F.interpolate(x[keep], size=DIGITS_SIZE, mode="bilinear", align_corners=False, antialias=False)
    return x.round().clamp(0, 255).to(torch.uint8), y[keep]  # rounded once, after upsampling


def idx_arrays(root: str, split: str, *, images: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(uint8 N×1×H×W images or None, int64 N labels) of one split of an IDX folder."""
    images_path, labels_path = (_find_idx(Path(root), stem) for stem in IDX_FILES[split])
    if images_path is None or labels_path is None:
        raise DataError(f"{root} lacks the {split} IDX files {' / '.join(IDX_FILES[split])} (.gz or raw); "
                        "the folder changed since the dataset was opened")  # fmt: skip
    labels = _read_idx_cached(labels_path, labels_path.stat().st_mtime_ns)
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-d label file, got shape {tuple(labels.shape)}")
    if not images:
        return None, labels.long()
    x = _read_idx_cached(images_path, images_path.stat().st_mtime_ns)
    if x.ndim != 3 or len(x) != len(labels):
        raise DataError(f"{images_path} and {labels_path} do not match: expected N×H×W images and N labels, "
                        f"got {tuple(x.shape)} and {tuple(labels.shape)}")  # fmt: skip
    return x[:, None], labels.long()  # N×H×W -> N×1×H×W


@lru_cache(maxsize=4)
def _read_idx_cached(path: Path, _mtime_ns: int) -> torch.Tensor:
    return read_idx(path)  # keyed by mtime too: a rewritten file is read again


def read_idx(path: Path) -> torch.Tensor:
    """An unsigned-byte IDX file (gzipped or raw) as a uint8 tensor of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip: truncated -> EOFError, garbled -> zlib.error
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (expected magic 0x0000 08 <ndim>)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated or corrupt: header says {shape}, found {body.size} values")
    return torch.from_numpy(body.reshape(shape).copy())


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def source_files(spec: DatasetSpec, split: str) -> list[Path]:
    """The IDX files an array split is read from (their sizes and times key the decode cache); [] otherwise."""
    if spec.kind != "embedded" or spec.root is None:
        return []
    return [p for stem in IDX_FILES[split] if (p := _find_idx(Path(spec.root), stem)) is not None]


# ---------------------------------------------------------------------------------------------------------
# list / decode
# ---------------------------------------------------------------------------------------------------------


def _arrays(spec: DatasetSpec, split: str, *, images: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    if spec.root is None:  # digits is the one embedded dataset without files (it ships with scikit-learn)
        return digits_arrays(split)
    return idx_arrays(spec.root, split, images=images)


def list_embedded(spec: DatasetSpec, split: str) -> tuple[list[str], torch.Tensor]:
    _, labels = _arrays(spec, check_split(split), images=False)
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f"dataset {spec.name!r} {split}: labels outside 0..{spec.num_classes - 1} in {spec.root}")
    order = torch.argsort(labels, stable=True)  # grouped by class, index order within a class
    return [f"{split}/{i}" for i in order.tolist()], labels[order].clone()


def decode_embedded(spec: DatasetSpec, split: str, ids: list[str], resolution: int) -> torch.Tensor:
    images, _ = _arrays(spec, check_split(split))
    index = torch.tensor([_parse_id(spec, split, i, len(images)) for i in ids], dtype=torch.long)
    return resize_tensor(images[index], resolution)


def _parse_id(spec: DatasetSpec, split: str, image_id: str, n: int) -> int:
    prefix, _, number = image_id.partition("/")
    if prefix != split or not number.isdigit() or int(number) >= n:
        raise ConfigError(f"id {image_id!r} is not an image of {spec.name!r} {split}: expected '{split}/<0..{n - 1}>'")
    return int(number)
