"""The feature network of a dataset, and features of the real training images in its space (cached).

One ConvNet-3 per (dataset, recipe) serves herding and k-center (`feature_recipe: shared`), the distilled-set
metrics (space `convnet3`) and the generator judge, so a first run trains it at most once. The recipe of each
dataset is a card value (`data/weights/features.yaml`). For the embedded datasets the network ships with the
package (`data/weights/<dataset>-convnet3.pt`): its sha256 is checked against the checked-in SHA256SUMS on
every load and its side file must name the card's recipe and the dataset's classes and resolution; a mismatch is
an error, never a silent retrain. `ddbench features train --dataset NAME --ship` makes the shipped files.

    net = feature_network(spec, device, cache_dir, train_split)   # shipped, else trained once and cached
    feature_identity("digits")   # {"arch", "recipe", "version", "sha256"}: part of every cell that uses it
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path

import torch

from .errors import ConfigError, DataError
from .safeload import load_tensors

WEIGHTS_DIR = Path(__file__).parent / "data" / "weights"
SHARED = "shared"  # the feature_recipe value that means "the dataset's feature network"
SHIP_FIX = "reinstall ddbench, or re-make it with `ddbench features train --dataset {name} --ship`"


# ---------------------------------------------------------------------------------------------------------
# The card: one recipe per dataset, and what ships
# ---------------------------------------------------------------------------------------------------------


def feature_card() -> dict:
    return _read_card(WEIGHTS_DIR)


@lru_cache(maxsize=4)
def _read_card(folder: Path) -> dict:
    import yaml

    return yaml.safe_load((folder / "features.yaml").read_text())


def dataset_recipe(name: str) -> dict:
    """The recipe (ddbench.teachers.classifier keys) of dataset `name`'s feature network."""
    card = feature_card()
    return dict(card["recipes"].get(name, card["default"]))


def shipped_sha256() -> dict[str, str]:
    """File name -> sha256 of the shipped weights (data/weights/SHA256SUMS, `sha256sum` format)."""
    path = WEIGHTS_DIR / "SHA256SUMS"
    return _read_sums(path, path.stat().st_mtime_ns) if path.is_file() else {}


@lru_cache(maxsize=4)
def _read_sums(path: Path, _mtime_ns: int) -> dict[str, str]:  # keyed by mtime too: `--ship` rewrites it
    pairs = (line.split() for line in path.read_text().splitlines() if line.strip())
    return {name: digest for digest, name in pairs}


def shipped_name(name: str) -> str:
    return f"{name}-{feature_card()['arch']}.pt"


def feature_identity(name: str) -> dict:
    """What of dataset `name`'s feature network can move a number: arch, recipe, card version and the sha256 of
    the shipped weights (None: trained here from the recipe, deterministic on CPU)."""
    card = feature_card()
    return {"arch": card["arch"], "recipe": dataset_recipe(name), "version": card["version"],
            "sha256": shipped_sha256().get(shipped_name(name))}


# ---------------------------------------------------------------------------------------------------------
# The network: shipped weights (verified) or trained once into the teacher cache
# ---------------------------------------------------------------------------------------------------------


def feature_network(spec, device, cache_dir, train_split, progress=None) -> torch.nn.Module:
    """The dataset's feature network in eval mode on `device` (`train_split`: a Split or a callable)."""
    arch, recipe = feature_card()["arch"], dataset_recipe(spec.name)
    if shipped_name(spec.name) in shipped_sha256():
        return load_shipped(spec, arch, recipe).to(device).eval()
    from .teachers.classifier import teacher_for

    return teacher_for(spec, arch, device, cache_dir, train_split, cfg=recipe, progress=progress)


def load_shipped(spec, arch: str, recipe: dict) -> torch.nn.Module:
    """The shipped network of `spec`, after checking its bytes and what it was trained on."""
    from .nets.build import build_net
    from .teachers.classifier import resolve_recipe

    folder = WEIGHTS_DIR
    path, expected = folder / shipped_name(spec.name), shipped_sha256().get(shipped_name(spec.name))
    fix = SHIP_FIX.format(name=spec.name)
    if not path.is_file():
        raise DataError(f"the shipped feature network {path} is missing; {fix}")
    if file_sha256(path) != expected:
        raise DataError(f"{path} has sha256 {file_sha256(path)[:12]}, but {folder / 'SHA256SUMS'} says "
                        f"{str(expected)[:12]}: the file was changed or damaged; {fix}")
    meta = _side_file(path)
    wanted = {"recipe": resolve_recipe(spec, recipe), "classes": list(spec.classes), "resolution": spec.resolution}
    stale = [k for k, v in wanted.items() if meta.get(k) != v]
    if stale:
        raise DataError(f"{path} was trained with another {' / '.join(stale)} than {spec.name}'s card has now; {fix}")
    net = build_net(arch, spec.num_classes, spec.channels, int(meta["recipe"]["input_size"]))
    net.load_state_dict(load_tensors(path, "shipped feature network", fix=fix))
    return net.eval()


