"""Minimax diffusion fine-tuning (Gu et al., CVPR 2024): Difffit PEFT of a DiT plus the minimax criteria.

Reference: `vimar-gu/MinimaxDiffusion@969fc6f` (`train_dit.py`, `models.py`; protocol-facts §4.2).
One fine-tuning run = one phase (a set of at most 20 classes) starting from the pretrained / base weights:

    loss = L_diffusion (DiT's ε-MSE + VB)  +  λ_r/|C| Σ_c (1 − min cos(x̂₀_c, M_real[c]))
                                           +  λ_d/|C| Σ_c  max cos(x̂₀_c, M_pseudo[c])

x̂₀ is the clean sample predicted from x_t and the (undetached) ε at the sampled t; the memories are per-class
FIFOs of 64 real latents and 64 detached x̂₀, updated after the terms of a class are computed; a class is
skipped while its pseudo memory is empty. Only biases, the γ's and the label table are trained.

A run is resumable: every `checkpoint_every` steps the trainable weights, EMA, optimizer, memories, step and
RNG state are written atomically; an interrupted run ends with the weights of an uninterrupted one (CPU).
Only the trainable tensors are stored (1.74 M for DiT-XL/2 instead of 675 M): base + delta = fine-tuned model.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddbench.diffusion.dit import Attention, DiT, DiTBlock, modulate
from ddbench.diffusion.train import diffusion_tables, diffusion_terms
from ddbench.errors import ConfigError
from ddbench.protocol import precision_on
from ddbench.safeload import load_tensors

FORMAT = 1  # bump when fine-tuning changes the weights a config produces (old caches are then not reused)
CHECKPOINT, FINAL = "checkpoint.pt", "minimax.pt"
TRAINABLE_KEYS = ("bias", "norm", "gamma", "y_embed")  # `mark_difffit_trainable` of the reference

# ---------------------------------------------------------------------------------------------------------
# Difffit: learnable γ scales on the first half of the blocks (reference names and arithmetic order)
# ---------------------------------------------------------------------------------------------------------


class DifffitAttention(Attention):
    """Attention with γ on the qkv output (3D) and on the output projection (D): `attn.gamma1`, `attn.gamma2`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # same maths as Attention.forward (a γ = 1 model is bit-identical to the base: tested)
        n, t, d = x.shape
        qkv = (self.gamma1 * self.qkv(x)).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each N×heads×T×head_dim
        x = F.scaled_dot_product_attention(q, k, v)
        return self.gamma2 * self.proj(x.transpose(1, 2).reshape(n, t, d))


class DifffitBlock(DiTBlock):
    """DiT block with γ₁, γ₂ (D) on the attention and MLP residual branches: `blocks.i.gamma1/2`."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + self.gamma1 * gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + self.gamma2 * gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


def _ones(n: int, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.ones(n, device=like.device, dtype=like.dtype))


def apply_difffit(model: DiT, num_blocks: int | None = None) -> DiT:
    """Add γ's (initialised to 1) to the first `num_blocks` blocks (default: half the depth, 14 of 28 in
    the reference), in place. The blocks keep their weights; only their class (forward) changes."""
    depth = len(model.blocks)
    n = depth // 2 if num_blocks is None else int(num_blocks)
    if not 0 <= n <= depth:
        raise ConfigError(f"difffit_blocks={num_blocks} is outside 0..{depth} (the model's depth)")
    for block in model.blocks[:n]:
        if isinstance(block, DifffitBlock):
            continue  # already patched: keep its γ's
        d, like = block.attn.proj.out_features, block.attn.proj.weight
        block.__class__ = DifffitBlock
        block.attn.__class__ = DifffitAttention
        block.gamma1, block.gamma2 = _ones(d, like), _ones(d, like)
        block.attn.gamma1, block.attn.gamma2 = _ones(3 * d, like), _ones(d, like)
    return model


def mark_trainable(model: nn.Module) -> list[str]:
    """requires_grad on names containing bias / norm / gamma / y_embed, off elsewhere; returns those names.
    DiT's LayerNorms have no affine weights, so this is the biases, the γ's and the label table."""
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(k in name for k in TRAINABLE_KEYS) and name != "pos_embed")
        if p.requires_grad:
            names.append(name)
    return names


# ---------------------------------------------------------------------------------------------------------
# The minimax criteria
# ---------------------------------------------------------------------------------------------------------


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine of rows: a n×D, b m×D -> n×m. The reference's form: dot / (‖a‖·‖b‖), no epsilon."""
    return (a @ b.T) / (a.norm(dim=-1)[:, None] * b.norm(dim=-1)[None, :])


