"""`load_split`: decode a whole split once and keep it as a uint8 .pt file, so evaluation never re-decodes JPEGs.

The cache key is (format version, dataset name, root, split, resolution, channels, hash of the file list and
labels, plus size and mtime of the IDX files for array datasets). Adding, removing or renaming a file changes
the key, so a changed folder is decoded again; old cache files are left in place (delete the folder to reclaim).
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch

from ..config import config_hash
from ..errors import DataError
from .datasets import decode_ids, list_files
from .embedded import source_files
from .spec import DatasetSpec, Split, check_resolution

CACHE_FORMAT = 1  # bump when decoding changes pixels, so old caches are not reused


def default_cache_dir() -> Path:
    """$DDBENCH_CACHE/data, else ~/.cache/ddbench/data."""
    base = os.environ.get("DDBENCH_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "ddbench") / "data"


def load_split(spec: DatasetSpec, split: str, *, resolution: int | None = None, cache_dir=None) -> Split:
    """All images of `split` as uint8 N×C×R×R on CPU (R = spec's default for the split unless given), cached."""
    resolution = check_resolution(spec.default_resolution(split) if resolution is None else resolution)
    ids, labels = list_files(spec, split)
    path = cache_file(spec, split, resolution, ids, labels, Path(cache_dir) if cache_dir else default_cache_dir())
    cached = _read(path, ids)
    if cached is not None:
        return cached
    images = decode_ids(spec, split, ids, resolution)
    _write_atomic(path, {"images": images, "labels": labels, "ids": ids})
    return Split(images=images, labels=labels, ids=ids)


def cache_file(spec: DatasetSpec, split: str, resolution: int, ids: list[str], labels: torch.Tensor,
               cache_dir: Path) -> Path:
    """<cache_dir>/<name>-<split>-<R>px-<key>.pt; the key changes whenever the listed files change."""
    files = hashlib.sha256("\n".join(ids).encode())
    files.update(labels.numpy().tobytes())
    for p in source_files(spec, split):  # array datasets: one file holds the whole split
        st = p.stat()
        files.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    key = config_hash({"format": CACHE_FORMAT, "name": spec.name, "root": spec.root, "split": split,
                       "resolution": resolution, "channels": spec.channels, "files": files.hexdigest()},
                      n=16)  # fmt: skip
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.name).strip("_")[:60]
    return cache_dir / f"{stem}-{split}-{resolution}px-{key}.pt"


def _read(path: Path, ids: list[str]) -> Split | None:
    if not path.is_file():
        return None
    try:
        # mmap: a multi-GB train pool is paged in on use instead of copied.
        obj = torch.load(path, weights_only=True, mmap=True)
        images, labels, cached_ids = obj["images"], obj["labels"], obj["ids"]
    except Exception as e:  # any unreadable cache (e.g. a disk that filled up) is rebuilt; the pixels do not change
        warnings.warn(f"decode cache {path} is unreadable ({e}); decoding again", stacklevel=3)
        return None
    if cached_ids != ids or images.dtype != torch.uint8 or len(images) != len(ids):
        warnings.warn(f"decode cache {path} does not match the file list; decoding again", stacklevel=3)
        return None
    return Split(images=images, labels=labels, ids=cached_ids)


def _write_atomic(path: Path, obj: dict) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: readers never see half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise DataError(f"cannot write the decode cache in {path.parent}: {e}; set DDBENCH_CACHE to a "
                        "writable folder or pass another cache directory") from None  # fmt: skip
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache folder should be readable by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
