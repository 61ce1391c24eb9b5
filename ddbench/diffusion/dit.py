"""DiT: the class-conditional diffusion transformer of Peebles & Xie, written out.

Parameter names equal facebookresearch/DiT `models.py` (ed81ce2), so the released `DiT-XL-2-256x256.pt` and
any checkpoint of that code load with `strict=True`. Differences from the reference are noted where they
happen: attention goes through `F.scaled_dot_product_attention` (same maths, memory-efficient kernels),
and nothing depends on timm.

Sizes: DiT-S/B/L/XL × patch 2/4/8 (`DIT_SIZES`), any square input, 1/3/4 input channels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddbench.errors import ConfigError

# name -> (depth, hidden size, heads), as the `DiT_*` constructors of the reference.
DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # x: N×T×D, shift/scale: N×D (adaLN: one affine per sample)
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# ---------------------------------------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """N×C×H×W -> N×T×D with T = (H/p)·(W/p); a strided conv, as timm's PatchEmbed (names `proj.*`)."""

    def __init__(self, input_size: int, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.input_size, self.patch_size = input_size, patch_size
        self.num_patches = (input_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ConfigError(
                f"DiT input is {tuple(x.shape[-2:])}, but this model was built for "
                f"{self.input_size}×{self.input_size} (its fixed pos_embed); resize or use a matching model"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> N×D: 256-d sinusoidal frequencies, then Linear-SiLU-Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
        # frequencies exp(-log(P)·k/half), k < half; [cos | sin] (GLIDE). diffusers divides by half-1 instead.
        half = dim // 2
        k = torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(-math.log(max_period) * k / half)
        args = t[:, None].float() * freqs[None]  # N×half
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> N×D. Row `num_classes` is the null (unconditional) label used by CFG."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes, self.dropout_prob = num_classes, dropout_prob

    def token_drop(self, labels, force_drop_ids=None, generator=None):
        if force_drop_ids is None:
            # drawn on CPU through the caller's generator (the reference uses the global RNG)
            drop_ids = torch.rand(labels.shape[0], generator=generator) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids.to(labels.device), self.num_classes, labels)

    def forward(self, labels, train: bool, force_drop_ids=None, generator=None):
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids, generator)
        return self.embedding_table(labels)


# ---------------------------------------------------------------------------------------------------------
# Transformer blocks
# ---------------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with names `qkv`, `proj` (timm's Attention, qkv_bias=True)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"hidden size {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each N×heads×T×head_dim
        x = F.scaled_dot_product_attention(q, k, v)  # flash / memory-efficient kernel where available
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    """fc1 - GELU(tanh) - fc2 (timm's Mlp names)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero block: shift/scale/gate for attention and MLP regressed from the conditioning c."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # x: N×T×D, c: N×D
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # N×T×(p·p·C_out)


# ---------------------------------------------------------------------------------------------------------
# DiT
# ---------------------------------------------------------------------------------------------------------


class DiT(nn.Module):
    """Diffusion transformer; `forward` returns all C_out = 2·C_in channels when `learn_sigma` (ε | v)."""

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                 mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True):
        super().__init__()
        if input_size % patch_size:
            raise ConfigError(f"DiT input_size={input_size} is not a multiple of patch_size={patch_size}")
        self.config = dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                           hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           class_dropout_prob=class_dropout_prob, num_classes=num_classes, learn_sigma=learn_sigma)
        self.learn_sigma, self.in_channels = learn_sigma, in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size, self.num_heads, self.num_classes = patch_size, num_heads, num_classes

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        # fixed 2-D sin-cos embedding; a (frozen) Parameter so that the reference state dicts load strictly
        self.pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self):
        """The reference initialisation: xavier linears, zeroed adaLN and output layers (identity blocks)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        grid = int(self.x_embedder.num_patches**0.5)
        self.pos_embed.copy_(torch.from_numpy(get_2d_sincos_pos_embed(self.pos_embed.shape[-1], grid)).float()[None])
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # patch embed initialised like a Linear
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                      self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        # N×T×(p·p·C) -> N×C×H×W
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x, t, y, force_drop_ids=None, generator=None):
        """x: N×C×H×W, t: N timesteps (0..999), y: N labels (num_classes = null) -> N×C_out×H×W."""
        x = self.x_embedder(x) + self.pos_embed  # N×T×D
        c = self.t_embedder(t) + self.y_embedder(y, self.training, force_drop_ids, generator)  # N×D
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))

    def forward_with_cfg(self, x, t, y, cfg_scale: float, channels: int | str = 3):
        """The reference CFG forward: x, t, y hold [cond; null] halves (2N); the conditional half of x is
        used for both. ε is guided on the first `channels` channels (3 = the reference, "all" = every ε
        channel); the remaining channels (the 4th ε channel, the variance) come from each half's own output.
        Returns 2N×C_out with both halves' guided ε equal."""
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half]), t, y)
        k = cfg_channel_count(channels, self.in_channels)
        guided = cfg_combine(out, cfg_scale, k)[:, :k]
        return torch.cat([torch.cat([guided, guided]), out[:, k:]], dim=1)


# ---------------------------------------------------------------------------------------------------------
# Classifier-free guidance (shared with the samplers)
# ---------------------------------------------------------------------------------------------------------


def cfg_channel_count(channels: int | str, in_channels: int) -> int:
    """How many leading ε channels get guidance: "all" -> in_channels; an int must be ≤ in_channels."""
    if channels == "all":
        return in_channels
    if not isinstance(channels, int) or not 1 <= channels <= in_channels:
        raise ConfigError(
            f"cfg_channels={channels!r} is invalid for a model with {in_channels} ε channels; "
            f"use an integer in 1..{in_channels} (3 reproduces the DiT reference on 4-channel latents) or 'all'"
        )
    return channels


def cfg_combine(out: torch.Tensor, cfg_scale: float, k: int) -> torch.Tensor:
    """out: 2N×C_out ([cond; null]) -> N×C_out for the conditional half: the first k channels guided
    (uncond + s·(cond − uncond)), the rest the conditional half's own."""
    cond, uncond = out.chunk(2, dim=0)
    guided = uncond[:, :k] + cfg_scale * (cond[:, :k] - uncond[:, :k])
    return torch.cat([guided, cond[:, k:]], dim=1)


# ---------------------------------------------------------------------------------------------------------
# Fixed 2-D sin-cos positional embedding (MAE's, float64 numpy as the reference)
# ---------------------------------------------------------------------------------------------------------


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """-> (grid_size², embed_dim); first half of the channels encode the row (h), second half the column."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)  # w goes first
    emb_h = _sincos_1d(embed_dim // 2, grid[0])
    emb_w = _sincos_1d(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # D/2
    out = np.einsum("m,d->md", pos.reshape(-1), omega)  # M×D/2
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def dit_config(name: str, **kw) -> dict:
    """'XL/2' -> constructor kwargs of DiT-XL/2 (any of S/B/L/XL × 2/4/8); kw override (input_size, ...)."""
    size, _, patch = name.partition("/")
    if size not in DIT_SIZES or patch not in ("2", "4", "8"):
        raise ConfigError(f"unknown DiT size {name!r}; expected one of S|B|L|XL followed by /2, /4 or /8")
    depth, hidden, heads = DIT_SIZES[size]
    return dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=int(patch)) | kw
