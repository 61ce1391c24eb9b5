"""IGD: influence-guided diffusion sampling for dataset distillation, no retraining of the diffusion model.

Chen, Du, Huang, Wang, Zhang, Wang — "Influence-Guided Diffusion for Dataset Distillation", ICLR 2025
(reference code `mchen725/DD_IGD`; docs/igd.md maps every equation to this file and to the reference's lines).

1. Surrogate trajectory (`prepare`, cached like teachers): a ConvNet (ConvNet-6 on ImageNet subsets as
   `train_ckpt.sh`; ConvNet-3 on the 28–32 px embedded data, where six poolings leave nothing) trained from a seeded
   init with AdamW and saved after every epoch: θ_0 … θ_E.
2. Real gradients: for each class c and each kept checkpoint θ_j, ḡ_{c,j} = mean over chunks of 50 of
   ∇_θ CE(f(x; θ_j), c) on `grad_ipc` (200) real images of c (sample.py `get_grads`). The kept checkpoints are
   either listed (`checkpoints: [0, 5, 16, 40]`, the reference's ImageWoof ConvNet-6 list) or chosen by the
   reference's rule (`checkpoints: auto`, test_ckpts_grad_sim.py): walk the trajectory, keep θ_j when the
   class-averaged cosine between its class gradients and those of the last kept one drops below `threshold` (0.7).
3. Guided sampling: while the respaced step index lies in [low, high] (30–45 of 50), every sample of class c is
   steered by the gradient, through the denoiser and the decoder, of
       J(x_t) = k · G_I + γ · G_D
       G_I = mean_j cos(∇_θ CE(f(D(x̂₀(x_t)); θ_j), c), ḡ_{c,j})            influence (TracIn with cosines)
       G_D = −max_{m ∈ M_c} cos(x̂₀(x_t), m)                                deviation from earlier samples of c
   injected as guided-diffusion's `condition_mean` (μ ← μ + σ²_t·∇J; `inject: mean`) or in ε form
   (ε ← ε − sqrt(1 − ᾱ_t)·∇J; `inject: eps`). M_c holds the final latents of the last `memory_size` (64)
   samples of class c (sample.py keeps `pseudo_memory_c`), so the samples of a class are drawn in order,
   `batch_size` at a time (1 in the reference: a batch's samples do not see each other).

The base generator is another method's (`base: dit` or `base: minimax`), as for MGD³ and ACS.
"""
from __future__ import annotations

import json
import math
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ddbench.identity import TRAIN_NUMERICS
from ddbench.engine.augment import resize_center_crop, to_float
from ddbench.distilled import DistilledSet
from ddbench.errors import ConfigError
from ddbench.method import Context, Method
from ddbench.methods.acs import SAMPLING_KEYS, differentiable_decoder
from ddbench.methods.dit import GUIDED_SAMPLING_RULES
from ddbench.methods.mgd3 import (BASES, GUIDED_NUMERICS, REFERENCE_STEPS, _atomic_save, base_generator, base_method,
                                  guided_identity, guided_precision_config)
from ddbench.methods.minimax import FINETUNE_RULES
from ddbench.schema import choice, nullable
from ddbench.nets.build import build_net
from ddbench.safeload import CACHE_FIX, load_tensors

INJECT = ("mean", "eps")


# ---------------------------------------------------------------------------------------------------------
# The two guidance terms (differentiable; x0, memory in the model's space, images in [−1, 1])
# ---------------------------------------------------------------------------------------------------------


def per_sample_grads(net, images: torch.Tensor, labels: torch.Tensor, params: dict) -> torch.Tensor:
    """N×P: ∇_θ CE(f(image_i; θ), y_i) for each sample, differentiable w.r.t. images (double backward)."""
    def loss(p, x, y):
        return F.cross_entropy(functional_call(net, p, (x.unsqueeze(0),)), y.unsqueeze(0))

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, images, labels)
    return torch.cat([g[name].flatten(1) for name in params], 1)


def influence_term(net, images: torch.Tensor, labels: torch.Tensor, trajectory: list[dict],
                   real_grads: torch.Tensor) -> torch.Tensor:
    """G_I per sample (N): mean over the kept checkpoints j of cos(∇_θ ℓ(image_i; θ_j), ḡ_{y_i, j}).

    trajectory: J parameter dicts; real_grads: N×J×P, the class-mean real gradient of each sample's class."""
    sims = [F.cosine_similarity(per_sample_grads(net, images, labels, p), real_grads[:, j], dim=1, eps=1e-6)
            for j, p in enumerate(trajectory)]
    return torch.stack(sims, 1).mean(1)


