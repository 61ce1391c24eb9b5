"""Datasets read from folders of image files: the ImageNet subsets and any user ImageFolder tree.

ImageNet subsets (`woof`, `nette`, `idc`, `imagenet100`, `imagenet1k`) read `<root>/train/<wnid>/` (train pool)
and `<root>/val/<wnid>/` (test split = the ILSVRC-2012 val images of those classes, 50 per class). The class
order is the checked-in class list: woof's list is deliberately not sorted, so labels never come from the
sorted folder order. `imagefolder:<path>` reads `<path>/train/<class>/` and `<path>/test/<class>/` (or `val/`),
classes sorted by name. Ids are file paths relative to the root, e.g. "train/n01440764/n01440764_10026.JPEG".
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from .gates import check_standard_subset
from .images import decode_files
from .spec import (IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, SPLITS, DatasetSpec, check_split,
                   imagenet_index, read_class_list, short_list)  # fmt: skip

IMAGENET_RESOLUTION = 256  # train pool: the side the diffusion methods generate at
IMAGENET_TEST_RESOLUTION = 224  # test: the hard-label test transform Resize(224) + CenterCrop(224)
IMAGEFOLDER_RESOLUTION = 64  # default side for user data (Tiny-ImageNet scale); load_split can ask for another
IMAGENET_HINT = "pass --imagenet-root DIR or set DDBENCH_IMAGENET_ROOT"
IMAGENET_LAYOUT = ("expected the ILSVRC-2012 layout <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG "
                   "(val images sorted into wnid folders)")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------------------


def imagenet_spec(name: str, *, imagenet_root=None, data_root=None) -> DatasetSpec:
    """A class subset of ImageNet; `name` is also the class-list file (classes/<name>.txt)."""
    root = imagenet_root or os.environ.get("DDBENCH_IMAGENET_ROOT")
    if not root:
        raise DataError(f"dataset {name!r} needs a local ImageNet ILSVRC-2012 copy: {IMAGENET_HINT}; {IMAGENET_LAYOUT}")
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise DataError(f"dataset {name!r}: ImageNet root {root_path} does not exist; {IMAGENET_HINT}")
    wnids = read_class_list(name)
    spec = DatasetSpec(name=name, classes=wnids, resolution=IMAGENET_RESOLUTION, channels=3, mean=IMAGENET_MEAN,
                       std=IMAGENET_STD, kind="imagenet", root=str(root_path), imagenet_index=imagenet_index(wnids),
                       test_resolution=IMAGENET_TEST_RESOLUTION)  # fmt: skip
    for split in SPLITS:
        class_dirs(spec, split)  # fail now, before any work, when a class folder is missing
    return check_standard_subset(spec)  # a fastai imagenette2 / imagewoof2 download is refused (or labelled)


def imagefolder_spec(name: str, *, imagenet_root=None, data_root=None) -> DatasetSpec:
    """`imagefolder:<path>`: classes = sorted folder names of <path>/train."""
    path = name.partition(":")[2]
    if not path:
        raise ConfigError("dataset 'imagefolder' needs a folder: use imagefolder:<path> (e.g. imagefolder:/data/pets)")
    root = Path(path).expanduser().resolve()
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"dataset {name!r}: {train} does not exist; expected {root}/train/<class>/<images> "
                        f"and {root}/test/<class>/<images> (or val/)")  # fmt: skip
    classes = tuple(sorted(e.name for e in os.scandir(train) if e.is_dir()))
    if not classes:
        raise DataError(f"dataset {name!r}: {train} has no class folders; expected {train}/<class>/<images>")
    spec = DatasetSpec(name=f"imagefolder:{root}", classes=classes, resolution=IMAGEFOLDER_RESOLUTION, channels=3,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD, kind="imagefolder", root=str(root), imagenet_index=None,
                       test_resolution=IMAGEFOLDER_RESOLUTION)  # fmt: skip
    for split in SPLITS:
        class_dirs(spec, split)
    return spec


# ---------------------------------------------------------------------------------------------------------
# Folder layout
# ---------------------------------------------------------------------------------------------------------


def split_dir(spec: DatasetSpec, split: str) -> Path:
    """The folder holding one sub-folder per class for `split`."""
    root = Path(spec.root)
    if check_split(split) == "train":
        return root / "train"
    if spec.kind == "imagenet":
        return root / "val"
    return root / "test" if (root / "test").is_dir() or not (root / "val").is_dir() else root / "val"


def class_dirs(spec: DatasetSpec, split: str) -> list[Path]:
    """One folder per class of `spec`, in label order; missing (or, for imagefolder, extra) folders are errors."""
    base = split_dir(spec, split)
    layout = IMAGENET_LAYOUT if spec.kind == "imagenet" else f"expected {base}/<class>/<images>"
    if not base.is_dir():
        hint = f"; {IMAGENET_HINT}" if spec.kind == "imagenet" else " (or val/)"
        raise DataError(f"dataset {spec.name!r}: {base} does not exist; {layout}{hint}")
    present = {e.name for e in os.scandir(base) if e.is_dir()}
    missing = [c for c in spec.classes if c not in present]
    if missing:
        raise DataError(f"dataset {spec.name!r}: {len(missing)} of {spec.num_classes} class folders are missing "
                        f"under {base}: {short_list(missing)}; {layout}")  # fmt: skip
    extra = sorted(present - set(spec.classes))
    if extra and spec.kind == "imagefolder":  # an ImageNet root holds all 1000 classes; a user tree must match
        raise DataError(f"dataset {spec.name!r}: {base} has class folders not in train/: {short_list(extra)}")
    return [base / c for c in spec.classes]


# ---------------------------------------------------------------------------------------------------------
# list / decode
# ---------------------------------------------------------------------------------------------------------


def list_folder(spec: DatasetSpec, split: str) -> tuple[list[str], torch.Tensor]:
    """Ids grouped by class in label order, file names sorted lexicographically within a class (no decoding)."""
    root = Path(spec.root)
    ids: list[str] = []
    labels: list[int] = []
    for label, folder in enumerate(class_dirs(spec, split)):
        # Plain string sort, as torchvision's make_dataset: "10.png" < "2.png" (the "first N files" rule).
        names = sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise DataError(f"dataset {spec.name!r}: class folder {folder} has no image files "
                            f"({' '.join(IMAGE_EXTENSIONS)}); every class needs at least one image")  # fmt: skip
        prefix = folder.relative_to(root).as_posix()
        ids += [f"{prefix}/{n}" for n in names]
        labels += [label] * len(names)
    return ids, torch.tensor(labels, dtype=torch.long)


def decode_folder(spec: DatasetSpec, split: str, ids: list[str], resolution: int) -> torch.Tensor:
    """uint8 N×C×R×R images of `ids` (relative paths from `list_folder`)."""
    prefix = split_dir(spec, split).relative_to(Path(spec.root)).as_posix() + "/"
    wrong = [i for i in ids if not i.startswith(prefix) or ".." in Path(i).parts]
    if wrong:
        raise ConfigError(f"ids not in {spec.name!r} {split} (expected '{prefix}<class>/<file>'): {short_list(wrong)}")
    paths = [Path(spec.root) / i for i in ids]
    return decode_files(paths, resolution, spec.channels, description=f"decoding {spec.name} {split}")
