"""K evaluation networks of one architecture trained at once: the multi-model form of `train.train_classifier`.

A distilled set is small, so one network leaves most of a GPU idle. Here the K networks' parameters and
buffers are stacked along a new leading dimension (`torch.func.stack_module_state`) and one forward of the
architecture is vectorised over them with `torch.func.vmap(functional_call)`: a convolution becomes one
grouped convolution over K·C channels, a linear layer one batched matmul. Each model keeps everything that is
its own in a lone run: its initial weights, its generator (epoch permutations, augmentation draws, CutMix
boxes, in the same order as `train_classifier` draws them), its optimizer state (one optimizer over the
stacked tensors is K independent optimizers: SGD and AdamW are element-wise), its BatchNorm statistics
(the buffers are stacked too and updated in place under vmap) and its test passes. The loss is the sum of the
K per-model mean losses, so each model's gradient is the gradient of its own loss.

    stack_hist = train_classifiers(nets, images_u8, labels, generators=[torch.Generator().manual_seed(s)
                                   for s in seeds], augments=[Normalize(mean, std)] * len(nets), epochs=300, ...)

K = 1 is `train_classifier` itself (the same code path, so the same numbers bit for bit). Which K to use is
`models_at_once` (free device memory on CUDA; the CPU rule is documented there); docs/performance.md has the
measurements that chose this technique.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from .augment import cutmix, to_float
from .ddp import is_wrapped
from ..errors import ConfigError
from .train import (CutMixCE, TrainHistory, _autocast, build_optimizer, ce_loss, device_generator, eval_points,
                    lr_factor, make_loss, train_classifier)

# ---------------------------------------------------------------------------------------------------------
# The stack: K models as one set of K×… tensors and one vectorised forward
# ---------------------------------------------------------------------------------------------------------


class ModelStack:
    """K networks of one architecture as stacked parameters (leaf tensors K×…) and buffers.

    stack(x) with x K×B×C×H×W gives K×B×classes (model k sees x[k]); stack(x, shared=True) with x B×C×H×W
    gives every model the same batch (the test pass).
    """

    def __init__(self, nets: list[nn.Module]):
        names = [type(n).__name__ for n in nets]
        shapes = [[tuple(p.shape) for p in n.parameters()] for n in nets]
        if len(set(names)) != 1 or any(s != shapes[0] for s in shapes):
            raise ConfigError(f"a model stack needs K networks of one architecture; got {sorted(set(names))}")
        self.k = len(nets)
        self.params, self.buffers = stack_module_state(nets)
        self.ndims = [p.ndim - 1 for p in self.params.values()]  # rank of each parameter in one model
        self.base = copy.deepcopy(nets[0]).to("meta")  # the architecture only; weights come from the stack

    def _one(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def __call__(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        return vmap(self._one, in_dims=(0, 0, None if shared else 0))(self.params, self.buffers, x)

    def train(self, mode: bool = True) -> "ModelStack":
        self.base.train(mode)
        return self

    def eval(self) -> "ModelStack":
        return self.train(False)

    @property
    def training(self) -> bool:
        return self.base.training

    @torch.no_grad()
    def write_back(self, nets: list[nn.Module]) -> None:
        """Copy model k's trained parameters and buffers into nets[k]."""
        for k, net in enumerate(nets):
            for name, t in list(net.named_parameters()) + list(net.named_buffers()):
                t.copy_((self.params if name in self.params else self.buffers)[name][k])


def random_layers(net: nn.Module) -> list[str]:
    """Names of the layers that draw random numbers in a training forward (dropout, drop-path, drop-block).

    vmap refuses random operations by default, and with `randomness="different"` the K models would draw
    other numbers than their lone runs: such networks are trained one at a time. Dropout modules are found by
    type; timm's functional dropout (`drop_rate`) and DropPath / DropBlock (`drop_prob`) by attribute."""
    names = []
    for name, m in net.named_modules():
        rates = [m.p] if isinstance(m, nn.modules.dropout._DropoutNd) else []
        rates += [getattr(m, a) for a in ("drop_rate", "drop_prob") if isinstance(getattr(m, a, None), (int, float))]
        if any(r > 0 for r in rates):
            names.append(name or type(m).__name__)
    return names


def stackable_nets(nets: list[nn.Module]) -> bool:
    """Whether these networks can be trained as one ModelStack: the one test every multi-model guard uses.

    Not under DDP (vmap cannot run over its collectives) and not with random layers (see random_layers)."""
    return not any(is_wrapped(n) or random_layers(n) for n in nets)


# ---------------------------------------------------------------------------------------------------------
# Losses of a stack: the random part (CutMix) per model with its own generator, the rest vectorised
# ---------------------------------------------------------------------------------------------------------


def stackable_loss(loss) -> bool:
    """Whether a loss given to train_classifier has a stacked form ("ce" and CutMixCE do; other callables not)."""
    fn = make_loss(loss)
    return fn is ce_loss or isinstance(fn, CutMixCE)