def deviation_term(x0: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
    """G_D per sample (N): −max over the memory (M×C×h×w) of cos(x̂₀_i, m); 0 while the memory is empty."""
    if memory is None or len(memory) == 0:
        return x0.new_zeros(len(x0))
    sims = F.cosine_similarity(x0.flatten(1).unsqueeze(1), memory.to(x0).flatten(1).unsqueeze(0), dim=2, eps=1e-6)
    return -sims.max(1).values


def guided_range(low: int, high: int, steps: int) -> tuple[int, int]:
    """[low, high] on a `steps`-step schedule: given on the reference's 50-step scale, rescaled otherwise."""
    if not 0 <= low <= high < REFERENCE_STEPS:
        raise ConfigError(f"igd low={low}, high={high}: need 0 ≤ low ≤ high ≤ {REFERENCE_STEPS - 1} (respaced step "
                          f"indices on the reference's {REFERENCE_STEPS}-step scale; 49 is the noisiest step)")
    if steps == REFERENCE_STEPS:
        return low, high
    return round(low * steps / REFERENCE_STEPS), round(high * steps / REFERENCE_STEPS)


class InfluenceGuidance:
    """Sampler hook: adds ∇_{x_t}(k·G_I + γ·G_D) to the posterior mean (scaled by σ²_t) or to ε, inside [low, high].

    surrogate_input: images in [−1, 1] -> the surrogate's input (resize; the reference normalises to [−1, 1]).
    Records per guided step the batch means of G_I and G_D (`influence`, `deviation`)."""

    def __init__(self, net, trajectory, real_grads, labels, memory, decode, surrogate_input, *, k: float,
                 gamma: float, low: int, high: int, inject: str = "mean"):
        if inject not in INJECT:
            raise ConfigError(f"igd inject={inject!r}; expected 'mean' (μ + σ²·∇J) or 'eps' (ε − sqrt(1−ᾱ)·∇J)")
        self.net, self.trajectory, self.real_grads, self.labels = net, trajectory, real_grads, labels
        self.memory, self.decode, self.surrogate_input = memory, decode, surrogate_input
        self.k, self.gamma, self.low, self.high, self.inject = float(k), float(gamma), int(low), int(high), inject
        self.guided_steps: list[int] = []
        self.influence: list[float] = []
        self.deviation: list[float] = []

    def active(self, state) -> bool:
        return (self.k != 0 or self.gamma != 0) and self.low <= state.index <= self.high

    def gradient(self, state) -> torch.Tensor:
        """∇_{x_t} J, re-running the model at this step with gradients (x̂₀ depends on x_t through ε_θ)."""
        with torch.enable_grad():
            x = state.x_t.detach().requires_grad_(True)
            _, x0 = state.predict(x)
            g_i = x0.new_zeros(len(x0))
            if self.k != 0:
                images = self.surrogate_input(self.decode(x0))
                g_i = influence_term(self.net, images, self.labels, self.trajectory, self.real_grads)
            g_d = deviation_term(x0, self.memory) if self.gamma != 0 else x0.new_zeros(len(x0))
            objective = (self.k * g_i + self.gamma * g_d).sum()  # summed: each sample's gradient is its own
            # k = 0 with an empty memory (a class's first sample): the objective is a constant, its gradient zero
            grad_x = torch.autograd.grad(objective, x, allow_unused=True)[0] if objective.requires_grad else None
        self.guided_steps.append(state.index)
        self.influence.append(float(g_i.detach().mean()))  # one host read per guided step
        self.deviation.append(float(g_d.detach().mean()))
        return torch.zeros_like(x) if grad_x is None else grad_x

    def on_eps(self, state):
        if self.inject != "eps" or not self.active(state):
            return None
        return state.eps - math.sqrt(1.0 - state.alpha_bar) * self.gradient(state)

    def on_mean(self, state):
        if self.inject != "mean" or not self.active(state):
            return None
        return state.mean + torch.exp(state.log_variance) * self.gradient(state)  # condition_mean: μ + Σ·∇


# ---------------------------------------------------------------------------------------------------------
# The surrogate trajectory (trained once per dataset and recipe, cached) and the real gradients
# ---------------------------------------------------------------------------------------------------------


def real_images(split, c: int, n: int | None, seed: int) -> torch.Tensor:
    """uint8 images of class c: a seeded random choice of n (all when n is None)."""
    images = split.images[split.labels == c]
    if n is not None and n < len(images):
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + c))[:n]]
    return images


