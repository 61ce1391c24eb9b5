"""The BatchNorm-statistics loss of DeepInversion / SRe2L / CUDD (CUDD eq. 4).

For every `BatchNorm2d` of a (frozen, eval-mode) teacher, a forward hook computes the statistics of the
layer's *input* over (N, H, W) and compares them with the layer's running statistics:

    L_bn = Σ_l w_l · ( ‖μ_l(x) − μ_l^run‖₂ + ‖σ²_l(x) − σ²_l^run‖₂ ),   σ² biased (divide by N·H·W)

with w_0 = `first_multiplier` (SRe2L/CUDD `--first-bn-multiplier 10`) and w_l = 1 for l > 0
(`MIV-XJTU/CUDD@0bf778c:distill/utils.py:BNFeatureHook`, protocol-facts §4.5).

    with BNStatsLoss(teacher, first_multiplier=10.0) as bn:
        logits = teacher(x)          # hooks record one term per BN layer
        loss = ce + r_bn * bn.loss()
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError


def bn_stat_distance(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """‖μ(x) − μ_run‖₂ + ‖σ²(x) − σ²_run‖₂ for a BN input x: N×C×H×W (biased variance over N, H, W)."""
    mean = x.mean(dim=(0, 2, 3))  # C
    var = x.var(dim=(0, 2, 3), unbiased=False)  # C
    return torch.norm(bn.running_var - var, 2) + torch.norm(bn.running_mean - mean, 2)


class BNStatsLoss:
    """Forward hooks on every BatchNorm2d of `model`; `loss()` sums the terms of the most recent forward."""

    def __init__(self, model: nn.Module, first_multiplier: float = 1.0):
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not self.layers:
            raise ConfigError(
                f"{type(model).__name__} has no BatchNorm2d layer, so the BN-statistics loss is undefined; "
                "use a BatchNorm teacher (e.g. teacher_arch=convnet3_bn for 28–32 px data, resnet18_tv for ImageNet)"
            )
        self.weights = [float(first_multiplier)] + [1.0] * (len(self.layers) - 1)
        self.terms: list[torch.Tensor | None] = [None] * len(self.layers)
        self.handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]

    def _hook(self, i: int):
        def hook(module, inputs, output):
            self.terms[i] = bn_stat_distance(inputs[0], module)

        return hook

    def loss(self) -> torch.Tensor:
        """Σ_l w_l · term_l of the last forward pass (scalar, differentiable w.r.t. that pass's input)."""
        if any(t is None for t in self.terms):
            raise RuntimeError("BNStatsLoss.loss() called before a forward pass through every BN layer")
        return sum(w * t for w, t in zip(self.weights, self.terms))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> "BNStatsLoss":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
