"""Teachers: classifiers trained on a dataset's real training split (or loaded from torchvision weights).

They serve SRe2L / CUDD (model inversion needs BatchNorm running statistics), the soft-label protocols
(the teacher labels every augmented crop) and the feature-space selection baselines (`ddbench.features`).

    net = teacher_for(spec, "convnet3_bn", device, cache_dir, train_split)           # trained once, cached
    net = teacher_for(spec, "resnet18_tv", device, cache_dir, train, path="rn18.pth")  # ImageNet-1K weights
    net = teacher_for(spec, None, device, cache_dir, train, path="imagenet-woof_conv5.pth")  # RDED's released file
    teacher_identity(spec, None, None, "imagenet-woof_conv5.pth", cache_dir)  # arch, source, sha256, input side

A trained teacher lives at `<cache>/teachers/<dataset>-<arch>-<hash of recipe>/`: `recipe.json` (the resolved
recipe, the per-epoch training loss/accuracy, the time it took) and `weights.pt`. Training saves
`checkpoint.pt` every `chunk_epochs` epochs (net, optimiser, generator state), so a killed run resumes.

A teacher file that names its classes (a `classes` list in the checkpoint dict, or `<file>.json` beside it
with `classes`) must list them in the dataset's order (`ddbench.data.gates.check_class_order`).
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..engine.augment import hflip, normalize, random_resized_crop, to_float
from . import rded as teacher_rded
from ..config import config_hash
from ..data.gates import check_class_order
from ..errors import ConfigError, DataError
from ..safeload import load_tensors
from ..nets.build import build_net
from ..schema import choice
from ..engine.train import OPTIMIZERS, SCHEDULES, build_optimizer, device_generator, lr_factor

# ---------------------------------------------------------------------------------------------------------
# Defaults: BatchNorm nets (the BN-statistics loss needs running statistics)
# ---------------------------------------------------------------------------------------------------------

DEFAULT_ARCH = {"embedded": "convnet3_bn", "imagenet": "resnet18_tv", "imagefolder": "resnet18_tv"}
# Recipes are ddbench's choice: the reference teachers' recipes for subsets are not published (facts §3.3).
RECIPES = {
    "embedded": {"epochs": 10, "batch_size": 256, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
                 "weight_decay": 5e-4, "schedule": "cosine", "augment": "none", "min_crop": 0.08,
                 "input_size": None, "subset": None, "seed": 0, "chunk_epochs": 5},
    "imagenet": {"epochs": 60, "batch_size": 128, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                 "weight_decay": 1e-4, "schedule": "cosine", "augment": "rrc_flip", "min_crop": 0.08,
                 "input_size": 224, "subset": None, "seed": 0, "chunk_epochs": 5},
}
AUGMENTS = ("none", "flip", "rrc_flip")
# Card rules (ddbench.schema) of a recipe mapping (`teacher_recipe:`, `feature_recipe:`, `teacher.recipe:`)
RECIPE_RULES = {"epochs": "int>=1", "batch_size": "int>=1", "optimizer": choice(OPTIMIZERS), "lr": "float>=0",
                "momentum": "float[0..1]", "weight_decay": "float>=0", "schedule": choice(SCHEDULES),
                "augment": choice(AUGMENTS), "min_crop": "prob", "input_size": "int>=1?", "subset": "int>=1?",
                "seed": "int", "chunk_epochs": "int>=1"}


def default_arch(spec) -> str:
    return DEFAULT_ARCH.get(spec.kind, "resnet18_tv")


def resolve_recipe(spec, cfg: dict | None) -> dict:
    """The kind's default recipe with `cfg` merged in; unknown keys are refused."""
    base = dict(RECIPES["embedded" if spec.kind == "embedded" else "imagenet"])
    for k, v in (cfg or {}).items():
        if k not in base:
            raise ConfigError(f"teacher recipe has no key {k!r}; known keys: {', '.join(sorted(base))}")
        base[k] = v
    if base["augment"] not in AUGMENTS:
        raise ConfigError(f"teacher recipe augment={base['augment']!r}; expected one of {', '.join(AUGMENTS)}")
    if base["input_size"] is None:
        base["input_size"] = spec.resolution
    return base


# ---------------------------------------------------------------------------------------------------------
# Input pipeline: uint8 images -> normalised network input at the recipe's size
# ---------------------------------------------------------------------------------------------------------


def teacher_input(images_u8: torch.Tensor, spec, size: int) -> torch.Tensor:
    """Deterministic view: [0, 1] floats resized (bilinear, antialiased) to size×size, then normalised."""
    x = to_float(images_u8)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x, spec.mean, spec.std)