def to_surrogate(images_u8: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 -> [−1, 1] floats at `side` px (the reference's Normalize(0.5, 0.5))."""
    x = to_float(images_u8) * 2 - 1
    return x if x.shape[-1] == side else resize_center_crop(x, side)


def train_trajectory(net, images: torch.Tensor, labels: torch.Tensor, recipe: dict, device) -> list[dict]:
    """The parameters after every epoch (θ_0 = the seeded init): AdamW, MultiStepLR at 2/3 and 5/6 of the
    epochs with γ = 0.2, as the reference's train.py. images: [−1, 1] floats."""
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=recipe["lr"], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=recipe["weight_decay"])
    epochs, bs = int(recipe["epochs"]), int(recipe["batch_size"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [2 * epochs // 3, 5 * epochs // 6], gamma=0.2)
    g = torch.Generator().manual_seed(int(recipe["seed"]) + 1)
    snap = [{k: v.detach().cpu().clone() for k, v in net.named_parameters()}]
    for _ in range(epochs):
        perm = torch.randperm(len(images), generator=g)
        for s in range(0, len(images), bs):
            idx = perm[s:s + bs]
            loss = F.cross_entropy(net(images[idx].to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        snap.append({k: v.detach().cpu().clone() for k, v in net.named_parameters()})
    return snap


def class_gradient(net, params: dict, images: torch.Tensor, c: int, chunk: int) -> torch.Tensor:
    """P: the mean over chunks of `chunk` images of ∇_θ mean-CE (sample.py `get_grads`)."""
    total = None
    chunks = images.split(chunk)
    for x in chunks:
        p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        loss = F.cross_entropy(functional_call(net, p, (x,)), torch.full((len(x),), c, device=x.device))
        flat = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(p.values()))])
        total = flat if total is None else total + flat
    return total / len(chunks)


def select_checkpoints(class_grads: torch.Tensor, threshold: float) -> list[int]:
    """test_ckpts_grad_sim.py: keep θ_0, then each θ_j whose class-averaged gradient cosine to the last kept one
    falls below `threshold`. class_grads: T×K×P."""
    kept = [0]
    for j in range(1, len(class_grads)):
        sim = F.cosine_similarity(class_grads[j], class_grads[kept[-1]], dim=1, eps=1e-6).mean()
        if float(sim) < threshold:
            kept.append(j)
    return kept


# ---------------------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------------------


class IGD(Method):
    """Surrogate trajectory + real gradients (cached), then class-by-class influence- and deviation-guided samples."""
    numerics = (*GUIDED_NUMERICS, "ddbench.methods.igd", "ddbench.methods.acs", *TRAIN_NUMERICS)

    defaults = {"base": "dit", "sampling": {k: None for k in SAMPLING_KEYS}, "finetune": None,
                "k": 5.0, "gamma": 120.0, "low": 30, "high": 45, "inject": "mean", "memory_size": 64,
                "batch_size": 1, "repeat": 1, "grad_ipc": 200, "grad_chunk": 50,
                "checkpoints": [0, 5, 16, 40], "threshold": 0.7,
                "surrogate": {"arch": "convnet6", "arch_kw": None, "resolution": None, "epochs": 50, "batch_size": 64,
                              "lr": 1e-3, "weight_decay": 0.01, "subset": None, "seed": 0}}
    schema = {"base": choice(BASES), "sampling": GUIDED_SAMPLING_RULES, "finetune": nullable(FINETUNE_RULES),
              "k": "float>=0", "gamma": "float>=0", "low": f"int[0..{REFERENCE_STEPS - 1}]",
              "high": f"int[0..{REFERENCE_STEPS - 1}]", "inject": choice(INJECT), "memory_size": "int>=0",
              "batch_size": "int>=1", "repeat": "int>=1", "grad_ipc": "int>=1", "grad_chunk": "int>=1",
              "checkpoints": "list[int>=0] | choice[auto]", "threshold": "float[-1..1]",
              "surrogate": {"arch": "arch", "arch_kw": "dict?", "resolution": "int>=1?", "epochs": "int>=1",
                            "batch_size": "int>=1", "lr": "float>=0", "weight_decay": "float>=0",
                            "subset": "int>=1?", "seed": "int"}}

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        if int(cfg["repeat"]) != 1:
            raise ConfigError(f"igd repeat={cfg['repeat']}: only 1 (one guided update per step, the published "
                              "scripts' r=1) is implemented; set repeat=1")
        guided_range(int(cfg["low"]), int(cfg["high"]), REFERENCE_STEPS)  # low ≤ high

    def _base(self, ctx: Context) -> Method:
        over = {**self.cfg["sampling"], "finetune": self.cfg["finetune"]}  # finetune: base minimax only
        base = base_method(self.cfg["base"], ctx.spec.name, over)
        if base.cfg.get("sampler") == "ddim" and self.cfg["inject"] == "mean":
            raise ConfigError("igd with the DDIM sampler needs inject=eps: the mean form scales ∇J by σ²_t, which is 0 "
                              "for deterministic DDIM; use --set inject=eps")
        return base

    def identity(self) -> dict:
        return guided_identity(self)

    def precision_config(self, dataset: str) -> dict:
        return guided_precision_config(self, dataset, {**self.cfg["sampling"], "finetune": self.cfg["finetune"]})

    def prepare(self, ctx: Context) -> None:
        base = self._base(ctx)
        base.prepare(ctx)
        base_generator(ctx, base)
        self.influence_data(ctx)

    # ------------------------------------------------------------------ surrogate, cached
    def _surrogate_net(self, ctx: Context):
        s = self.cfg["surrogate"]
        side = int(s["resolution"] or ctx.spec.resolution)
        net = build_net(s["arch"], ctx.spec.num_classes, ctx.spec.channels, side,
                        generator=torch.Generator().manual_seed(int(s["seed"])), **(s["arch_kw"] or {}))
        return net, side

    def influence_data(self, ctx: Context) -> dict:
        """{"kept": [j…], "params": [θ_j dicts], "real_grads": K×J×P, "side": px}; trained / computed once."""
        memo = self.__dict__.setdefault("_influence", {})
        if ctx.spec.name in memo:
            return memo[ctx.spec.name]
        from ddbench.diffusion.generator import data_fingerprint

        s, train = self.cfg["surrogate"], ctx.train()
        folder = ctx.cache_path("igd-surrogates", {"recipe": s, "classes": list(ctx.spec.classes),
                                                   "data": data_fingerprint(train)})
        net, side = self._surrogate_net(ctx)
        traj_file = folder / "trajectory.pt"
        if traj_file.exists():
            traj = load_tensors(traj_file, "cached IGD surrogate trajectory", fix=CACHE_FIX)
        else:
            keep = torch.arange(len(train.labels))
            if s["subset"] is not None and s["subset"] < len(keep):
                keep = torch.randperm(len(keep), generator=torch.Generator().manual_seed(int(s["seed"])))[:s["subset"]]
            t0 = time.perf_counter()
            traj = train_trajectory(net, to_surrogate(train.images[keep], side), train.labels[keep], s, ctx.device)
            _atomic_save(traj, traj_file)
            (folder / "recipe.json").write_text(json.dumps({"recipe": s, "images": len(keep), "checkpoints": len(traj),
                                                            "seconds": time.perf_counter() - t0}, indent=1))
        net = net.to(ctx.device).eval()
        grads_key = {"grad_ipc": self.cfg["grad_ipc"], "chunk": self.cfg["grad_chunk"]}
        grads_file = folder / f"class-grads-{grads_key['grad_ipc']}-{grads_key['chunk']}.pt"
        if grads_file.exists():
            class_grads = load_tensors(grads_file, "cached IGD class gradients", fix=CACHE_FIX)  # T×K×P
        else:
            reals = [to_surrogate(real_images(train, c, self.cfg["grad_ipc"], int(s["seed"])), side).to(ctx.device)
                     for c in range(ctx.spec.num_classes)]
            class_grads = torch.stack([torch.stack([class_gradient(net, {k: v.to(ctx.device) for k, v in p.items()}, x,
                                                                   c, int(self.cfg["grad_chunk"])).cpu()
                                                    for c, x in enumerate(reals)]) for p in traj])
            _atomic_save(class_grads, grads_file)
        kept = self._kept(class_grads)
        memo[ctx.spec.name] = {"kept": kept, "params": [{k: v.to(ctx.device) for k, v in traj[j].items()} for j in kept],
                               "real_grads": class_grads[kept].transpose(0, 1).to(ctx.device), "side": side,
                               "net": net, "folder": str(folder)}
        return memo[ctx.spec.name]

    def _kept(self, class_grads: torch.Tensor) -> list[int]:
        spec = self.cfg["checkpoints"]
        if spec == "auto":
            return select_checkpoints(class_grads, float(self.cfg["threshold"]))
        kept = [int(j) for j in spec]
        if not kept or min(kept) < 0 or max(kept) >= len(class_grads):
            raise ConfigError(f"igd checkpoints={spec}: indices must lie in 0..{len(class_grads) - 1} (the surrogate "
                              f"was trained {len(class_grads) - 1} epochs); use checkpoints=auto to choose them")
        return kept

    # ------------------------------------------------------------------ guided sampling
    def distill(self, ctx: Context, ipc: int, seed: int) -> DistilledSet:
        t0 = time.perf_counter()
        base = self._base(ctx)
        gen = base_generator(ctx, base)
        inf = self.influence_data(ctx)
        t1 = time.perf_counter()
        bcfg, k = base.cfg, ctx.spec.num_classes
        low, high = guided_range(int(self.cfg["low"]), int(self.cfg["high"]), int(bcfg["steps"]))
        decode, side = differentiable_decoder(gen), inf["side"]

        def surrogate_input(x):  # decoded images in [−1, 1] at the generator's side -> the surrogate's side
            x = x.float()
            return x if x.shape[-1] == side else resize_center_crop(x, side)

        bs, size = int(self.cfg["batch_size"]), int(self.cfg["memory_size"])
        images, stats = [], {"influence": [], "deviation": [], "guided_indices": []}
        for c in ctx.track(range(k), f"IGD: {ipc} images per class", k):
            # per-class generators: a class's images depend only on (seed, class), and the IPC-m set is the first m
            g_noise = torch.Generator().manual_seed(seed * 1_000_003 + c)
            noise = torch.randn((ipc, *gen.latent_shape), generator=g_noise)
            g_step = torch.Generator().manual_seed(seed * 1_000_003 + c + 500_009)
            memory: list[torch.Tensor] = []
            for s in range(0, ipc, bs):
                n = min(bs, ipc - s)
                y = torch.full((n,), c, dtype=torch.long)
                hook = InfluenceGuidance(inf["net"], inf["params"], inf["real_grads"][y], y.to(ctx.device),
                                         torch.cat(memory[-size:]) if memory and size > 0 else None, decode,
                                         surrogate_input, k=self.cfg["k"], gamma=self.cfg["gamma"], low=low,
                                         high=high, inject=self.cfg["inject"])
                z = gen.sample_latents(y, g_step, steps=bcfg["steps"], cfg=bcfg["cfg_scale"], sampler=bcfg["sampler"],
                                       hooks=[hook], cfg_channels=bcfg["cfg_channels"], autocast=bcfg["autocast"],
                                       noise=noise[s:s + n])
                memory.extend(z.detach().split(1))  # the final latents join the class's memory (pseudo_memory_c)
                images.append(gen.decode(z))
                stats["influence"] += hook.influence
                stats["deviation"] += hook.deviation
                stats["guided_indices"] = sorted(set(stats["guided_indices"]) | set(hook.guided_steps))
        prov = {"method": self.name, "version": self.version, "seed": seed, "ipc": ipc, "config": self.cfg,
                "base": {"method": base.name, "version": base.version, "config": base.cfg}, "generator": gen.info,
                "guidance": {"range": [low, high], "checkpoints": inf["kept"], "surrogate": inf["folder"],
                             "guided_indices": stats["guided_indices"],
                             "influence_mean": _mean(stats["influence"]), "deviation_mean": _mean(stats["deviation"])},
                "timings": {"influence_data": t1 - t0, "sampling": time.perf_counter() - t1,
                            "distill": time.perf_counter() - t0}}
        return DistilledSet(torch.cat(images), torch.arange(k).repeat_interleave(ipc), ctx.spec.classes, prov)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
