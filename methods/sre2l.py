"""SRe2L (Yin, Xing and Shen, NeurIPS 2023): squeeze, recover, relabel.

1. Squeeze: a BatchNorm teacher trained on the real training set (`ddbench.teachers.classifier.teacher_for`, cached).
2. Recover: optimise pixels from noise so the frozen teacher classifies them as their label while the batch
   statistics before every BN layer match its running statistics (CE + r_bn·L_bn, `ddbench.engine.bnloss`).
   Adam lr 0.25, betas (0.5, 0.9), cosine to 0, one RandomResizedCrop + flip + random roll per step shared by
   the whole batch, pixels clipped to the valid range after each step (protocol-facts §4.5,
   `MIV-XJTU/CUDD@0bf778c:distill/distill.py`, which is SRe2L's recover loop plus CUDD's terms).
3. Relabel: the set stores the teacher's soft labels of its images; the soft-label protocols (`rded`, `fkd`)
   re-label every augmented crop with the same teacher.

The recover loop here is shared with CUDD (`methods/cudd.py`), which adds the regularisation to real
initial images and the adversarial student term.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddbench.identity import TEACHER_NUMERICS
from ddbench.engine.bnloss import BNStatsLoss
from ddbench.distilled import DistilledSet
from ddbench.method import Context, Method
from ddbench.schema import nullable
from ddbench.teachers.classifier import RECIPE_RULES

# ---------------------------------------------------------------------------------------------------------
# Pixel space: uint8 <-> normalised float
# ---------------------------------------------------------------------------------------------------------


def _stats(spec, device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std


def normalise(images_u8: torch.Tensor, spec, device=None) -> torch.Tensor:
    """uint8 N×C×H×W -> float N×C×H×W normalised with the dataset's mean/std (what the teacher sees)."""
    device = device or images_u8.device
    mean, std = _stats(spec, device)
    return (images_u8.to(device).float() / 255 - mean) / std