def _train_augment(recipe: dict, spec) -> Callable:
    size = int(recipe["input_size"])

    def aug(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:  # x: N×C×H×W in [0, 1]
        if recipe["augment"] == "rrc_flip":
            x = random_resized_crop(x, size, g, scale=(float(recipe["min_crop"]), 1.0))
        elif x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if recipe["augment"] in ("flip", "rrc_flip"):
            x = hflip(x, g)
        return normalize(x, spec.mean, spec.std)

    return aug


@torch.no_grad()
def predict(net: nn.Module, images_u8: torch.Tensor, spec, device, size: int | None = None,
            batch_size: int = 512) -> torch.Tensor:
    """Logits (N×K float32, CPU) of uint8 images under the deterministic view."""
    net.eval()
    size = size or images_u8.shape[-1]
    out = [net(teacher_input(images_u8[i:i + batch_size].to(device), spec, size)).float().cpu()
           for i in range(0, len(images_u8), batch_size)]
    return torch.cat(out) if out else torch.empty(0, spec.num_classes)


# ---------------------------------------------------------------------------------------------------------
# Training (resumable)
# ---------------------------------------------------------------------------------------------------------


def teacher_dir(cache_dir, spec, arch: str, recipe: dict) -> Path:
    key = config_hash({"dataset": spec.name, "classes": list(spec.classes), "resolution": spec.resolution,
                       "arch": arch, "recipe": recipe})
    return Path(cache_dir) / "teachers" / f"{spec.name.replace(':', '_').replace('/', '_')}-{arch}-{key}"


def _subset(labels: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded uniform random subset of n images (all images when n is None)."""
    if n is None or n >= len(labels):
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(labels), generator=g)[:n]
    return keep.sort().values


CACHE_FIX = "it is a cache file: delete it and run again"


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_teacher(spec, train_split, arch: str, cfg: dict | None, device, cache_dir, progress=None) -> nn.Module:
    """Train (or resume, or load the finished) teacher `arch` on `train_split` with recipe `cfg`; returns it on CPU."""
    recipe = resolve_recipe(spec, cfg)
    folder = teacher_dir(cache_dir, spec, arch, recipe)
    net = build_net(arch, spec.num_classes, spec.channels, int(recipe["input_size"]),
                    generator=torch.Generator().manual_seed(int(recipe["seed"])))
    if (folder / "weights.pt").exists():
        if (folder / "recipe.json").exists():
            classes = json.loads((folder / "recipe.json").read_text()).get("classes")
            if classes is not None:
                check_class_order(classes, spec, f"cached teacher {folder}")
        net.load_state_dict(load_tensors(folder / "weights.pt", "teacher weights", fix=CACHE_FIX))
        return net.eval()
    folder.mkdir(parents=True, exist_ok=True)
    split = train_split() if callable(train_split) else train_split
    keep = _subset(split.labels, recipe["subset"], int(recipe["seed"]))
    images, labels = split.images[keep].to(device), split.labels[keep].to(device)
    device = torch.device(device)
    net.to(device).train()
    opt = build_optimizer(net, {"name": recipe["optimizer"], "lr": recipe["lr"], "momentum": recipe["momentum"],
                                "weight_decay": recipe["weight_decay"]})
    gen = device_generator(torch.Generator().manual_seed(int(recipe["seed"]) + 1), device)
    state = {"epoch": 0, "loss": [], "acc": [], "seconds": 0.0}
    if (folder / "checkpoint.pt").exists():  # resume a killed run
        ck = load_tensors(folder / "checkpoint.pt", "teacher checkpoint", fix=CACHE_FIX)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        state = ck["state"]
    aug, epochs, bs = _train_augment(recipe, spec), int(recipe["epochs"]), int(recipe["batch_size"])
    epoch_iter = range(state["epoch"], epochs)
    if progress is not None:
        epoch_iter = progress.track(epoch_iter, description=f"teacher {arch}", total=epochs - state["epoch"])
    for epoch in epoch_iter:
        t0 = time.perf_counter()
        loss, acc = _train_epoch(net, opt, images, labels, aug, gen, bs, recipe["lr"],
                                 lr_factor({"name": recipe["schedule"]}, epoch, epochs))
        state = {"epoch": epoch + 1, "loss": state["loss"] + [loss], "acc": state["acc"] + [acc],
                 "seconds": state["seconds"] + time.perf_counter() - t0}
        if (epoch + 1) % int(recipe["chunk_epochs"]) == 0 and epoch + 1 < epochs:
            _atomic_save({"net": net.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                          "state": state}, folder / "checkpoint.pt")
    net.cpu().eval()
    info = {"dataset": spec.name, "classes": list(spec.classes), "arch": arch, "recipe": recipe, "train_images": len(keep),
            "train_loss": state["loss"], "train_acc": state["acc"], "seconds": state["seconds"]}
    (folder / "recipe.json").write_text(json.dumps(info, indent=1))
    _atomic_save(net.state_dict(), folder / "weights.pt")
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    return net


def _train_epoch(net, opt, images, labels, aug, gen, batch_size: int, base_lr: float, factor: float):
    """One epoch over a seeded permutation (last batch partial); returns (mean loss, train accuracy %)."""
    for group in opt.param_groups:
        group["lr"] = base_lr * factor
    perm = torch.randperm(len(images), generator=gen, device=gen.device).to(images.device)
    total = torch.zeros(2, device=images.device)
    for s in range(0, len(images), batch_size):
        idx = perm[s:s + batch_size]
        logits = net(aug(to_float(images[idx]), gen))
        loss = F.cross_entropy(logits, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += torch.stack([loss.detach() * len(idx), (logits.argmax(1) == labels[idx]).sum().float()])
    loss_sum, correct = total.tolist()
    return loss_sum / len(images), 100.0 * correct / len(images)


# ---------------------------------------------------------------------------------------------------------
# Loading weights: torchvision-format state dicts (a 1000-way head is cut to the subset) and RDED's released files
# ---------------------------------------------------------------------------------------------------------

TORCHVISION_NAME = re.compile(r"^[a-z0-9_]+-[0-9a-f]{8}\.pth$")  # e.g. resnet18-f37072fd.pth (torch hub cache names)


def _state_dict(path: Path) -> tuple[dict, list | None]:
    """(state dict without `module.` prefixes, the class list the checkpoint names or None)."""
    obj = load_tensors(path, "teacher weights", fix="expected a torch state dict file (--teacher / DDBENCH_TEACHER)")
    classes = obj.get("classes") if isinstance(obj, dict) and isinstance(obj.get("classes"), (list, tuple)) else None
    for key in ("state_dict", "model", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}, classes  # DataParallel checkpoints


def named_classes(path: Path, in_checkpoint: list | None) -> list | None:
    """The class list a teacher file names: its `classes` entry, else `<file>.json` / `<stem>.json` beside it."""
    if in_checkpoint is not None:
        return list(in_checkpoint)
    for side in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if side.is_file():
            try:
                classes = json.loads(side.read_text()).get("classes")
            except (ValueError, AttributeError):
                raise DataError(f"{side} is not a JSON object; a teacher manifest is {{\"classes\": [...]}}") from None
            if classes is not None:
                return list(classes)
    return None


def load_teacher(path, arch: str | None, spec, size: int | None = None) -> nn.Module:
    """A teacher from a weights file: RDED's released subset teachers by their file name, else a state dict.

    A state dict's 1000-way head is cut to rows `spec.imagenet_index` (RDED's `pruning_classifier`: the subset's
    logits are the ImageNet-1K logits of its classes); a head with `len(spec.classes)` outputs is loaded as it
    is. `size` (default: 224 for ImageNet data, the stored resolution for embedded data) only matters for nets
    whose head depends on the input side. `arch` None: the file's (RDED) or the dataset kind's default.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"teacher weights {path} do not exist; pass an existing file with --teacher")
    if teacher_rded.is_rded_file(path):
        return load_rded_teacher(path, arch, spec)
    arch = arch or default_arch(spec)
    state, classes = _state_dict(path)
    named = named_classes(path, classes)
    if named is not None:
        check_class_order(named, spec, f"teacher {path}")
    size = size or teacher_input_size(spec, path=path)
    head_keys = [k for k in state if k.endswith(("fc.weight", "classifier.weight"))]
    if not head_keys:
        raise DataError(f"{path} has no fc.weight / classifier.weight: not a classifier state dict for {arch}")
    rows = state[head_keys[-1]].shape[0]
    net = _built_and_loaded(path, arch, rows, spec.channels, size, state)
    if rows == spec.num_classes:
        return net.eval()
    if spec.imagenet_index is None or rows != 1000:
        raise DataError(f"{path} has a {rows}-way head but {spec.name} has {spec.num_classes} classes and "
                        "no ImageNet-1K index to cut it by; use weights trained on this dataset")
    _select_rows(net, spec.imagenet_index)
    return net.eval()


