"""Tiny on-disk datasets that tests generate: an ImageNet-style JPEG tree and a Fashion-MNIST-style IDX folder.

Pixels are random but seeded (torch.Generator), so the same call writes the same files.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _random_pixels(gen: torch.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).numpy()


def make_imagenet_tree(root, wnids, n_train: int, n_val: int, size=(40, 32), seed: int = 0) -> Path:
    """Write root/train/<wnid>/<wnid>_<i>.JPEG and root/val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG.

    `size` is (width, height) of every image; val files are numbered 1, 2, ... across classes as in ILSVRC-2012.
    """
    root = Path(root)
    gen = torch.Generator().manual_seed(seed)
    width, height = size
    val_number = 0
    for wnid in wnids:
        for split, n in (("train", n_train), ("val", n_val)):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                if split == "train":
                    name = f"{wnid}_{i}.JPEG"
                else:
                    val_number += 1
                    name = f"ILSVRC2012_val_{val_number:08d}.JPEG"
                Image.fromarray(_random_pixels(gen, (height, width, 3))).save(folder / name, format="JPEG", quality=90)
    return root


def _write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Unsigned-byte IDX: magic 0x00 0x00 0x08 <ndim>, big-endian uint32 sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def make_idx_folder(root, n_train: int, n_test: int, classes: int = 10, size: int = 28, seed: int = 0) -> Path:
    """Write Fashion-MNIST-named gzipped IDX files; label of image i is i % classes (every class present)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx_gz(root / f"{prefix}-images-idx3-ubyte.gz", _random_pixels(gen, (n, size, size)))
        _write_idx_gz(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % classes)
    return root


def made_here(method: str, family: str = "hard") -> dict:
    """`extra.identity` of a record made by this checkout's numerics code (method `method`, protocol family
    `family`): what the leaderboard compares with to flag rows made by other code."""
    from ddbench.leaderboard.cards import current_numerics

    return {"set": {"numerics": current_numerics("method", method)},
            "protocol": {"numerics": current_numerics("protocol", family)}}
