"""Training a small class-conditional DiT in pixel space, for the datasets no pretrained generator covers.

The objective is DiT's (`facebookresearch/DiT` `diffusion/gaussian_diffusion.py:training_losses`, ed81ce2):
linear β schedule over 1000 steps, t ~ U{0..999}, ε-MSE plus, with `learn_sigma`, the variational-bound term
that trains the learned-range variance on a stop-gradient mean (improved DDPM's "hybrid" loss). Class labels
are dropped with probability 0.1 so that the model also learns the null label used by classifier-free guidance.
AdamW, EMA of the weights (the EMA weights are the ones sampled).

A run is resumable: every `checkpoint_every` steps the model, EMA, optimizer, step, loss history and RNG
state are written atomically to `checkpoint.pt`; a killed run continues from there and ends with exactly the
weights an uninterrupted run gives (on CPU). The finished generator is `generator.pt` (EMA weights + configs).

    cfg = generator_config(spec, "cpu")                       # preset + overrides -> resolved dict
    path = train_generator(split, cfg, folder, device)        # trains or resumes; returns folder/generator.pt
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from pathlib import Path

import torch

from ddbench.config import deep_merge
from ddbench.diffusion.dit import DiT
from ddbench.diffusion.schedule import Schedule, linear_betas
from ddbench.diffusion.vae import from_uint8
from ddbench.errors import ConfigError
from ddbench.safeload import load_tensors

FORMAT = 1  # bump when training changes the weights a config produces, so old caches are not reused
CHECKPOINT, FINAL = "checkpoint.pt", "generator.pt"

# ---------------------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------------------

COMMON = dict(
    mlp_ratio=4.0, learn_sigma=True, class_dropout=0.1,          # DiT's model defaults
    diffusion_steps=1000, beta_start=1e-4, beta_end=0.02,        # DiT's linear schedule
    weight_decay=0.0, grad_clip=0.0, warmup_steps=0,             # DiT: AdamW, wd 0, no clipping, constant lr
    ema_warmup=True, amp=True, seed=0, log_every=50,
)
PRESETS = {
    # seconds on one CPU core: for tests and the registry-wide `tiny` method runs (quality is not the point)
    "tiny": dict(hidden_size=32, depth=1, num_heads=2, patch_size=4, train_steps=40, batch_size=32, lr=1e-3,
                 ema_decay=0.9, checkpoint_every=20, log_every=10),
    # ~25-45 min on one CPU core (docs/generators.md: quality against training length; 1500 x 32 was too short)
    "cpu": dict(hidden_size=128, depth=4, num_heads=4, patch_size=4, train_steps=6000, batch_size=64, lr=1e-3,
                warmup_steps=100, ema_decay=0.999, checkpoint_every=250),
    # a DiT-S-sized model for a GPU (an hour-scale run)
    "gpu": dict(hidden_size=384, depth=12, num_heads=6, patch_size=2, train_steps=60000, batch_size=256, lr=3e-4,
                warmup_steps=1000, ema_decay=0.9999, checkpoint_every=2500, log_every=250),
}
DERIVED = ("input_size", "in_channels", "num_classes")  # taken from the dataset, not settable


def generator_config(spec, gen: str | dict = "cpu") -> dict:
    """Resolved training config for `spec`: a preset name, or {"preset": name, key: override, ...}."""
    over = {"preset": gen} if isinstance(gen, str) else dict(gen or {})
    preset = over.pop("preset", "cpu")
    if preset not in PRESETS:
        raise ConfigError(f"unknown generator preset {preset!r}; expected one of {', '.join(PRESETS)}")
    cfg = deep_merge(COMMON, PRESETS[preset])
    unknown = sorted(set(over) - set(cfg))
    if unknown:
        raise ConfigError(f"generator config has no key(s) {unknown}; known keys: {', '.join(sorted(cfg))}")
    cfg = deep_merge(cfg, over)
    cfg.update(preset=preset, input_size=spec.resolution, in_channels=spec.channels, num_classes=len(spec.classes))
    if cfg["input_size"] % cfg["patch_size"]:
        raise ConfigError(f"generator patch_size={cfg['patch_size']} does not divide the {cfg['input_size']}-px "
                          f"images of {spec.name}; choose a divisor, e.g. --set generator.patch_size=2")
    if cfg["hidden_size"] % cfg["num_heads"]:
        raise ConfigError(f"generator hidden_size={cfg['hidden_size']} is not divisible by "
                          f"num_heads={cfg['num_heads']}; choose a multiple of num_heads")
    return cfg


def cache_key(cfg: dict) -> dict:
    """What identifies a trained generator: every value that changes the weights (not logging/checkpointing)."""
    skip = {"preset", "log_every", "checkpoint_every"}
    return {"format": FORMAT, **{k: v for k, v in cfg.items() if k not in skip}}


def build_model(cfg: dict) -> DiT:
    return DiT(input_size=cfg["input_size"], patch_size=cfg["patch_size"], in_channels=cfg["in_channels"],
               hidden_size=cfg["hidden_size"], depth=cfg["depth"], num_heads=cfg["num_heads"],
               mlp_ratio=cfg["mlp_ratio"], class_dropout_prob=cfg["class_dropout"],
               num_classes=cfg["num_classes"], learn_sigma=cfg["learn_sigma"])


# ---------------------------------------------------------------------------------------------------------
# The diffusion loss (DiT training_losses with LossType.MSE and learned-range variance)
# ---------------------------------------------------------------------------------------------------------


def diffusion_tables(cfg: dict, device) -> dict[str, torch.Tensor]:
    """Float32 per-timestep tables on the device (computed in float64, as the reference)."""
    s = Schedule.from_betas(linear_betas(cfg["diffusion_steps"], cfg["beta_start"], cfg["beta_end"]))
    names = ("alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
             "posterior_mean_coef1", "posterior_mean_coef2", "posterior_log_variance_clipped")
    tables = {k: getattr(s, k) for k in names}
    tables["log_betas"] = torch.log(s.betas)
    return {k: v.float().to(device) for k, v in tables.items()}


def _at(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return table[t].view(-1, 1, 1, 1)  # N -> N×1×1×1


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> torch.Tensor:
    """log-likelihood of 8-bit data x ∈ [−1, 1] (bins of width 2/255) under N(means, e^(2·log_scales))."""
    def cdf(v):  # the tanh approximation of the standard normal CDF, as the reference
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))

    centered, inv_std = x - means, torch.exp(-log_scales)
    cdf_plus, cdf_min = cdf(inv_std * (centered + 1.0 / 255)), cdf(inv_std * (centered - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vb_term(tables, eps: torch.Tensor, var_values: torch.Tensor, x0, x_t, t) -> torch.Tensor:
    """Per-sample variational-bound term in bits/dim (N): KL(q(x_{t−1}|x_t,x0) ‖ p(x_{t−1}|x_t)) for t > 0,
    the decoder NLL at t = 0. `eps` is detached by the caller, so this term trains only the variance."""
    true_mean = _at(tables["posterior_mean_coef1"], t) * x0 + _at(tables["posterior_mean_coef2"], t) * x_t
    true_logvar = _at(tables["posterior_log_variance_clipped"], t)
    x0_hat = _at(tables["sqrt_recip_alphas_cumprod"], t) * x_t - _at(tables["sqrt_recipm1_alphas_cumprod"], t) * eps
    mean = _at(tables["posterior_mean_coef1"], t) * x0_hat + _at(tables["posterior_mean_coef2"], t) * x_t
    frac = (var_values + 1) / 2  # learned range: interpolate log β̃_t (min) and log β_t (max)
    logvar = frac * _at(tables["log_betas"], t) + (1 - frac) * true_logvar
    kl = normal_kl(true_mean, true_logvar, mean, logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def diffusion_loss(model: DiT, tables, x0, y, t, noise, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean DiT loss of a batch: x0 N×C×H×W in [−1, 1], y N labels, t N timesteps, noise like x0."""
    return diffusion_terms(model, tables, x0, y, t, noise, generator)[0]


