"""Minimax Diffusion: a DiT fine-tuned for representativeness and diversity, then sampled as `dit`.

Gu, Vahidian, Kungurtsev, Wang, Jiang, You, Chen — "Efficient Dataset Distillation via Minimax Diffusion",
CVPR 2024 (paper: shared/seeds/002; code `vimar-gu/MinimaxDiffusion@969fc6f`; facts: protocol-facts §4.2).

1. `prepare`: Difffit fine-tuning of the base generator (pretrained DiT-XL/2 + VAE on ImageNet subsets, the
   self-trained pixel-space DiT elsewhere) with the minimax criteria (`minimax_train`). Datasets with more than
   `phase_classes` (20) classes are fine-tuned in phases of 20 classes, each from the base weights
   (ImageNet-100: 5 phases, ImageNet-1K: 50), as the maintainer did. Weights are cached by config hash; a
   killed fine-tuning resumes from its last checkpoint.
2. `distill`: IPC images per class sampled as `dit` (50 DDPM steps, CFG 4.0) from the fine-tuned EMA weights;
   a class is sampled with the weights of its phase.

Other methods use the fine-tuned generator as their base (`base: minimax` in mgd3 / acs):

    gen = minimax_generator(ctx)            # the card's config for ctx.spec; fine-tunes once, then cached
    images = gen.sample(labels, torch.Generator().manual_seed(0), steps=50, cfg=4.0)
"""
from __future__ import annotations

import hashlib
import time
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from ddbench.config import deep_merge
from ddbench.diffusion.dit import DiT
from ddbench.diffusion.generator import Generator, data_fingerprint, load_generator
from ddbench.distilled import DistilledSet
from ddbench.errors import ConfigError
from ddbench.protocol import precision_on
from ddbench.safeload import load_tensors
from ddbench.method import Context, Method
from ddbench.methods.dit import DiTSampling, sample_classes
from ddbench.methods.minimax_train import FORMAT, apply_difffit, finetune, mark_trainable

# The reference run (run.sh, train_dit.py; protocol-facts §4.2). CPU datasets override steps / batch / EMA.
FINETUNE = dict(
    steps=12000, epochs=8, batch_size=8,                 # README: the step-12000 checkpoint of an 8-epoch run
    lr=1e-3, weight_decay=0.0, ema_decay=0.9999,         # AdamW, constant lr; EMA every step
    lambda_r=0.002, lambda_d=0.008, memory_size=64,      # --lambda-pos / --lambda-neg / --memory-size
    difffit_blocks=None,                                 # None = the first half of the blocks (14 of 28)
    phase_classes=20,                                    # > 20 classes: phases of 20 (vimar-gu/MinimaxDiffusion#5)
    hflip=True, seed=0, precision="bf16",                # RandomHorizontalFlip; --global-seed 0; bf16 autocast on CUDA
    diffusion_steps=1000, beta_start=1e-4, beta_end=0.02,  # DiT's linear schedule (the base's, if it says)
    checkpoint_every=1000, log_every=100,
)
FINETUNE_RULES = dict(
    steps="int>=1", epochs="int>=1?", batch_size="int>=1",  # epochs null: `steps` alone sets the length
    lr="float>=0", weight_decay="float>=0", ema_decay="prob",
    lambda_r="float>=0", lambda_d="float>=0", memory_size="int>=1",
    difffit_blocks="int>=0?", phase_classes="int>=1?",
    hflip="bool", seed="int", precision="choice[bf16|fp32]",
    diffusion_steps="int>=1", beta_start="float>0", beta_end="float>0",
    checkpoint_every="int>=1", log_every="int>=1",
)
SCHEDULE_KEYS = ("diffusion_steps", "beta_start", "beta_end")
NOT_IN_KEY = ("checkpoint_every", "log_every", "phase_classes")  # bookkeeping: never changes the weights

# ---------------------------------------------------------------------------------------------------------
# Phases of classes
# ---------------------------------------------------------------------------------------------------------


