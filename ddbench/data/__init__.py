"""Datasets: specs, the registry, file listing, decoding and the decode cache (see docs/datasets.md)."""
from .cache import default_cache_dir, load_split
from .datasets import DATASETS, decode_ids, describe_dataset, get_dataset, list_files
from .spec import IMAGENET_MEAN, IMAGENET_STD, DatasetSpec, Split

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetSpec",
    "Split",
    "decode_ids",
    "describe_dataset",
    "default_cache_dir",
    "get_dataset",
    "list_files",
    "load_split",
]
