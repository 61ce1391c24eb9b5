"""Guidance hooks: how a method changes a denoising step without rewriting the sampler.

A hook is any object with some of the methods below; the samplers call them every step, in the order
of the `hooks` list, with one mutable `StepState`:

    on_eps(state)  -> ε      after the model and CFG, before x̂₀ (MGD³'s DDIM form, ε-space guidance)
    on_mean(state) -> mean   after the posterior mean, before noise is added (MGD³'s code: λ·σ_t·(m − x̂₀))
    on_xt(state)   -> x      after x_{t−1} is formed (ACS: x_{t−1} − s(t)·∇_{x_t} L_adv(D(x̂₀(x_t))))

Returning None keeps the value. A hook that needs gradients through the model calls
`state.predict(x)` inside `torch.enable_grad()`: it re-runs the model (with CFG) at this step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class StepState:
    """What a hook sees at one reverse step (tensors N×C×H×W for the N conditional samples)."""

    index: int                   # respaced step index, counts down num_steps−1 … 0 (MGD³ stops at index ≤ 25)
    timestep: int                # original timestep fed to the model (999 … 0)
    num_steps: int
    x_t: torch.Tensor            # the current sample
    y: torch.Tensor              # N labels (conditional half)
    eps: torch.Tensor            # guided ε (CFG applied); after on_eps, the one the step uses
    alpha_bar: float             # ᾱ of this step, and of the next (the DDIM coefficients)
    alpha_bar_prev: float
    predict: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # x -> (guided ε, x̂₀) at this step
    model_fn: Callable           # the raw model: (x, t, y) -> all output channels
    eps_model: torch.Tensor | None = None     # the model's guided ε, before any on_eps hook
    x0_hat: torch.Tensor | None = None        # x̂₀ from x_t and ε (in on_eps: the model's ε; later: the hooked ε)
    mean: torch.Tensor | None = None          # posterior mean (DDPM) / DDIM mean
    log_variance: torch.Tensor | None = None  # log σ²_t of the step (DDPM: learned range; DDIM: log σ² or None)
    sigma: torch.Tensor | None = None         # exp(½ log σ²): the noise scale of this step
    x_prev: torch.Tensor | None = None        # x_{t−1}, set before on_xt
    extra: dict = field(default_factory=dict)  # free room for hooks to pass values between themselves


class GuidanceHook:
    """Base class for hooks (optional: any object with some of these methods works). Each method may
    return a replacement tensor of the same shape, or None to keep the value."""

    def on_eps(self, state: StepState) -> torch.Tensor | None:
        return None

    def on_mean(self, state: StepState) -> torch.Tensor | None:
        return None

    def on_xt(self, state: StepState) -> torch.Tensor | None:
        return None


def run_hooks(hooks, name: str, state: StepState, current: torch.Tensor) -> torch.Tensor:
    """Apply every hook's `name` method in order; each sees the state updated by the ones before it."""
    attr = {"on_eps": "eps", "on_mean": "mean", "on_xt": "x_prev"}[name]
    for hook in hooks:
        fn = getattr(hook, name, None)
        if fn is None:
            continue
        setattr(state, attr, current)
        new = fn(state)
        if new is not None:
            if new.shape != current.shape:
                raise ValueError(f"{type(hook).__name__}.{name} returned shape {tuple(new.shape)}, "
                                 f"expected {tuple(current.shape)}")
            current = new.to(current.dtype)
    setattr(state, attr, current)
    return current