class ClassMemory:
    """Per-class FIFO of flattened latents (k×D, k ≤ size): appended one row per sample, oldest dropped."""

    def __init__(self, size: int):
        if size < 1:
            raise ConfigError(f"memory_size must be ≥ 1, got {size}")
        self.size, self.items = int(size), {}

    def get(self, c: int) -> torch.Tensor | None:
        return self.items.get(int(c))

    def push(self, c: int, rows: torch.Tensor) -> None:
        old = self.items.get(int(c))
        rows = rows if old is None else torch.cat([old, rows])
        self.items[int(c)] = rows[-self.size:]

    def state_dict(self) -> dict:
        return {"size": self.size, "items": {c: v.cpu() for c, v in self.items.items()}}

    def load_state_dict(self, state: dict, device) -> None:
        self.size, self.items = state["size"], {int(c): v.to(device) for c, v in state["items"].items()}


def minimax_terms(x0_hat, x0, keys, real: ClassMemory, pseudo: ClassMemory, lambda_r: float, lambda_d: float):
    """(representativeness, diversity) losses of a batch, then the memory update (train_dit.py's loop).

    x0_hat: N×C×H×W predicted clean latents (with gradient), x0: N×C×H×W real latents, keys: N class ids
    (the memory key: the dataset label). Each class c in the batch adds, once its pseudo memory is non-empty,
    λ_r/|C|·(1 − min cos(x̂₀_c, real[c])) and λ_d/|C|·max cos(x̂₀_c, pseudo[c]); |C| = classes in batch."""
    flat, flat_real = x0_hat.flatten(1).float(), x0.flatten(1).float()  # N×D (D = C·H·W: 4096 for DiT-XL/2)
    present = sorted(set(keys.tolist()))  # one host read per step, as the reference's numpy labels
    rep, div = flat.new_zeros(()), flat.new_zeros(())
    for c in present:
        m = keys == c
        cur = flat[m]  # n_c×D
        if pseudo.get(c) is not None:
            rep = rep + (1 - cosine_matrix(cur, real.get(c)).min()) * (lambda_r / len(present))
            div = div + cosine_matrix(cur, pseudo.get(c)).max() * (lambda_d / len(present))
        real.push(c, flat_real[m].detach())
        pseudo.push(c, cur.detach())
    return rep, div


# ---------------------------------------------------------------------------------------------------------
# Data: an epoch-shuffled stream over the phase's pool (DistributedSampler order, drop_last)
# ---------------------------------------------------------------------------------------------------------