def mix_inputs(loss_fn, xs: list[torch.Tensor], gens: list[torch.Generator]):
    """Per model: CutMix its batch with its generator (as CutMixCE would). Returns (K×B×… input, partners, r)."""
    if loss_fn is ce_loss:
        return torch.stack(xs), None, None
    mixed = [cutmix(x, g, loss_fn.beta, loss_fn.p) for x, g in zip(xs, gens)]
    return (torch.stack([m[0] for m in mixed]), torch.stack([m[1] for m in mixed]),
            torch.stack([torch.as_tensor(m[2], dtype=torch.float32, device=xs[0].device) for m in mixed]))


def _ce_per_model(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """K: mean cross-entropy of each model over its batch (out K×B×classes; y K×B or K×B×classes)."""
    k, b = out.shape[:2]
    return F.cross_entropy(out.reshape(k * b, -1), y.reshape(k * b, *y.shape[2:]), reduction="none").view(k, b).mean(1)


def stacked_loss(logits: torch.Tensor, y: torch.Tensor, partner: torch.Tensor | None, r: torch.Tensor | None):
    """K per-model losses: CE(y), or r·CE(y) + (1-r)·CE(y[partner]) after CutMix."""
    out = logits.float()
    own = _ce_per_model(out, y)
    if partner is None:
        return own
    rows = torch.arange(len(y), device=y.device)[:, None]
    return own * r + _ce_per_model(out, y[rows, partner]) * (1.0 - r)


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


def train_classifiers(nets: list[nn.Module], images: torch.Tensor, labels: torch.Tensor, *, epochs: int,
                      batch_size: int, optimizer: dict, schedule: dict | None = None,
                      augments: list[Callable] | None = None, loss="ce",
                      eval_fn: Callable[[object], list[float]] | None = None, eval_every: int = 0,
                      eval_epochs: Iterable[int] | None = None, generators: list[torch.Generator], device="cpu",
                      amp: bool = True, channels_last: bool = True, drop_last: bool = False, progress=None,
                      description: str = "train") -> list[TrainHistory]:
    """Train each of `nets` in place as `train_classifier(nets[k], ..., augment=augments[k], generator=generators[k])`.

    eval_fn(model) is called with the lone network when K = 1 and with the ModelStack otherwise, and returns one
    accuracy per model (see `evaluate_accuracies`). Losses without a stacked form, and networks that cannot be
    stacked (`stackable_nets`), are trained one model after the other.
    """
    k = len(nets)
    augments = list(augments) if augments is not None else [None] * k
    if not (k == len(generators) == len(augments)) or k == 0:
        raise ConfigError(f"train_classifiers: {k} networks, {len(generators)} generators and {len(augments)} "
                          f"augmentations; give one of each per model")
    common = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, schedule=schedule, loss=loss,
                  eval_every=eval_every, eval_epochs=eval_epochs, device=device, amp=amp,
                  channels_last=channels_last, drop_last=drop_last, progress=progress, description=description)
    if k == 1 or not stackable_loss(loss) or not stackable_nets(nets):
        return [_train_alone(net, images, labels, aug, gen, eval_fn, common)
                for net, aug, gen in zip(nets, augments, generators)]
    return _train_stack(nets, images, labels, augments, generators, eval_fn, common)


def _train_alone(net, images, labels, augment, generator, eval_fn, common) -> TrainHistory:
    lone = (lambda m: eval_fn(m)[0]) if eval_fn is not None else None
    return train_classifier(net, images, labels, augment=augment, generator=generator, eval_fn=lone, **common)


