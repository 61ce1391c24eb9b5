"""The denoising loops, written out top to bottom: DDPM (ancestral, respaced; what DiT / Minimax / MGD³
sample with) and DDIM (what ACS builds on), both with classifier-free guidance and guidance hooks.

Equivalence to the reference (`facebookresearch/DiT` `p_sample_loop` / `ddim_sample_loop` driven by
`sample.py`): same respaced tables, same float32 arithmetic, same order of random draws (initial noise of
the N samples, then one draw of the whole CFG batch per step, the last step included). The reference also
carries the null half of x through the loop; it never influences the conditional half (forward_with_cfg
uses the conditional half twice), so only the N conditional samples are kept here.

Performance: the whole CFG batch goes through the model in one forward, the step coefficients are Python
floats, and the noise is drawn on the generator's device and copied without blocking: no host sync per step.
"""

from __future__ import annotations

import math
import torch
from torch import nn

from ddbench.diffusion.dit import cfg_channel_count, cfg_combine
from ddbench.diffusion.fast import autocast_context, resolve_precision
from ddbench.diffusion.hooks import StepState, run_hooks
from ddbench.diffusion.schedule import Schedule, eps_from_x0, model_log_variance, posterior_mean, predict_x0
from ddbench.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------
# Shared pieces: noise, the guided model call
# ---------------------------------------------------------------------------------------------------------


