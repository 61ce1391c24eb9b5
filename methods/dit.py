"""DiT: plain class-conditional sampling, the baseline every diffusion-based distillation method starts from.

Peebles & Xie, "Scalable Diffusion Models with Transformers", ICCV 2023; as used for distillation by Minimax
(`vimar-gu/MinimaxDiffusion@969fc6f:sample.py`) and MGD³ (protocol-facts §4.1): IPC images per class from
DiT-XL/2 256×256, 50 respaced DDPM steps, CFG 4.0 on the first 3 of the 4 latent ε channels, decoded by
sd-vae-ft-mse to 256 px. On data without a pretrained generator (digits, fashion, mnist, image folders) the
generator is ddbench's own small pixel-space DiT (`ddbench.diffusion.train`), trained on first use and cached;
its step count and guidance scale are the card's `datasets:` entries (docs/generators.md has the measurements).
"""
from __future__ import annotations

import time

import torch

from ddbench.identity import DIFFUSION_NUMERICS
from ddbench.diffusion.fast import SWITCH_RULE, resolve_compile, resolve_precision
from ddbench.diffusion.generator import SAMPLERS, load_generator
from ddbench.diffusion.train import PRESETS
from ddbench.distilled import DistilledSet
from ddbench.method import Context, Method
from ddbench.schema import nullable


# Card rules (ddbench.schema) of the sampling keys; mgd3 / acs / igd take them, nullable, under `sampling:`
SAMPLING_RULES = {
    "dit": "path?", "vae": "path?",
    "generator": f"choice[{'|'.join(PRESETS)}] | dict",  # a preset, or {preset: ..., key: value} (docs/generators.md)
    "steps": "int>=1", "sampler": f"choice[{'|'.join(SAMPLERS)}]", "cfg_scale": "float>=0",
    "cfg_channels": "int>=1 | choice[all]", "batch_size": "int>=1", "autocast": SWITCH_RULE,
}
GUIDED_SAMPLING_RULES = {k: nullable(r) for k, r in SAMPLING_RULES.items()}  # null = the base card's value


class DiTSampling(Method):
    """IPC samples per class; noise from one torch.Generator seeded with the distillation seed."""
    numerics = ("ddbench.methods.dit", *DIFFUSION_NUMERICS)

    defaults = {"dit": None, "vae": None, "generator": "cpu", "steps": 50, "sampler": "ddpm", "cfg_scale": 4.0,
                "cfg_channels": 3, "batch_size": 32, "autocast": "auto", "compile": "auto"}
    schema = {**SAMPLING_RULES, "compile": SWITCH_RULE}

    def prepare(self, ctx: Context) -> None:
        resolve_precision(self.cfg["autocast"], ctx.device)  # a bad autocast / compile value fails here, before
        resolve_compile(self.cfg.get("compile", "auto"), ctx.device)  # any weights are loaded or trained
        load_generator(ctx, self.cfg, log=_log(ctx))  # loads the weights, or trains the generator once

    def distill(self, ctx: Context, ipc: int, seed: int) -> DistilledSet:
        t0 = time.perf_counter()
        gen = load_generator(ctx, self.cfg, log=_log(ctx))
        images = sample_classes(ctx, gen, self.cfg, ipc, seed)
        labels = torch.arange(len(ctx.spec.classes)).repeat_interleave(ipc)
        prov = {"method": self.name, "version": self.version, "seed": seed, "ipc": ipc, "config": self.cfg,
                "generator": gen.info, "timings": {"distill": time.perf_counter() - t0}}
        return DistilledSet(images, labels, ctx.spec.classes, prov)


def sample_classes(ctx: Context, gen, cfg: dict, ipc: int, seed: int, hooks_for=None) -> torch.Tensor:
    """uint8 (K·ipc)×C×R×R: class 0's ipc images, then class 1's, … (the reference's order), sampled
    `batch_size` at a time. `hooks_for(batch_indices)` may give guidance hooks per batch (other methods)."""
    labels = torch.arange(len(ctx.spec.classes)).repeat_interleave(ipc)
    # One generator for the whole set: the noise of batch b follows that of batch b−1. The reference draws
    # per image (batch 1); batching changes the draw order, not the distribution.
    g = torch.Generator().manual_seed(seed)
    bs = int(cfg["batch_size"])
    starts = range(0, len(labels), bs)
    out = []
    for i in ctx.track(starts, f"sampling {len(labels)} images", len(starts)):
        idx = torch.arange(i, min(i + bs, len(labels)))
        out.append(gen.sample(labels[idx], g, steps=cfg["steps"], cfg=cfg["cfg_scale"], sampler=cfg["sampler"],
                              hooks=hooks_for(idx) if hooks_for else (), cfg_channels=cfg["cfg_channels"],
                              autocast=cfg["autocast"], compile=cfg.get("compile", "auto")))
    return torch.cat(out)


def _log(ctx: Context):
    console = getattr(ctx.progress, "console", None)
    return console.print if console is not None else None
