"""Evaluation networks: the DC/IDC ConvNet-D, IDC's ResNet and ResNetAP, torchvision ResNet-18 and any timm model.

Every network takes float N×C×H×W input (normalised images) and returns logits; `net.features(x)` gives the
penultimate features N×D (D = `net.feature_dim`) and `forward(x) == net.classifier(net.features(x))`.
Definitions follow protocol-facts §1 and dc-protocol.md; module names follow the reference code, so IDC /
Minimax checkpoints (ConvNet, ResNet, ResNetAP) and torchvision checkpoints (`resnet18_tv`) load with
`load_state_dict` unchanged. The IDC ResNets live in `resnet.py` beside it.

    net = build_net("convnet6", num_classes=10, channels=3, im_size=224)   # 754,570 parameters
    net = build_net("timm:resnet18", num_classes=100, channels=3, im_size=64)
"""
from __future__ import annotations

import difflib
import inspect
import numbers
from functools import partial
from typing import Any, Callable

import torch
import torch.nn as nn
import torchvision

from ..errors import ConfigError
from .resnet import ClassifierAlias, ResNet, ResNetAP
from ..registry import Registry, suggest

TIMM_PREFIX = "timm:"

# ---------------------------------------------------------------------------------------------------------
# ConvNet-D (DC / IDC / Minimax / MGD3 hard-label; RDED with BatchNorm)
# ---------------------------------------------------------------------------------------------------------

CONVNET_NORMS = ("instance", "batch", "layer", "group", "none")
CONVNET_ACTS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "leakyrelu": partial(nn.LeakyReLU, 0.01)}
CONVNET_POOLS = {"avg": partial(nn.AvgPool2d, 2, 2), "max": partial(nn.MaxPool2d, 2, 2), "none": nn.Identity}


def check_choice(what: str, value: Any, choices) -> None:
    """Raise a ConfigError when `value` is not one of `choices`."""
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; expected one of {', '.join(map(str, choices))}")


def convnet_norm(kind: str, c: int, side: int) -> nn.Module:
    """The normalisation after each ConvNet conv; `side` is the map side before pooling (LayerNorm needs it)."""
    if kind == "instance":
        return nn.GroupNorm(c, c, affine=True)  # "instance norm" with per-channel affine, as in DC/IDC
    if kind == "batch":
        return nn.BatchNorm2d(c, affine=True)
    if kind == "layer":
        return nn.LayerNorm([c, side, side], elementwise_affine=True)  # over (C, H, W)
    return nn.GroupNorm(4, c, affine=True)  # "group"