def randn(shape, generator: torch.Generator, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved: a CPU generator gives the same
    numbers whatever the sampling device (pinned memory + non_blocking, so no host sync on CUDA)."""
    device = torch.device(device)
    z = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
    if z.device == device or (device.type == generator.device.type and device.index is None):
        return z
    if device.type == "cuda" and z.device.type == "cpu":
        return z.pin_memory().to(device, non_blocking=True)
    return z.to(device)


class _GuidedModel:
    """The model call of one step: [x; x] with [y; null] in one forward, CFG-combined to N×C_out."""

    def __init__(self, model_fn, y, in_channels, cfg_scale, cfg_channels, null_label, autocast, device):
        # the reference switches CFG on for scale > 1 only; any scale ≠ 1 is honoured here
        self.model_fn, self.cfg_scale, self.device = model_fn, float(cfg_scale), device
        self.use_cfg = self.cfg_scale != 1.0
        self.in_channels = in_channels
        self.k = cfg_channel_count(cfg_channels, in_channels) if self.use_cfg else in_channels
        self.y_in = y
        if self.use_cfg:
            if null_label is None:
                null_label = getattr(model_fn, "num_classes", None)
            if null_label is None:
                raise ConfigError("classifier-free guidance needs the null label: pass null_label= "
                                  "(DiT: num_classes) or cfg_scale=1.0")
            self.y_in = torch.cat([y, torch.full_like(y, int(null_label))])
        self.precision = resolve_precision(autocast, device)  # auto: bf16 on CUDA, exact fp32 elsewhere

    @property
    def batch(self) -> int:
        return len(self.y_in)

    def __call__(self, x: torch.Tensor, timestep: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: N×C×H×W -> (guided ε N×C×H×W, variance values N×C×H×W or None)."""
        x_in = torch.cat([x, x]) if self.use_cfg else x
        t_in = torch.full((len(x_in),), timestep, device=x.device, dtype=torch.long)
        with autocast_context(self.precision, x.device):  # only the model forward: CFG and the rest stay fp32
            out = self.model_fn(x_in, t_in, self.y_in)
        out = out.to(x.dtype)
        if self.use_cfg:
            out = cfg_combine(out, self.cfg_scale, self.k)  # N×C_out, conditional half
        c = self.in_channels
        if out.shape[1] not in (c, 2 * c):
            raise ConfigError(f"model returned {out.shape[1]} channels for a {c}-channel input; expected "
                              f"{c} (ε) or {2 * c} (ε and learned variance)")
        return out[:, :c], (out[:, c:] if out.shape[1] == 2 * c else None)


def _setup(model_fn, shape, y, generator, device, dtype, noise, steps, schedule, cfg_scale, cfg_channels,
           null_label, autocast):
    if generator is None:
        raise ConfigError("sampling needs an explicit torch.Generator (generator=torch.Generator().manual_seed(s))")
    if getattr(model_fn, "training", False):  # an nn.Module, or a compiled wrapper of one
        raise ValueError("the model is in training mode (a DiT then drops labels at random); call model.eval()")
    if device is None:
        params = next(iter(model_fn.parameters()), None) if isinstance(model_fn, nn.Module) else None
        device = params.device if params is not None else torch.device("cpu")
    device = torch.device(device)
    n = shape[0]
    y = torch.as_tensor(y, dtype=torch.long).to(device)
    if y.shape != (n,):
        raise ConfigError(f"labels y have shape {tuple(y.shape)}; expected ({n},) for sample shape {tuple(shape)}")
    sched = schedule if schedule is not None else Schedule.respaced(steps)
    guided = _GuidedModel(model_fn, y, shape[1], cfg_scale, cfg_channels, null_label, autocast, device)
    x = randn(shape, generator, device, dtype) if noise is None else noise.to(device, dtype)
    return sched, guided, x, y, device


def _hook_list(hooks) -> list:
    """A list of hooks; a single hook object is accepted too."""
    if any(hasattr(hooks, name) for name in ("on_eps", "on_mean", "on_xt")):
        return [hooks]
    return list(hooks)


def _state(sched: Schedule, i: int, x, y, guided: _GuidedModel, model_fn) -> tuple[StepState, torch.Tensor]:
    """Run the model at step i and open the StepState (ε, x̂₀ from the unhooked ε)."""
    timestep = sched.timesteps[i]
    eps, var_values = guided(x, timestep)

    def predict(x_in: torch.Tensor):
        e, _ = guided(x_in, timestep)
        return e, predict_x0(sched, i, x_in, e)

    state = StepState(index=i, timestep=timestep, num_steps=len(sched), x_t=x, y=y, eps=eps,
                      alpha_bar=float(sched.alphas_cumprod[i]), alpha_bar_prev=float(sched.alphas_cumprod_prev[i]),
                      predict=predict, model_fn=model_fn, x0_hat=predict_x0(sched, i, x, eps), eps_model=eps)
    return state, var_values


# ---------------------------------------------------------------------------------------------------------
# DDPM (ancestral sampling with the learned-range variance)
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def ddpm_sample(model_fn, shape, y, *, steps: int | str = 50, cfg_scale: float = 4.0, cfg_channels: int | str = 3,
                generator: torch.Generator, hooks=(), device=None, dtype=torch.float32, null_label=None,
                noise: torch.Tensor | None = None, autocast: bool | str = False, schedule: Schedule | None = None):
    """Sample N = shape[0] latents of shape N×C×H×W for labels y (N) with `steps` respaced DDPM steps.

    model_fn(x, t, y) returns ε (C channels) or ε and variance values (2C, learned range), e.g. a DiT.
    cfg_channels=3 reproduces the DiT reference (guidance on ε channels 0–2 only), "all" guides every ε
    channel. Hooks: see `ddbench.diffusion.hooks`. Same generator state ⇒ same samples.
    """
    sched, guided, x, y, device = _setup(model_fn, shape, y, generator, device, dtype, noise, steps, schedule,
                                         cfg_scale, cfg_channels, null_label, autocast)
    hooks = _hook_list(hooks)
    for i in reversed(range(len(sched))):
        state, var_values = _state(sched, i, x, y, guided, model_fn)
        eps = run_hooks(hooks, "on_eps", state, state.eps)
        # clip_denoised=False, as the reference samplers; recomputed only if a hook changed ε
        x0 = state.x0_hat = state.x0_hat if eps is state.eps_model else predict_x0(sched, i, x, eps)
        state.log_variance = model_log_variance(sched, i, var_values, x)
        state.sigma = torch.exp(0.5 * state.log_variance)
        mean = run_hooks(hooks, "on_mean", state, posterior_mean(sched, i, x0, x))
        # one draw for the whole CFG batch, as randn_like(x) on the reference's 2N batch; only N are used
        z = randn((guided.batch, *shape[1:]), generator, device, dtype)[: shape[0]]
        x_prev = mean + state.sigma * z if i > 0 else mean  # no noise at the last step
        x = run_hooks(hooks, "on_xt", state, x_prev)
    return x


# ---------------------------------------------------------------------------------------------------------
# DDIM
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def ddim_sample(model_fn, shape, y, *, steps: int | str = 50, cfg_scale: float = 4.0, cfg_channels: int | str = 3,
                generator: torch.Generator, hooks=(), device=None, dtype=torch.float32, null_label=None,
                noise: torch.Tensor | None = None, autocast: bool | str = False, schedule: Schedule | None = None,
                eta: float = 0.0):
    """DDIM on the "ddimN" respaced schedule (0, T/N, 2T/N, …): x_{t−1} = sqrt(ᾱ')·x̂₀ + sqrt(1−ᾱ'−σ²)·ε + σ·z with
    σ = η·sqrt((1−ᾱ')/(1−ᾱ))·sqrt(1−ᾱ/ᾱ'). η = 0 is deterministic given the initial noise."""
    # an integer step count is respaced as "ddimN" (the even integer stride of the DDIM reference scripts)
    steps = f"ddim{steps}" if str(steps).isdigit() else steps
    sched, guided, x, y, device = _setup(model_fn, shape, y, generator, device, dtype, noise, steps, schedule,
                                         cfg_scale, cfg_channels, null_label, autocast)
    hooks = _hook_list(hooks)
    for i in reversed(range(len(sched))):
        state, _ = _state(sched, i, x, y, guided, model_fn)
        eps = run_hooks(hooks, "on_eps", state, state.eps)
        x0 = state.x0_hat = state.x0_hat if eps is state.eps_model else predict_x0(sched, i, x, eps)
        eps = eps_from_x0(sched, i, x, x0)  # the reference re-derives ε from x̂₀ (for clipping); kept for parity
        ab, ab_prev = state.alpha_bar, state.alpha_bar_prev
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        state.sigma = torch.full_like(x, sigma)
        state.log_variance = torch.full_like(x, 2 * math.log(sigma)) if sigma > 0 else None
        mean = x0 * math.sqrt(ab_prev) + math.sqrt(1 - ab_prev - sigma**2) * eps
        mean = run_hooks(hooks, "on_mean", state, mean)
        z = randn((guided.batch, *shape[1:]), generator, device, dtype)[: shape[0]]
        x_prev = mean + sigma * z if i > 0 else mean
        x = run_hooks(hooks, "on_xt", state, x_prev)
    return x