def load_rded_teacher(path: Path, arch: str | None, spec) -> nn.Module:
    """RDED's `{subset}_{model}.pth` ({"model": state dict}, subset-way head), rows put in ddbench's class order."""
    subset, rded_arch, _ = teacher_rded.parse_name(path, spec.name)
    side = teacher_rded.input_side(path, spec.name)
    if arch and arch != rded_arch:
        raise ConfigError(f"{path.name} is RDED's {subset} {rded_arch} teacher, but teacher.arch is {arch!r}; "
                          f"leave teacher.arch unset or set it to {rded_arch}")
    net = _built_and_loaded(path, rded_arch, spec.num_classes, spec.channels, side, teacher_rded.read_state(path))
    _select_rows(net, teacher_rded.row_order(spec.imagenet_index))
    return net.eval()


def _built_and_loaded(path: Path, arch: str, rows: int, channels: int, size: int, state: dict) -> nn.Module:
    net = build_net(arch, rows, channels, size)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise DataError(f"{path} does not fit arch {arch!r} ({detail}). "
                        "Pass the arch the weights were trained with (e.g. --arch resnet18_tv).") from None
    return net


def _select_rows(net: nn.Module, rows) -> None:
    """Replace the head by its rows `rows` (in that order): label i's logit is the old logit rows[i]."""
    head: nn.Linear = net.classifier
    keep = torch.as_tensor(list(rows))
    cut = nn.Linear(head.in_features, len(keep), bias=head.bias is not None)
    with torch.no_grad():
        cut.weight.copy_(head.weight[keep])
        if head.bias is not None:
            cut.bias.copy_(head.bias[keep])
    net.classifier = cut


