"""IDC's hard-label ResNets (protocol-facts §1.2, §1.3): `ResNet` and `ResNetAP` (all down-sampling by avg-pool).

Both come from snu-mllab/Efficient-Dataset-Condensation `models/resnet.py`, `models/resnet_ap.py` (copied
verbatim into Minimax / MGD3 `train_models/`). Module names match them (`layer0.conv1`, `layer1.0.bn2`,
`layer2.0.downsample.0`, `fc`), so their checkpoints load unchanged. Use them through `ddbench.nets.build.build_net`.

Size modes, from the input side: small (≤ 64), mid (≤ 128), large (> 128). Shapes at 224 ("large"):
    ResNetAP-10: stem 64×56×56 -> layer1 64×56×56 -> 128×28×28 -> 256×14×14 -> 512×7×7 -> pool -> 512
    ResNet-18:   stem 64×56×56 (7×7/2 conv + 3×3/2 max-pool) -> same stage shapes via stride-2 convs
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import ConfigError

RESNET_NORMS = ("instance", "batch", "none")
STAGES = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # BasicBlocks per stage


class ClassifierAlias:
    """Mixin: `net.classifier = head` goes through the class's `classifier` property (e.g. to `fc`).

    nn.Module.__setattr__ would otherwise register a new, unused `classifier` submodule next to `fc`.
    """

    def __setattr__(self, name, value):
        if name == "classifier":
            object.__setattr__(self, name, value)  # the property setter (AttributeError if there is none)
        else:
            super().__setattr__(name, value)


def size_mode(im_size: int) -> str:
    """IDC's stem choice from the input side (`net_size`)."""
    return "small" if im_size <= 64 else "mid" if im_size <= 128 else "large"


def norm2d(kind: str, c: int) -> nn.Module:
    if kind == "instance":
        return nn.GroupNorm(c, c)  # instance norm with affine, as in IDC
    if kind == "batch":
        return nn.BatchNorm2d(c)
    return nn.Identity()  # "none"


def conv(c_in: int, c_out: int, k: int, stride: int, norm: str) -> nn.Conv2d:
    # Convs carry a bias only without normalisation (IDC's ResNetAP rule; IDC's ResNet has no "none" norm).
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=norm == "none")


# ---------------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------------


class Stem(nn.Module):
    """`layer0`: conv → norm → ReLU → pool; the conv and pool depend on the size mode and the variant."""

    def __init__(self, channels: int, planes: int, mode: str, norm: str, avg_pool: bool):
        super().__init__()
        if mode == "large" and avg_pool:  # ResNetAP: 7×7 stride 1, then 4×4 avg-pool (224 -> 56)
            self.conv1, self.pool = conv(channels, planes, 7, 1, norm), nn.AvgPool2d(4, 4)
        elif mode == "large":  # ResNet: torchvision stem, 7×7 stride 2 then 3×3/2 max-pool (224 -> 56)
            self.conv1, self.pool = conv(channels, planes, 7, 2, norm), nn.MaxPool2d(3, 2, 1)
        elif mode == "mid":
            pool = nn.AvgPool2d(2, 2) if avg_pool else nn.MaxPool2d(3, 2, 1)
            self.conv1, self.pool = conv(channels, planes, 3, 1, norm), pool
        else:  # small: no down-sampling in the stem
            self.conv1, self.pool = conv(channels, planes, 3, 1, norm), nn.Identity()
        self.bn1 = norm2d(norm, planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu(self.bn1(self.conv1(x))))


class BasicBlock(nn.Module):
    """conv3×3 → norm → ReLU → conv3×3 → norm, + shortcut, ReLU.

    avg_pool=False (ResNet): the first conv has the stride; shortcut = 1×1 stride-s conv → norm.
    avg_pool=True (ResNetAP): convs are stride 1, a s×s avg-pool follows the first ReLU; shortcut =
    1×1 conv → s×s avg-pool → norm.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, avg_pool: bool):
        super().__init__()
        self.conv1 = conv(c_in, c_out, 3, 1 if avg_pool else stride, norm)
        self.bn1 = norm2d(norm, c_out)
        self.pool = nn.AvgPool2d(stride, stride) if avg_pool and stride != 1 else nn.Identity()
        self.conv2 = conv(c_out, c_out, 3, 1, norm)
        self.bn2 = norm2d(norm, c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            if avg_pool:
                parts = [conv(c_in, c_out, 1, 1, norm), nn.AvgPool2d(stride, stride), norm2d(norm, c_out)]
            else:
                parts = [conv(c_in, c_out, 1, stride, norm), norm2d(norm, c_out)]
            self.downsample = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


# ---------------------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------------------


class _IDCResNet(ClassifierAlias, nn.Module):
    """layer0 (stem) → 4 stages of BasicBlocks (64·w, 128·w, 256·w, 512·w) → global avg-pool → fc."""

    avg_pool: bool  # set by the subclass: down-sample by average pooling instead of strided convs

    def __init__(self, channels: int, num_classes: int, im_size: int, depth: int = 18, width: float = 1.0,
                 norm: str = "instance"):
        super().__init__()
        name = type(self).__name__
        if norm not in RESNET_NORMS:
            raise ConfigError(f"unknown {name} norm {norm!r}; expected one of {', '.join(RESNET_NORMS)}")
        if depth not in STAGES:
            raise ConfigError(
                f"{name} depth {depth} is not supported; expected one of {', '.join(map(str, STAGES))} "
                f"(the Bottleneck depths 50+ are not implemented)"
            )
        self.size_mode = size_mode(im_size)
        planes = int(64 * width)
        self.layer0 = Stem(channels, planes, self.size_mode, norm, self.avg_pool)
        c_in = planes
        for i, n_blocks in enumerate(STAGES[depth]):
            c_out, stride = planes * 2**i, 1 if i == 0 else 2
            blocks = [BasicBlock(c_in if b == 0 else c_out, c_out, stride if b == 0 else 1, norm, self.avg_pool)
                      for b in range(n_blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = c_out
        self.feature_dim = c_in
        self.fc = nn.Linear(c_in, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # IDC's init: conv ~ N(0, sqrt(2 / (k·k·out))), norm weight 1 / bias 0; Linear keeps PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def classifier(self) -> nn.Module:
        return self.fc

    @classifier.setter
    def classifier(self, head: nn.Module) -> None:
        self.fc = head

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The maps after layer0 .. layer4 (IDC's `get_feature` indices 0-4)."""
        maps = []
        for i in range(5):
            x = getattr(self, f"layer{i}")(x)
            maps.append(x)
        return maps

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×H×W -> N×512·w, global average of the last map."""
        # IDC pools with avg_pool2d(kernel = map width): the same mean for the square maps it is used with.
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.stages(x)[-1], 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class ResNet(_IDCResNet):
    """IDC's ResNet: torchvision-style blocks (stride-2 convs), norm selectable (instance by default)."""

    avg_pool = False


class ResNetAP(_IDCResNet):
    """IDC's ResNetAP: every down-sampling is an average pool; no strided convolution anywhere."""

    avg_pool = True

    def __init__(self, channels: int, num_classes: int, im_size: int, depth: int = 10, width: float = 1.0,
                 norm: str = "instance"):
        super().__init__(channels, num_classes, im_size, depth=depth, width=width, norm=norm)
