"""Selection baselines: real images chosen per class (random, first-n, herding, k-center).

- `random`: seeded uniform sampling without replacement, per class (what "random" should mean).
- `first-n`: the IDC/Minimax/MGD³ "random" rule: the first N files per class in lexicographic order
  (protocol-facts §2.1) — deterministic, kept under its own name so the two are never confused.
- `herding` / `kcenter`: greedy per class in the feature space of a network trained on the real training
  set (dc-protocol "coreset baselines"; IDC's herding uses ResNetAP-10 on ImageNet subsets, §4.6). The
  network is trained once per (dataset, arch, recipe) and cached; `feature_recipe: shared` (the embedded
  datasets) is the dataset's feature network (`ddbench.features`), shipped for digits and fashion. k-center's first centre is the image
  nearest the class mean (`first_centre: mean`, = herding's first pick), or a seeded random one (`random`).
"""
from __future__ import annotations

import time

import torch

from ddbench.identity import TEACHER_NUMERICS
from ddbench.distilled import DistilledSet
from ddbench.errors import ConfigError
from ddbench.method import Context, Method
from ddbench.features import SHARED
from ddbench.schema import Section, choice
from ddbench.teachers.classifier import RECIPE_RULES


# ---------------------------------------------------------------------- greedy selection rules
def herding_order(feats: torch.Tensor, k: int) -> list[int]:
    """Welling's herding: at step j pick the unused point closest to (j+1)·μ − Σ selected.  feats: n×d."""
    mu = feats.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    available = torch.ones(len(feats), dtype=torch.bool)
    for j in range(k):
        target = (j + 1) * mu - total
        dist = (feats - target).norm(dim=1).masked_fill(~available, float("inf"))
        i = int(dist.argmin())
        chosen.append(i)
        total += feats[i]
        available[i] = False
    return chosen


def kcenter_order(feats: torch.Tensor, k: int, first: int) -> list[int]:
    """k-center greedy: start at `first`, then repeatedly add the point farthest from its nearest centre."""
    chosen = [first]
    nearest = (feats - feats[first]).norm(dim=1)
    for _ in range(k - 1):
        i = int(nearest.argmax())
        chosen.append(i)
        nearest = torch.minimum(nearest, (feats - feats[i]).norm(dim=1))
    return chosen


def per_class_indices(labels: torch.Tensor, num_classes: int, ipc: int) -> list[torch.Tensor]:
    """Indices of each class, checking the class has at least `ipc` images."""
    out = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < ipc:
            raise ConfigError(f"class {c} has only {len(idx)} training images, fewer than --ipc {ipc}; "
                              f"choose an IPC of at most {len(idx)}")
        out.append(idx)
    return out


