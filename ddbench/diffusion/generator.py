"""Generators: a class-conditional DiT (+ optional VAE) behind one interface that every diffusion method uses.

    gen = load_generator(ctx, cfg)              # pretrained DiT-XL/2 + VAE (ImageNet) or the self-trained one
    x = gen.sample(y, torch.Generator().manual_seed(0), steps=50, cfg=4.0)   # uint8 N×C×R×R, R = dataset's

ImageNet subsets: DiT-XL/2 + sd-vae-ft-mse from the paths the user gives (--dit / --vae, DDBENCH_DIT /
DDBENCH_VAE, or `dit:` / `vae:` in the method card, in that order); the conditioning label of a class is its
ImageNet-1K index. Every other dataset: the small pixel-space DiT of `ddbench.diffusion.train`, trained on the
dataset's training pool on first use and cached under `<cache>/generators/<dataset>-<hash>/`; label = class.
`generator_quality` measures a generator (accuracy of a real-data classifier on its samples, per class, and a
Fréchet distance in that classifier's feature space).
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ddbench.diffusion.dit import DiT
from ddbench.diffusion.fast import compiled_model, resolve_compile, resolve_precision
from ddbench.diffusion.sampler import ddim_sample, ddpm_sample
from ddbench.diffusion.train import cache_key, generator_config, load_trained, train_generator
from ddbench.diffusion.vae import VAE, from_uint8, to_uint8
from ddbench.errors import ConfigError

SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample}

# ---------------------------------------------------------------------------------------------------------
# The bundle
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Generator:
    model: DiT                       # eval mode; ε (+ variance) prediction in its input space
    cond_labels: torch.Tensor        # K int64: the model's label for each dataset class (ImageNet-1K index, or k)
    resolution: int                  # side of the images `sample` / `decode` return (the dataset's)
    vae: VAE | None = None           # None: the model works on pixels in [−1, 1]
    cfg_channels: int | str = "all"  # default guided ε channels: 3 for the reference latent DiT, all for pixels
    info: dict = field(default_factory=dict)  # provenance: kind, weights path or cache folder, configs
    decode_batch: int = 32           # images per VAE decoder call (bounds memory at 256 px)
    _compiled: dict = field(default_factory=dict, repr=False)  # compile setting -> the model callable (one compile)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """C×H×W of what the diffusion runs on (4×32×32 for DiT-XL/2 at 256 px, 1×R×R for pixels)."""
        c = self.model.config
        return c["in_channels"], c["input_size"], c["input_size"]

    def condition(self, y: torch.Tensor) -> torch.Tensor:
        """Dataset labels (N) -> the model's class labels (N)."""
        y = torch.as_tensor(y, dtype=torch.long)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(self.cond_labels)):
            raise ConfigError(f"class labels must lie in 0..{len(self.cond_labels) - 1}, got {y.tolist()[:8]}")
        return self.cond_labels[y]

    def model_fn(self, compile_: bool | str = False):
        """The model as the samplers call it: compiled (`compile_` true, or auto on CUDA; one compilation per
        generator, an eager fallback when it fails) or the module itself."""
        enabled = resolve_compile(compile_, self.device)
        if enabled not in self._compiled:
            self._compiled[enabled] = compiled_model(self.model, enabled)
        return self._compiled[enabled]

    @torch.no_grad()
    def sample_latents(self, y, generator: torch.Generator, *, steps: int | str = 50, cfg: float = 4.0,
                       hooks=(), sampler: str = "ddpm", cfg_channels: int | str | None = None,
                       autocast: bool | str = False, compile: bool | str = False,
                       noise: torch.Tensor | None = None) -> torch.Tensor:
        """One batch (all of y in one CFG forward per step): float N×C×H×W in the model's space.
        autocast / compile: the card values (auto = the fast path on CUDA; false = exact fp32, eager)."""
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
        y_model = self.condition(y)
        return SAMPLERS[sampler](self.model_fn(compile), (len(y_model), *self.latent_shape), y_model, steps=steps,
                                 cfg_scale=cfg, cfg_channels=cfg_channels or self.cfg_channels, generator=generator,
                                 hooks=hooks, device=self.device, autocast=autocast, noise=noise)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, autocast: bool | str = False) -> torch.Tensor:
        """Model-space samples -> uint8 N×C×R×R at the dataset resolution; the VAE decodes `decode_batch`
        images at a time, in bf16 when `autocast` resolves to the fast path on this device."""
        precision = resolve_precision(autocast, self.device)
        x = self.vae.decode(z, self.decode_batch, precision) if self.vae is not None else z
        images = to_uint8(x).cpu()
        if images.shape[-1] != self.resolution:
            from ddbench.data.images import resize_tensor

            images = resize_tensor(images, self.resolution)
        return images

    @torch.no_grad()
    def encode(self, images: torch.Tensor, mode: str = "mean", generator: torch.Generator | None = None,
               batch_size: int | None = 64) -> torch.Tensor:
        """uint8 N×C×R×R -> model-space tensors (VAE latents ×0.18215, or pixels in [−1, 1])."""
        x = from_uint8(images)
        if self.vae is None:
            return x.to(self.device)
        return self.vae.encode(x, mode=mode, generator=generator, batch_size=batch_size)

    def sample(self, y, generator: torch.Generator, steps: int | str = 50, cfg: float = 4.0, hooks=(),
               sampler: str = "ddpm", **kw) -> torch.Tensor:
        """uint8 N×C×R×R images of classes y (dataset labels), sampled as one batch (kw: sample_latents')."""
        z = self.sample_latents(y, generator, steps=steps, cfg=cfg, hooks=hooks, sampler=sampler, **kw)
        return self.decode(z, kw.get("autocast", False))


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------

