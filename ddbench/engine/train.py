"""The supervised training loop shared by protocols, teachers and feature extractors.

The whole training set lives on the device as uint8; each epoch is a seeded permutation cut into batches
(the last one partial, as a shuffled DataLoader gives); augmentation runs on the batch on the device; loss and
accuracy are summed on the device and read once per epoch list at the end, so the step loop never waits for
the host. bf16 autocast and channels_last are used on CUDA only.

    hist = train_classifier(net, images_u8, labels, epochs=300, batch_size=256,
                            optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
                            schedule={"name": "step_half", "gamma": 0.1}, augment=Normalize(mean, std),
                            eval_fn=lambda net: evaluate_accuracy(net, test_x, test_y, Normalize(mean, std)),
                            eval_every=30, generator=torch.Generator().manual_seed(0), device="cpu")
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import cutmix, to_float
from ..errors import ConfigError
from ..schema import choice

# ---------------------------------------------------------------------------------------------------------
# Optimiser and learning-rate schedule
# ---------------------------------------------------------------------------------------------------------

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "multistep", "step_half", "cosine", "cosine_rded")

# Card rules (ddbench.schema) of an `optimizer:` and a `schedule:` section, shared by every card that has one
OPTIMIZER_RULES = {"name": choice(OPTIMIZERS), "lr": "float>=0", "weight_decay": "float>=0", "wd_on_1d": "bool",
                   "momentum": "float[0..1]", "nesterov": "bool", "betas": "tuple[float[0..1], float[0..1]]"}
SCHEDULE_RULES = {"name": choice(SCHEDULES), "gamma": "float>=0", "milestones": "list[int>=0]",
                  "milestone_fractions": "list[tuple[int>=0, int>=1]]"}


def param_groups(net: nn.Module, weight_decay: float, wd_on_1d: bool = True,
                 params: list[torch.Tensor] | None = None, ndims: list[int] | None = None) -> list[dict]:
    """One group, or two when 1-d parameters (biases, norm affines) are exempt from weight decay (RDED/SRe2L).

    params / ndims replace net's trainable parameters and their ranks (a model stack passes its K×… tensors
    with the rank each has in one model).
    """
    if params is None:
        params = [p for p in net.parameters() if p.requires_grad]
        ndims = [p.ndim for p in params]
    if wd_on_1d:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p, d in zip(params, ndims) if d > 1], "weight_decay": weight_decay},
            {"params": [p for p, d in zip(params, ndims) if d <= 1], "weight_decay": 0.0}]


def build_optimizer(net: nn.Module | None, cfg: dict, params: list[torch.Tensor] | None = None,
                    ndims: list[int] | None = None) -> torch.optim.Optimizer:
    """cfg: name (sgd|adamw), lr, weight_decay, wd_on_1d (default true), momentum / nesterov (sgd), betas (adamw)."""
    name = cfg.get("name", "sgd")
    groups = param_groups(net, float(cfg.get("weight_decay", 0.0)), bool(cfg.get("wd_on_1d", True)), params, ndims)
    lr = float(cfg["lr"])
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(cfg.get("momentum", 0.0)),
                               nesterov=bool(cfg.get("nesterov", False)))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))))
    raise ConfigError(f"optimizer {name!r} is not supported; expected one of {', '.join(OPTIMIZERS)}")


def lr_factor(schedule: dict | None, epoch: int, epochs: int) -> float:
    """Multiplier of the base lr during 0-based `epoch` of `epochs` (the schedule is stepped once per epoch).

    constant; multistep (milestones, gamma: ×gamma once `epoch` reaches each milestone, as torch MultiStepLR);
    step_half (×gamma from epoch E//2: the DC recipe); cosine (0.5·(1+cos(π·e/E)), to 0: SRe2L/CUDD);
    cosine_rded (0.5·(1+cos(π·e/(2E))): RDED's schedule, which ends at half the base lr).
    """
    schedule = schedule or {"name": "constant"}
    name = schedule.get("name", "constant")
    gamma = float(schedule.get("gamma", 0.1))
    if name == "constant":
        return 1.0
    if name == "multistep":
        return gamma ** sum(epoch >= int(m) for m in schedule.get("milestones", ()))
    if name == "step_half":
        # Deviation: DC runs E+1 epochs and decays after epoch E//2+1 (re-creating SGD); here E epochs, decay at E//2.
        return gamma if epoch >= epochs // 2 else 1.0
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if name == "cosine_rded":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / (2 * epochs)))
    raise ConfigError(f"lr schedule {name!r} is not supported; expected one of {', '.join(SCHEDULES)}")


# ---------------------------------------------------------------------------------------------------------
# Losses: callables loss(net, x, y, g) -> (scalar loss, logits); y is N int64 or N×K soft targets
# ---------------------------------------------------------------------------------------------------------


def ce_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
    logits = net(x)
    return F.cross_entropy(logits.float(), y), logits


class CutMixCE:
    """CutMix every batch (p) with λ ~ Beta(β, β); loss = r·CE(y) + (1-r)·CE(y[partner]) (IDC / Minimax)."""

    def __init__(self, beta: float = 1.0, p: float = 1.0):
        self.beta, self.p = beta, p

    def __call__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
        x, partner, r = cutmix(x, g, self.beta, self.p)
        logits = net(x)
        out = logits.float()
        return F.cross_entropy(out, y) * r + F.cross_entropy(out, y[partner]) * (1.0 - r), logits


def make_loss(loss) -> Callable:
    """"ce", "cutmix_ce" (alias "cutmix-ce"), or any callable loss(net, x, y, g) -> (loss, logits)."""
    if callable(loss):
        return loss
    if loss == "ce":
        return ce_loss
    if loss in ("cutmix_ce", "cutmix-ce"):
        return CutMixCE()
    raise ConfigError(f"loss {loss!r} is not supported; expected 'ce', 'cutmix_ce' or a callable")


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TrainHistory:
    epochs: int
    train_loss: list[float] = field(default_factory=list)  # mean loss per epoch
    train_acc: list[float] = field(default_factory=list)  # % of batch samples whose own label is the argmax
    curve: list[tuple[int, float]] = field(default_factory=list)  # (completed epochs, eval_fn value)
    lr: list[float] = field(default_factory=list)  # base-group lr used in each epoch
    seconds: float = 0.0


def device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """`generator` itself if it lives on `device`, else a generator there seeded from one draw of it."""
    def index(d: torch.device) -> int:
        return d.index if d.index is not None else (torch.cuda.current_device() if d.type == "cuda" else 0)

    device = torch.device(device)
    if generator.device.type == device.type and index(generator.device) == index(device):
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def eval_points(epochs: int, eval_every: int = 0, eval_epochs: Iterable[int] | None = None) -> set[int]:
    """Completed-epoch counts after which eval_fn runs: every `eval_every` epochs and the last (or `eval_epochs`)."""
    if eval_epochs is not None:
        return {int(e) for e in eval_epochs if 1 <= int(e) <= epochs}
    points = set(range(eval_every, epochs + 1, eval_every)) if eval_every > 0 else set()
    return points | {epochs}


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_classifier(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int,
                     optimizer: dict, schedule: dict | None = None, augment: Callable | None = None,
                     loss="ce", eval_fn: Callable[[nn.Module], float] | None = None, eval_every: int = 0,
                     eval_epochs: Iterable[int] | None = None, generator: torch.Generator, device="cpu",
                     amp: bool = True, channels_last: bool = True, drop_last: bool = False,
                     progress=None, description: str = "train") -> TrainHistory:
    """Train `net` in place on uint8 `images` N×C×H×W with `labels` (N int64, or N×K soft targets).

    augment(x_float01, g) -> network input (default: the [0, 1] floats unchanged); `g` is a generator on the
    device derived from `generator`. eval_fn(net) runs after the epochs given by eval_every / eval_epochs
    (always after the last when given). amp (bf16 autocast) and channels_last apply on CUDA only.
    progress: an object with `.track(iterable, description=, total=)` (ddbench.progress), or None.
    """
    device = torch.device(device)
    n = len(images)
    if n == 0 or len(labels) != n:
        raise ConfigError(f"train_classifier: {n} images and {len(labels)} labels; need the same non-zero count")
    g = device_generator(generator, device)
    fmt = torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format
    net.to(device=device, memory_format=fmt).train()
    images, labels = images.to(device), labels.to(device)
    hard = labels if labels.ndim == 1 else labels.argmax(dim=1)
    opt = build_optimizer(net, optimizer)
    base_lrs = [group["lr"] for group in opt.param_groups]
    loss_fn = make_loss(loss)
    steps = n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)
    evals = eval_points(epochs, eval_every, eval_epochs) if eval_fn is not None else set()
    hist, sums = TrainHistory(epochs), []
    start = time.perf_counter()
    epoch_iter = range(epochs) if progress is None else progress.track(range(epochs), description=description,
                                                                        total=epochs)
    for epoch in epoch_iter:
        factor = lr_factor(schedule, epoch, epochs)
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * factor
        hist.lr.append(base_lrs[0] * factor)
        perm = torch.randperm(n, generator=g, device=g.device).to(device)
        total = torch.zeros(2, device=device)  # loss·count, correct (summed on the device: no host sync)
        for step in range(steps):
            idx = perm[step * batch_size:(step + 1) * batch_size]
            x = to_float(images[idx])
            x = augment(x, g) if augment is not None else x
            x = x.contiguous(memory_format=fmt)
            with _autocast(device, amp):
                loss_value, logits = loss_fn(net, x, labels[idx], g)
            opt.zero_grad(set_to_none=True)
            loss_value.backward()
            opt.step()
            correct = (logits.detach().argmax(dim=1) == hard[idx]).sum()
            total += torch.stack([loss_value.detach().float() * len(idx), correct.float()])
        sums.append(total)
        if epoch + 1 in evals:
            hist.curve.append((epoch + 1, float(eval_fn(net))))
            net.train()
    seen = min(n, steps * batch_size)  # samples per epoch
    stats = torch.stack(sums).cpu()  # the one host read of the training metrics
    hist.train_loss = (stats[:, 0] / seen).tolist()
    hist.train_acc = (100.0 * stats[:, 1] / seen).tolist()
    hist.seconds = time.perf_counter() - start
    return hist


# ---------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None,
                      batch_size: int = 256, device="cpu", amp: bool = True, channels_last: bool = True) -> float:
    """Top-1 accuracy (%) of `net` on uint8 (or [0, 1] float) images; transform(x_float01) -> network input."""
    device = torch.device(device)
    was_training = net.training
    net.eval()
    fmt = torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format
    correct = torch.zeros((), dtype=torch.long, device=device)
    for i in range(0, len(images), batch_size):
        x = to_float(images[i:i + batch_size].to(device, non_blocking=True))
        x = (transform(x) if transform is not None else x).contiguous(memory_format=fmt)
        with _autocast(device, amp):
            pred = net(x).argmax(dim=1)
        correct += (pred == labels[i:i + batch_size].to(device)).sum()
    net.train(was_training)
    return 100.0 * correct.item() / max(1, len(images))
