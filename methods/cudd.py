"""CUDD: Curriculum Dataset Distillation (Ma, Cao, Yang, Gong, Wei; seed paper 001, code MIV-XJTU/CUDD@0bf778c).

The IPC budget is produced in J curricula (paper §III-A): J = max(0, ⌊log2(IPC/5)⌋) + 1. Curriculum j:
1. Initialise S_j from real images (`select_initial`, eq. 5 / `distill/initialize.py`): per class, in a seeded
   random order, images the teacher classifies correctly and the previous student misclassifies ("medium");
   then teacher ✗ and student ✗ ("hard"); then any unused image ("other"). The first curriculum has no
   student: teacher ✓ ("simple"), then "other". An image is never used by two curricula.
2. Optimise S_j (eq. 6, `distill/distill.py`): CE + r_bn·L_bn on the teacher, + α_reg·MSE between the jointly
   augmented images and initial images, + α_adv·(−log(1 − p_student(y))) on samples the teacher gets right.
3. Train the student on S_1..S_j with teacher soft labels (FKD-style: RRC 0.08–1 + flip + CutMix, KL at T),
   continuing from the previous student with lr 5e-4 (first student: lr 1e-3, from scratch).
After the last curriculum the set is relabelled with the teacher (stored soft labels).

Curriculum boundaries (the paper gives J and the log schedule of its Fig. 7, IPC {5, 10, 20, 40}): curriculum
j < J ends at IPC 5·2^(j−1), the last at the requested IPC. IPC 10 → [0,5) [5,10); IPC 50 → ends 5, 10, 20, 50.
`curricula: [20, 50]` reproduces the README's two-curriculum IPC-50 run.
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn

from ddbench.distilled import DistilledSet
from ddbench.errors import ConfigError
from ddbench.method import Context
from ddbench.schema import choice

from ddbench.methods.sre2l import SRe2L, class_batches, freeze, normalise, recover, relabel, to_uint8

# ---------------------------------------------------------------------------------------------------------
# Curriculum schedule
# ---------------------------------------------------------------------------------------------------------


def num_curricula(ipc: int, base: int = 5) -> int:
    """J = max(0, ⌊log2(ipc / base)⌋) + 1, in integers (the largest k with base·2^k ≤ ipc, plus one)."""
    k = 0  # for ipc < base the floor is negative and max(0, ·) gives 0
    while base * 2 ** (k + 1) <= ipc:
        k += 1
    return k + 1


def curriculum_ends(ipc: int, explicit: list[int] | None = None, base: int = 5) -> list[int]:
    """Exclusive end IPC of each curriculum: [5, 10, 20, ..., ipc] (J entries), or the explicit list."""
    if explicit:
        ends = [int(e) for e in explicit]
        if ends[-1] != ipc or any(b <= a for a, b in zip([0] + ends, ends)):
            raise ConfigError(f"curricula {ends}: expected increasing curriculum ends finishing at --ipc {ipc} "
                              "(e.g. curricula=[20, 50] for IPC 50), or null for the paper's log schedule")
        return ends
    j = num_curricula(ipc, base)
    return [base * 2 ** i for i in range(j - 1)] + [ipc]


# ---------------------------------------------------------------------------------------------------------
# Initialisation from real images (feedback evaluation)
# ---------------------------------------------------------------------------------------------------------


class LazyPredictor:
    """argmax predictions of a net on train images, computed on demand for given indices and cached."""

    def __init__(self, net: nn.Module, images: torch.Tensor, spec, device, size: int, batch_size: int = 512,
                 how: str = "crop"):
        self.net, self.images, self.spec, self.device, self.size = net, images, spec, device, size
        self.how = how
        self.batch_size = batch_size
        self.pred = torch.full((len(images),), -1, dtype=torch.long)

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        todo = idx[self.pred[idx] < 0]
        for s in range(0, len(todo), self.batch_size):
            part = todo[s:s + self.batch_size]
            x = _prepare(self.images[part], self.spec, self.size, self.device, self.how)
            self.pred[part] = self.net(x).argmax(1).cpu()
        return self.pred[idx]


FRAMES = ("crop", "resize")


def frame(images_u8: torch.Tensor, size: int, device, how: str = "crop", chunk: int = 256) -> torch.Tensor:
    """Real images (uint8 N×C×H×W, stored as the Resize(R) + CenterCrop(R) square) -> uint8 at size×size.

    "crop": the view of CUDD's loader (`distill/initialize.py`: Resize(256) + CenterCrop(224)), i.e. Resize to
    ⌊size·8/7⌋ then CenterCrop(size); from the stored 256 square of an ImageNet image that is its centre 224
    crop. "resize": Resize(size) + CenterCrop(size) of the stored square (card v1: the whole square, shrunk).
    Images already at size×size (the embedded data) are used as stored."""
    from ddbench.engine.augment import center_crop, resize_shorter, to_float
    from ddbench.engine.augment import to_uint8 as quantise

    if how not in FRAMES:
        raise ConfigError(f"cudd init_frame={how!r}; expected one of {', '.join(FRAMES)}")
    if images_u8.shape[-2:] == (size, size):
        return images_u8.to(device)
    outer = size * 8 // 7 if how == "crop" else size
    parts = [quantise(center_crop(resize_shorter(to_float(images_u8[i:i + chunk].to(device)), outer), size))
             for i in range(0, len(images_u8), chunk)]
    return torch.cat(parts)


def _prepare(images_u8: torch.Tensor, spec, size: int, device, how: str = "crop") -> torch.Tensor:
    return normalise(frame(images_u8, size, device, how), spec, device)


def _class_choice(order: torch.Tensor, need: int, y: int, teacher, student, chunk: int) -> tuple[list, dict]:
    """Pick `need` indices from `order` (one class, seeded order) by tier; returns (indices, tier counts)."""
    primary, seen = [], 0
    first = "simple" if student is None else "medium"
    while len(primary) < need and seen < len(order):  # scan lazily: most classes need one chunk
        part = order[seen:seen + chunk]
        ok_t = teacher(part) == y
        keep = ok_t if student is None else ok_t & (student(part) != y)
        primary += part[keep].tolist()
        seen += len(part)
    chosen = primary[:need]
    counts = {first: len(chosen)}
    if len(chosen) < need and student is not None:  # whole class scanned: teacher ✗ and student ✗
        taken = set(chosen)
        hard = order[(teacher(order) != y) & (student(order) != y)].tolist()
        extra = [i for i in hard if i not in taken][:need - len(chosen)]
        chosen += extra
        counts["hard"] = len(extra)
    if len(chosen) < need:  # any unused image of the class, in the same order
        taken = set(chosen)
        extra = [i for i in order.tolist() if i not in taken][:need - len(chosen)]
        chosen += extra
        counts["other"] = len(extra)
    return chosen, counts


def select_initial(labels: torch.Tensor, num_classes: int, need: int, used: torch.Tensor, teacher, student,
                   gen: torch.Generator, chunk: int = 256) -> tuple[torch.Tensor, dict]:
    """Initial real images of one curriculum: need per class, none of them `used`.

    teacher / student: callables idx -> argmax prediction (student None for the first curriculum).
    Returns (K×need indices: row c = class c, in choice order; tier counts summed over classes).
    """
    rows, totals = [], {}
    for c in range(num_classes):
        pool = ((labels == c) & ~used).nonzero().flatten()
        if len(pool) < need:
            raise ConfigError(f"class {c} has {len(pool)} unused training images but this curriculum needs {need}; "
                              "choose a smaller --ipc")
        order = pool[torch.randperm(len(pool), generator=gen)]  # sampling without replacement
        chosen, counts = _class_choice(order, need, c, teacher, student, chunk)
        rows.append(torch.tensor(chosen, dtype=torch.long))
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    return torch.stack(rows), totals


# ---------------------------------------------------------------------------------------------------------
# Adapter
# ---------------------------------------------------------------------------------------------------------


class CUDD(SRe2L):
    """SRe2L's recover loop run per curriculum from real images, with a student for feedback and adversary."""
    numerics = (*SRe2L.numerics, "ddbench.methods.cudd", "ddbench.protocols.soft", "ddbench.protocols.hard")

    defaults = {
        **SRe2L.defaults,
        "lr": 0.25, "betas": [0.5, 0.9], "weight_decay": 1e-4,  # Table XII (the code's Adam has no weight decay)
        "iterations": 4000, "batch_size": 100, "alpha_reg": 1.0, "alpha_adv": 1.0,
        "curricula": None,  # None: the paper's log schedule; else explicit curriculum ends, e.g. [20, 50]
        "student_arch": None,  # None: the teacher's arch (CUDD: ResNet-18 for both)
        "student_epochs": 150, "student_batch": 128, "student_lr": 1e-3, "student_lr_continue": 5e-4,
        "student_weight_decay": 0.01, "student_temperature": 20.0, "student_min_crop": 0.08,
        "init_chunk": 256, "init_frame": "crop",
    }
    schema = {**SRe2L.schema, "alpha_reg": "float>=0", "alpha_adv": "float>=0", "curricula": "list[int>=1]?",
              "student_arch": "arch?", "student_epochs": "int>=1", "student_batch": "int>=1",
              "student_lr": "float>=0", "student_lr_continue": "float>=0", "student_weight_decay": "float>=0",
              "student_temperature": "float>0", "student_min_crop": "prob", "init_chunk": "int>=1",
              "init_frame": choice(FRAMES)}

    def student_plan(self, n: int, lr: float, size: int) -> dict:
        c = self.cfg
        aug = {"shuffle_patches": 1, "rrc_scale": [c["student_min_crop"], 1.0], "rrc_ratio": [0.75, 4 / 3],
               "flip": 0.5, "cutmix_beta": 1.0, "size": size}
        return {"epochs": int(c["student_epochs"]), "batch_size": min(int(c["student_batch"]), n), "aug": aug,
                "optimizer": {"name": "adamw", "lr": lr, "weight_decay": c["student_weight_decay"], "wd_on_1d": False},
                "schedule": {"name": "cosine"}, "temperature": c["student_temperature"], "extra_bn_forward": False,
                "amp": True}

    def train_student(self, ctx: Context, student, images: torch.Tensor, teacher, gen: torch.Generator):
        """Train (or continue) the student on all synthetic images so far; returns (student, frozen copy)."""
        from ddbench.nets.build import build_net
        from ddbench.protocols.soft import train_soft

        size = images.shape[-1]
        lr = self.cfg["student_lr_continue"] if student is not None else self.cfg["student_lr"]
        if student is None:
            arch = self.cfg["student_arch"] or self.cfg["teacher_arch"] or _default_arch(ctx.spec)
            student = build_net(arch, ctx.spec.num_classes, ctx.spec.channels, size, generator=gen)
        for p in student.parameters():
            p.requires_grad_(True)
        train_soft(student, images.to(ctx.device), teacher, self.student_plan(len(images), lr, size), ctx.spec, gen,
                   ctx.device)
        return student, freeze(copy.deepcopy(student).to(ctx.device))

    def distill(self, ctx: Context, ipc: int, seed: int) -> DistilledSet:
        t0 = time.perf_counter()
        spec, device, k = ctx.spec, ctx.device, ctx.spec.num_classes
        teacher, train = self.teacher(ctx), ctx.train()
        gen = torch.Generator().manual_seed(seed)
        size = self.image_size(ctx)
        ends = curriculum_ends(ipc, self.cfg.get("curricula"))
        used = torch.zeros(len(train.labels), dtype=torch.bool)
        how = self.cfg["init_frame"]
        t_pred = LazyPredictor(teacher, train.images, spec, device, size, how=how)
        parts, labels, sources, log = [], [], [], []
        student = adversary = None
        for j, (start, end) in enumerate(zip([0] + ends[:-1], ends)):
            s_pred = LazyPredictor(adversary, train.images, spec, device, size, how=how) if adversary is not None else None
            idx, tiers = select_initial(train.labels, k, end - start, used, t_pred, s_pred, gen,
                                        int(self.cfg["init_chunk"]))
            idx = idx.T.flatten()  # (IPC index, class) order: a batch holds one image per class
            used[idx] = True
            y = train.labels[idx]
            init = _prepare(train.images[idx], spec, size, device, how)
            out = torch.empty(len(idx), spec.channels, size, size, dtype=torch.uint8)
            batches = class_batches(end - start, k, int(self.cfg["batch_size"]))
            for sl in ctx.track(batches, f"cudd curriculum {j + 1}"):
                x = recover(teacher, init[sl], y[sl].to(device), self.cfg, spec, gen, originals=init[sl],
                            student=adversary)
                out[sl] = to_uint8(x, spec)
            parts.append(out)
            labels.append(y)
            sources += [train.ids[i] for i in idx.tolist()]
            log.append({"ipc": [start, end], "init_tiers": tiers, "adversarial": adversary is not None})
            if j < len(ends) - 1:  # the last student would never be used
                student, adversary = self.train_student(ctx, student, torch.cat(parts), teacher, gen)
        images, labels = torch.cat(parts), torch.cat(labels)
        order = torch.argsort(labels, stable=True)  # stored grouped by class, curricula in order within a class
        images, labels = images[order], labels[order]
        prov = self.provenance(ipc, seed, time.perf_counter() - t0, curricula=log,
                               source_ids=[sources[i] for i in order.tolist()])
        return DistilledSet(images, labels, spec.classes, prov, soft_labels=relabel(teacher, images, spec, device))


def _default_arch(spec) -> str:
    from ddbench.teachers.classifier import default_arch

    return default_arch(spec)
