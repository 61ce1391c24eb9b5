"""Gates on what users feed in: the class order of a set or teacher, and which ImageNet a subset was read from.

The two failures users of the reference code report most are a set (or teacher) labelled in another class
order than the evaluator's, and a fastai `imagenette2` / `imagewoof2` download used as if it were the ImageNet
subset of the papers (other images, another val split: numbers that cannot be compared). Both are refused here
with a message that names what was found and what was expected.

    check_class_order(manifest["classes"], spec, "distilled set runs/x")   # DataError when the order differs
    spec = check_standard_subset(spec, allow=False)  # DataError on non-ILSVRC-2012 counts; allow=True records why
"""
from __future__ import annotations

import os
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from ..errors import DataError
from .spec import IMAGE_EXTENSIONS, DatasetSpec, class_order_sha256, short_list

# ILSVRC-2012: 732-1300 training images per class (most have 1300) and exactly 50 validation images per class.
IMAGENET_TRAIN_PER_CLASS = (732, 1300)
IMAGENET_VAL_PER_CLASS = 50
ALLOW_ENV = "DDBENCH_ALLOW_NONSTANDARD_SUBSET"
FASTAI_MARKERS = {"noisy_imagenette.csv": "imagenette2", "noisy_imagewoof.csv": "imagewoof2"}

# ---------------------------------------------------------------------------------------------------------
# Class order
# ---------------------------------------------------------------------------------------------------------


def describe_order(classes) -> str:
    """'sha256 1a2b3c4d5e6f (n01440764, n02102040, ...)' for messages naming an order."""
    return f"sha256 {class_order_sha256(classes)[:12]} ({short_list(list(classes), 3)})"


def check_class_order(found, spec: DatasetSpec, what: str) -> None:
    """Refuse `what` (a set or teacher) whose class list is not `spec.classes` in the same order.

    A label is a position in a class list: the same classes in another order silently swap classes, so a
    permutation is refused as firmly as a foreign class. The message names both orders by their sha256.
    """
    found = tuple(str(c) for c in found)
    if found == tuple(spec.classes):
        return
    ours = f"{spec.name}'s checked-in order {describe_order(spec.classes)}"
    if sorted(found) == sorted(spec.classes):
        first = next(i for i, (a, b) in enumerate(zip(found, spec.classes)) if a != b)
        raise DataError(f"{what} lists the classes of {spec.name} in another order: {describe_order(found)} vs "
                        f"{ours}; they first differ at label {first} ({found[first]} vs {spec.classes[first]}). "
                        f"Re-make or re-export it with the class order of {spec.name}")
    missing = [c for c in spec.classes if c not in found]
    extra = [c for c in found if c not in spec.classes]
    raise DataError(f"{what} has {len(found)} classes {describe_order(found)} that are not those of {spec.name} "
                    f"({ours}): missing {short_list(missing) or 'none'}, not in {spec.name}: "
                    f"{short_list(extra) or 'none'}. Evaluate it with the dataset it was made for")


# ---------------------------------------------------------------------------------------------------------
# Which ImageNet: per-class image counts against ILSVRC-2012's
# ---------------------------------------------------------------------------------------------------------


def allowed_by_environment() -> bool:
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


@lru_cache(maxsize=64)
def class_counts(folder: str, classes: tuple[str, ...]) -> tuple[int, ...]:
    """Image files per class folder (listing only, nothing decoded)."""
    return tuple(sum(1 for e in os.scandir(Path(folder) / c) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
                 for c in classes)


def fastai_download(root: Path) -> str | None:
    """'imagenette2' / 'imagewoof2' (with the folder name) when `root` looks like the fastai download."""
    for marker, name in FASTAI_MARKERS.items():
        if (root / marker).is_file():
            return f"the fastai {name} download ({root.name}/ holds {marker})"
    if root.name.lower().startswith(("imagenette", "imagewoof")):
        return f"the fastai {root.name} download"
    return None


def nonstandard_reason(spec: DatasetSpec) -> str | None:
    """None when every class has ILSVRC-2012's counts (train 732-1300, val exactly 50); else what differs."""
    root = Path(spec.root)
    train = class_counts(str(root / "train"), spec.classes)
    val = class_counts(str(root / "val"), spec.classes)
    lo, hi = IMAGENET_TRAIN_PER_CLASS
    if all(lo <= n <= hi for n in train) and all(n == IMAGENET_VAL_PER_CLASS for n in val):
        return None
    counts = (f"train {min(train)}-{max(train)} and val {min(val)}-{max(val)} images per class; ILSVRC-2012 has "
              f"train {lo}-{hi} and val exactly {IMAGENET_VAL_PER_CLASS}")
    source = fastai_download(root)
    return f"{source}: {counts}" if source else f"not ILSVRC-2012 counts: {counts}"


def check_standard_subset(spec: DatasetSpec, allow: bool | None = None) -> DatasetSpec:
    """`spec` when its data are the ILSVRC-2012 images of its classes; refused otherwise unless allowed.

    Allowed (`allow`, or DDBENCH_ALLOW_NONSTANDARD_SUBSET=1, set by --allow-nonstandard-subset), the returned
    spec carries the reason in `nonstandard`, and every result record made with it says so.
    """
    reason = nonstandard_reason(spec)
    if reason is None:
        return spec
    if not (allowed_by_environment() if allow is None else allow):
        raise DataError(f"dataset {spec.name!r}: {spec.root} is {reason}. Its images and val split are not the "
                        f"ImageNet subset of the papers, so its numbers cannot be compared with theirs. Point "
                        f"--imagenet-root at an ILSVRC-2012 copy, or pass --allow-nonstandard-subset "
                        f"({ALLOW_ENV}=1) to run anyway; every record then says so")
    return replace(spec, nonstandard=reason)
