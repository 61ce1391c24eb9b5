"""Distilled-set metrics no peer reports: diversity, representativeness, coverage and MMD to the real data.

Definitions (per class c, distilled features S_c = {s_i}, real features R_c = {r_j}, Euclidean distance d):

    diversity           mean_i min_{j≠i} d(s_i, s_j)                     MGD³ §4.2 / appendix G   ↑ better
    representativeness  mean_i mean_{r ∈ kNN_50(s_i, R_c)} d(s_i, r)     MGD³ §4.2 / appendix B   ↓ better
    coverage            mean_j min_i d(r_j, s_i)                          (ddbench)               ↓ better
    mmd2                unbiased MMD² (Gaussian kernel, median heuristic) (Gretton et al. 2012)   ↓ better

MGD³ measures diversity and representativeness in a t-SNE embedding of real + synthetic samples. t-SNE is
stochastic and depends on the set being measured, so numbers would not compare across sets; ddbench uses a
fixed feature space instead (deviation from the paper, see docs/metrics.md). The three distances are divided
by the class's median real pairwise distance, so they are unit-free and comparable across feature spaces.
`coverage` is the mean distance of a real image to its nearest distilled image of its class (the quantisation
error that k-means / k-center minimise): 0 when the set contains every real image. The MMD bandwidth comes
from the real data alone (median pairwise distance), so every set of a dataset is scored with one kernel.

Feature spaces ("auto" picks the first for embedded data, the second otherwise): "convnet3": penultimate
features of the dataset's feature network, a ConvNet-3 trained on the real training set (`ddbench.features`:
shipped for digits and fashion, shared with herding, k-center and the generator judge); "resnetap10": the 512-d pooled features of a ResNetAP-10 trained on it (IDC's herding space);
"pixels": the images themselves in [0, 1], area-downsampled to at most 32×32 (no training, fully fixed).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError

SPACES = ("convnet3", "resnetap10", "pixels")
METRICS = {  # name -> (direction, short description) for tables
    "diversity": ("↑", "mean distance to the nearest other distilled image of the class"),
    "representativeness": ("↓", "mean distance to the 50 nearest real images of the class"),
    "coverage": ("↓", "mean distance of a real image to its nearest distilled image"),
    "mmd2": ("↓", "unbiased MMD², Gaussian kernel (median heuristic on real data)"),
}
KNN = 50          # MGD³: "the mean distance of the closest 50 examples in the original dataset"
MAX_REAL = 1000   # real images per class used for the MMD and the distance scale (seeded subset)
MAX_POOLED = 2000  # images per side of the overall (all classes pooled) MMD


# ---------------------------------------------------------------------- kernels and distances
def pairwise_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a: n×d, b: m×d -> n×m Euclidean distances (float64 for a stable MMD)."""
    return torch.cdist(a.double(), b.double())


