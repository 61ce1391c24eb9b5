"""RDED's released subset teachers (`LINs-lab/RDED@3f6453d`): file names, architectures, head row order.

RDED evaluates ImageNette / ImageWoof / ImageNet-10 / ImageNet-100 with teachers it trained and released as
weights only (README table: Nette ResNet-18 90.0, Conv5 89.6; Woof ResNet-18 75.0, Conv5 67.4; ImageNet-100
ResNet-18 83.4, Conv6 72.82). `synthesize/utils.py:load_model` reads them as

    checkpoint = torch.load(f"./data/pretrain_models/{dataset}_{model_name}.pth", map_location="cpu")
    model.load_state_dict(checkpoint["model"])

after `pruning_classifier` has cut the head to `nclass` rows, so a file is `{"model": state_dict}` with an
`nclass`-way head and no `module.` prefix. `model_name` is `resnet18` (torchvision's, BatchNorm) or `conv<D>`
(`synthesize/models.py:ConvNet`, BatchNorm, width 128, ReLU, avg-pool, keys `layers.conv.<d>`, `layers.norm.<d>`,
`classifier` — ddbench's `convnet<D>_bn` has the same keys) built for 128-px input on nette, woof and
imagenet-100 and 224 px otherwise.

Row order: RDED's class folders are "a five-digit extension of its class ID", the ImageNet-1K index
(`prepare/otherdataset.md`), read by torchvision's ImageFolder, which sorts them: head row r is the class with
the r-th smallest ImageNet-1K index. ddbench's lists keep the papers' order (woof's is not sorted), so the rows
are permuted to it. This is a reading of a README sentence; the teacher floor on the real validation split
(`teacher.min_acc_x_chance`) refuses a teacher whose rows would not match.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import DataError
from ..safeload import load_tensors

SUBSETS = {"imagenet-nette": "nette", "imagenet-woof": "woof", "imagenet-10": "idc", "imagenet-100": "imagenet100"}
INPUT_128 = ("imagenet-nette", "imagenet-woof", "imagenet-100")  # load_model: conv nets at 128 px on these
FILE_NAME = re.compile(r"^(?P<subset>[a-z0-9-]+)_(?P<arch>conv[1-9]|resnet18)\.pth$")
KNOWN_NAME = re.compile(r"^(imagenet-[a-z0-9]+|cifar10|cifar100|tinyimagenet)_[A-Za-z0-9_-]+\.pth$")


def is_rded_file(path) -> bool:
    """True when the file name follows RDED's `{subset}_{model_name}.pth` (data/pretrain_models/)."""
    return bool(KNOWN_NAME.match(Path(path).name))


def parse_name(path, dataset: str) -> tuple[str, str, int]:
    """(RDED subset, ddbench arch, input side) of a released teacher file meant for ddbench `dataset`."""
    name = Path(path).name
    m = FILE_NAME.match(name)
    if not m or m["subset"] not in SUBSETS:
        raise DataError(f"{name}: not one of RDED's ImageNet-subset teachers ({{subset}}_{{arch}}.pth with subset "
                        f"in {', '.join(SUBSETS)} and arch resnet18 or conv<D>); RDED's CIFAR / Tiny-ImageNet "
                        "teachers have no ddbench dataset. A file not from RDED must not be named like RDED's: rename it")
    subset, arch = m["subset"], m["arch"]
    if SUBSETS[subset] != dataset:
        raise DataError(f"{name} is RDED's {subset} teacher ({SUBSETS[subset]} in ddbench), not one for {dataset}; "
                        f"pass --dataset {SUBSETS[subset]} or the {dataset} teacher")
    if arch == "resnet18":
        return subset, "resnet18_tv", 224
    return subset, f"convnet{arch[4:]}_bn", 128 if subset in INPUT_128 else 224


def read_state(path) -> dict:
    """The `model` state dict of a released file (refused with a reason when it is not that format)."""
    obj = load_tensors(path, "RDED teacher", fix="expected the file RDED released: torch.save({'model': state_dict})")
    if not (isinstance(obj, dict) and isinstance(obj.get("model"), dict)):
        keys = sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{path} has no 'model' state dict (found {keys}); RDED's teachers are saved as "
                        "{'model': state_dict}")
    return obj["model"]


def input_side(path, dataset: str) -> int:
    """The side the file's net was built for: load_model's rule, or the other of 128 / 224 when the conv head
    says so (RDED's README lists its ImageNet-10 Conv5 at 128 px, where load_model builds conv nets at 224)."""
    subset, arch, side = parse_name(path, dataset)
    if not arch.startswith("convnet"):
        return side
    depth = int(arch[len("convnet"):-len("_bn")])
    head = read_state(path).get("classifier.weight")
    for candidate in (side, 224 if side == 128 else 128):
        if head is not None and head.shape[1] == 128 * (candidate >> depth) ** 2:
            return candidate
    return side  # no match: loading reports the shape mismatch


def row_order(imagenet_index) -> list[int]:
    """Head row of RDED's file for each ddbench label: the rank of the class's ImageNet-1K index."""
    ranked = sorted(imagenet_index)
    return [ranked.index(i) for i in imagenet_index]
