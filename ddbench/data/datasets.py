"""The dataset registry and the three access functions every caller uses: get_dataset, list_files, decode_ids.

Registry values are lazy builders `builder(name, *, imagenet_root, data_root) -> DatasetSpec`; building a spec
checks that the data are there (a missing root or class folder fails here, before any work starts).
"""
from __future__ import annotations

import torch

from ..registry import Registry
from .embedded import DIGITS_SIZE, FASHION_DEFAULT_ROOT, decode_embedded, list_embedded
from .folders import (IMAGEFOLDER_RESOLUTION, IMAGENET_RESOLUTION, IMAGENET_TEST_RESOLUTION, decode_folder,
                      list_folder)  # fmt: skip
from .spec import DatasetSpec, check_resolution, check_split, read_class_list

# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------

DATASETS = Registry("dataset")
DATASETS.register("digits", "ddbench.data.embedded:digits_spec")
DATASETS.register("fashion", "ddbench.data.embedded:fashion_spec")
DATASETS.register("mnist", "ddbench.data.embedded:mnist_spec")
for _subset in ("woof", "nette", "idc", "imagenet100", "imagenet1k"):  # class list: classes/<name>.txt
    DATASETS.register(_subset, "ddbench.data.folders:imagenet_spec")
DATASETS.register("imagefolder", "ddbench.data.folders:imagefolder_spec")  # used as imagefolder:<path>

_IMAGENET_SOURCE = "ImageNet train / val (--imagenet-root, DDBENCH_IMAGENET_ROOT)"
_SOURCES = {  # name -> (classes, resolution, source) for `ddbench list datasets`; reads no data
    "digits": ("10", str(DIGITS_SIZE), "scikit-learn load_digits, 8×8 upsampled (always available)"),
    "fashion": ("10", "28", f"IDX files (--data-root, DDBENCH_FASHION_ROOT, default {FASHION_DEFAULT_ROOT})"),
    "mnist": ("10", "28", "IDX files (--data-root, DDBENCH_MNIST_ROOT)"),
    "imagefolder": ("train/ folders", str(IMAGEFOLDER_RESOLUTION), "imagefolder:<path>: train/, test/ (or val/)"),
}


def get_dataset(name: str, *, imagenet_root: str | None = None, data_root: str | None = None) -> DatasetSpec:
    """The spec of a registered dataset, or of `imagefolder:<path>`; roots fall back to environment variables."""
    key = "imagefolder" if name.startswith("imagefolder:") else name
    builder = DATASETS.get(key)
    return builder(name, imagenet_root=imagenet_root, data_root=data_root)


def describe_dataset(name: str) -> tuple[str, str, str, str]:
    """(name, number of classes, stored side, where the data come from) as strings, without touching the data."""
    DATASETS.get(name)  # unknown names fail with suggestions
    if name in _SOURCES:
        return (name, *_SOURCES[name])
    res = f"{IMAGENET_RESOLUTION} (test {IMAGENET_TEST_RESOLUTION})"
    return name, str(len(read_class_list(name))), res, _IMAGENET_SOURCE


# ---------------------------------------------------------------------------------------------------------
# Access without caching
# ---------------------------------------------------------------------------------------------------------


def list_files(spec: DatasetSpec, split: str) -> tuple[list[str], torch.Tensor]:
    """(ids, int64 labels) of a split without decoding: grouped by class in label order, sorted within a class."""
    check_split(split)
    return list_embedded(spec, split) if spec.kind == "embedded" else list_folder(spec, split)


def decode_ids(spec: DatasetSpec, split: str, ids: list[str], resolution: int) -> torch.Tensor:
    """uint8 N×C×R×R images of only these ids (shorter side -> R bicubic antialiased, centre crop)."""
    check_split(split)
    check_resolution(resolution)
    if spec.kind == "embedded":
        return decode_embedded(spec, split, list(ids), resolution)
    return decode_folder(spec, split, list(ids), resolution)
