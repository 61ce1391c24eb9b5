"""The data contract: `DatasetSpec` (what a dataset is) and `Split` (decoded images of one split).

A spec is cheap to build and never holds pixels; pixels come from `list_files` / `decode_ids` / `load_split`.
Labels are always the position of a class in `spec.classes`, never the order of folders on disk.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # protocol-facts §6.1 (IDC / Minimax / RDED / CUDD)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "test")
CLASS_LIST_DIR = Path(__file__).parent / "classes"
# File endings read as images (torchvision's IMG_EXTENSIONS), compared lower-case.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# ---------------------------------------------------------------------------------------------------------
# Spec and split
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # registry name, e.g. "fashion", "nette", "imagefolder:/x"
    classes: tuple[str, ...]  # wnids or class names; label = position in this tuple
    resolution: int  # side of the stored (cached) square images of the train pool
    channels: int  # 1 or 3
    mean: tuple[float, ...]  # normalisation used by networks trained on this data
    std: tuple[float, ...]
    kind: str  # "embedded" | "imagenet" | "imagefolder"
    root: str | None  # where the data is read from (None: shipped with a library)
    imagenet_index: tuple[int, ...] | None  # ImageNet-1K label per class (DiT conditioning), else None
    test_resolution: int  # side of the cached test images (224 for ImageNet subsets)
    nonstandard: str | None = None  # what makes the data differ from the standard subset (allowed by the user)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def default_resolution(self, split: str) -> int:
        """`resolution` for the train pool, `test_resolution` for the test split."""
        return self.resolution if check_split(split) == "train" else self.test_resolution


@dataclass
class Split:
    images: torch.Tensor  # uint8, N×C×H×W, on CPU
    labels: torch.Tensor  # int64, N
    ids: list[str]  # stable id per image (relative file path, or "train/123" for arrays)

    def __len__(self) -> int:
        return len(self.ids)


# ---------------------------------------------------------------------------------------------------------
# Small shared helpers
# ---------------------------------------------------------------------------------------------------------


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)} ('test' is ImageNet val)")
    return split


def check_resolution(resolution: int) -> int:
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise ConfigError(f"resolution must be a positive integer (pixels per side), got {resolution!r}")
    return resolution


@lru_cache(maxsize=None)
def read_class_list(name: str) -> tuple[str, ...]:
    """The wnids of `classes/<name>.txt`, one per line, in file order (label = 0-based line number)."""
    path = CLASS_LIST_DIR / f"{name}.txt"
    if not path.is_file():
        raise DataError(f"class list {path} is missing; the ddbench installation is incomplete (reinstall it)")
    wnids = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if len(set(wnids)) != len(wnids):
        raise DataError(f"class list {path} repeats a wnid; each class must appear once")
    expected = checked_in_sha256().get(path.name)
    if expected != class_order_sha256(wnids):  # an edited list would silently relabel every class
        raise DataError(f"class list {path} has class-order sha256 {class_order_sha256(wnids)[:12]} but "
                        f"{CLASS_LIST_DIR / 'SHA256SUMS'} says {str(expected)[:12]}; restore the file (reinstall ddbench)")
    return wnids


def class_order_sha256(classes) -> str:
    """sha256 of a class order: the names one per line, each followed by a newline (= the list file's bytes)."""
    return hashlib.sha256("".join(f"{c}\n" for c in classes).encode()).hexdigest()


@lru_cache(maxsize=None)
def checked_in_sha256() -> dict[str, str]:
    """File name -> class-order sha256 of the checked-in lists (classes/SHA256SUMS, `sha256sum` format)."""
    path = CLASS_LIST_DIR / "SHA256SUMS"
    if not path.is_file():
        raise DataError(f"{path} is missing; the ddbench installation is incomplete (reinstall it)")
    pairs = (line.split() for line in path.read_text().splitlines() if line.strip())
    return {name: digest for digest, name in pairs}


def imagenet_index(wnids: tuple[str, ...]) -> tuple[int, ...]:
    """Standard ImageNet-1K label of each wnid = its position in the sorted 1000-wnid list (DiT conditioning)."""
    position = {w: i for i, w in enumerate(read_class_list("imagenet1k"))}
    unknown = [w for w in wnids if w not in position]
    if unknown:
        raise DataError(f"wnids not in ImageNet-1K: {short_list(unknown)}; expected ILSVRC-2012 class ids")
    return tuple(position[w] for w in wnids)


def short_list(items: list[str], n: int = 5) -> str:
    """'a, b, c, ... (12 in all)' for error messages that must stay one line."""
    head = ", ".join(items[:n])
    return f"{head}, ... ({len(items)} in all)" if len(items) > n else head