class Batches:
    """Step s -> (x0, memory keys, DiT labels) of batch s. The epoch order is randperm seeded seed + epoch
    (DistributedSampler's rule), so any step can be drawn after a restart; flips and VAE noise come from
    the caller's generator."""

    def __init__(self, images, keys, cond, cfg: dict, vae, device):
        # uint8 N×C×H×W: on the device when small (embedded data), else on the host and moved per batch
        self.images = images.to(device) if images.numel() <= 1 << 30 else images
        self.keys, self.cond = keys.to(device), cond.to(device)
        self.b, self.seed, self.hflip, self.vae, self.device = cfg["batch_size"], cfg["seed"], cfg["hflip"], vae, device
        self.per_epoch = len(images) // self.b
        if self.per_epoch == 0:
            raise ConfigError(f"the fine-tuning pool has {len(images)} images, fewer than batch_size={self.b}; "
                              "lower --set finetune.batch_size")
        self._epoch, self._perm = -1, None

    def __call__(self, step: int, gen: torch.Generator):
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            order = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._perm = epoch, torch.randperm(len(self.images), generator=order)
        idx = self._perm[pos * self.b:(pos + 1) * self.b].to(self.images.device)
        x = self.images[idx].to(self.device, non_blocking=True).float() / 127.5 - 1.0  # uint8 -> [−1, 1]
        if self.hflip:  # RandomHorizontalFlip(p=0.5) of the reference transform
            flip = (torch.rand(len(idx), generator=gen) < 0.5).to(self.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if self.vae is not None:  # latent_dist.sample()·0.18215, per batch as the reference
            x = self.vae.encode(x, mode="sample", generator=gen)
        idx = idx.to(self.device)
        return x, self.keys[idx], self.cond[idx]


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning loop
# ---------------------------------------------------------------------------------------------------------


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill mid-write never leaves a truncated checkpoint


def total_steps(cfg: dict, pool_size: int) -> int:
    """`steps`, capped by `epochs` full passes (drop_last batches); the reference samples the step-12000
    checkpoint of an 8-epoch run."""
    per_epoch = pool_size // cfg["batch_size"]
    return min(int(cfg["steps"]), int(cfg["epochs"]) * per_epoch) if cfg.get("epochs") else int(cfg["steps"])


class _State:
    """Everything a checkpoint restores: optimizer, EMA, memories, RNG, step, loss history."""

    def __init__(self, model, cfg, device):
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        # EMA of the trainable tensors only: the frozen ones stay exactly the base weights (the reference also
        # averages frozen tensors with themselves, which changes them by float rounding only)
        self.ema = {n: p.detach().clone().float() for n, p in self.params.items()}
        self.real, self.pseudo = ClassMemory(cfg["memory_size"]), ClassMemory(cfg["memory_size"])
        self.gen = torch.Generator().manual_seed(cfg["seed"])
        self.step, self.history, self.seconds, self.device = 0, [], 0.0, device

    def save(self, path: Path, key: dict) -> None:
        atomic_save({"format": FORMAT, "key": key, "step": self.step, "history": self.history,
                     "seconds": self.seconds, "rng": self.gen.get_state(), "opt": self.opt.state_dict(),
                     "model": {n: p.detach().cpu() for n, p in self.params.items()},
                     "ema": {n: v.cpu() for n, v in self.ema.items()},
                     "real": self.real.state_dict(), "pseudo": self.pseudo.state_dict()}, path)

    def restore(self, path: Path, key: dict) -> None:
        ck = load_tensors(path, "Minimax fine-tuning checkpoint", fix="it is a cache file: delete it and run again")
        if ck.get("key") != key:
            raise ConfigError(f"{path} belongs to another fine-tuning config; delete {path.parent} to start over")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(ck["model"][n])
        self.ema = {n: v.to(self.device) for n, v in ck["ema"].items()}
        self.opt.load_state_dict(ck["opt"])
        self.real.load_state_dict(ck["real"], self.device)
        self.pseudo.load_state_dict(ck["pseudo"], self.device)
        self.gen.set_state(ck["rng"])
        self.step, self.history, self.seconds = ck["step"], [tuple(h) for h in ck["history"]], ck["seconds"]

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        for n, p in self.params.items():
            self.ema[n].mul_(decay).add_(p.detach().float(), alpha=1 - decay)


def _step_loss(model, tables, batches, state: _State, cfg, amp: bool):
    # every random number from one CPU generator (reference: the global CUDA RNG): exact repeats and resumes
    x0, keys, cond = batches(state.step, state.gen)
    t = torch.randint(cfg["diffusion_steps"], (len(x0),), generator=state.gen).to(x0.device)
    noise = torch.randn(x0.shape, generator=state.gen).to(x0.device)
    # bf16 autocast on CUDA (reference: fp32 with TF32 matmuls); finetune.precision=fp32 restores fp32
    with torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
        loss, x0_hat = diffusion_terms(model, tables, x0, cond, t, noise, generator=state.gen)
    rep, div = x0_hat.new_zeros(()), x0_hat.new_zeros(())
    if cfg["lambda_r"] or cfg["lambda_d"]:  # both 0 = plain Difffit fine-tuning (the paper's ablation row 1)
        rep, div = minimax_terms(x0_hat, x0, keys, state.real, state.pseudo, cfg["lambda_r"], cfg["lambda_d"])
    return loss, rep, div


def finetune(model: DiT, images, keys, cond, cfg: dict, folder, key: dict, *, vae=None, device="cpu",
             track=None, stop_at: int | None = None, log=None) -> Path | None:
    """Fine-tune `model` (patched with `apply_difffit` + `mark_trainable`, trainable tensors at their initial
    values) on uint8 `images` with memory keys `keys` (N) and DiT labels `cond` (N), in `folder`.

    Returns folder/minimax.pt ({"ema": trainable EMA tensors, "history", "seconds", "steps", "key"}), or None
    when `stop_at` steps came first (a checkpoint is left there: how tests interrupt a run)."""
    folder, device = Path(folder), torch.device(device)
    if (folder / FINAL).exists():
        return folder / FINAL
    folder.mkdir(parents=True, exist_ok=True)
    model.to(device).train()  # train mode: label dropout 0.1 keeps the null label (CFG) trained
    state, batches = _State(model, cfg, device), Batches(images, keys, cond, cfg, vae, device)
    if (folder / CHECKPOINT).exists():
        state.restore(folder / CHECKPOINT, key)
        if log:
            log(f"minimax: resuming {folder.name} at step {state.step}")
    tables = diffusion_tables(cfg, device)
    total = total_steps(cfg, len(images))
    if cfg["precision"] not in ("bf16", "fp32"):
        raise ConfigError(f"minimax finetune.precision {cfg['precision']!r} is not bf16 or fp32")
    # precision_on: the value a set's identity hashes (ddbench.identity.resolved_precision)
    end, amp = min(total, stop_at or total), precision_on(cfg["precision"], device) == "bf16"
    sums, count, t0 = torch.zeros(3, device=device), 0, time.perf_counter()
    steps = range(state.step, end)
    for _ in (track(steps, "minimax fine-tuning", len(steps)) if track else steps):
        loss, rep, div = _step_loss(model, tables, batches, state, cfg, amp)
        state.opt.zero_grad(set_to_none=True)
        (loss + rep + div).backward()
        state.opt.step()
        state.update_ema(cfg["ema_decay"])
        state.step += 1
        sums, count = sums + torch.stack([loss.detach(), rep.detach(), div.detach()]).float(), count + 1
        if state.step % cfg["log_every"] == 0 or state.step == end:
            state.history.append((state.step, *(sums / count).tolist()))  # host read once per log interval
            sums, count = torch.zeros(3, device=device), 0
            if log:
                loss_, rep_, div_ = state.history[-1][1:]
                log(f"minimax step {state.step}/{total}: loss {loss_:.4f} rep {rep_:.5f} div {div_:.5f}")
        if state.step % cfg["checkpoint_every"] == 0 or state.step == end:
            state.seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            state.save(folder / CHECKPOINT, key)
    if end < total:
        return None
    atomic_save({"format": FORMAT, "key": key, "ema": {n: v.cpu() for n, v in state.ema.items()},
                 "history": state.history, "seconds": state.seconds, "steps": total}, folder / FINAL)
    (folder / CHECKPOINT).unlink(missing_ok=True)  # the final file supersedes it
    return folder / FINAL