def median_distance(x: torch.Tensor) -> float:
    """Median of the off-diagonal pairwise distances of x (n×d); 1.0 when all points coincide."""
    d = pairwise_dist(x, x)
    off = d[~torch.eye(len(x), dtype=torch.bool)]
    med = float(off.median()) if off.numel() else 0.0
    return med if med > 0 else 1.0


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased MMD² between samples x (m×d) and y (n×d), k(a, b) = exp(−d²/(2σ²)). Can be slightly < 0."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        return float("nan")
    gamma = 1.0 / (2 * bandwidth**2)
    kxx = torch.exp(-gamma * pairwise_dist(x, x) ** 2)
    kyy = torch.exp(-gamma * pairwise_dist(y, y) ** 2)
    kxy = torch.exp(-gamma * pairwise_dist(x, y) ** 2)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))  # diagonal excluded: the unbiased U-statistic
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def _subset(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.arange(n) if n <= k else torch.randperm(n, generator=gen)[:k].sort().values


# ---------------------------------------------------------------------- metrics on features
def class_metrics(syn: torch.Tensor, real: torch.Tensor, gen: torch.Generator) -> dict:
    """Metrics of one class. syn: k×d distilled features, real: n×d real features of the same class."""
    sub = real[_subset(len(real), MAX_REAL, gen)]
    scale = median_distance(sub)
    d_sr = pairwise_dist(syn, real)  # k×n
    out = {"n_distilled": len(syn), "n_real": len(real), "scale": scale}
    if len(syn) > 1:
        d_ss = pairwise_dist(syn, syn).fill_diagonal_(float("inf"))
        out["diversity"] = float(d_ss.min(1).values.mean()) / scale
    else:  # one image: no nearest other image
        out["diversity"] = float("nan")
    knn = d_sr.topk(min(KNN, len(real)), dim=1, largest=False).values  # k×50
    out["representativeness"] = float(knn.mean()) / scale
    out["coverage"] = float(d_sr.min(0).values.mean()) / scale
    out["mmd2"] = mmd2_unbiased(sub, syn, scale)
    return out


def metrics_from_features(syn: torch.Tensor, syn_labels: torch.Tensor, real: torch.Tensor,
                          real_labels: torch.Tensor, num_classes: int, seed: int = 0) -> dict:
    """{"per_class": [dict per class], "overall": dict}: overall diversity / representativeness / coverage
    are class means (every class weighs the same); overall mmd2 is one estimate on all classes pooled."""
    gen = torch.Generator().manual_seed(seed)
    per_class = []
    for c in range(num_classes):
        s, r = syn[syn_labels == c], real[real_labels == c]
        if len(s) == 0 or len(r) == 0:
            raise DataError(f"class {c} has {len(s)} distilled and {len(r)} real images; metrics need both")
        per_class.append(class_metrics(s, r, gen))
    overall = {k: _nanmean([pc[k] for pc in per_class]) for k in ("diversity", "representativeness", "coverage")}
    overall["mmd2_class_mean"] = _nanmean([pc["mmd2"] for pc in per_class])
    pooled_real = real[_stratified(real_labels, num_classes, MAX_POOLED, gen)]
    pooled_syn = syn[_stratified(syn_labels, num_classes, MAX_POOLED, gen)]
    overall["mmd2"] = mmd2_unbiased(pooled_real, pooled_syn, median_distance(pooled_real))
    return {"per_class": per_class, "overall": overall}


def _stratified(labels: torch.Tensor, num_classes: int, total: int, gen: torch.Generator) -> torch.Tensor:
    """At most `total` indices, the same share of every class (seeded)."""
    per = max(1, total // num_classes)
    parts = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        parts.append(idx[_subset(len(idx), per, gen)])
    return torch.cat(parts)


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


# ---------------------------------------------------------------------- feature spaces
def match_images(images: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Resize distilled uint8 images to the real images' side (e.g. 256-px DiT samples vs a 32-px pool)."""
    if images.shape[1] != like.shape[1]:
        raise DataError(f"distilled images have {images.shape[1]} channels, the real data {like.shape[1]}; "
                        "score the set against the dataset it was distilled from")
    if images.shape[-2:] == like.shape[-2:]:
        return images
    from .data.images import resize_tensor

    return resize_tensor(images, like.shape[-1])


def pixel_features(images: torch.Tensor, side: int = 32) -> torch.Tensor:
    """uint8 N×C×H×W -> N×(C·s·s) float in [0, 1], area-downsampled to s = min(H, side)."""
    x = images.float().div(255)
    if x.shape[-1] > side:
        x = F.interpolate(x, size=(side, side), mode="area")
    return x.flatten(1)


# Network spaces: arch -> training recipe (ddbench.teachers.classifier keys). ResNetAP-10's is herding's ImageNet-subset
# recipe (IDC's herding space: 512-d global-average features), so the two share one cached network.
SPACE_RECIPES = {"resnetap10": {"epochs": 30, "batch_size": 64, "lr": 0.01}}


def resolve_space(spec, space: str) -> str:
    """"auto": ConvNet-3 for the 28–32 px embedded data, ResNetAP-10 for ImageNet subsets and image folders
    (a flattened ConvNet-3 map of a 256-px image would be 131,072-d)."""
    if space == "auto":
        return "convnet3" if spec.kind == "embedded" else "resnetap10"
    if space not in SPACES:
        raise ConfigError(f"unknown metrics feature space {space!r}; expected auto or one of {', '.join(SPACES)}")
    return space


def feature_recipe(spec, space: str) -> dict | None:
    """Training recipe of a network space. ConvNet-3: the dataset's feature network (`ddbench.features`), so
    one network per dataset measures distilled sets, selects herding / k-center sets and judges generators."""
    if space == "pixels":
        return None
    if space == "convnet3":
        from .features import dataset_recipe

        return dataset_recipe(spec.name)
    return dict(SPACE_RECIPES[space])


def space_network(spec, space: str) -> dict | None:
    """What a record says about the network of a space: ConvNet-3's identity (recipe, card version, sha256 of
    the shipped weights); the recipe for the others (trained here, deterministic on CPU); None for pixels."""
    if space == "convnet3":
        from .features import feature_identity

        return feature_identity(spec.name)
    return None if space == "pixels" else {"arch": space, "recipe": feature_recipe(spec, space)}


def embed_images(images: torch.Tensor, real_split, spec, space: str, device,
                 cache_dir, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(distilled features, real features) in a resolved `space`; real features are cached for networks."""
    if space == "pixels":
        return pixel_features(images), pixel_features(real_split.images)
    from .features import SHARED, embed, feature_network, real_features
    from .method import Context
    from .teachers.classifier import teacher_for

    ctx = Context(spec, torch.device(device), cache_dir, lambda: real_split, progress)  # bar of the network's training
    if space == "convnet3":  # the dataset's feature network: shipped, or trained once and cached
        real = real_features(ctx, space, SHARED)
        net = feature_network(spec, ctx.device, cache_dir, real_split)
    else:
        recipe = feature_recipe(spec, space)
        real = real_features(ctx, space, recipe)  # the network is trained once and cached, as are these features
        net = teacher_for(spec, space, ctx.device, cache_dir, real_split, cfg=recipe)
    return embed(net, images, spec, ctx.device), real


def set_metrics(dset, spec, real_split, device, cache_dir, space: str = "auto", progress=None) -> dict:
    """Metrics of a DistilledSet against the real training split, in a fixed feature space (module doc)."""
    from pathlib import Path

    if tuple(dset.classes) != tuple(spec.classes):
        raise DataError(f"the set's classes {list(dset.classes)[:3]}… differ from {spec.name}'s "
                        f"{list(spec.classes)[:3]}…; pass the dataset the set was distilled from")
    images = match_images(dset.images, real_split.images)
    space = resolve_space(spec, space)
    syn, real = embed_images(images, real_split, spec, space, device, Path(cache_dir), progress)
    out = metrics_from_features(syn, dset.labels, real, real_split.labels, len(spec.classes))
    out["space"] = space
    out["space_recipe"] = feature_recipe(spec, space)  # what trained the feature network (None: pixels)
    out["space_network"] = space_network(spec, space)  # ... and, for shipped weights, their sha256
    out["knn"] = KNN
    return out


# ---------------------------------------------------------------------- recorded with every distilled set
METRICS_FILE = "set_metrics.json"  # beside manifest.json in the set's folder
METRICS_ENV = "DDBENCH_SET_METRICS"  # default of `ddbench run --set-metrics`
AUTO_MAX_CLASSES = 100  # "auto" skips larger datasets: their feature network is an ImageNet-1K-scale training


def metrics_space_option(value: str | None) -> str:
    """--set-metrics, else DDBENCH_SET_METRICS, else "auto"; "off" disables the metrics."""
    space = value or os.environ.get(METRICS_ENV) or "auto"
    if space != "off" and space != "auto" and space not in SPACES:
        raise ConfigError(f"set metrics space {space!r} is not one of off, auto, {', '.join(SPACES)} "
                          f"(--set-metrics or {METRICS_ENV})")
    return space


def recorded_set_metrics(dset, folder, spec, train, device, cache_dir, space: str | None = None,
                         log=print, progress=None) -> dict | None:
    """Overall metrics of the set saved in `folder`, computed once and kept there as set_metrics.json.

    Returns {"space": ..., "diversity": ..., ...} (what result records carry in `extra["set_metrics"]`), or
    None when switched off. `train` is a callable returning the real training split (loaded only if needed)."""
    space = metrics_space_option(space)
    if space == "off":
        return None
    if space == "auto" and len(spec.classes) > AUTO_MAX_CLASSES:
        log(f"set metrics skipped for {spec.name} ({len(spec.classes)} classes); pass --set-metrics "
            "resnetap10 or pixels to compute them")
        return None
    space = resolve_space(spec, space)
    path = Path(folder) / METRICS_FILE
    sha = dset.provenance.get("sha256") or dset.sha256()
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("sha256") == sha and data.get("space") == space \
                    and data.get("space_network") == space_network(spec, space):  # a re-made network: again
                return _for_record(space, data["overall"], data["space_network"])
        except (OSError, ValueError, KeyError):
            pass  # unreadable or stale: computed again below
    m = set_metrics(dset, spec, train(), device, cache_dir, space=space, progress=progress)
    data = {"sha256": sha, "space": space, "space_recipe": m["space_recipe"], "space_network": m["space_network"],
            "knn": m["knn"],
            "overall": m["overall"], "per_class": m["per_class"]}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=_json_number))
    os.replace(tmp, path)
    log(f"set metrics ({space}): " + "  ".join(f"{k} {v:.4f}" for k, v in m["overall"].items()
                                                if isinstance(v, float) and not math.isnan(v)))
    return _for_record(space, m["overall"], m["space_network"])


def _for_record(space: str, overall: dict, network: dict | None) -> dict:
    """Plain JSON for a result record: an undefined value (diversity at IPC 1 is NaN) becomes null; the sha256
    of shipped feature-network weights is kept (which network measured the set)."""
    return {"space": space, "network_sha256": (network or {}).get("sha256"),
            **{k: None if v is None or math.isnan(v) else float(v) for k, v in overall.items()}}


def _json_number(v):
    return float(v) if hasattr(v, "__float__") else str(v)
