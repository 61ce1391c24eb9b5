"""ACS: adversary-guided curriculum sampling (Zou, Chen, Chen and Zhang, ICME 2025; paper: shared/seeds/000).

The distilled set is sampled from a class-conditional diffusion model (`base`: the plain `dit` generator or the
fine-tuned `minimax` one) in curricula S_0, S_1, … (Algorithm 1):

1. S_0 is sampled without guidance.
2. Before curriculum i > 0 a discriminator φ (ResNetAP-10, cross-entropy) is trained from scratch on every image
   generated so far, S_0 ∪ … ∪ S_{i−1}.
3. Every reverse step of curriculum i is pushed away from what φ recognises (Eq. 3–4):
       L_adv = −CE(φ(D(x̂₀(x_t))), y),   x_{t−1} = step(x_t) − s(t)·∇_{x_t} L_adv,
       s(t) = g·sqrt(1 − ᾱ_t)·‖ε_θ(x_t)‖ / ‖∇_{x_t} L_adv‖
   with gradients through the decoder D (latent generators) and the denoiser (x̂₀ depends on x_t through ε_θ).

Curricula (paper §III-A): 5, 5, 10, 30, 50 per class for IPC 100; IPC 10 / 20 / 50 are the first 2 / 3 / 4.
Other IPCs: `curriculum_sizes` (the schedule's prefix with the last curriculum cut; beyond its sum, further
curricula of the last size), so a smaller IPC's set is the first images of a larger one's for the same seed.
Sampler: the base's (DDPM, 50 respaced steps, for DiT and Minimax). Eq. 2 is DDIM's general step with σ_t left
open; DDPM is that step with σ_t² = the posterior variance, and it is what the DiT / Minimax baselines that
ACS is compared with (and that g = 0 must reproduce, paper Fig. 5 and Table III) were sampled with. DDIM (η = 0)
is selectable. Choices the paper leaves open (discriminator recipe, per-sample norms, g) are in docs/acs.md.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddbench.identity import TRAIN_NUMERICS
from ddbench.engine.augment import IDCAugment, normalize, resize_center_crop, to_float
from ddbench.diffusion.generator import SAMPLERS
from ddbench.distilled import DistilledSet
from ddbench.errors import ConfigError
from ddbench.method import Context, Method
from ddbench.methods.dit import GUIDED_SAMPLING_RULES
from ddbench.methods.mgd3 import (BASES, GUIDED_NUMERICS, base_generator, base_method,  # the base-generator
                                  guided_identity, guided_precision_config)           # mechanism of MGD³
from ddbench.methods.minimax import FINETUNE_RULES
from ddbench.schema import choice, nullable
from ddbench.nets.build import build_net
from ddbench.engine.train import OPTIMIZER_RULES, SCHEDULE_RULES, evaluate_accuracy, train_classifier

SCHEDULE = (5, 5, 10, 30, 50)  # images per class of each curriculum for IPC 100 (paper §III-A)

# ---------------------------------------------------------------------------------------------------------
# Curricula
# ---------------------------------------------------------------------------------------------------------


def full_sizes(ipc: int, schedule=SCHEDULE) -> list[int]:
    """The uncut curriculum sizes covering `ipc`: the schedule, extended by repeats of its last size."""
    schedule = [int(n) for n in schedule]
    if not schedule or min(schedule) < 1:
        raise ConfigError(f"ACS schedule {schedule} must be a non-empty list of positive images-per-class "
                          "counts, e.g. [5, 5, 10, 30, 50]")
    sizes = list(schedule)
    while sum(sizes) < ipc:
        sizes.append(schedule[-1])
    out, total = [], 0
    for n in sizes:
        if total >= ipc:
            break
        out.append(n)
        total += n
    return out


def curriculum_sizes(ipc: int, schedule=SCHEDULE) -> list[int]:
    """Images per class of each curriculum for `ipc`: the full sizes with the last one cut to fit.

    SCHEDULE gives 1 -> [1], 7 -> [5, 2], 10 -> [5, 5], 20 -> [5, 5, 10], 50 -> [5, 5, 10, 30],
    70 -> [5, 5, 10, 30, 20], 100 -> the schedule, 150 -> [..., 50, 50]. IPC ≤ the first size is one unguided
    curriculum (= the base generator with ACS's sampler)."""
    if ipc < 1:
        raise ConfigError(f"ACS needs --ipc ≥ 1, got {ipc}")
    sizes = full_sizes(ipc, schedule)
    sizes[-1] -= sum(sizes) - ipc
    return sizes


# ---------------------------------------------------------------------------------------------------------
# Adversarial guidance (Eq. 3–4)
# ---------------------------------------------------------------------------------------------------------


def guidance_scale(g: float, alpha_bar: float, eps: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """s(t) = g·sqrt(1 − ᾱ_t)·‖ε‖/‖∇‖ per sample (eps, grad: N×C×H×W -> N×1×1×1).

    Norms are per image: Algorithm 1 samples every image on its own, so one image's step must not depend on
    the others in its batch. A zero gradient gives s·∇ = 0 (the norm is floored to avoid 0/0)."""
    e = eps.detach().flatten(1).norm(dim=1)
    gn = grad.detach().flatten(1).norm(dim=1).clamp_min(torch.finfo(grad.dtype).tiny)
    s = g * math.sqrt(max(0.0, 1.0 - alpha_bar)) * e / gn
    return s.view(-1, *[1] * (eps.dim() - 1))


class DiscriminatorInput:
    """Images in [−1, 1] (decoded x̂₀) -> the discriminator's input: [0, 1], resized to its side, normalised.
    Differentiable, and the same preprocessing its training used (`augment_for`)."""

    def __init__(self, size: int, mean, std):
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() + 1) / 2
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = resize_center_crop(x, self.size)
        return normalize(x, self.mean, self.std)


class AdversarialGuidance:
    """Guidance hook (ddbench.diffusion.hooks): x_{t−1} ← x_{t−1} − s(t)·∇_{x_t} L_adv at every step.

    decode: model-space x̂₀ -> images in [−1, 1], differentiable (VAE decoder, or identity in pixel space).
    labels: N dataset labels of the batch (the discriminator's classes; state.y holds the model's labels).
    Records per step the discriminator's mean CE on D(x̂₀) (`ce`) and the mean s(t)·‖∇‖ (`step_norm`)."""

    def __init__(self, disc: nn.Module, decode, disc_input: DiscriminatorInput, labels: torch.Tensor, g: float):
        self.disc, self.decode, self.disc_input = disc, decode, disc_input
        self.labels, self.g = labels, float(g)
        self.ce: list[float] = []
        self.step_norm: list[float] = []

    def adversarial_gradient(self, state) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(∇_{x_t} L_adv, ε_θ(x_t), per-sample CE), re-running the model at this step with gradients."""
        with torch.enable_grad():
            x = state.x_t.detach().requires_grad_(True)
            eps, x0 = state.predict(x)  # ε with CFG, x̂₀ = (x_t − sqrt(1−ᾱ)·ε)/sqrt(ᾱ)  (Eq. 1)
            logits = self.disc(self.disc_input(self.decode(x0)))
            ce = F.cross_entropy(logits.float(), self.labels.to(logits.device), reduction="none")  # N
            # L_adv = −CE; summed over the batch so that each sample's gradient is its own
            (grad,) = torch.autograd.grad(-ce.sum(), x)
        return grad, eps.detach(), ce.detach()

    def on_xt(self, state) -> torch.Tensor:
        grad, eps, ce = self.adversarial_gradient(state)
        s = guidance_scale(self.g, state.alpha_bar, eps, grad)  # N×1×1×1
        step = s * grad
        self.ce.append(float(ce.mean()))  # one host read per step (the step already synchronised on grad)
        self.step_norm.append(float(step.flatten(1).norm(dim=1).mean()))
        return state.x_prev - step  # Eq. 4: descend L_adv, i.e. ascend the discriminator's CE


# ---------------------------------------------------------------------------------------------------------
# The discriminator φ: ResNetAP-10 trained with cross-entropy on every image generated so far
# ---------------------------------------------------------------------------------------------------------


def augment_for(disc_cfg: dict, size: int, spec):
    """Training transform of the discriminator: uint8 batch -> normalised input at `size` (aug(x, g))."""
    kind = disc_cfg.get("augment", "none")
    if kind == "none":
        def plain(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            x = to_float(x)
            return normalize(resize_center_crop(x, size) if x.shape[-1] != size else x, spec.mean, spec.std)
        return plain
    if kind == "idc":  # the IDC / Minimax training chain (RRC 0.5–1, flip, jitter, lighting): RGB data only
        if spec.channels != 3:
            raise ConfigError(f"ACS disc.augment=idc needs RGB data; {spec.name} has {spec.channels} channel(s). "
                              "Use --set disc.augment=none")
        idc = IDCAugment(size, spec.mean, spec.std)
        return lambda x, g: idc(resize_center_crop(to_float(x), size) if x.shape[-1] != size else x, g)
    raise ConfigError(f"ACS disc.augment={kind!r} is unknown; expected 'none' or 'idc'")


def disc_epochs(disc_cfg: dict, n: int) -> int:
    """`epochs`, cut so that at most `max_steps` optimizer steps are taken when that is set (a CPU budget: the
    last curriculum of IPC 50 trains φ on 200 images per class)."""
    epochs, cap = int(disc_cfg["epochs"]), disc_cfg.get("max_steps")
    if not cap:
        return epochs
    per_epoch = math.ceil(n / int(disc_cfg["batch_size"]))
    return max(1, min(epochs, int(cap) // per_epoch))


def train_discriminator(images: torch.Tensor, labels: torch.Tensor, spec, disc_cfg: dict, seed: int,
                        device) -> tuple[nn.Module, DiscriminatorInput, dict]:
    """A fresh φ trained on uint8 `images` N×C×H×W (labels N); returns (φ in eval mode, its input map, stats)."""
    size = int(disc_cfg.get("resolution") or images.shape[-1])
    gen = torch.Generator().manual_seed(seed)
    net = build_net(disc_cfg.get("arch", "resnetap10"), len(spec.classes), spec.channels, size, generator=gen,
                    **(disc_cfg.get("arch_kw") or {}))
    hist = train_classifier(net, images, labels, epochs=disc_epochs(disc_cfg, len(images)),
                            batch_size=int(disc_cfg["batch_size"]),
                            optimizer=disc_cfg["optimizer"], schedule=disc_cfg.get("schedule"),
                            augment=augment_for(disc_cfg, size, spec), loss="ce", generator=gen, device=device)
    net.eval().requires_grad_(False)  # φ is fixed while it guides; gradients flow to x only
    disc_input = DiscriminatorInput(size, spec.mean, spec.std)
    acc = evaluate_accuracy(net, images, labels, lambda x: disc_input(x * 2 - 1), device=device)
    stats = {"images": len(images), "train_loss_last": hist.train_loss[-1], "train_acc": acc,
             "seconds": hist.seconds}
    return net, disc_input, stats


def differentiable_decoder(gen):
    """x̂₀ in the model's space -> images in [−1, 1] with gradients (Generator.decode runs under no_grad and
    quantises): the VAE decoder for latent generators, the identity for pixel-space ones."""
    if gen.vae is None:
        return lambda x0: x0
    vae = gen.vae
    return lambda z: vae.model.decode(z.to(vae.dtype) / vae.scale).sample.float()


# ---------------------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------------------

SAMPLING_KEYS = ("dit", "vae", "generator", "steps", "sampler", "cfg_scale", "cfg_channels", "batch_size", "autocast")


class ACS(Method):
    """Curricula sampled from the base generator, each one after the first guided away from a discriminator
    trained on all the curricula before it (Algorithm 1)."""
    numerics = (*GUIDED_NUMERICS, "ddbench.methods.acs", *TRAIN_NUMERICS)

    defaults = {"base": "dit", "sampling": {k: None for k in SAMPLING_KEYS}, "finetune": None, "g": 0.01,
                "schedule": list(SCHEDULE), "guided_batch_size": None,
                "disc": {"arch": "resnetap10", "arch_kw": None, "resolution": None, "epochs": 100, "max_steps": None, "batch_size": 64,
                         "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005},
                         "schedule": {"name": "cosine"}, "augment": "none"}}
    schema = {"base": choice(BASES), "sampling": GUIDED_SAMPLING_RULES, "finetune": nullable(FINETUNE_RULES),
              "g": "float>=0", "schedule": "list[int>=1]", "guided_batch_size": "int>=1?",
              "disc": {"arch": "arch", "arch_kw": "dict?", "resolution": "int>=1?", "epochs": "int>=1",
                       "max_steps": "int>=1?", "batch_size": "int>=1", "optimizer": OPTIMIZER_RULES,
                       "schedule": SCHEDULE_RULES, "augment": "choice[none|idc]"}}

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        full_sizes(1, cfg["schedule"])  # a non-empty list of positive counts

    def _base(self, ctx: Context) -> Method:
        over = {**self.cfg["sampling"], "finetune": self.cfg["finetune"]}  # finetune: base minimax only
        base = base_method(self.cfg["base"], ctx.spec.name, over)
        if base.cfg.get("sampler") not in SAMPLERS:
            raise ConfigError(f"acs sampling.sampler={base.cfg.get('sampler')!r}; expected one of "
                              f"{', '.join(SAMPLERS)} (null: the base's, DDPM)")
        return base

    def identity(self) -> dict:
        return guided_identity(self)

    def precision_config(self, dataset: str) -> dict:
        return guided_precision_config(self, dataset, {**self.cfg["sampling"], "finetune": self.cfg["finetune"]})

    def prepare(self, ctx: Context) -> None:
        base = self._base(ctx)
        base.prepare(ctx)  # the base's expensive step (generator training / loading / fine-tuning), cached
        base_generator(ctx, base)

    def distill(self, ctx: Context, ipc: int, seed: int) -> DistilledSet:
        t0 = time.perf_counter()
        base = self._base(ctx)
        gen = base_generator(ctx, base)
        sizes, full = curriculum_sizes(ipc, self.cfg["schedule"]), full_sizes(ipc, self.cfg["schedule"])
        k = len(ctx.spec.classes)
        # All draws come from one master generator in curriculum order and depend only on the *uncut* sizes,
        # so the curricula a smaller IPC shares with a larger one get the same noise and the same φ seeds.
        master = torch.Generator().manual_seed(seed)
        images, labels, records = [], [], []
        for i, (n, n_full) in enumerate(zip(sizes, full)):
            # image-major order (image j of every class, then image j+1): the first K·n entries are a cut
            # curriculum, and the batches that hold them are the same as for the uncut one
            noise = torch.randn((k, n_full, *gen.latent_shape), generator=master).transpose(0, 1).flatten(0, 1)
            step_seed, disc_seed = (int(x) for x in torch.randint(0, 2**62, (2,), generator=master))
            y = torch.arange(k).repeat(n_full)  # K·n_full labels, image-major
            out, rec = self.curriculum(ctx, gen, base.cfg, i, y, noise, k * n, (step_seed, disc_seed), images, labels)
            images.append(out)
            labels.append(y[: k * n])
            records.append(rec | {"of": len(sizes)})
        return self._assemble(ctx, images, sizes, records, base, gen, seed, ipc, t0)

    def curriculum(self, ctx: Context, gen, bcfg: dict, i: int, y: torch.Tensor, noise: torch.Tensor, keep: int,
                   seeds: tuple[int, int], prev_images: list, prev_labels: list) -> tuple[torch.Tensor, dict]:
        """Curriculum i: train φ on every earlier image (i > 0), then sample the first `keep` of y from `noise`
        with the guidance. seeds: (per-step noise, φ)."""
        t1 = time.perf_counter()
        guided = i > 0 and float(self.cfg["g"]) != 0.0  # S_0 unguided; g = 0 is the unguided baseline (no φ)
        rec = {"curriculum": i, "ipc": keep // len(ctx.spec.classes), "guided": guided}
        hooks, disc, hooks_for = [], None, None
        if guided:
            disc, disc_input, rec["disc"] = train_discriminator(torch.cat(prev_images), torch.cat(prev_labels),
                                                                ctx.spec, self.cfg["disc"], seeds[1], ctx.device)
            decode = differentiable_decoder(gen)

            def adversarial_hooks(idx: torch.Tensor):
                hooks.append(AdversarialGuidance(disc, decode, disc_input, y[idx].to(ctx.device), self.cfg["g"]))
                return [hooks[-1]]
            hooks_for = adversarial_hooks
        t2 = time.perf_counter()
        batch = self.cfg["guided_batch_size"] if guided else None
        out = sample_batches(ctx, gen, bcfg, y, noise, keep, seeds[0], hooks_for, batch, f"ACS curriculum {i + 1}")
        rec.update(_guidance_record(hooks, disc, out, y[:keep], ctx), seconds_disc=t2 - t1,
                   seconds_sampling=time.perf_counter() - t2)
        return out, rec

    def _assemble(self, ctx, images, sizes, records, base, gen, seed, ipc, t0) -> DistilledSet:
        """Class-major over curricula: class c's images are S_0's, then S_1's, … (file k = image k), so the
        first m files of a class are the IPC-m set for the same seed."""
        k = len(ctx.spec.classes)
        # each curriculum is image-major (n×K): its class c images are rows c, c+K, …
        per_class = [torch.cat([im.view(n, k, *im.shape[1:])[:, c] for im, n in zip(images, sizes)]) for c in range(k)]
        prov = {"method": self.name, "version": self.version, "seed": seed, "ipc": ipc, "config": self.cfg,
                "base": {"method": base.name, "version": base.version, "config": base.cfg}, "generator": gen.info,
                "curricula": records, "timings": {"distill": time.perf_counter() - t0}}
        return DistilledSet(torch.cat(per_class), torch.arange(k).repeat_interleave(ipc), ctx.spec.classes, prov)


def sample_batches(ctx: Context, gen, bcfg: dict, y: torch.Tensor, noise: torch.Tensor, keep: int, step_seed: int,
                   hooks_for, batch_size: int | None, what: str) -> torch.Tensor:
    """uint8 images of the first `keep` labels of y from their initial noise, `batch_size` (default the base's)
    at a time. Batches are cut from the whole of y, so the kept images do not depend on `keep`; only the batch
    holding the last kept image also samples some that are dropped."""
    g = torch.Generator().manual_seed(step_seed)  # per-step noise (DDPM; DDIM with η = 0 multiplies it by 0)
    bs = int(batch_size or bcfg["batch_size"])
    starts = range(0, keep, bs)
    out = []
    for s in ctx.track(starts, f"{what}: {keep} images", len(starts)):
        idx = torch.arange(s, min(s + bs, len(y)))
        z = gen.sample_latents(y[idx], g, steps=bcfg["steps"], cfg=bcfg["cfg_scale"], sampler=bcfg["sampler"],
                               hooks=hooks_for(idx) if hooks_for else (), cfg_channels=bcfg["cfg_channels"],
                               autocast=bcfg["autocast"], compile=bcfg.get("compile", "auto"), noise=noise[idx])
        out.append(gen.decode(z, bcfg["autocast"]))
    return torch.cat(out)[:keep]


def _guidance_record(hooks, disc, images: torch.Tensor, y: torch.Tensor, ctx: Context) -> dict:
    """What the guidance did: φ's CE on D(x̂₀) at the first and last step (mean over the curriculum, from the
    hooks) and φ's CE / accuracy on the curriculum's final images (the quantity ACS raises)."""
    if disc is None:
        return {}
    ce = [sum(h.ce[j] for h in hooks) / len(hooks) for j in (0, -1)]  # batch means (incl. dropped images)
    disc_input = hooks[0].disc_input
    with torch.no_grad():
        logits = torch.cat([disc(disc_input(x.to(ctx.device).float() / 127.5 - 1)).float() for x in images.split(256)])
    final_ce = float(F.cross_entropy(logits, y.to(ctx.device)))
    acc = float((logits.argmax(1).cpu() == y).float().mean()) * 100
    step = sum(sum(h.step_norm) / len(h.step_norm) for h in hooks) / len(hooks)
    return {"disc_ce_first_step": ce[0], "disc_ce_last_step": ce[1], "disc_ce_samples": final_ce,
            "disc_acc_samples": acc, "step_norm_mean": step}
