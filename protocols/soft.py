"""The soft-label protocol family: a student learns the teacher's soft labels of augmented distilled images.

Cards (facts: protocol-facts §3; values and sources: docs/soft-protocols.md):
- `rded` (RDED, `LINs-lab/RDED@3f6453d:validation/main.py`): per sample ShufflePatches(2) → RRC(scale 1/2–1)
  → flip, CutMix on every batch, the teacher labels the mixed batch on the fly; KL(batchmean) at T = 20,
  AdamW 1e-3 / wd 0.01 (none on 1-d params), cosine 0.5·(1+cos(π·e/2E)), 300 epochs, batch by IPC.
- `fkd` (SRe2L / CUDD relabel + `train_FKD.py`, §3.5): per epoch, crops (RRC 0.08–1 + flip, coordinates kept),
  CutMix (partner, box kept) and fp16 teacher logits are generated once, stored under the cache and replayed;
  cosine to 0, batch 128, evaluation every 10 epochs.

Both use the same batch pipeline: `draw_batch` draws the augmentation parameters, `apply_batch` turns uint8
images + parameters into the network input, so a replayed batch is exactly the batch that was labelled.
`train_soft` is also CUDD's student training (methods/cudd.py).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddbench.identity import TEACHER_NUMERICS
from ddbench.engine.augment import center_crop, crop_resize, normalize, rrc_boxes, sample_beta, to_float
from ddbench.config import config_hash
from ddbench.errors import ConfigError, DataError
from ddbench.protocol import PRECISIONS, EvalResult, Protocol, ResourceMeter, resolved_precision, uses_bf16
from ddbench.schema import choice, nullable
from ddbench.teachers.classifier import RECIPE_RULES
from ddbench.protocols.hard import aligned_labels, to_resolution
from ddbench.engine.ddp import maybe_wrap_ddp
from ddbench.engine.train import (OPTIMIZER_RULES, SCHEDULE_RULES, build_optimizer, device_generator, evaluate_accuracy,
                           lr_factor)
from ddbench.safeload import load_tensors
from ddbench.engine.train_many import evaluate_accuracies

LABEL_MODES = ("online", "stored")

# ---------------------------------------------------------------------------------------------------------
# Batch pipeline: draw parameters, apply them (identical for labelling, training and replay)
# ---------------------------------------------------------------------------------------------------------


def _perms(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """N×k: a uniform random permutation of range(k) per row."""
    return torch.argsort(torch.rand(n, k, generator=g, device=g.device), dim=1)


def draw_batch(n: int, side: int, aug: dict, g: torch.Generator) -> dict:
    """Augmentation parameters for n images of side×side, as tensors on the generator's device (no host sync)."""
    f = int(aug["shuffle_patches"])
    s = (side // f) * f if f > 1 else side  # ShufflePatches drops the remainder strip (reference quirk)
    p = {"rows": _perms(n, f, g), "cols": _perms(n, f, g)} if f > 1 else {}
    boxes = rrc_boxes(n, s, s, g, g.device, tuple(aug["rrc_scale"]), tuple(aug["rrc_ratio"]))
    p["boxes"] = (boxes / s).float()  # relative (x1, y1, x2, y2), as FKD stores its crop coordinates
    p["flip"] = torch.rand(n, generator=g, device=g.device) < float(aug["flip"])
    if aug.get("cutmix_beta") is not None:  # RDED / FKD rand_bbox: one box and one partner per batch
        size = int(aug["size"])
        lam = sample_beta(float(aug["cutmix_beta"]), float(aug["cutmix_beta"]), g, g.device)
        cut = (size * torch.sqrt(1.0 - lam)).floor().long()  # int(W·sqrt(1-λ)), same for both sides
        cy, cx = (torch.rand(2, generator=g, device=g.device, dtype=torch.float64) * size).floor().long()
        p["partner"] = torch.randperm(n, generator=g, device=g.device)
        p["cutbox"] = torch.stack([(cy - cut // 2).clamp(0, size), (cy + cut // 2).clamp(0, size),
                                   (cx - cut // 2).clamp(0, size), (cx + cut // 2).clamp(0, size)])
    return p


def shuffle_patches(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """RDED ShufflePatches on N×C×H×W: row strips and column strips permuted per sample (rows/cols: N×f)."""
    n, _, h, w = x.shape
    f = rows.shape[1]
    th, tw = h // f, w // f
    x = x[..., :th * f, :tw * f]
    r = (rows[:, :, None] * th + torch.arange(th, device=x.device)).reshape(n, th * f)  # N×H' source rows
    c = (cols[:, :, None] * tw + torch.arange(tw, device=x.device)).reshape(n, tw * f)  # N×W' source cols
    batch = torch.arange(n, device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[batch, r[:, :, None], c[:, None, :]].permute(0, 3, 1, 2)


def apply_batch(images_u8: torch.Tensor, p: dict, aug: dict, spec) -> torch.Tensor:
    """uint8 N×C×H×W + parameters -> normalised network input N×C×size×size."""
    dev = images_u8.device
    x = to_float(images_u8)
    if "rows" in p:
        x = shuffle_patches(x, p["rows"].to(dev), p["cols"].to(dev))
    side = x.shape[-1]
    x = crop_resize(x, p["boxes"].to(dev) * side, int(aug["size"]))
    x = torch.where(p["flip"].to(dev)[:, None, None, None], x.flip(-1), x)
    x = normalize(x, spec.mean, spec.std)
    if "partner" in p:  # paste rows y1:y2, cols x1:x2 of the partner (a mask: no host sync)
        y1, y2, x1, x2 = p["cutbox"].to(dev)
        r, c = torch.arange(x.shape[-2], device=dev), torch.arange(x.shape[-1], device=dev)
        box = ((r >= y1) & (r < y2))[:, None] & ((c >= x1) & (c < x2))[None, :]  # H×W
        x = torch.where(box, x[p["partner"].to(dev)], x)
    return x


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T)), no T² factor (RDED, SRe2L, CUDD)."""
    t = float(temperature)
    return F.kl_div(F.log_softmax(student_logits.float() / t, 1), F.softmax(teacher_logits.float() / t, 1),
                    reduction="batchmean")


# ---------------------------------------------------------------------------------------------------------
# FKD label store: one file per epoch with every batch's indices, parameters and fp16 teacher logits
# ---------------------------------------------------------------------------------------------------------


def epoch_batches(n: int, batch_size: int, g: torch.Generator) -> list[torch.Tensor]:
    """A seeded permutation of range(n) cut into batches (the last one partial, drop_last=False)."""
    perm = torch.randperm(n, generator=g, device=g.device)
    return [perm[s:s + batch_size] for s in range(0, n, batch_size)]


def iter_epoch(images: torch.Tensor, plan: dict, spec, g: torch.Generator):
    """Yield (indices, parameters, network input) for one epoch: the one sequence of random draws per epoch."""
    for idx in epoch_batches(len(images), plan["batch_size"], g):
        idx = idx.to(images.device)
        p = draw_batch(len(idx), images.shape[-1], plan["aug"], g)
        yield idx, p, apply_batch(images[idx], p, plan["aug"], spec)


@torch.no_grad()
def label_epoch(images: torch.Tensor, teacher: nn.Module, plan: dict, spec, g: torch.Generator) -> list[dict]:
    """One epoch of batches labelled by the teacher, for storing: parameters on CPU, logits in fp16."""
    with autocast(images.device, plan.get("amp", True)):
        return [{"idx": idx.cpu(), **{k: v.cpu() for k, v in p.items()}, "logits": teacher(x).half().cpu()}
                for idx, p, x in iter_epoch(images, plan, spec, g)]


def store_bytes(batches: list[dict]) -> int:
    """Bytes of the stored tensors of one epoch (logits, crop coordinates, flips, mix partners and boxes)."""
    return sum(v.numel() * v.element_size() for b in batches for k, v in b.items() if k != "idx")


def fkd_bytes_estimate(n: int, k: int, epochs: int, batch_size: int, shuffle_factor: int = 1) -> int:
    """What an FKD store of `epochs` epochs would hold for n images and k classes (same layout as label_epoch)."""
    per_image = 2 * k + 4 * 4 + 1 + 8 + (2 * 8 * shuffle_factor if shuffle_factor > 1 else 0)
    return epochs * (n * per_image + math.ceil(n / batch_size) * 4 * 8)


def build_store(folder: Path, images, teacher, plan: dict, spec, seed: int, progress=None) -> int:
    """Write `epoch_<e>.pt` for every epoch not yet stored (a killed run resumes); returns the stored bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(int(seed))  # FKD's seeded sampler (--fkd-seed)
    total = 0
    epochs = range(plan["epochs"])
    for e in (epochs if progress is None else progress.track(epochs, description="fkd labels")):
        file = folder / f"epoch_{e}.pt"
        if file.exists():  # keep the generator in step with a full run: redraw, do not relabel
            state = load_tensors(file, "stored soft labels", fix="it is a cache file: delete it and run again")
            g.set_state(state["gen_after"])
            total += store_bytes(state["batches"])
            continue
        batches = label_epoch(images, teacher, plan, spec, g)
        tmp = file.with_name(file.name + f".tmp{os.getpid()}")
        torch.save({"batches": batches, "gen_after": g.get_state()}, tmp)
        os.replace(tmp, file)
        total += store_bytes(batches)
    return total


# ---------------------------------------------------------------------------------------------------------
# Training (shared by the protocol and CUDD's students)
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _label(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return teacher(x)


def autocast(device, enabled: bool):
    """bf16 autocast on CUDA when enabled (the losses are computed in fp32); a no-op on CPU."""
    device = torch.device(device)
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bool(enabled) and device.type == "cuda")


def train_soft(student: nn.Module, images: torch.Tensor, teacher: nn.Module | None, plan: dict, spec,
               g: torch.Generator, device, *, store: Path | None = None, eval_fn=None, eval_epochs=(),
               progress=None) -> list[tuple[int, float]]:
    """Train `student` in place on uint8 `images` (on `device`) with teacher soft labels; returns the eval curve.

    Labels come from `teacher` on the fly (store None) or from the FKD files in `store`. eval_fn(student)
    runs after each completed-epoch count in `eval_epochs`.
    """
    student.to(device).train()
    opt = build_optimizer(student, plan["optimizer"])
    base = [grp["lr"] for grp in opt.param_groups]
    gd = device_generator(g, torch.device(device))
    curve, epochs = [], plan["epochs"]
    it = range(epochs) if progress is None else progress.track(range(epochs), description="soft-label train")
    for e in it:
        for grp, b in zip(opt.param_groups, base):
            grp["lr"] = b * lr_factor(plan["schedule"], e, epochs)
        if store is None:  # RDED: the teacher labels each augmented, mixed batch on the fly
            batches = ((x, None) for _, _, x in iter_epoch(images, plan, spec, gd))
        else:  # FKD: replay the stored crops and mixes with their stored logits
            stored = load_tensors(store / f"epoch_{e}.pt", "stored soft labels", fix="it is a cache file: delete it and run again")["batches"]
            batches = ((apply_batch(images[b["idx"].to(device)], b, plan["aug"], spec), b["logits"].to(device))
                       for b in stored)
        for x, t_logits in batches:
            with autocast(device, plan.get("amp", True)):
                t_logits = _label(teacher, x) if t_logits is None else t_logits
                if plan.get("extra_bn_forward"):  # RDED: a no-grad train-mode forward first (BN stats move twice)
                    with torch.no_grad():
                        student(x)
                loss = kd_loss(student(x), t_logits.detach(), plan["temperature"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if e + 1 in set(eval_epochs) and eval_fn is not None:
            curve.append((e + 1, float(eval_fn(student))))
            student.train()
    return curve


def kd_loss_many(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """K: kd_loss of each of K students (K×B×classes) against its teacher logits (K×B×classes)."""
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student_logits.float() / t, -1), F.softmax(teacher_logits.float() / t, -1),
                  reduction="none")
    return kl.sum(dim=(1, 2)) / student_logits.shape[1]  # batchmean per student


def train_soft_many(students: list[nn.Module], images: torch.Tensor, teacher: nn.Module | None, plan: dict, spec,
                    gens: list[torch.Generator], device, *, store: Path | None = None, eval_fn=None, eval_epochs=(),
                    progress=None) -> list[list[tuple[int, float]]]:
    """`train_soft` of K students of one architecture at once (ddbench.engine.train_many.ModelStack); one curve each.

    Online labels: each student draws its own augmented batches from its own generator (as alone) and the
    teacher labels the K batches in one forward. Stored labels: every student replays the same batches and
    logits, so the K students share one input. eval_fn(model) returns one accuracy per student (model is the
    stack, or the lone student when K = 1, which is `train_soft` itself).
    """
    from ddbench.engine.train_many import ModelStack, stackable_nets

    k = len(students)
    if k == 1 or not stackable_nets(students):
        lone = (lambda m: eval_fn(m)[0]) if eval_fn is not None else None
        return [train_soft(s, images, teacher, plan, spec, g, device, store=store, eval_fn=lone,
                           eval_epochs=eval_epochs, progress=progress) for s, g in zip(students, gens)]
    stack = ModelStack([s.to(device).train() for s in students]).train()
    opt = build_optimizer(None, plan["optimizer"], list(stack.params.values()), stack.ndims)
    base = [grp["lr"] for grp in opt.param_groups]
    gds = [device_generator(g, torch.device(device)) for g in gens]
    curves, epochs = [[] for _ in range(k)], plan["epochs"]
    it = range(epochs) if progress is None else progress.track(range(epochs), description=f"soft-label train ×{k}")
    for e in it:
        for grp, b in zip(opt.param_groups, base):
            grp["lr"] = b * lr_factor(plan["schedule"], e, epochs)
        if store is None:  # K×B inputs, one batch per student from its own draws
            steps = zip(*(iter_epoch(images, plan, spec, gd) for gd in gds))
            batches = ((torch.stack([x for _, _, x in step]), None, False) for step in steps)
        else:  # the stored batches are the same for every student
            stored = load_tensors(store / f"epoch_{e}.pt", "stored soft labels",
                                  fix="it is a cache file: delete it and run again")["batches"]
            batches = ((apply_batch(images[b["idx"].to(device)], b, plan["aug"], spec), b["logits"].to(device), True)
                       for b in stored)
        for x, t_logits, shared in batches:
            with autocast(device, plan.get("amp", True)):
                if t_logits is None:  # one teacher forward for the K batches
                    t_logits = _label(teacher, x.flatten(0, 1)).view(k, x.shape[1], -1)
                else:
                    t_logits = t_logits.expand(k, *t_logits.shape)
                if plan.get("extra_bn_forward"):
                    with torch.no_grad():
                        stack(x, shared=shared)
                loss = kd_loss_many(stack(x, shared=shared), t_logits.detach(), plan["temperature"])
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # each student's parameters get the gradient of its own loss
            opt.step()
        if e + 1 in set(eval_epochs) and eval_fn is not None:
            for curve, acc in zip(curves, eval_fn(stack)):
                curve.append((e + 1, float(acc)))
            stack.train()
    stack.write_back(students)
    return curves


# ---------------------------------------------------------------------------------------------------------
# Rules: batch size by IPC, evaluation points
# ---------------------------------------------------------------------------------------------------------


def rded_batch_size(ipc: int, num_classes: int, anchors=((1, 10), (10, 50), (50, 100)),
                    double_for=(100, 1000)) -> int:
    """RDED: IPC 1 → 10, 10 → 50, 50 → 100 (×2 for 100 / 1000 classes), capped at ipc·nclass.

    Other IPCs (RDED has no value: batch 0, a crash): interpolate linearly in (log IPC, log batch) between the
    anchors and round; below the first / above the last anchor the end value holds.
    """
    xs = [math.log(a) for a, _ in anchors]
    ys = [math.log(b) for _, b in anchors]
    lx = math.log(max(ipc, 1))
    if lx <= xs[0]:
        bs = anchors[0][1]
    elif lx >= xs[-1]:
        bs = anchors[-1][1]
    else:
        i = max(j for j in range(len(xs) - 1) if xs[j] <= lx)
        t = (lx - xs[i]) / (xs[i + 1] - xs[i])
        bs = round(math.exp(ys[i] + t * (ys[i + 1] - ys[i])))
    if num_classes in double_for:
        bs *= 2
    return int(min(bs, ipc * num_classes))


def soft_eval_epochs(epochs: int, every: int, offset: int, after: float | None) -> list[int]:
    """Completed-epoch counts to test after: 0-based e with e % every == offset or the last, and e > after·E."""
    out = [e + 1 for e in range(epochs) if (e % every == offset or e == epochs - 1)
           and (after is None or e > after * epochs)]
    return out or [epochs]


# ---------------------------------------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------------------------------------


class SoftLabelProtocol(Protocol):
    numerics = ("ddbench.protocols.soft", "ddbench.protocols.hard", *TEACHER_NUMERICS)
    family = "soft"
    defaults = {
        "arch": None, "arch_by_kind": {"embedded": "convnet3_bn", "imagenet": "resnet18_tv", "imagefolder": "resnet18_tv"},
        "teacher": {"arch": None, "recipe": None, "path": None, "min_acc_x_chance": 3.0},
        "labels": "online", "epochs": 300, "batch_size": None, "input_size": None, "temperature": 20.0,
        "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.01, "wd_on_1d": False, "betas": [0.9, 0.999]},
        "schedule": {"name": "cosine_rded"}, "shuffle_patches": 2, "rrc_scale": [0.5, 1.0],
        "rrc_ratio": [0.75, 1.3333333333333333], "flip": 0.5, "cutmix_beta": 1.0, "extra_bn_forward": True,
        "eval_every": 10, "eval_offset": 9, "eval_after": 0.8, "eval_batch_size": 256, "label_seed": 42,
        "test_resize_8_7": True, "precision": "bf16",
    }
    schema = {
        "arch": "arch?", "arch_by_kind": {"embedded": "arch", "imagenet": "arch", "imagefolder": "arch"},
        "teacher": {"arch": "arch?", "recipe": nullable(RECIPE_RULES), "path": "path?", "min_acc_x_chance": "float>=0"},
        "labels": choice(LABEL_MODES), "epochs": "int>=1", "batch_size": "int>=1?", "input_size": "int>=1?",
        "temperature": "float>0", "optimizer": OPTIMIZER_RULES, "schedule": SCHEDULE_RULES,
        "shuffle_patches": "int>=1", "rrc_scale": "tuple[prob, prob]", "rrc_ratio": "tuple[float>0, float>0]",
        "flip": "prob", "cutmix_beta": "float>0?", "extra_bn_forward": "bool", "eval_every": "int>=1",
        "eval_offset": "int>=0", "eval_after": "prob?", "eval_batch_size": "int>=1", "label_seed": "int",
        "test_resize_8_7": "bool", "precision": choice(PRECISIONS),
    }

    def __init__(self, card: dict):
        super().__init__(card)
        if card["labels"] not in LABEL_MODES:
            raise ConfigError(f"protocol {self.name}: labels {card['labels']!r} is not one of {', '.join(LABEL_MODES)}")
        self.options: dict = {}  # cache_dir, teacher (path): set by the runner; else the environment

    def arch_for(self, spec) -> str:
        return self.card["arch"] or self.card["arch_by_kind"].get(spec.kind, "resnet18_tv")

    def plan(self, n_images: int, spec, teacher_size: int | None = None) -> dict:
        """The resolved training plan; `teacher_size` (an RDED conv teacher's 128 px) replaces the default side."""
        c, k = self.card, spec.num_classes
        ipc = max(1, n_images // k)
        size = int(c["input_size"] or teacher_size or (spec.resolution if spec.kind == "embedded" else 224))
        bs = int(c["batch_size"] or rded_batch_size(ipc, k))
        aug = {"shuffle_patches": c["shuffle_patches"], "rrc_scale": c["rrc_scale"], "rrc_ratio": c["rrc_ratio"],
               "flip": c["flip"], "cutmix_beta": c["cutmix_beta"], "size": size}
        return {"ipc": ipc, "epochs": int(c["epochs"]), "batch_size": min(bs, n_images), "aug": aug,
                "optimizer": dict(c["optimizer"]), "schedule": dict(c["schedule"]),
                "temperature": c["temperature"], "extra_bn_forward": bool(c["extra_bn_forward"]), "amp": uses_bf16(c),
                "eval_epochs": soft_eval_epochs(int(c["epochs"]), c["eval_every"], c["eval_offset"], c["eval_after"])}

    def teacher(self, spec, device):
        """(frozen teacher net, identity for cache keys, the record's teacher dict without val_acc, cache dir)."""
        from ddbench.data import load_split
        from ddbench.method import default_cache_dir
        from ddbench.teachers.classifier import teacher_for, teacher_identity

        t = self.card["teacher"]
        cache = Path(self.options.get("cache_dir") or default_cache_dir())
        path = t.get("path") or self.options.get("teacher") or os.environ.get("DDBENCH_TEACHER")
        net = teacher_for(spec, t.get("arch"), device, cache, lambda: load_split(spec, "train", cache_dir=cache / "data"),
                          cfg=t.get("recipe"), path=path)
        for p in net.parameters():
            p.requires_grad_(False)
        ident = {"arch": t.get("arch"), "recipe": t.get("recipe"), "path": str(path) if path else None}
        info = teacher_identity(spec, t.get("arch"), t.get("recipe"), path, cache)
        ident["sha256"] = info["sha256"]  # the weights themselves, not only where they were read from
        return net.eval(), ident, info, cache

    def check_teacher(self, info: dict, spec) -> None:
        """Refuse a teacher below `min_acc_x_chance` × chance on the real validation split, before any student."""
        floor = float(self.card["teacher"].get("min_acc_x_chance") or 0.0) * 100.0 / spec.num_classes
        if info["val_acc"] < floor:
            raise DataError(f"the {info['arch']} teacher ({info['source']}) reaches {info['val_acc']:.2f}% on the real "
                            f"{spec.name} validation split, below the floor {floor:.2f}% "
                            f"({self.card['teacher']['min_acc_x_chance']}x chance): its soft labels would teach noise. "
                            "Check that the weights and their class order belong to this dataset; the floor is "
                            "protocol.teacher.min_acc_x_chance")

    def test_images(self, test, spec, size: int, cache: Path, device):
        """RDED's test view Resize(size//7·8) + CenterCrop(size) for decoded data; embedded data as stored."""
        if spec.kind == "embedded" or not self.card["test_resize_8_7"]:
            return to_resolution(test.images, size, device), test.labels.to(device)
        from ddbench.data import load_split

        big = load_split(spec, "test", resolution=size // 7 * 8, cache_dir=cache / "data")
        return center_crop(big.images, size).to(device), big.labels.to(device)

    def teacher_accuracy(self, teacher, ident: dict, spec, test_x, test_y, device) -> float:
        """Test accuracy (%) of the teacher on the protocol's test view (once per teacher and dataset)."""
        key = config_hash({"teacher": ident, "dataset": spec.name, "n": len(test_y)})
        cache = self.__dict__.setdefault("_teacher_acc", {})
        if key not in cache:
            cache[key] = evaluate_accuracy(teacher, test_x, test_y, lambda x: normalize(x, spec.mean, spec.std),
                                           self.card["eval_batch_size"], device,
                                           resolved_precision(self.card, device) == "bf16")
        return cache[key]

    def evaluate(self, dset, spec, test, arch: str | None, seed: int, device) -> EvalResult:
        return self.evaluate_many(dset, spec, test, arch, [seed], device)[0]

    def evaluate_many(self, dset, spec, test, arch: str | None, seeds: list[int], device,
                      progress=None) -> list[EvalResult]:
        """One result per evaluation seed; the students of all `seeds` train together (train_soft_many)."""
        from ddbench.nets.build import build_net

        device = torch.device(device)
        arch = arch or self.arch_for(spec)
        if dset.images.shape[1] != spec.channels:
            raise DataError(f"the distilled set has {dset.images.shape[1]}-channel images but {spec.name} has "
                            f"{spec.channels}; evaluate it with the dataset it was made from")
        with ResourceMeter(device) as meter:
            aligned_labels(dset, spec)  # checks the class names; the labels themselves come from the teacher
            teacher, ident, info, cache = self.teacher(spec, device)
            # RDED trains its conv teacher-student pairs at the teacher's 128 px (argument.py)
            plan = self.plan(len(dset.images), spec, info["input_size"] if info["source"].startswith("rded") else None)
            plan["amp"] = resolved_precision(self.card, device) == "bf16"  # the value the record's identity hashes
            images = dset.images.to(device)
            size = plan["aug"]["size"]
            test_x, test_y = self.test_images(test, spec, size, cache, device)
            info = {"arch": info["arch"], "source": info["source"], "sha256": info["sha256"],
                    "val_acc": self.teacher_accuracy(teacher, ident, spec, test_x, test_y, device)}
            self.check_teacher(info, spec)
            gens = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
            students = [maybe_wrap_ddp(build_net(arch, spec.num_classes, spec.channels, size, generator=g), device)
                        for g in gens]
            extra = {"plan": plan, "arch": arch, "teacher": info, "n_train": len(images)}
            store = None
            if self.card["labels"] == "stored":
                key = config_hash({"set": dset.sha256(), "teacher": ident, "plan": {**plan, "eval_epochs": None},
                                   "seed": self.card["label_seed"], "dataset": spec.name})
                store = cache / "soft_labels" / key
                extra["soft_label_bytes"] = build_store(store, images, teacher, plan, spec, self.card["label_seed"])
                extra["soft_label_store"] = str(store)
            else:
                extra["soft_label_bytes"] = 0  # labels are generated on the fly; nothing is stored
                extra["soft_label_bytes_if_stored_fkd"] = fkd_bytes_estimate(
                    len(images), spec.num_classes, plan["epochs"], plan["batch_size"], int(self.card["shuffle_patches"]))

            def eval_fn(models):
                return evaluate_accuracies(models, test_x, test_y, lambda x: normalize(x, spec.mean, spec.std),
                                           self.card["eval_batch_size"], device,
                                           resolved_precision(self.card, device) == "bf16")

            curves = train_soft_many(students, images, teacher, plan, spec, gens, device, store=store,
                                     eval_fn=eval_fn, eval_epochs=plan["eval_epochs"], progress=progress)
        k = len(seeds)
        shared = {"models_at_once": k} if k > 1 else {}  # the job's wall time is shared by its k students
        return [EvalResult.from_curve(curve, meter.seconds / k, meter.peak_mb, {**extra, **shared}) for curve in curves]


PROTOCOL = SoftLabelProtocol