def phase_classes(num_classes: int, size: int | None) -> list[list[int]]:
    """Labels of each fine-tuning phase: one phase when num_classes ≤ size (or size is None), else
    consecutive blocks of `size` labels in class-list order (the reference's `classes[20k:20(k+1)]`)."""
    if size is not None and size < 1:
        raise ConfigError(f"phase_classes must be a positive number of classes or null, got {size}")
    if size is None or num_classes <= size:
        return [list(range(num_classes))]
    # ImageNet-1K: blocks of the sorted 1000-class list (the reference reads class100.txt, so phases ≥ 5 fail there)
    return [list(range(s, min(s + size, num_classes))) for s in range(0, num_classes, size)]


def phase_of_class(num_classes: int, size: int | None) -> torch.Tensor:
    """K int64: the phase of each dataset label."""
    out = torch.empty(num_classes, dtype=torch.long)
    for k, labels in enumerate(phase_classes(num_classes, size)):
        out[labels] = k
    return out


class PhasedDiT(nn.Module):
    """The fine-tuned generator: one patched DiT whose frozen weights are the base's (shared, never copied)
    and, per phase, the fine-tuned trainable tensors. forward(x, t, y) runs every sample with the tensors of
    its label's phase through torch.func.functional_call (no weights are written, so autograd through x works,
    as ACS needs). y holds model labels; a null label (CFG) takes the phase of its conditional twin in a
    [cond; null] batch, as the reference samples both halves with the phase's model."""

    def __init__(self, dit: DiT, phase_states: list[dict], phase_of_label: torch.Tensor):
        super().__init__()
        self.dit, self.phase_states = dit, phase_states
        self.register_buffer("lut", phase_of_label.long(), persistent=False)  # (num_classes + 1): −1 = no phase

    @property
    def config(self) -> dict:
        return self.dit.config

    @property
    def num_classes(self) -> int:
        return self.dit.num_classes

    @property
    def in_channels(self) -> int:
        return self.dit.in_channels

    def _apply(self, fn, recurse=True):  # .to(device) / .half() also move the per-phase tensors
        super()._apply(fn, recurse)
        self.phase_states = [{n: fn(v) for n, v in s.items()} for s in self.phase_states]
        return self

    def phases(self, y: torch.Tensor) -> torch.Tensor:
        """N model labels -> N phase ids."""
        p = self.lut[y]
        null = y == self.num_classes
        if bool(null.any()):
            h = len(y) // 2
            if len(y) % 2 or not bool(null[h:].all()) or bool(null[:h].any()):
                raise ConfigError("a phased Minimax generator needs class labels: unconditional rows are only "
                                  "allowed as the null half of a [cond; null] CFG batch")
            p = torch.cat([p[:h], p[:h]])
        if bool((p < 0).any()):
            raise ConfigError(f"model labels {y[p < 0].unique().tolist()[:5]} belong to no fine-tuned phase")
        return p

    def forward(self, x, t, y, **kw):
        p = self.phases(y)
        ks = p.unique().tolist()
        if len(ks) == 1:  # the common case: a batch of one class, or a single-phase dataset
            return functional_call(self.dit, self.phase_states[ks[0]], (x, t, y), kw, strict=False)
        out = None
        for k in ks:  # mixed batch: one forward per phase present
            m = p == k
            o = functional_call(self.dit, self.phase_states[k], (x[m], t[m], y[m]), kw, strict=False)
            out = o.new_empty((len(x), *o.shape[1:])) if out is None else out
            out[m] = o
        return out


# ---------------------------------------------------------------------------------------------------------
# Building the models (frozen weights shared with the base: no 2.7 GB copy of DiT-XL/2)
# ---------------------------------------------------------------------------------------------------------


def patched_view(base: DiT, num_blocks: int | None) -> DiT:
    """A Difffit-patched DiT whose tensors *are* the base's (γ's = 1 added); the base is not modified."""
    with torch.device("meta"):
        model = DiT(**base.config)
    apply_difffit(model, num_blocks)
    model.load_state_dict(base.state_dict(), strict=False, assign=True)  # shares storage; γ's stay meta
    like = base.pos_embed
    for name, p in list(model.named_parameters()):
        if p.is_meta:  # the γ's
            _set_param(model, name, nn.Parameter(torch.ones(p.shape, device=like.device, dtype=like.dtype)))
    mark_trainable(model)
    return model.eval()