_LOADED: dict[tuple, Generator] = {}  # the last generator built: a method calls load_generator per distill


def load_generator(ctx, cfg: dict, log=None) -> Generator:
    """The generator for ctx.spec: pretrained DiT + VAE for ImageNet subsets, else the self-trained one.

    cfg keys: `dit`, `vae` (card paths, used when neither the CLI nor the environment gives one) and
    `generator` (preset name or {"preset": ..., overrides} of the self-trained generator)."""
    if ctx.spec.kind == "imagenet":
        return pretrained_generator(ctx, cfg)
    path = trained_generator_path(ctx, cfg.get("generator", "cpu"), log=log)
    key = ("trained", str(path), str(ctx.device))
    if key not in _LOADED:
        model, record = load_trained(path, ctx.device)
        history = record["history"]
        info = {"kind": "self-trained", "path": str(path), "config": record["config"],
                "train_seconds": record["seconds"], "final_loss": history[-1][1] if history else None}
        _remember(key, Generator(model, torch.arange(len(ctx.spec.classes)), ctx.spec.resolution, None, "all", info))
    return _LOADED[key]


def _remember(key: tuple, gen: Generator) -> None:
    _LOADED.clear()  # one at a time: DiT-XL/2 alone is 2.7 GB
    _LOADED[key] = gen


def weights_path(ctx, cfg: dict, key: str) -> str | None:
    """--dit / --vae (ctx.options) > DDBENCH_DIT / DDBENCH_VAE > the card's `dit:` / `vae:`."""
    return ctx.options.get(key) or os.environ.get(f"DDBENCH_{key.upper()}") or cfg.get(key) or None


def pretrained_generator(ctx, cfg: dict) -> Generator:
    """DiT-XL/2 (any original or diffusers DiT checkpoint) + AutoencoderKL; label = ImageNet-1K index."""
    from ddbench.diffusion.load import load_dit
    from ddbench.diffusion.vae import load_vae

    dit_path, vae_path = weights_path(ctx, cfg, "dit"), weights_path(ctx, cfg, "vae")
    if ctx.spec.imagenet_index is None:
        raise ConfigError(f"dataset {ctx.spec.name} has no ImageNet-1K class indices; the pretrained DiT cannot "
                          "condition on its classes")
    key = ("pretrained", str(dit_path), str(vae_path), str(ctx.device))
    if key not in _LOADED:
        model = load_dit(dit_path, ctx.device)  # a missing path: DataError naming --dit / DDBENCH_DIT
        vae = load_vae(vae_path, ctx.device)  # likewise --vae / DDBENCH_VAE
        if model.num_classes != 1000:
            raise ConfigError(f"{dit_path} is a DiT with {model.num_classes} classes; the ImageNet subsets need an "
                              "ImageNet-1K class-conditional DiT (e.g. DiT-XL-2-256x256.pt)")
        info = {"kind": "pretrained", "dit": str(dit_path), "vae": str(vae_path), "model_config": model.config}
        _remember(key, Generator(model, torch.tensor(ctx.spec.imagenet_index), ctx.spec.resolution, vae, 3, info))
    return _LOADED[key]