def _train_stack(nets, images, labels, augments, generators, eval_fn, c) -> list[TrainHistory]:
    device = torch.device(c["device"])
    n, k, epochs, batch_size = len(images), len(nets), c["epochs"], c["batch_size"]
    if n == 0 or len(labels) != n:
        raise ConfigError(f"train_classifiers: {n} images and {len(labels)} labels; need the same non-zero count")
    gens = [device_generator(g, device) for g in generators]
    stack = ModelStack([net.to(device).train() for net in nets]).train()
    images, labels = images.to(device), labels.to(device)
    hard = labels if labels.ndim == 1 else labels.argmax(dim=1)
    opt = build_optimizer(None, c["optimizer"], list(stack.params.values()), stack.ndims)
    base_lrs = [group["lr"] for group in opt.param_groups]
    loss_fn = make_loss(c["loss"])
    steps = n // batch_size if c["drop_last"] and n >= batch_size else math.ceil(n / batch_size)
    evals = eval_points(epochs, c["eval_every"], c["eval_epochs"]) if eval_fn is not None else set()
    hists, sums = [TrainHistory(epochs) for _ in range(k)], []
    start = time.perf_counter()
    progress = c["progress"]
    epoch_iter = range(epochs) if progress is None else progress.track(
        range(epochs), description=f"{c['description']} ×{k}", total=epochs)
    for epoch in epoch_iter:
        factor = lr_factor(c["schedule"], epoch, epochs)
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * factor
        for h in hists:
            h.lr.append(base_lrs[0] * factor)
        perms = torch.stack([torch.randperm(n, generator=g, device=g.device).to(device) for g in gens])  # K×N
        total = torch.zeros(k, 2, device=device)  # per model: loss·count, correct (summed on the device)
        for step in range(steps):
            idx = perms[:, step * batch_size:(step + 1) * batch_size]  # K×B
            xs = [to_float(images[i]) for i in idx]
            xs = [aug(x, g) if aug is not None else x for x, aug, g in zip(xs, augments, gens)]
            x, partner, r = mix_inputs(loss_fn, xs, gens)
            with _autocast(device, c["amp"]):
                logits = stack(x)  # K×B×classes
            per_model = stacked_loss(logits, labels[idx], partner, r)
            opt.zero_grad(set_to_none=True)
            per_model.sum().backward()  # model k's parameters get the gradient of its own loss only
            opt.step()
            correct = (logits.detach().argmax(dim=-1) == hard[idx]).sum(1)
            total += torch.stack([per_model.detach().float() * idx.shape[1], correct.float()], dim=1)
        sums.append(total)
        if epoch + 1 in evals:
            for h, acc in zip(hists, eval_fn(stack)):
                h.curve.append((epoch + 1, float(acc)))
            stack.train()
    stack.write_back(nets)
    seen = min(n, steps * batch_size)
    stats = torch.stack(sums).cpu()  # E×K×2: the one host read of the training metrics
    for j, h in enumerate(hists):
        h.train_loss = (stats[:, j, 0] / seen).tolist()
        h.train_acc = (100.0 * stats[:, j, 1] / seen).tolist()
        h.seconds = time.perf_counter() - start
    return hists


# ---------------------------------------------------------------------------------------------------------
# Test passes of a stack, and how many models to train at once
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_accuracies(model, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None,
                        batch_size: int = 256, device="cpu", amp: bool = True,
                        channels_last: bool = True) -> list[float]:
    """Top-1 accuracy (%) of every model of a ModelStack (or of one network: a list of one) on shared test data."""
    from .train import evaluate_accuracy

    if not isinstance(model, ModelStack):
        return [evaluate_accuracy(model, images, labels, transform, batch_size, device, amp, channels_last)]
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = torch.zeros(model.k, dtype=torch.long, device=device)
    for i in range(0, len(images), batch_size):
        x = to_float(images[i:i + batch_size].to(device, non_blocking=True))
        x = transform(x) if transform is not None else x
        with _autocast(device, amp):
            pred = model(x, shared=True).argmax(dim=-1)  # K×B
        correct += (pred == labels[i:i + batch_size].to(device)).sum(1)
    model.train(was_training)
    return [100.0 * c / max(1, len(images)) for c in correct.tolist()]  # as evaluate_accuracy computes it


# CPU: stacking measured slower per model than one network after another (ConvNet-3, 32 px, 100 images, one
# thread: 2.7-2.9 CPU s per model-epoch stacked ×3 against 2.25-2.4 s alone; docs/performance.md), so the CPU
# default is today's loop, which also keeps CPU records bit for bit.
CPU_AT_ONCE = 1
MAX_AT_ONCE = 100  # beyond this a job loses too many models when killed, for no measured gain
GPU_MEMORY_SHARE = 0.8  # of the free memory a job may plan to use (the allocator and cuDNN need the rest)


def step_bytes(net: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Bytes one model needs for a training step on a batch of `input_shape` (fp32, planned, not measured).

    Weights, gradients and two optimizer states (4 × parameters) plus twice every module's output (what
    autograd keeps for the backward pass, with room for the gradients flowing back). The forward runs on the
    meta device: shapes only, no memory and no arithmetic.
    """
    meta = copy.deepcopy(net).to("meta")
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel())
                                     if isinstance(out, torch.Tensor) else None)
             for m in meta.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            meta(torch.empty(input_shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    n_params = sum(p.numel() for p in net.parameters())
    return 4 * (4 * n_params + 2 * sum(outputs))


def models_at_once(requested: int | None, device, n_models: int, bytes_per_model: int | None = None) -> int:
    """How many networks one job trains together.

    `requested` (--models-at-once) wins. On CUDA: as many as fit in GPU_MEMORY_SHARE of the free memory at
    `bytes_per_model` (step_bytes), at most MAX_AT_ONCE. On CPU: CPU_AT_ONCE, the measured rule (see
    docs/performance.md).
    """
    if requested is not None:
        if int(requested) < 1:
            raise ConfigError(f"--models-at-once must be a positive number of networks, got {requested}")
        return max(1, min(int(requested), n_models))
    device = torch.device(device)
    if device.type != "cuda":
        return max(1, min(CPU_AT_ONCE, n_models))
    if bytes_per_model is None:
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(n_models, MAX_AT_ONCE, int(GPU_MEMORY_SHARE * free // max(1, bytes_per_model))))