class ConvNet(nn.Module):
    """`depth` × [3×3 conv (bias) → norm → act → 2×2 pool], flatten, one Linear (no global pooling).

    The head size is fixed by `im_size`: a 224 input with depth 6 halves to 3×3, so D = 128·3·3 = 1152.
    A 28-px input gets padding 3 in the first conv, so the network sees 32×32 (DC reference): D = 2048 at depth 3.
    """

    def __init__(self, channels: int, num_classes: int, im_size: int, depth: int = 3, width: int = 128,
                 norm: str = "instance", act: str = "relu", pool: str = "avg"):
        super().__init__()
        check_choice("ConvNet norm", norm, CONVNET_NORMS)
        check_choice("ConvNet act", act, tuple(CONVNET_ACTS))
        check_choice("ConvNet pool", pool, tuple(CONVNET_POOLS))
        # Deviation: DC/IDC key the padding-3 first conv on channels == 1 and the 32-px head on im_size == 28;
        # both keyed on im_size == 28 here (identical for MNIST-like data, consistent shapes for 28-px RGB).
        first_pad, side = (3, 32) if im_size == 28 else (1, im_size)
        convs, norms = [], []
        for d in range(depth):
            convs.append(nn.Conv2d(channels if d == 0 else width, width, 3, padding=first_pad if d == 0 else 1))
            if norm != "none":
                norms.append(convnet_norm(norm, width, side))
            if pool != "none":
                side //= 2
        if side < 1:
            raise ConfigError(
                f"ConvNet-{depth} cannot take {im_size}-px input: {depth} 2×2 poolings shrink it to nothing; "
                f"use a larger im_size or a smaller depth"
            )
        # Same keys as IDC's ConvNet (`layers.conv.<d>`, `layers.norm.<d>`, `classifier`); act/pool hold no weights.
        self.layers = nn.ModuleDict({"conv": nn.ModuleList(convs), "norm": nn.ModuleList(norms)})
        self.act = CONVNET_ACTS[act]()
        self.pool = CONVNET_POOLS[pool]()
        self.feature_dim = width * side * side
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×H×W -> N×(width·h·w), the flattened last map."""
        for d, conv in enumerate(self.layers["conv"]):
            x = conv(x)
            if len(self.layers["norm"]):
                x = self.layers["norm"][d](x)
            x = self.pool(self.act(x))
        return torch.flatten(x, 1)  # not .view: channels_last maps are not viewable as N×D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ---------------------------------------------------------------------------------------------------------
# torchvision ResNet-18 (RDED / SRe2L / CUDD soft-label students)
# ---------------------------------------------------------------------------------------------------------


class TorchvisionResNet18(ClassifierAlias, torchvision.models.ResNet):
    """`torchvision.models.resnet18(weights=None)`: 7×7/2 stem + max-pool, BatchNorm, torchvision's own init.

    The stem is kept for every input size (RDED's ImageNet protocol; at 32 px the last map is 1×1). For
    channels != 3 only the stem conv's in-channels change. State-dict keys are torchvision's.
    """

    def __init__(self, channels: int, num_classes: int, im_size: int):
        super().__init__(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        if channels != 3:
            self.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
        self.feature_dim = self.fc.in_features  # 512

    @property
    def classifier(self) -> nn.Module:
        return self.fc

    @classifier.setter
    def classifier(self, head: nn.Module) -> None:
        self.fc = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×H×W -> N×512 (global average pool of layer4)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


# ---------------------------------------------------------------------------------------------------------
# timm models ("timm:<name>")
# ---------------------------------------------------------------------------------------------------------


def check_timm_name(name: str) -> None:
    """A ConfigError with suggestions unless timm knows the model `name` (the part after "timm:")."""
    import timm  # heavy import, only when a timm model is asked for

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise ConfigError(f"timm has no model {name!r}.{hint} See timm.list_models() for the known names.")


def _create_timm(timm, name: str, channels: int, num_classes: int, im_size: int, kw: dict) -> nn.Module:
    args = dict(pretrained=False, num_classes=num_classes, in_chans=channels, **kw)
    try:
        try:  # ViT-like models need the input size; CNNs refuse the keyword, and take any size
            return timm.create_model(name, **{"img_size": im_size, **args})
        except TypeError as e:
            if "img_size" not in str(e) or "img_size" in kw:
                raise
            return timm.create_model(name, **args)
    except TypeError as e:
        if not kw:
            raise
        raise ConfigError(f"timm model {name!r} refused the options {sorted(kw)}: {e}") from None


class TimmNet(ClassifierAlias, nn.Module):
    """Any timm model, randomly initialised; the timm model is `self.model` (state-dict keys gain "model.").

    `features` = timm's pre-logits (pooled, after any head norm); `forward` = timm's own forward, which equals
    `classifier(features(x))` except for head dropout in training mode.
    """

    def __init__(self, name: str, channels: int, num_classes: int, im_size: int, **kw):
        super().__init__()
        import timm  # heavy import, only when a timm model is asked for

        check_timm_name(name)
        self.model = _create_timm(timm, name, channels, num_classes, im_size, kw)
        self.feature_dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

    @property
    def classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.model.forward_head(self.model.forward_features(x), pre_logits=True), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ---------------------------------------------------------------------------------------------------------
# Registry and construction
# ---------------------------------------------------------------------------------------------------------

# Each entry is a factory called as factory(channels=, num_classes=, im_size=, **kw); kw overrides the preset.
ARCHS = Registry("arch")
for _depth in (3, 4, 5, 6):
    ARCHS.register(f"convnet{_depth}", partial(ConvNet, depth=_depth, norm="instance"))
    ARCHS.register(f"convnet{_depth}_bn", partial(ConvNet, depth=_depth, norm="batch"))
ARCHS.register("resnetap10", partial(ResNetAP, depth=10, norm="instance"))
ARCHS.register("resnetap10_bn", partial(ResNetAP, depth=10, norm="batch"))
ARCHS.register("resnet18", partial(ResNet, depth=18, norm="instance"))  # MGD3's hard-label ResNet-18
ARCHS.register("resnet18_bn", partial(ResNet, depth=18, norm="batch"))  # IDC's own ImageNet ResNet-18
ARCHS.register("resnet18_tv", TorchvisionResNet18)


def list_archs(include_timm: bool = False) -> list[str]:
    """Registered arch names; with include_timm, also every "timm:<name>" timm knows."""
    names = ARCHS.names()
    if include_timm:
        import timm

        names += [TIMM_PREFIX + n for n in timm.list_models()]
    return names


def _factory(arch: str) -> Callable[..., nn.Module]:
    if arch.startswith(TIMM_PREFIX):
        return partial(TimmNet, arch[len(TIMM_PREFIX):])
    try:
        return ARCHS.get(arch)
    except ConfigError as e:
        raise ConfigError(f"{e} Any timm model is available as '{TIMM_PREFIX}<name>'.") from None


def _check_kwargs(arch: str, factory: Callable, kw: dict) -> None:
    """Refuse keywords the network does not take (a typo must not silently fall back to a default)."""
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n in params if n not in ("channels", "num_classes", "im_size")]
    for k in kw:
        if k not in known:
            raise ConfigError(
                f"arch {arch!r} has no option {k!r}.{suggest(k, known)} It accepts: {', '.join(known) or 'none'}."
            )


def build_net(arch: str, num_classes: int, channels: int, im_size: int, *,
              generator: torch.Generator | None = None, **kw) -> nn.Module:
    """Build `arch` (on the default device, normally CPU) for `num_classes` classes and C×im_size×im_size input.

    kw override the preset of a registered arch (e.g. norm="batch", width=64) or go to timm.create_model.
    With `generator`, the initial weights are drawn from a seed taken from it (the global RNG is untouched),
    so the same generator state gives the same network (when built on CPU: only the CPU RNG is forked);
    without it, the global RNG is used as in PyTorch.
    """
    for what, v in (("num_classes", num_classes), ("channels", channels), ("im_size", im_size)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"build_net({arch!r}): {what} must be a positive int, got {v!r}")
    factory = _factory(arch)
    _check_kwargs(arch, factory, kw)
    if generator is None:
        return factory(channels=channels, num_classes=num_classes, im_size=im_size, **kw)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):  # CPU RNG only: networks are built on CPU
        torch.manual_seed(seed)
        return factory(channels=channels, num_classes=num_classes, im_size=im_size, **kw)
