"""The fast path of diffusion sampling: bf16 DiT forward, a compiled forward with a clean fallback, bf16 VAE
decode — and the switch back to the exact fp32 path.

Two method-card keys select it (`dit`, `minimax`, and through their base every guidance method):

    autocast: auto    # auto: bf16 autocast on CUDA, exact fp32 elsewhere (CPU) | true: bf16 on any device
                      # (CPU autocast too) | false: the exact fp32 path
    compile: auto     # auto: torch.compile of the DiT forward on CUDA | true: on any device | false: eager

What bf16 touches: the DiT forward (and, in `Generator.decode`, the VAE decoder). What stays fp32 whatever
the setting: the model output is cast back to fp32 before CFG is combined, and the sampler's posterior
arithmetic, the noise draws and every guidance hook (MGD³'s mode pull, ACS's loss and step size) run in
fp32 outside the autocast region. docs/diffusion.md ("Fast path") has the measured differences.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import torch

from ddbench.errors import ConfigError

log = logging.getLogger(__name__)

FP32, BF16 = "fp32", "bf16"
_TRUE, _FALSE = (True, "true", "bf16", "on"), (False, "false", "fp32", "off")
SWITCH_RULE = "bool | choice[auto|true|false|bf16|fp32|on|off]"  # card rule of `autocast` / `compile` (_choice)


def _choice(value, key: str, on_cuda: bool) -> bool:
    """auto/None -> on_cuda; true/false (or their spellings) -> themselves; anything else: ConfigError."""
    if value is None or value == "auto":
        return on_cuda
    if isinstance(value, str):
        value = value.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{key}={value!r} is not a valid setting; expected auto (fast path on CUDA, exact fp32 on "
                      f"CPU), true or false (e.g. --set {key}=false for the exact fp32 path; sampling.{key} for a guidance method)")


def resolve_precision(autocast, device) -> str:
    """The card's `autocast` value on `device` -> "bf16" (fast path) or "fp32" (exact)."""
    return BF16 if _choice(autocast, "autocast", torch.device(device).type == "cuda") else FP32


def resolve_compile(compile_, device) -> bool:
    """The card's `compile` value on `device` -> whether to compile the DiT forward."""
    return _choice(compile_, "compile", torch.device(device).type == "cuda")


def autocast_context(precision: str, device):
    """bf16 autocast on the device's type for "bf16"; nothing for "fp32"."""
    if precision == FP32:
        return nullcontext()
    if precision != BF16:
        raise ConfigError(f"precision {precision!r} is unknown; expected {FP32!r} or {BF16!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------------------
# Compiled forward with an eager fallback
# ---------------------------------------------------------------------------------------------------------


class CompiledForward:
    """model(x, t, y) through `torch.compile`, falling back to the eager model for good when compilation (or
    the compiled call) fails: no C++ compiler, no Triton, an unsupported operator. The fallback runs the same
    weights, so it changes speed only; `fallback` holds the reason (also logged once as a warning).

    Attributes the samplers read (`num_classes`, `in_channels`, `config`, ...) are those of the model."""

    def __init__(self, model: torch.nn.Module, backend: str | object = "inductor", mode: str | None = None):
        self.model, self.backend, self.mode = model, backend, mode
        self.fallback: str | None = None
        self._compiled = None

    def __getattr__(self, name):  # only reached for names this wrapper does not define
        return getattr(self.__dict__["model"], name)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, **kw) -> torch.Tensor:
        if self.fallback is None:
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(self.model, backend=self.backend, mode=self.mode)
                return self._compiled(x, t, y, **kw)
            except ConfigError:  # bad input: the eager model says so in the same words
                raise
            except Exception as e:  # noqa: BLE001 - any compiler failure means "run eagerly"
                self.fallback = _reason(e)
                log.warning("torch.compile of the DiT forward failed (%s); sampling continues in eager mode",
                            self.fallback)
        return self.model(x, t, y, **kw)


def _reason(e: BaseException) -> str:
    """One line: the exception and its root cause (dynamo wraps a backend's error in BackendCompilerFailed)."""
    root = e
    while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None:
        root = inner
    lines = [ln.strip() for ln in str(root).splitlines() if ln.strip()]
    where = f"{type(e).__name__} <- " if root is not e else ""
    return f"{where}{type(root).__name__}: {lines[0][:200] if lines else ''}"


def compiled_model(model: torch.nn.Module, enabled: bool, **kw):
    """`CompiledForward(model)` when enabled, else the model itself."""
    return CompiledForward(model, **kw) if enabled else model