# ---------------------------------------------------------------------- adapters
class _Selection(Method):
    """Shared distill(): pick indices per class, then copy those real images."""
    numerics = ("ddbench.methods.selection", "ddbench.distilled")

    def select(self, ctx: Context, idx: torch.Tensor, ipc: int, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def distill(self, ctx: Context, ipc: int, seed: int) -> DistilledSet:
        t0 = time.perf_counter()
        train = ctx.train()
        gen = torch.Generator().manual_seed(seed)
        picked = [idx[self.select(ctx, idx, ipc, gen)] for idx in
                  per_class_indices(train.labels, len(ctx.spec.classes), ipc)]
        picked = torch.cat(picked)
        prov = {"method": self.name, "version": self.version, "seed": seed, "ipc": ipc, "config": self.cfg,
                "source_ids": [train.ids[i] for i in picked.tolist()],
                "timings": {"distill": time.perf_counter() - t0}}
        return DistilledSet(train.images[picked].clone(), train.labels[picked].clone(), ctx.spec.classes, prov)


class RandomSelection(_Selection):
    """Seeded uniform sampling without replacement, per class."""

    def select(self, ctx, idx, ipc, gen):
        return torch.randperm(len(idx), generator=gen)[:ipc]


class FirstN(_Selection):
    """The IDC rule: the first N images per class in lexicographic id order (ignores the seed)."""

    def select(self, ctx, idx, ipc, gen):
        train = ctx.train()
        ids = [train.ids[i] for i in idx.tolist()]
        order = sorted(range(len(ids)), key=ids.__getitem__)
        return torch.tensor(order[:ipc])


class _FeatureSelection(_Selection):
    """Herding / k-center: greedy in the feature space of a network trained on the real train split."""
    numerics = (*_Selection.numerics, "ddbench.features", *TEACHER_NUMERICS)

    defaults = {"feature_arch": "convnet3", "feature_recipe": {}}
    # the recipe keys of ddbench.teachers.classifier, or `shared`: the dataset's one feature network (ddbench.features)
    schema = {"feature_arch": "arch", "feature_recipe": Section(RECIPE_RULES, instead=choice([SHARED])),
              "feature_network": "dict?"}  # filled in by `resolve` (below), never read from the card

    @classmethod
    def resolve(cls, cfg: dict, dataset: str) -> dict:
        """`feature_recipe: shared` (the dataset's feature network) carries that network's identity: its
        recipe and the sha256 of its shipped weights are part of the set's key and the cell's hash."""
        from ddbench.features import SHARED, feature_identity

        recipe = cfg.get("feature_recipe")
        if recipe == SHARED:
            return {**cfg, "feature_network": feature_identity(dataset.split(":")[0])}
        return cfg  # a recipe of its own: its keys and values were checked against the schema

    def features(self, ctx: Context) -> torch.Tensor:
        from ddbench.features import real_features

        return real_features(ctx, self.cfg["feature_arch"], self.cfg["feature_recipe"])

    def distill(self, ctx, ipc, seed):
        self._feats = self.features(ctx)
        return super().distill(ctx, ipc, seed)


class Herding(_FeatureSelection):
    def select(self, ctx, idx, ipc, gen):
        return torch.tensor(herding_order(self._feats[idx], ipc))


FIRST_CENTRES = ("mean", "random")


def first_centre(feats: torch.Tensor, rule: str, gen: torch.Generator) -> int:
    """The first k-center centre of one class (feats: n×d). "mean": the image nearest the class mean, i.e.
    herding's first pick (DC's Table 1 has k-center = herding at IPC 1 on every dataset); "random": a seeded
    uniform draw (DeepCore's `k_center_greedy` with nothing selected yet)."""
    if rule == "mean":
        return int((feats - feats.mean(0)).norm(dim=1).argmin())
    if rule == "random":
        return int(torch.randint(len(feats), (1,), generator=gen))
    raise ConfigError(f"kcenter first_centre={rule!r}; expected one of {', '.join(FIRST_CENTRES)}")


class KCenter(_FeatureSelection):
    defaults = {**_FeatureSelection.defaults, "first_centre": "mean"}
    schema = {**_FeatureSelection.schema, "first_centre": choice(FIRST_CENTRES)}

    def select(self, ctx, idx, ipc, gen):
        feats = self._feats[idx]
        return torch.tensor(kcenter_order(feats, ipc, first_centre(feats, self.cfg["first_centre"], gen)))


class WholeSplit(Method):
    """The reference row of every leaderboard table: the whole training split, every image with its hard label.

    IPC and the seed do not apply (the set is the same for all of them): the runner records a reference
    method's cells with ipc = 0 ("all"), and `distill_key` ignores both, so every run of a dataset shares one
    set. The card's `protocol:` settings (fewer epochs over tens of thousands of images than over ten) sit
    between the protocol card and `--set`: docs/leaderboards.md#the-whole-dataset-reference.
    """

    def distill(self, ctx: Context, ipc: int, seed: int) -> DistilledSet:
        t0 = time.perf_counter()
        train = ctx.train()
        prov = {"method": self.name, "version": self.version, "seed": seed, "ipc": 0, "config": self.cfg,
                "timings": {"distill": time.perf_counter() - t0}}
        return DistilledSet(train.images.clone(), train.labels.clone(), ctx.spec.classes, prov)

    numerics = ("ddbench.methods.selection", "ddbench.distilled")

    def distill_key(self, ipc: int, seed: int, inputs: dict) -> str:
        return super().distill_key(0, 0, inputs)
