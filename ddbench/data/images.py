"""Decoding image files and resizing pixels to the stored square resolution.

One rule everywhere: resize the shorter side to `resolution` (bicubic, antialiased) and take the centre
`resolution`×`resolution` crop. The size and crop arithmetic is torchvision's `Resize(int)` + `CenterCrop`,
so a cached image equals what the reference test transform would feed the network (up to the kernel, below).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import DataError
from ..progress import progress_bar

PROGRESS_MIN_FILES = 300  # show a progress bar only when decoding takes more than a moment
MAX_DECODE_THREADS = 16  # PIL releases the GIL while decoding/resizing, so threads scale
DECODE_CHUNK = 2048  # files submitted to the pool at once


# ---------------------------------------------------------------------------------------------------------
# One file
# ---------------------------------------------------------------------------------------------------------


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Shorter side -> `resolution` (bicubic; PIL's resize is antialiased), then centre crop to a square."""
    w, h = img.size
    # torchvision Resize(int): the long side is truncated, not rounded.
    if w <= h:
        new_w, new_h = resolution, int(resolution * h / w)
    else:
        new_w, new_h = int(resolution * w / h), resolution
    if (new_w, new_h) != (w, h):
        # Deviation: the reference test transform Resize(224) is bilinear; ddbench caches bicubic (one kernel for all).
        img = img.resize((new_w, new_h), Image.BICUBIC)
    # torchvision CenterCrop: offsets rounded half-to-even, as Python's round().
    left, top = int(round((new_w - resolution) / 2.0)), int(round((new_h - resolution) / 2.0))
    return img.crop((left, top, left + resolution, top + resolution))


def decode_file(path: Path, resolution: int, channels: int, crop=None) -> torch.Tensor:
    """uint8 C×R×R tensor of one image file; any unreadable file is a DataError naming it.
    crop(img, R) frames the PIL image (default: `resize_center_crop`)."""
    mode = "RGB" if channels == 3 else "L"
    try:
        with Image.open(path) as img:
            img = (crop or resize_center_crop)(img.convert(mode), resolution)
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist; the folder changed since it was listed, run again") \
            from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(
            f"cannot decode image {path}: {e}. Expected a readable image file; replace or delete it and run again"
        ) from None
    arr = arr[:, :, None] if arr.ndim == 2 else arr  # R×R (mode L) -> R×R×1
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # R×R×C -> C×R×R


# ---------------------------------------------------------------------------------------------------------
# Many files
# ---------------------------------------------------------------------------------------------------------


def decode_files(paths: list[Path], resolution: int, channels: int, *, description: str = "decoding",
                 crop=None) -> torch.Tensor:
    """uint8 N×C×R×R tensor of `paths` in order, decoded on a thread pool, with a progress bar for big lists."""
    out = torch.empty(len(paths), channels, resolution, resolution, dtype=torch.uint8)

    def work(i: int) -> None:
        out[i] = decode_file(paths[i], resolution, channels, crop)

    threads = max(1, min(MAX_DECODE_THREADS, os.cpu_count() or 1, len(paths)))
    # Chunks keep the number of pending futures small (ImageNet-1K train has 1.28M files).
    chunks = [range(s, min(s + DECODE_CHUNK, len(paths))) for s in range(0, len(paths), DECODE_CHUNK)]
    pool = ThreadPoolExecutor(threads)
    try:
        if len(paths) < PROGRESS_MIN_FILES:
            for chunk in chunks:
                list(pool.map(work, chunk))  # re-raises the first worker error
        else:
            _decode_with_progress(pool, work, chunks, len(paths), description)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error, do not decode the rest
    return out


def _decode_with_progress(pool, work, chunks: list[range], total: int, description: str) -> None:
    with progress_bar() as bar:  # silent when stderr is not a terminal or DDBENCH_NO_PROGRESS is set
        task = bar.add_task(description, total=total)
        for chunk in chunks:
            for _ in pool.map(work, chunk):
                bar.advance(task)


# ---------------------------------------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------------------------------------


def resize_tensor(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 N×C×H×W -> uint8 N×C×R×R with the same shorter-side + centre-crop rule, on tensors."""
    h, w = images.shape[-2:]
    if (h, w) == (resolution, resolution):
        return images
    size = (int(resolution * h / w), resolution) if w < h else (resolution, int(resolution * w / h))
    x = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    top, left = int(round((size[0] - resolution) / 2.0)), int(round((size[1] - resolution) / 2.0))
    x = x[:, :, top : top + resolution, left : left + resolution]
    return x.round().clamp(0, 255).to(torch.uint8)