def trainable_copy(base: DiT, num_blocks: int | None) -> DiT:
    """The model that is fine-tuned: frozen tensors shared with the base, trainable ones cloned (so training
    never writes into the base generator another method may be using)."""
    model = patched_view(base, num_blocks)
    for name, p in list(model.named_parameters()):
        if p.requires_grad:
            _set_param(model, name, nn.Parameter(p.detach().clone()))
    return model


def _set_param(model: nn.Module, name: str, param: nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, param)


# ---------------------------------------------------------------------------------------------------------
# The fine-tuned generator
# ---------------------------------------------------------------------------------------------------------

_LOADED: dict[tuple, Generator] = {}  # the last minimax generator (deltas only: cheap to keep)


def finetune_config(cfg: dict, base: Generator) -> dict:
    """The method config's `finetune:` section over the reference defaults; the schedule is the base's."""
    ft = deep_merge(FINETUNE, cfg.get("finetune") or {})
    unknown = sorted(set(ft) - set(FINETUNE))
    if unknown:
        raise ConfigError(f"minimax finetune has no key(s) {unknown}; known keys: {', '.join(sorted(FINETUNE))}")
    trained = base.info.get("config") or {}
    ft.update({k: trained[k] for k in SCHEDULE_KEYS if k in trained})
    return ft


def base_identity(base: Generator, cache_dir=None) -> dict:
    """What identifies the base weights in the cache key: the self-trained generator's cache folder name
    (it holds the config + data hash), or the pretrained files' content (ddbench.records.cellhash.file_identity)."""
    from ddbench.records.cellhash import file_identity

    info = base.info
    if info.get("kind") == "self-trained":
        return {"kind": "self-trained", "generator": Path(info["path"]).parent.name}
    files = {k: info.get(k) for k in ("dit", "vae")}
    return {"kind": info.get("kind"), **{k: file_identity(v, cache_dir) for k, v in files.items() if v}}


def pool_fingerprint(ctx: Context) -> str:
    """16 hex of the training pool: its pixels for array data, its file ids and labels for image folders."""
    return data_fingerprint(ctx.train()) if ctx.spec.kind == "embedded" else _files_fingerprint(ctx.spec)


@lru_cache(maxsize=8)
def _files_fingerprint(spec) -> str:  # listing ImageNet-1K takes a while: once per process and dataset
    from ddbench.data import list_files

    ids, labels = list_files(spec, "train")
    h = hashlib.sha256("\n".join(ids).encode())
    h.update(labels.numpy().tobytes())
    return h.hexdigest()[:16]


def phase_pool(ctx: Context, labels: list[int], many_phases: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, dataset labels) of the phase's classes. ImageNet with several phases decodes only the
    phase's files (ImageNet-1K's pool does not fit in memory); otherwise the cached train split is used."""
    if many_phases and ctx.spec.kind != "embedded":
        from ddbench.data import decode_ids, list_files

        ids, all_labels = list_files(ctx.spec, "train")
        keep = torch.isin(all_labels, torch.tensor(labels)).nonzero().flatten()
        images = decode_ids(ctx.spec, "train", [ids[i] for i in keep.tolist()], ctx.spec.resolution)
        return images, all_labels[keep]
    # ddbench's decode (antialiased bicubic resize + centre crop), not ADM's box-halving centre crop
    train = ctx.train()
    m = torch.isin(train.labels, torch.tensor(labels))
    return train.images[m], train.labels[m]


def minimax_generator(ctx: Context, cfg: dict | None = None, log=None) -> Generator:
    """The Minimax fine-tuned generator for ctx.spec (fine-tuning every phase not yet cached).

    cfg: a resolved `minimax` method config; None = the card's config for this dataset (what `base: minimax`
    of mgd3 / acs uses). Returns a Generator whose model is a `PhasedDiT` over the base generator's weights."""
    if cfg is None:
        from ddbench.method import resolve_method_config

        cfg = resolve_method_config("minimax", ctx.spec.name)[1]
    base = load_generator(ctx, cfg, log=log)
    ft = finetune_config(cfg, base)
    phases = phase_classes(len(ctx.spec.classes), ft["phase_classes"])
    data = pool_fingerprint(ctx)
    # the precision the fine-tuning runs in here (bf16 on CUDA only): a CPU fine-tune is not reused on a GPU
    keys = [{"format": FORMAT, "base": base_identity(base, ctx.cache_dir), "data": data, "classes": labels,
             "precision_used": precision_on(ft["precision"], ctx.device),
             **{k: v for k, v in ft.items() if k not in NOT_IN_KEY}} for labels in phases]
    folders = [ctx.cache_path("minimax", k) for k in keys]
    cache_key = (tuple(str(f) for f in folders), str(ctx.device), id(base.model))
    if cache_key not in _LOADED:
        states = [_phase_weights(ctx, base, ft, labels, folder, k, len(phases) > 1, log)
                  for labels, folder, k in zip(phases, folders, keys)]
        _LOADED.clear()
        _LOADED[cache_key] = _bundle(ctx, base, ft, phases, states, folders)
    return _LOADED[cache_key]