def _side_file(path: Path) -> dict:
    side = path.with_suffix(".json")
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError):
        raise DataError(f"{side} (what {path.name} was trained on) is missing or not JSON; "
                        f"{SHIP_FIX.format(name=path.stem.split('-')[0])}") from None


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ship(spec, cache_dir) -> Path:
    """Copy the trained (cached) network of `spec` into the package with its side file; record its sha256."""
    from .teachers.classifier import resolve_recipe, teacher_dir

    folder = WEIGHTS_DIR
    arch, recipe = feature_card()["arch"], resolve_recipe(spec, dataset_recipe(spec.name))
    trained = teacher_dir(cache_dir, spec, arch, recipe)
    if not (trained / "weights.pt").is_file():
        raise ConfigError(f"no trained feature network for {spec.name} under {trained}; train it first")
    info = json.loads((trained / "recipe.json").read_text())
    dest = folder / shipped_name(spec.name)
    shutil.copyfile(trained / "weights.pt", dest)
    side = {"dataset": spec.name, "classes": list(spec.classes), "resolution": spec.resolution, "arch": arch,
            "recipe": recipe, "card_version": feature_card()["version"], "train_images": info["train_images"],
            "final_train_acc": info["train_acc"][-1], "train_seconds": round(info["seconds"], 1),
            "made_by": f"ddbench features train --dataset {spec.name} --ship"}
    dest.with_suffix(".json").write_text(json.dumps(side, indent=1) + "\n")
    sums = {**shipped_sha256(), dest.name: file_sha256(dest)}
    (folder / "SHA256SUMS").write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
    return dest


# ---------------------------------------------------------------------------------------------------------
# Features of the real training images
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def embed(net: torch.nn.Module, images_u8: torch.Tensor, spec, device, batch_size: int = 512) -> torch.Tensor:
    """Penultimate features (N×D, float32, CPU) of uint8 images, normalised with the dataset's mean/std."""
    net.eval().to(device)
    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
    out = []
    for i in range(0, len(images_u8), batch_size):
        x = images_u8[i:i + batch_size].to(device).float().div_(255).sub_(mean).div_(std)
        out.append(net.features(x).float().cpu())
    return torch.cat(out)


def real_features(ctx, arch: str, recipe: dict | str) -> torch.Tensor:
    """Features of every image of ctx.train() (in its order) under a classifier trained on it; `recipe`
    "shared" (with the card's arch) is the dataset's feature network."""
    train = ctx.train()
    if recipe == SHARED:
        identity = feature_identity(ctx.spec.name)
        if arch != identity["arch"]:
            raise ConfigError(f"feature_recipe: shared is the dataset's {identity['arch']} feature network, but "
                              f"feature_arch is {arch!r}; set feature_arch={identity['arch']} or give a recipe")
        key = {"shared": identity, "n": len(train.labels)}
    else:
        key = {"arch": arch, "recipe": recipe, "n": len(train.labels)}
    folder = ctx.cache_path("features", key)
    file = folder / "features.pt"
    if file.exists():
        return load_tensors(file, "cached features", fix="it is a cache file: delete it and run again")
    if recipe == SHARED:
        net = feature_network(ctx.spec, ctx.device, ctx.cache_dir, train, progress=ctx.progress)
    else:
        from .teachers.classifier import teacher_for

        net = teacher_for(ctx.spec, arch, ctx.device, ctx.cache_dir, train, cfg=recipe or None, progress=ctx.progress)
    feats = embed(net, train.images, ctx.spec, ctx.device)
    tmp = file.with_suffix(f".tmp{os.getpid()}")
    torch.save(feats, tmp)
    os.replace(tmp, file)
    return feats