def data_fingerprint(split) -> str:
    """sha256 (16 hex) of a pool's pixels and labels: a changed training set never reuses a generator."""
    h = hashlib.sha256(split.images.contiguous().numpy().tobytes())
    h.update(split.labels.numpy().tobytes())
    return h.hexdigest()[:16]


def trained_generator_path(ctx, gen: str | dict = "cpu", log=None) -> Path:
    """<cache>/generators/<dataset>-<hash>/generator.pt for the resolved config, training it (or resuming a
    killed training) when it is not there yet."""
    cfg = generator_config(ctx.spec, gen)
    train = ctx.train()
    folder = ctx.cache_path("generators", {**cache_key(cfg), "data": data_fingerprint(train)})
    return train_generator(train, cfg, folder, ctx.device, track=ctx.track, log=log)


# ---------------------------------------------------------------------------------------------------------
# Quality: a classifier trained on the real training pool judges the samples
# ---------------------------------------------------------------------------------------------------------

JUDGE_ARCH = "convnet3"  # the judge is the dataset's feature network (ddbench.features, data/weights/features.yaml)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2(ΣaΣb)^½) of two feature sets (N×D, M×D): FID's formula."""
    from scipy import linalg

    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.from_numpy(a).T.cov().numpy(), torch.from_numpy(b).T.cov().numpy()
    covmean = linalg.sqrtm(cov_a @ cov_b)
    covmean = covmean.real if hasattr(covmean, "real") else covmean  # tiny imaginary parts from round-off
    return float(((mu_a - mu_b) ** 2).sum() + cov_a.trace() + cov_b.trace() - 2 * covmean.trace())


def generator_quality(gen: Generator, spec, train, test, *, n_per_class: int = 100, steps: int | str = 50,
                      cfg: float = 2.0, sampler: str = "ddpm", seed: int = 0, batch_size: int = 250,
                      cache_dir=None, judge_recipe: dict | None = None, track=None) -> dict:
    """Sample n_per_class images per class and score them with a ConvNet-3 trained on `train`.

    Returns: judge_test_acc (the judge on the real test split: the ceiling), acc and per_class (% of samples
    the judge assigns to their class), fd (Fréchet distance to the real test images in the judge's
    penultimate features) and fd_real (the same for as many real training images: the floor at this n).
    """
    from ddbench.features import dataset_recipe, embed, feature_network
    from ddbench.method import default_cache_dir
    from ddbench.teachers.classifier import predict, teacher_for

    cache = Path(cache_dir or default_cache_dir())
    if judge_recipe is None:  # the dataset's feature network: shipped, or trained once and cached
        recipe, net = dataset_recipe(spec.name), feature_network(spec, gen.device, cache, train)
    else:
        recipe, net = judge_recipe, teacher_for(spec, JUDGE_ARCH, gen.device, cache, train, cfg=judge_recipe)
    judge_acc = (predict(net, test.images, spec, gen.device).argmax(1) == test.labels).float().mean().item()
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(len(spec.classes)).repeat_interleave(n_per_class)
    t0 = time.perf_counter()
    batches = range(0, len(y), batch_size)
    images = torch.cat([gen.sample(y[i:i + batch_size], g, steps, cfg, sampler=sampler)
                        for i in (track(batches, "sampling", len(batches)) if track else batches)])
    seconds = time.perf_counter() - t0
    hit = predict(net, images, spec, gen.device).argmax(1) == y
    per_class = [100.0 * hit[y == c].float().mean().item() for c in range(len(spec.classes))]
    real = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))[: len(y)]
    f_test = embed(net, test.images, spec, gen.device)
    return {"n_per_class": n_per_class, "steps": steps, "cfg": cfg, "sampler": sampler, "seed": seed,
            "judge": {"arch": JUDGE_ARCH, "recipe": recipe}, "judge_test_acc": 100.0 * judge_acc,
            "acc": 100.0 * hit.float().mean().item(), "per_class": per_class,
            "fd": frechet_distance(embed(net, images, spec, gen.device), f_test),
            "fd_real": frechet_distance(embed(net, train.images[real], spec, gen.device), f_test),
            "sampling_seconds": seconds}
