"""Noise schedule of DiT (the ADM / improved-DDPM Gaussian diffusion), respaced for few-step sampling.

All coefficients are float64 tables, as in facebookresearch/DiT `diffusion/gaussian_diffusion.py`; a
sampler reads one entry per step as a Python float, so a step costs no host sync and no table upload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ddbench.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------
# Timestep respacing (guided-diffusion / DiT `respace.py`)
# ---------------------------------------------------------------------------------------------------------


def space_timesteps(num_timesteps: int, section_counts: str | int | list[int]) -> list[int]:
    """Timesteps kept from a `num_timesteps` process: the process is cut into len(section_counts) equal
    sections and each is strided to its count ("50" -> 0, 20, 41, 61, …, 979, 999). "ddimN" takes the
    integer stride of the DDIM paper. Returns the sorted list (the reference returns the same set)."""
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ConfigError(f"cannot take exactly {desired} of {num_timesteps} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ConfigError(f"cannot divide a section of {size} diffusion steps into {count} sampling steps")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        # the stride is accumulated in floating point and rounded half to even, as the reference does
        # (respace.py: cur_idx += frac_stride); j·stride can round differently where a sum lands on .5
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += size
    return sorted(set(steps))


# ---------------------------------------------------------------------------------------------------------
# Schedule tables
# ---------------------------------------------------------------------------------------------------------


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DiT's linear β schedule (float64; numpy's linspace as the reference, end points scaled by 1000/T)."""
    scale = 1000 / num_timesteps
    return torch.from_numpy(np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64))


@dataclass(frozen=True)
class Schedule:
    """A (possibly respaced) diffusion process. Index i = respaced step; `timesteps[i]` = original timestep
    fed to the model. All tables are float64 CPU tensors of length len(timesteps)."""

    timesteps: tuple[int, ...]
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    def __len__(self) -> int:
        return len(self.timesteps)

    @classmethod
    def from_betas(cls, betas, timesteps=None) -> "Schedule":
        """From a β table (torch or numpy, any float dtype; computed in float64)."""
        # numpy float64 throughout, as the reference, so the tables match it to the last bit
        b = np.asarray(betas, dtype=np.float64)
        alphas = 1.0 - b
        ac = np.cumprod(alphas, axis=0)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        # log of the posterior variance, clipped because it is 0 at the first step (the reference's trick)
        post_log_var = np.log(np.append(post_var[1], post_var[1:])) if len(b) > 1 else np.log(b)
        tables = dict(
            betas=b, alphas_cumprod=ac, alphas_cumprod_prev=ac_prev,
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac), sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1),
            posterior_variance=post_var, posterior_log_variance_clipped=post_log_var,
            posterior_mean_coef1=b * np.sqrt(ac_prev) / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        )
        timesteps = tuple(range(len(b))) if timesteps is None else tuple(int(t) for t in timesteps)
        return cls(timesteps=timesteps, **{k: torch.from_numpy(v) for k, v in tables.items()})

    @classmethod
    def respaced(cls, steps: int | str, base_betas: torch.Tensor | None = None) -> "Schedule":
        """Keep `space_timesteps(T, steps)` of the base process; the new β's are 1 − ᾱ_k/ᾱ_prev-kept, so the
        kept ᾱ's are unchanged (DiT's SpacedDiffusion)."""
        base = (linear_betas() if base_betas is None else torch.as_tensor(base_betas)).numpy().astype(np.float64)
        keep = space_timesteps(len(base), str(steps))
        base_ac = np.cumprod(1.0 - base, axis=0)
        new_betas, last = [], 1.0
        for t in keep:
            new_betas.append(1.0 - base_ac[t] / last)
            last = base_ac[t]
        return cls.from_betas(np.array(new_betas), keep)

    def q_sample(self, x0: torch.Tensor, i: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process at respaced indices i (N): sqrt(ᾱ)·x0 + sqrt(1−ᾱ)·noise (for training losses)."""
        ac = self.alphas_cumprod.to(x0.device)[i].view(-1, *[1] * (x0.dim() - 1))  # float64, as the reference
        return ac.sqrt().float() * x0 + (1 - ac).sqrt().float() * noise


# ---------------------------------------------------------------------------------------------------------
# One-step maths (scalar coefficients of step i; tensors N×C×H×W)
# ---------------------------------------------------------------------------------------------------------


def predict_x0(s: Schedule, i: int, x_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x̂₀ = (x_t − sqrt(1−ᾱ)·ε)/sqrt(ᾱ), written as the reference: sqrt(1/ᾱ)·x_t − sqrt(1/ᾱ − 1)·ε."""
    return float(s.sqrt_recip_alphas_cumprod[i]) * x_t - float(s.sqrt_recipm1_alphas_cumprod[i]) * eps


def eps_from_x0(s: Schedule, i: int, x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return (float(s.sqrt_recip_alphas_cumprod[i]) * x_t - x0) / float(s.sqrt_recipm1_alphas_cumprod[i])


def posterior_mean(s: Schedule, i: int, x0: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """Mean of q(x_{t−1} | x_t, x0)."""
    return float(s.posterior_mean_coef1[i]) * x0 + float(s.posterior_mean_coef2[i]) * x_t


def model_log_variance(s: Schedule, i: int, var_values: torch.Tensor | None, like: torch.Tensor):
    """Learned range: v ∈ [−1, 1] interpolates between log β̃ (posterior, clipped) and log β. Without a
    variance output (learn_sigma=False) DiT's default 'fixed large' variance: β (β̃ at the first step)."""
    if var_values is None:
        log_var = float(s.posterior_log_variance_clipped[0]) if i == 0 else math.log(float(s.betas[i]))
        return torch.full_like(like, log_var)
    min_log = float(s.posterior_log_variance_clipped[i])
    max_log = math.log(float(s.betas[i]))
    frac = (var_values + 1) / 2
    return frac * max_log + (1 - frac) * min_log