def _phase_weights(ctx, base: Generator, ft: dict, labels, folder: Path, key: dict, many: bool, log) -> dict:
    """Fine-tune one phase (or read it from the cache): its trainable EMA tensors on the device."""
    path = folder / "minimax.pt"
    if not path.exists():
        images, y = phase_pool(ctx, labels, many)
        model = trainable_copy(base.model, ft["difffit_blocks"])
        # the reference trains with sd-vae-ft-ema ("choice does not matter"); the base's VAE (mse) is used here
        path = finetune(model, images, y, base.cond_labels[y], ft, folder, key, vae=base.vae, device=ctx.device,
                        track=ctx.track, log=log)
        del model
    record = load_tensors(path, "fine-tuned Minimax weights", fix="it is a cache file: delete it and run again")
    return {n: v.to(ctx.device) for n, v in record["ema"].items()}


def _bundle(ctx, base: Generator, ft: dict, phases, states, folders) -> Generator:
    view = patched_view(base.model, ft["difffit_blocks"]).requires_grad_(False)
    lut = torch.full((base.model.num_classes + 1,), -1, dtype=torch.long)
    for k, labels in enumerate(phases):
        lut[base.cond_labels[labels]] = k  # model label -> phase
    model = PhasedDiT(view, [{n: v.to(view.pos_embed.dtype) for n, v in s.items()} for s in states], lut)
    model = model.to(base.device).eval()
    info = {"kind": "minimax", "base": base.info, "finetune": ft, "phases": len(phases),
            "folders": [str(f) for f in folders]}
    return Generator(model, base.cond_labels, base.resolution, base.vae, base.cfg_channels, info)


# ---------------------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------------------


class Minimax(Method):
    """Fine-tune (prepare, cached), then sample IPC images per class as `dit` does."""
    numerics = (*DiTSampling.numerics, "ddbench.methods.minimax", "ddbench.methods.minimax_train")

    defaults = {**DiTSampling.defaults, "finetune": dict(FINETUNE)}
    schema = {**DiTSampling.schema, "finetune": FINETUNE_RULES}

    def prepare(self, ctx: Context) -> None:
        self.generator(ctx)

    def generator(self, ctx: Context) -> Generator:
        """The fine-tuned bundle (what mgd3 / acs with `base: minimax` sample from)."""
        return minimax_generator(ctx, self.cfg, log=_log(ctx))

    def distill(self, ctx: Context, ipc: int, seed: int) -> DistilledSet:
        t0 = time.perf_counter()
        gen = self.generator(ctx)
        images = sample_classes(ctx, gen, self.cfg, ipc, seed)
        labels = torch.arange(len(ctx.spec.classes)).repeat_interleave(ipc)
        prov = {"method": self.name, "version": self.version, "seed": seed, "ipc": ipc, "config": self.cfg,
                "generator": gen.info, "timings": {"distill": time.perf_counter() - t0}}
        return DistilledSet(images, labels, ctx.spec.classes, prov)


def _log(ctx: Context):
    console = getattr(ctx.progress, "console", None)
    return console.print if console is not None else None