# ---------------------------------------------------------------------------------------------------------
# One entry point for methods, protocols, features and the CLI
# ---------------------------------------------------------------------------------------------------------


def teacher_for(spec, arch: str | None, device, cache_dir, train_split, cfg: dict | None = None,
                path=None, progress=None) -> nn.Module:
    """The teacher for `spec`: loaded from `path` when given, else trained on `train_split` (cached by recipe).

    `train_split` is a Split or a callable returning one (called only when training is needed).
    Returns the network in eval mode on `device`.
    """
    if path:
        net = load_teacher(path, arch, spec)
    elif spec.num_classes >= 1000 and cfg is None:  # a multi-GPU-day job should never start by accident
        raise ConfigError(f"{spec.name} needs a teacher and none was given: pass --teacher <torchvision-format "
                          "weights> (RDED/SRe2L/CUDD use torchvision's ImageNet-1K ResNet-18), or give an explicit "
                          "teacher recipe to train one here")
    else:
        net = train_teacher(spec, train_split, arch or default_arch(spec), cfg, device, cache_dir, progress)
    return net.to(device).eval()


def teacher_input_size(spec, cfg: dict | None = None, path=None) -> int:
    """The input side the teacher expects (RDED's conv teachers: 128 on nette/woof/imagenet100; other loaded
    ImageNet weights: 224; else the recipe's input_size)."""
    if path and teacher_rded.is_rded_file(path):
        return teacher_rded.input_side(path, spec.name)
    if path:
        return 224 if spec.kind != "embedded" else spec.resolution
    return int(resolve_recipe(spec, cfg)["input_size"])


def teacher_identity(spec, arch: str | None, cfg: dict | None, path, cache_dir) -> dict:
    """What a record says about the teacher: arch, source, sha256 of its weights file, input side.

    source: "ddbench-trained", "rded-released:<file name>", "torchvision" (a torch-hub file name such as
    resnet18-f37072fd.pth) or "user:<path>". Call it after `teacher_for` (a trained teacher's file exists then).
    """
    if path:
        path = Path(path)
        if teacher_rded.is_rded_file(path):
            arch, source = teacher_rded.parse_name(path, spec.name)[1], f"rded-released:{path.name}"
        else:
            arch = arch or default_arch(spec)
            source = "torchvision" if TORCHVISION_NAME.match(path.name) else f"user:{path.resolve()}"
        return {"arch": arch, "source": source, "sha256": file_sha256(path),
                "input_size": teacher_input_size(spec, path=path)}
    arch, recipe = arch or default_arch(spec), resolve_recipe(spec, cfg)
    weights = teacher_dir(cache_dir, spec, arch, recipe) / "weights.pt"
    return {"arch": arch, "source": "ddbench-trained", "sha256": file_sha256(weights) if weights.exists() else None,
            "input_size": int(recipe["input_size"])}


def file_sha256(path) -> str:
    """sha256 of a file's bytes, computed once per (path, size, modification time) (ddbench.identity)."""
    from ..identity import content_sha256

    return content_sha256(Path(path))
