"""Reading torch files without running their code: every `.pt` ddbench reads goes through `load_tensors`.

A torch file is a pickle, and unpickling can call any Python function named in it. The cache is a folder a
cluster shares (docs/sweeps.md) and teachers, soft labels and DiT checkpoints come from users, so every load
is weights-only (`torch.load(..., weights_only=True)`: tensors, numbers, strings, lists, dicts, and the extra
types a call site names). Passed explicitly, it also holds under TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, which
only changes loads that leave weights_only unset. A file that is not such data fails
as one DataError naming the file and what was expected, never with PyTorch's advice to load it unsafely.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

import torch

from .errors import DataError

CACHE_FIX = "it is a cache file: delete it and run again"  # the `fix` of a file ddbench wrote itself


def load_tensors(path: str | os.PathLike, what: str, *, allow: Iterable[type] = (), mmap: bool = False,
                 fix: str = "") -> Any:
    """`torch.load(path, weights_only=True)` on CPU; any failure is a DataError naming `what` and `path`.

    `allow` lists the extra classes the file may hold (e.g. argparse.Namespace in DiT training checkpoints);
    `fix` ends the message with what to do (e.g. "delete it to train again")."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - whatever the reason, this file cannot be used as `what`
        raise DataError(f"cannot read {what} {path}: {_reason(e)}" + (f"; {fix}" if fix else "")) from None


def _reason(e: Exception) -> str:
    """One line on why a load failed, without PyTorch's advice to re-run with weights_only=False."""
    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"Unsupported operand \d+", text)
    if isinstance(e, torch.serialization.pickle.UnpicklingError) or "Weights only load failed" in text:
        named = f" ({found.group(1) if found.groups() else found.group(0)})" if found else ""
        return f"it holds Python objects{named}, not only tensors and plain values; it is not loaded"
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, OSError):
        return e.strerror or type(e).__name__
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    return f"not a torch tensor file ({first[:160]})"