def diffusion_terms(model: DiT, tables, x0, y, t, noise, generator: torch.Generator | None = None):
    """(mean DiT loss, x̂₀ N×C×H×W) of a batch. x̂₀ comes from the undetached ε, so a term on it trains the
    model through it (Minimax; the reference's `terms["output"]`)."""
    ac = _at(tables["alphas_cumprod"], t)
    x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * noise  # q(x_t | x0)
    out = model(x_t, t, y, generator=generator)  # N×C_out×H×W; label dropout drawn from `generator`
    c = x0.shape[1]
    eps = out[:, :c].float()
    loss = ((noise - eps) ** 2).mean(dim=(1, 2, 3))
    if out.shape[1] == 2 * c:
        loss = loss + vb_term(tables, eps.detach(), out[:, c:].float(), x0, x_t, t)
    x0_hat = _at(tables["sqrt_recip_alphas_cumprod"], t) * x_t - _at(tables["sqrt_recipm1_alphas_cumprod"], t) * eps
    return loss.mean(), x0_hat


# ---------------------------------------------------------------------------------------------------------
# EMA
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, for every parameter (DiT's update_ema)."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1 - decay)


def ema_decay_at(cfg: dict, step: int) -> float:
    """The decay used after `step` optimizer steps (1-based). With `ema_warmup` it is min(decay, (1+s)/(10+s)):
    a few-thousand-step run would otherwise sample weights still close to the random init (DiT's 0.9999
    constant decay assumes 400k steps)."""
    if not cfg["ema_warmup"]:
        return cfg["ema_decay"]
    return min(cfg["ema_decay"], (1 + step) / (10 + step))


# ---------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary name, then rename: a kill mid-write never leaves a truncated file."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def init_model(cfg: dict) -> DiT:
    """The model at step 0: initialised from `seed` without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        return build_model(cfg)


def _restore(path: Path, cfg: dict, model, ema, opt, gen) -> tuple[int, list, float]:
    ck = load_tensors(path, "generator checkpoint", fix="it is a cache file: delete it and run again")
    if cache_key(ck["config"]) != cache_key(cfg):
        raise ConfigError(f"{path} was written for another generator config; delete {path.parent} to retrain")
    model.load_state_dict(ck["model"])
    ema.load_state_dict(ck["ema"])
    opt.load_state_dict(ck["opt"])
    gen.set_state(ck["rng"])
    return ck["step"], [tuple(h) for h in ck["history"]], ck["seconds"]


# ---------------------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------------------


class _Batches:
    """Draws (x0, y, t, noise) from the uint8 pool on the device; every random number comes from one CPU
    generator, so a run is the same on any device and resumes exactly from the saved generator state."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, cfg: dict, gen: torch.Generator, device):
        self.images, self.labels = images.to(device), labels.to(device)  # N×C×H×W uint8, N
        self.cfg, self.gen, self.device = cfg, gen, device

    def __call__(self):
        b, g = self.cfg["batch_size"], self.gen
        # sampled with replacement (the reference shuffles epochs): the stream is a function of the RNG state alone
        idx = torch.randint(len(self.images), (b,), generator=g).to(self.device, non_blocking=True)
        t = torch.randint(self.cfg["diffusion_steps"], (b,), generator=g).to(self.device, non_blocking=True)
        noise = torch.randn((b, *self.images.shape[1:]), generator=g).to(self.device, non_blocking=True)
        x0 = from_uint8(self.images[idx])  # uint8 -> [−1, 1], as DiT's Normalize(0.5, 0.5)
        return x0, self.labels[idx], t, noise


def _autocast(device: torch.device, amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else contextlib.nullcontext()


def train_generator(split, cfg: dict, folder, device="cpu", *, track=None, stop_at: int | None = None,
                    log=None) -> Path | None:
    """Train (or resume) the generator of `cfg` on `split` (uint8 images, labels) in `folder`.

    Returns folder/generator.pt, or None when `stop_at` steps were reached first (a checkpoint is written
    there: it is how tests interrupt a run). `track(iterable, description, total)` wraps the step loop.
    """
    folder, device = Path(folder), torch.device(device)
    final = folder / FINAL
    if final.exists():
        return final
    folder.mkdir(parents=True, exist_ok=True)
    model = init_model(cfg).to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"],
                            weight_decay=cfg["weight_decay"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    start, history, seconds = 0, [], 0.0
    if (folder / CHECKPOINT).exists():
        start, history, seconds = _restore(folder / CHECKPOINT, cfg, model, ema, opt, gen)
        if log:
            log(f"generator: resuming {folder.name} at step {start}/{cfg['train_steps']}")
    batches, tables = _Batches(split.images, split.labels, cfg, gen, device), diffusion_tables(cfg, device)
    total, every, end = cfg["train_steps"], cfg["checkpoint_every"], min(cfg["train_steps"], stop_at or 1 << 62)
    running, count, t0 = torch.zeros((), device=device), 0, time.perf_counter()
    steps = range(start, end)
    for step in (track(steps, "training generator", len(steps)) if track else steps):
        for group in opt.param_groups:  # linear warm-up, then constant (DiT: constant 1e-4, no warm-up)
            group["lr"] = cfg["lr"] * min(1.0, (step + 1) / max(1, cfg["warmup_steps"]))
        x0, y, t, noise = batches()
        with _autocast(device, cfg["amp"]):
            loss = diffusion_loss(model, tables, x0, y, t, noise, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        update_ema(ema, model, ema_decay_at(cfg, step + 1))
        running, count = running + loss.detach(), count + 1
        if (step + 1) % cfg["log_every"] == 0 or step + 1 == end:
            history.append((step + 1, float(running) / count))  # the one host read per log interval
            running, count = torch.zeros((), device=device), 0
            if log:
                log(f"generator step {step + 1}/{total}: loss {history[-1][1]:.4f}")
        if (step + 1) % every == 0 or step + 1 == end:
            elapsed = seconds + time.perf_counter() - t0
            atomic_save({"format": FORMAT, "config": cfg, "step": step + 1, "model": model.state_dict(),
                         "ema": ema.state_dict(), "opt": opt.state_dict(), "rng": gen.get_state(),
                         "history": history, "seconds": elapsed}, folder / CHECKPOINT)
    if end < total:
        return None
    seconds += time.perf_counter() - t0
    atomic_save({"format": FORMAT, "config": cfg, "model_config": model.config, "ema": ema.state_dict(),
                 "history": history, "seconds": seconds, "device": str(device)}, final)
    (folder / CHECKPOINT).unlink(missing_ok=True)  # the final file supersedes it; a finished run never resumes
    return final


def load_trained(path, device="cpu") -> tuple[DiT, dict]:
    """(EMA model in eval mode, the saved record without weights) from a generator.pt."""
    ck = load_tensors(path, "trained generator", fix="it is a cache file: delete it and run again")
    with torch.device("meta"):
        model = DiT(**ck["model_config"])
    model.load_state_dict(ck.pop("ema"), assign=True)
    model.pos_embed.requires_grad_(False)
    return model.to(device).eval(), ck