def to_uint8(x: torch.Tensor, spec) -> torch.Tensor:
    """Normalised float -> uint8 on CPU (denormalise, clamp to [0, 1], round)."""
    mean, std = _stats(spec, x.device)
    return ((x.detach() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def clip_(x: torch.Tensor, spec) -> None:
    """Clamp normalised pixels in place to the range of valid images, per channel ([0, 1] before normalising)."""
    mean, std = _stats(spec, x.device)
    torch.max(torch.min(x, (1 - mean) / std), (0 - mean) / std, out=x)


# ---------------------------------------------------------------------------------------------------------
# Recover-step augmentation: one crop, one flip, one roll for the whole batch (differentiable)
# ---------------------------------------------------------------------------------------------------------


def rrc_params(h: int, w: int, scale: tuple[float, float], gen: torch.Generator,
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params (10 tries, then the centre crop), drawn from `gen`."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=gen).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
            return top, left, ch, cw
    in_ratio = w / h  # fallback: the largest centre crop within the ratio range
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def crop_flip_roll(xs: list[torch.Tensor], min_scale: float, jitter: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Apply the same RRC (back to the input size) + flip + roll to every N×C×H×W tensor in `xs`.

    A batched torchvision RandomResizedCrop/RandomHorizontalFlip draws once per call, so in the reference one
    crop serves the whole batch and its initial copy; the roll is by (a, b) with a, b uniform in [0, jitter].
    """
    h, w = xs[0].shape[-2:]
    top, left, ch, cw = rrc_params(h, w, (min_scale, 1.0), gen)
    flip = bool(torch.rand(1, generator=gen) < 0.5)
    shift = tuple(int(v) for v in torch.randint(0, jitter + 1, (2,), generator=gen))
    out = []
    for x in xs:
        y = F.interpolate(x[..., top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                          align_corners=False, antialias=True)  # torchvision's tensor RRC: bilinear, antialias
        y = y.flip(-1) if flip else y
        out.append(torch.roll(y, shifts=shift, dims=(2, 3)) if jitter else y)
    return out


# ---------------------------------------------------------------------------------------------------------
# Losses and the recover loop (SRe2L; CUDD's terms are switched on by `originals` / `student`)
# ---------------------------------------------------------------------------------------------------------


def adversarial_loss(student_logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CUDD eq. 7: mean over the batch of −log(1 − p_student(y)) on samples where mask (teacher correct) is 1.

    Deviation: the reference zeroes the student logits of masked-out samples (p = 1/C, a constant term);
    here they contribute 0. The gradient is identical.
    """
    p_true = student_logits.softmax(1).gather(1, targets[:, None]).squeeze(1)  # N
    return (-(1 - p_true + 1e-12).log() * mask).mean()


def cosine_lr(base: float, step: int, total: int) -> float:
    """SRe2L's lr_cosine_policy without warm-up: 0.5·(1 + cos(π·step/total))·base, set before each step."""
    return 0.5 * (1 + math.cos(math.pi * step / total)) * base


def recover(teacher: nn.Module, x0: torch.Tensor, targets: torch.Tensor, cfg: dict, spec, gen: torch.Generator,
            *, originals: torch.Tensor | None = None, student: nn.Module | None = None) -> torch.Tensor:
    """Optimise normalised pixels x0 (N×C×H×W, on the teacher's device) for labels `targets`; returns the last iterate.

    loss = CE(teacher(x̃), y) + r_bn·L_bn(teacher) [+ α_reg·MSE(x̃, õ)] [+ α_adv·L_adv(student(x̃), y; teacher ✓)]
    where x̃, õ are the jointly augmented images and initial images.
    """
    x = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=1e-8,
                           weight_decay=cfg["weight_decay"])
    iterations = int(cfg["iterations"])
    with BNStatsLoss(teacher, cfg["first_bn_multiplier"]) as bn:
        for it in range(iterations):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(cfg["lr"], it, iterations)
            pair = [x] if originals is None else [x, originals]
            aug = crop_flip_roll(pair, cfg["min_crop"], int(cfg["jitter"]), gen)
            logits = teacher(aug[0])
            loss = F.cross_entropy(logits, targets) + cfg["r_bn"] * bn.loss()
            if originals is not None and cfg.get("alpha_reg", 0):
                loss = loss + cfg["alpha_reg"] * F.mse_loss(aug[0], aug[1])
            if student is not None and cfg.get("alpha_adv", 0):
                correct = (logits.detach().argmax(1) == targets).float()  # adversarial term only where teacher ✓
                loss = loss + cfg["alpha_adv"] * adversarial_loss(student(aug[0]), targets, correct)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                clip_(x, spec)
    return x.detach()


def freeze(net: nn.Module) -> nn.Module:
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@torch.no_grad()
def relabel(teacher: nn.Module, images_u8: torch.Tensor, spec, device, batch_size: int = 256) -> torch.Tensor:
    """Teacher softmax (T = 1) of each un-augmented image: N×K float32 on CPU (the set's stored soft labels)."""
    out = [teacher(normalise(images_u8[i:i + batch_size], spec, device)).softmax(1).float().cpu()
           for i in range(0, len(images_u8), batch_size)]
    return torch.cat(out)


def class_batches(n_ipc: int, k: int, batch_size: int) -> list[slice]:
    """Batches of images ordered (IPC index, class): one IPC index per batch, up to `batch_size` classes.

    The reference optimises one image of each of 100 classes together (CIFAR-10: the 10 classes, batch 10):
    two images of a class never share a batch, whose single crop / flip / roll per step would pull them alike.
    """
    return [slice(j * k + c, j * k + min(c + batch_size, k)) for j in range(n_ipc) for c in range(0, k, batch_size)]


# ---------------------------------------------------------------------------------------------------------
# Adapter
# ---------------------------------------------------------------------------------------------------------


class SRe2L(Method):
    """Recover `ipc` images per class from noise with the teacher; soft labels from the same teacher."""
    numerics = ("ddbench.methods.sre2l", "ddbench.engine.bnloss", "ddbench.distilled", *TEACHER_NUMERICS)

    defaults = {
        "teacher_arch": None,  # None: convnet3_bn for embedded data, resnet18_tv for ImageNet data
        "teacher_recipe": None,  # None: ddbench.teachers.classifier's default recipe for the dataset kind
        "teacher_path": None,  # torchvision-format weights to load instead of training (e.g. ImageNet-1K)
        "image_size": None,  # None: the dataset's stored resolution
        "iterations": 1000, "lr": 0.25, "betas": [0.5, 0.9], "weight_decay": 0.0,  # recover.sh: Adam, no weight decay
        "batch_size": 100,  # classes per batch (one image each)
        "r_bn": 0.01, "first_bn_multiplier": 10.0, "jitter": 32, "min_crop": 0.08,
    }
    schema = {"teacher_arch": "arch?", "teacher_recipe": nullable(RECIPE_RULES), "teacher_path": "path?",
              "image_size": "int>=1?", "iterations": "int>=1", "lr": "float>=0",
              "betas": "tuple[float[0..1], float[0..1]]", "weight_decay": "float>=0", "batch_size": "int>=1",
              "r_bn": "float>=0", "first_bn_multiplier": "float>=0", "jitter": "int>=0", "min_crop": "prob"}

    def teacher(self, ctx: Context) -> nn.Module:
        from ddbench.teachers.classifier import teacher_for

        path = self.cfg.get("teacher_path") or (ctx.options or {}).get("teacher")
        net = teacher_for(ctx.spec, self.cfg["teacher_arch"], ctx.device, ctx.cache_dir, ctx.train,
                          cfg=self.cfg.get("teacher_recipe"), path=path, progress=ctx.progress)
        return freeze(net.to(ctx.device))

    def prepare(self, ctx: Context) -> None:
        self.teacher(ctx)  # trains and caches the teacher once

    def image_size(self, ctx: Context) -> int:
        return int(self.cfg.get("image_size") or ctx.spec.resolution)

    def provenance(self, ipc: int, seed: int, seconds: float, **extra) -> dict:
        teacher = {"arch": self.cfg["teacher_arch"], "recipe": self.cfg.get("teacher_recipe"),
                   "path": self.cfg.get("teacher_path")}
        return {"method": self.name, "version": self.version, "seed": seed, "ipc": ipc, "config": self.cfg,
                "teacher": teacher, "soft_labels": "teacher softmax (T=1) of each stored image",
                "timings": {"distill": seconds}, **extra}

    def distill(self, ctx: Context, ipc: int, seed: int) -> DistilledSet:
        t0 = time.perf_counter()
        spec, device = ctx.spec, ctx.device
        teacher = self.teacher(ctx)
        gen = torch.Generator().manual_seed(seed)
        k, size = spec.num_classes, self.image_size(ctx)
        labels = torch.arange(k).repeat(ipc)  # image i = (ipc index i // K, class i % K): batches mix classes
        x = torch.randn(len(labels), spec.channels, size, size, generator=gen)  # SRe2L starts from N(0, 1)
        out = torch.empty(len(labels), spec.channels, size, size, dtype=torch.uint8)
        for sl in ctx.track(class_batches(ipc, k, int(self.cfg["batch_size"])), "sre2l recover"):
            xb = x[sl].to(device)  # not clipped before the first step (reference: clip after each step)
            out[sl] = to_uint8(recover(teacher, xb, labels[sl].to(device), self.cfg, spec, gen), spec)
        order = torch.argsort(labels, stable=True)  # store grouped by class
        images, labels = out[order], labels[order]
        soft = relabel(teacher, images, spec, device)
        prov = self.provenance(ipc, seed, time.perf_counter() - t0)
        return DistilledSet(images, labels, spec.classes, prov, soft_labels=soft)
