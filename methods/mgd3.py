"""MGD³: mode-guided dataset distillation with a pretrained diffusion model, no fine-tuning.

Chan-Santiago, Tirupattur, Nayak, Liu, Shah — "MGD³: Mode-Guided Dataset Distillation using Diffusion
Models", ICML 2025 (arXiv 2505.18963). Three stages (paper §3):
1. Mode discovery: k-means with k = IPC on the autoencoder latents of each class's training images
   (scikit-learn `KMeans(random_state=0, n_init="auto")`, centroids = modes; cached per (class, k)).
2. Mode guidance: sample i of a class is guided towards mode m_i with g_t = m_i − x̂₀(t), strength λ·σ_t.
3. Stop guidance: the guidance acts while the respaced step index t > t_SG (25 of 50 steps), then the
   sampler runs unguided.

Two injection points (protocol-facts §4.3, §6.4 item 9):
- `inject: mean` (default) — the reference code: after the posterior mean μ_t and σ_t = exp(½ log σ²_t) of
  the step, μ_t ← μ_t + λ·σ_t·(m − x̂₀), then x_{t−1} = μ_t + σ_t·z. The published tables were made this way.
- `inject: eps` — the paper's Algorithm 1 (DDIM): ε̂ = ε − sqrt(1−ᾱ_t)·λ·(m − x̂₀). (Eq. 6's "+λ·g·σ" on ε
  would push x̂₀ *away* from the mode; Algorithm 1's sign is the one that guides towards it.)
DDIM with η = 0 has σ_t = 0, so the mean form would do nothing there: `sampler: ddim` needs `inject: eps`.

The generator is the one of another method (`base: dit` — DiT-XL/2 + VAE on ImageNet subsets, ddbench's
own pixel-space DiT on the embedded data — or `base: minimax`, the Minimax fine-tuned DiT): see
`base_generator`. With the same seed, `mgd3` and its base draw the same initial noise, so a set differs from
the base's set only by the guidance.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
from PIL import Image

from ddbench.diffusion.hooks import GuidanceHook, StepState
from ddbench.distilled import DistilledSet
from ddbench.errors import ConfigError
from ddbench.identity import DIFFUSION_NUMERICS
from ddbench.safeload import load_tensors
from ddbench.method import Context, Method
from ddbench.methods.dit import GUIDED_SAMPLING_RULES
from ddbench.schema import choice

REFERENCE_STEPS = 50  # t_stop is given on the paper's 50-step scale and rescaled for other step counts
INJECT = ("mean", "eps")
MODES = ("centroid", "closest")
SAMPLERS = ("ddpm", "ddim")
CROPS = ("adm", "resize")
BASES = ("dit", "minimax")  # the generators a guidance method can guide (mgd3, acs, igd: `base:`)
# the code behind a guided set: this module, its base methods (`dit`, `minimax`) and the diffusion engine
GUIDED_NUMERICS = ("ddbench.methods.mgd3", "ddbench.methods.dit", "ddbench.methods.minimax",
                   "ddbench.methods.minimax_train", *DIFFUSION_NUMERICS)


# ---------------------------------------------------------------------- mode discovery
def discover_modes(latents: torch.Tensor, k: int, modes: str = "centroid", random_state: int = 0) -> torch.Tensor:
    """k modes of one class. latents: n×C×h×w (VAE latents, or pixels in [−1, 1]) -> k×C×h×w.

    "centroid": the k-means centroids (the paper's choice, table 6: 66.4 on Nette IPC10);
    "closest": the real latent nearest to each centroid (the paper's ablation, 64.6).
    """
    from sklearn.cluster import KMeans

    if modes not in MODES:
        raise ConfigError(f"mgd3 modes={modes!r}; expected one of {', '.join(MODES)}")
    n = len(latents)
    if n < k:
        raise ConfigError(f"mode discovery needs at least k = IPC = {k} images of the class, found {n}; "
                          f"choose an IPC of at most {n}")
    x = latents.flatten(1).float().numpy()  # n×D float32 (the reference clusters the raw 4096-d latents)
    km = KMeans(n_clusters=k, random_state=random_state, n_init="auto").fit(x)
    centres = torch.from_numpy(km.cluster_centers_).float()  # k×D
    if modes == "closest":
        nearest = torch.cdist(centres, torch.from_numpy(x)).argmin(1)  # k
        centres = torch.from_numpy(x)[nearest]
    return centres.view(k, *latents.shape[1:])


# ---------------------------------------------------------------------- mode guidance + stop guidance
def stop_index(t_stop: int, steps: int) -> int:
    """t_SG on a `steps`-step schedule: the paper's 25-of-50 keeps its fraction (e.g. 5 of 10 steps)."""
    if not 0 <= t_stop <= REFERENCE_STEPS:
        raise ConfigError(f"mgd3 t_stop={t_stop} must lie in 0..{REFERENCE_STEPS} (0 = guide every step, "
                          f"{REFERENCE_STEPS} = never guide); it is given on the paper's 50-step scale")
    return t_stop if steps == REFERENCE_STEPS else round(t_stop * steps / REFERENCE_STEPS)


class ModeGuidance(GuidanceHook):
    """Pulls sample i towards modes[i] while the respaced step index is above `stop` (N×C×h×w modes)."""

    def __init__(self, modes: torch.Tensor, scale: float, stop: int, inject: str = "mean"):
        if inject not in INJECT:
            raise ConfigError(f"mgd3 inject={inject!r}; expected 'mean' (reference code) or 'eps' (paper Alg. 1)")
        self.modes, self.scale, self.stop, self.inject = modes, float(scale), int(stop), inject
        self.guided_steps: list[int] = []  # respaced indices at which the term was added (for tests / logs)

    def active(self, state: StepState) -> bool:
        return self.scale != 0 and state.index > self.stop

    def _g(self, state: StepState) -> torch.Tensor:
        return self.modes.to(state.x0_hat.device, state.x0_hat.dtype) - state.x0_hat  # g_t = m − x̂₀, N×C×h×w

    def on_mean(self, state: StepState) -> torch.Tensor | None:
        if self.inject != "mean" or not self.active(state):
            return None
        self.guided_steps.append(state.index)
        return state.mean + self.scale * state.sigma * self._g(state)

    def on_eps(self, state: StepState) -> torch.Tensor | None:
        if self.inject != "eps" or not self.active(state):
            return None
        self.guided_steps.append(state.index)
        return state.eps - math.sqrt(1.0 - state.alpha_bar) * self.scale * self._g(state)


# ---------------------------------------------------------------------- the base generator
def guided_identity(method) -> dict:
    """Set identity of a method that guides a base generator (mgd3, acs, igd): it also holds the base method's
    card, so a changed `dit` / `minimax` card changes the guided sets too."""
    from ddbench.method import method_card

    card = method_card(method.cfg["base"])
    base = {k: card.get(k) for k in ("version", "defaults", "datasets")}
    return {"method": method.name, "version": method.version, "cfg": method.cfg, "base": base}


def guided_precision_config(method, dataset: str, over: dict) -> dict:
    """The precision switches a guidance method runs with: its base's resolved config (with the non-null
    `sampling` keys `over` on top, as `base_method` builds it) and its own keys besides `sampling`."""
    base = base_method(method.cfg["base"], dataset, over)
    return {**{k: v for k, v in method.cfg.items() if k not in ("sampling", "base")}, "base": base.cfg}


def base_method(name: str, dataset: str, sampling: dict) -> Method:
    """The method whose generator MGD³ guides (`dit`, or `minimax` for its fine-tuned DiT), with its card's
    config for `dataset` and the non-null `sampling` keys of the MGD³ config on top."""
    from ddbench.method import load_method

    return load_method(name, dataset, {k: v for k, v in sampling.items() if v is not None})


def base_generator(ctx: Context, base: Method):
    """The base's prepared generator: `base.generator(ctx)` when the method defines one (a fine-tuning method
    returns its fine-tuned bundle there), else the plain loader of `ddbench.diffusion.generator`."""
    if hasattr(base, "generator"):
        return base.generator(ctx)
    from ddbench.diffusion.generator import load_generator

    return load_generator(ctx, base.cfg)


# ---------------------------------------------------------------------- the adapter
class MGD3(Method):
    """Mode discovery per class (cached), then IPC mode-guided samples per class from the base generator."""
    numerics = GUIDED_NUMERICS

    defaults = {"base": "dit", "sampling": {k: None for k in ("dit", "vae", "generator", "steps", "sampler",
                                                               "cfg_scale", "cfg_channels", "batch_size", "autocast")},
                "scale": 0.1, "t_stop": 25, "inject": "mean", "modes": "centroid", "kmeans_seed": 0,
                "discovery_flip": True, "discovery_crop": "adm", "encode_batch": 64}
    schema = {"base": choice(BASES), "sampling": GUIDED_SAMPLING_RULES, "scale": "float>=0",
              "t_stop": f"int[0..{REFERENCE_STEPS}]", "inject": choice(INJECT), "modes": choice(MODES),
              "kmeans_seed": "int", "discovery_flip": "bool", "discovery_crop": choice(CROPS), "encode_batch": "int>=1"}

    def _base(self, ctx: Context) -> Method:
        base = base_method(self.cfg["base"], ctx.spec.name, self.cfg["sampling"])
        sampler = base.cfg.get("sampler", "ddpm")
        if sampler not in SAMPLERS:
            raise ConfigError(f"mgd3 sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
        if sampler == "ddim" and self.cfg["inject"] == "mean":
            raise ConfigError("mgd3 with the DDIM sampler needs inject=eps: the mean form scales the term by σ_t, "
                              "which is 0 for deterministic DDIM (paper appendix F uses the ε form, Algorithm 1); "
                              "use --set inject=eps")
        return base

    def identity(self) -> dict:
        return guided_identity(self)

    def precision_config(self, dataset: str) -> dict:
        return guided_precision_config(self, dataset, self.cfg["sampling"])

    def prepare(self, ctx: Context) -> None:
        base = self._base(ctx)
        base.prepare(ctx)  # the base's own expensive step: loading, training or fine-tuning (cached)
        gen = base_generator(ctx, base)
        for c in range(len(ctx.spec.classes)):
            self.class_latents(ctx, gen, c)

    def distill(self, ctx: Context, ipc: int, seed: int) -> DistilledSet:
        from ddbench.methods.dit import sample_classes

        t0 = time.perf_counter()
        base = self._base(ctx)
        gen = base_generator(ctx, base)
        modes = torch.cat([self.class_modes(ctx, gen, c, ipc) for c in range(len(ctx.spec.classes))])  # (K·ipc)×C×h×w
        t1 = time.perf_counter()
        stop = stop_index(int(self.cfg["t_stop"]), int(base.cfg["steps"]))
        hooks = []

        def hooks_for(idx: torch.Tensor):  # sample j = class j // ipc, guided to that class's mode j % ipc
            hooks.append(ModeGuidance(modes[idx], self.cfg["scale"], stop, self.cfg["inject"]))
            return [hooks[-1]]

        images = sample_classes(ctx, gen, base.cfg, ipc, seed, hooks_for=hooks_for)
        labels = torch.arange(len(ctx.spec.classes)).repeat_interleave(ipc)
        guided = sorted(set(hooks[0].guided_steps)) if hooks else []
        prov = {"method": self.name, "version": self.version, "seed": seed, "ipc": ipc, "config": self.cfg,
                "base": {"method": base.name, "version": base.version, "config": base.cfg}, "generator": gen.info,
                "guidance": {"stop_index": stop, "guided_indices": guided, "scale": self.cfg["scale"],
                             "inject": self.cfg["inject"]},
                "timings": {"modes": t1 - t0, "sampling": time.perf_counter() - t1,
                            "distill": time.perf_counter() - t0}}
        return DistilledSet(images, labels, ctx.spec.classes, prov)

    # ------------------------------------------------------------------ mode discovery, cached
    def _discovery_dir(self, ctx: Context, gen):
        enc = gen.info.get("vae") if gen.vae is not None else "pixels"  # what defines the latent space
        memo = self.__dict__.setdefault("_dirs", {})  # the pool fingerprint hashes every pixel: once per run
        if (ctx.spec.name, enc) not in memo:
            key = {"encoder": enc, "latent_shape": list(gen.latent_shape), "flip": self.cfg["discovery_flip"],
                   "crop": self.cfg["discovery_crop"], "seed": self.cfg["kmeans_seed"], "data": _pool_fingerprint(ctx)}
            memo[ctx.spec.name, enc] = ctx.cache_path("mgd3-modes", key)
        return memo[ctx.spec.name, enc]

    def class_latents(self, ctx: Context, gen, c: int) -> torch.Tensor:
        """n×C×h×w latents of every training image of class c (VAE `.mean·0.18215`, or pixels in [−1, 1])."""
        file = self._discovery_dir(ctx, gen) / f"latents-class{c:04d}.pt"
        if file.exists():
            return load_tensors(file, "cached MGD3 latents or modes", fix="it is a cache file: delete it and run again")
        if self.cfg["discovery_crop"] not in CROPS:
            raise ConfigError(f"mgd3 discovery_crop={self.cfg['discovery_crop']!r}; expected one of {', '.join(CROPS)}")
        images = class_images(ctx, c, _encoder_side(gen), self.cfg["discovery_crop"])
        # the reference's loader (tsne_plots.py get_loader) flips at random after the crop; here seeded per class
        if self.cfg["discovery_flip"]:
            flip = torch.rand(len(images), generator=torch.Generator().manual_seed(self.cfg["kmeans_seed"] + c)) < 0.5
            images[flip] = images[flip].flip(-1)
        bs = int(self.cfg["encode_batch"])
        latents = torch.cat([gen.encode(images[i:i + bs], mode="mean").float().cpu()
                             for i in range(0, len(images), bs)])
        _atomic_save(latents, file)
        return latents

    def class_modes(self, ctx: Context, gen, c: int, k: int) -> torch.Tensor:
        """k×C×h×w modes of class c (k-means on its latents), cached per (class, k, mode rule)."""
        file = self._discovery_dir(ctx, gen) / f"modes-{self.cfg['modes']}-class{c:04d}-k{k}.pt"
        if file.exists():
            return load_tensors(file, "cached MGD3 latents or modes", fix="it is a cache file: delete it and run again")
        modes = discover_modes(self.class_latents(ctx, gen, c), k, self.cfg["modes"], self.cfg["kmeans_seed"])
        _atomic_save(modes, file)
        return modes


# ---------------------------------------------------------------------- helpers
def _encoder_side(gen) -> int:
    """Pixel side the encoder takes: latent side × 8 for the SD VAE, the model's side for pixel models."""
    side = gen.latent_shape[-1]
    return side * 8 if gen.vae is not None else side


def adm_center_crop(img: Image.Image, side: int) -> Image.Image:
    """ADM's `center_crop_arr` (guided-diffusion image_datasets.py, copied into MGD³'s tsne_plots.py): halve with a
    box filter while the shorter side is ≥ 2·side, bicubic-resize the shorter side to `side` (both sides
    rounded), then crop at the floor-halved offsets."""
    while min(img.size) >= 2 * side:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = side / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
    return img.crop((left, top, left + side, top + side))


def adm_frame(images: torch.Tensor, side: int) -> torch.Tensor:
    """`adm_center_crop` of uint8 N×C×H×W tensors (images already decoded, e.g. the embedded data)."""
    mode = "RGB" if images.shape[1] == 3 else "L"
    out = []
    for x in images:
        arr = x.permute(1, 2, 0).numpy() if mode == "RGB" else x[0].numpy()
        arr = np.asarray(adm_center_crop(Image.fromarray(arr, mode), side), dtype=np.uint8)
        out.append(torch.from_numpy(arr.reshape(side, side, -1).copy()).permute(2, 0, 1))
    return torch.stack(out) if out else images.new_zeros((0, images.shape[1], side, side))


def class_images(ctx: Context, c: int, side: int, crop: str = "adm") -> torch.Tensor:
    """uint8 training images of class c at `side` px, framed by `crop` ("adm": the reference's center_crop_arr
    of the original file; "resize": ddbench's resize + centre crop). ImageNet subsets decode only that class's
    files (the whole ImageNet-1K pool is never held in memory); other data come from ctx.train()."""
    from pathlib import Path

    from ddbench.data import decode_ids, list_files
    from ddbench.data.images import decode_files, resize_tensor

    if ctx.spec.kind == "imagenet":
        ids, labels = list_files(ctx.spec, "train")
        mine = [i for i, y in zip(ids, labels.tolist()) if y == c]
        if crop == "resize":
            return decode_ids(ctx.spec, "train", mine, side)
        return decode_files([Path(ctx.spec.root) / i for i in mine], side, ctx.spec.channels, crop=adm_center_crop,
                            description=f"decoding class {c}")
    train = ctx.train()
    images = train.images[train.labels == c]
    return resize_tensor(images, side) if crop == "resize" else adm_frame(images, side)


def _pool_fingerprint(ctx: Context) -> str:
    if ctx.spec.kind == "imagenet":  # the file list identifies the pool without decoding it
        from ddbench.config import config_hash
        from ddbench.data import list_files

        return config_hash(list_files(ctx.spec, "train")[0])
    from ddbench.diffusion.generator import data_fingerprint

    return data_fingerprint(ctx.train())


def _atomic_save(obj, path) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
