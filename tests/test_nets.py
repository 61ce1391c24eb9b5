"""Evaluation networks: every registered arch runs, parameter counts equal protocol-facts §1, shapes per size mode."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from ddbench.errors import ConfigError
from ddbench.nets.build import ARCHS, build_net, list_archs


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def smoke_size(arch: str) -> int:
    """A small input the arch can take: ConvNet-6 halves 32 px to nothing, so it gets 64."""
    return 64 if arch.startswith("convnet6") else 32


def images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# Every registered arch
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch", ARCHS.names())
def test_forward_shapes_and_features(arch, channels):
    size = smoke_size(arch)
    net = build_net(arch, num_classes=5, channels=channels, im_size=size).eval()
    x = images(2, channels, size)
    with torch.no_grad():
        logits, feats = net(x), net.features(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    assert feats.shape == (2, net.feature_dim)
    torch.testing.assert_close(net.classifier(feats), logits)  # forward = classifier(features)


@pytest.mark.parametrize("arch", ARCHS.names())
def test_channels_last_and_bf16_autocast(arch):
    size = smoke_size(arch)
    net = build_net(arch, num_classes=4, channels=3, im_size=size, generator=torch.Generator().manual_seed(0))
    x = images(2, 3, size)
    with torch.no_grad():
        ref = net.eval()(x)
        net_cl = net.to(memory_format=torch.channels_last)
        out = net_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)  # same numbers in either memory layout
    net_cl.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net_cl(x.contiguous(memory_format=torch.channels_last)).float().logsumexp(1).mean()
    loss.backward()
    grads = [p.grad for p in net_cl.parameters()]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------------------------------------
# Parameter counts (protocol-facts §1)
# ---------------------------------------------------------------------------------------------------------

COUNTS = [
    ("convnet6", 224, 10, 754_570), ("convnet6", 224, 100, 858_340), ("convnet6", 224, 1000, 1_896_040),
    ("convnet6_bn", 224, 10, 754_570),
    ("convnet6_bn", 128, 10, 748_170), ("convnet6_bn", 128, 100, 794_340), ("convnet6_bn", 128, 1000, 1_256_040),
    ("convnet5_bn", 128, 10, 615_690), ("convnet5_bn", 128, 100, 800_100), ("convnet5_bn", 128, 1000, 2_644_200),
    ("resnetap10", 224, 10, 4_910_922), ("resnetap10", 224, 100, 4_957_092), ("resnetap10", 224, 1000, 5_418_792),
    ("resnet18", 224, 10, 11_181_642), ("resnet18", 224, 100, 11_227_812), ("resnet18", 224, 1000, 11_689_512),
    ("resnet18_bn", 224, 10, 11_181_642),
    ("resnet18_tv", 224, 10, 11_181_642), ("resnet18_tv", 224, 100, 11_227_812),
    ("resnet18_tv", 224, 1000, 11_689_512),
]


@pytest.mark.parametrize("arch,im_size,num_classes,expected", COUNTS)
def test_parameter_counts(arch, im_size, num_classes, expected):
    with torch.device("meta"):  # shapes only, no weight init
        net = build_net(arch, num_classes=num_classes, channels=3, im_size=im_size)
    assert n_params(net) == expected


def test_resnet18_tv_is_torchvision_resnet18():
    ours = build_net("resnet18_tv", num_classes=1000, channels=3, im_size=224)
    ref = torchvision.models.resnet18(weights=None)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict())
    x = images(1, 3, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x))
    gray = build_net("resnet18_tv", num_classes=10, channels=1, im_size=28)
    assert gray.conv1.weight.shape == (64, 1, 7, 7)


# ---------------------------------------------------------------------------------------------------------
# ConvNet details
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,channels,im_size,dim", [
    ("convnet3", 1, 28, 2048),  # DC: padding 3 makes 28 px into 32 -> 4×4×128
    ("convnet3", 3, 32, 2048),
    ("convnet4", 3, 64, 2048),
    ("convnet6", 3, 224, 1152),  # 224 -> 3×3 after six floor-halvings
    ("convnet5_bn", 3, 128, 2048),
    ("convnet6_bn", 3, 128, 512),
])
def test_convnet_feature_dims(arch, channels, im_size, dim):
    net = build_net(arch, num_classes=10, channels=channels, im_size=im_size)
    assert net.feature_dim == dim and net.classifier.in_features == dim
    if im_size <= 64:
        with torch.no_grad():
            assert net.features(images(2, channels, im_size)).shape == (2, dim)


def test_convnet_28px_pads_first_conv_only():
    net = build_net("convnet3", num_classes=10, channels=1, im_size=28)
    assert [c.padding for c in net.layers["conv"]] == [(3, 3), (1, 1), (1, 1)]


@pytest.mark.parametrize("norm,layer", [("instance", nn.GroupNorm), ("batch", nn.BatchNorm2d),
                                        ("layer", nn.LayerNorm), ("group", nn.GroupNorm), ("none", None)])
def test_convnet_norms(norm, layer):
    net = build_net("convnet3", num_classes=3, channels=3, im_size=32, norm=norm)
    norms = list(net.layers["norm"])
    if layer is None:
        assert norms == []
    else:
        assert len(norms) == 3 and all(type(m) is layer for m in norms)
    if norm == "instance":
        assert norms[0].num_groups == 128  # GroupNorm(C, C): instance norm with affine
    assert net(images(2, 3, 32)).shape == (2, 3)


# ---------------------------------------------------------------------------------------------------------
# IDC ResNets: size modes and stage shapes
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,im_size,mode,stem", [
    ("resnetap10", 224, "large", (64, 56, 56)),
    ("resnetap10", 128, "mid", (64, 64, 64)),
    ("resnetap10", 64, "small", (64, 64, 64)),
    ("resnet18", 224, "large", (64, 56, 56)),
    ("resnet18", 128, "mid", (64, 64, 64)),
    ("resnet18", 32, "small", (64, 32, 32)),
])
def test_resnet_stage_shapes(arch, im_size, mode, stem):
    net = build_net(arch, num_classes=10, channels=3, im_size=im_size).eval()
    assert net.size_mode == mode
    with torch.no_grad():
        maps = net.stages(images(1, 3, im_size))
    c, h, _ = stem
    expected = [stem] + [(c * 2**i, h // 2**i, h // 2**i) for i in range(4)]
    assert [tuple(m.shape[1:]) for m in maps] == expected
    assert net.feature_dim == 512


def test_resnetap_downsamples_by_average_pooling_only():
    net = build_net("resnetap10", num_classes=10, channels=3, im_size=224)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.stride == (1, 1) for m in convs)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert isinstance(net.layer0.pool, nn.AvgPool2d) and net.layer0.pool.kernel_size == 4


def test_resnet_custom_init():
    net = build_net("resnet18_bn", num_classes=10, channels=3, im_size=224, generator=torch.Generator().manual_seed(0))
    w = net.layer4[0].conv1.weight  # 512 out, 3×3: std sqrt(2 / (9·512))
    assert abs(w.std().item() - (2 / (9 * 512)) ** 0.5) < 0.002 and abs(w.mean().item()) < 0.002
    assert torch.all(net.layer1[0].bn1.weight == 1) and torch.all(net.layer1[0].bn1.bias == 0)


def test_classifier_assignment_replaces_fc():
    net = build_net("resnet18", num_classes=10, channels=3, im_size=32)
    net.classifier = nn.Linear(512, 3)
    assert net.fc is net.classifier and "classifier.weight" not in net.state_dict()
    assert net(images(2, 3, 32)).shape == (2, 3)


# ---------------------------------------------------------------------------------------------------------
# timm, seeds, errors
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_timm_models(name):
    net = build_net(f"timm:{name}", num_classes=7, channels=1, im_size=32).eval()
    x = images(2, 1, 32)
    with torch.no_grad():
        logits, feats = net(x), net.features(x)
    assert logits.shape == (2, 7) and feats.shape == (2, net.feature_dim)
    torch.testing.assert_close(net.classifier(feats), logits)


def test_generator_makes_init_reproducible():
    state = torch.random.get_rng_state()
    a = build_net("convnet3", 10, 3, 32, generator=torch.Generator().manual_seed(1)).state_dict()
    b = build_net("convnet3", 10, 3, 32, generator=torch.Generator().manual_seed(1)).state_dict()
    c = build_net("convnet3", 10, 3, 32, generator=torch.Generator().manual_seed(2)).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.conv.0.weight"], c["layers.conv.0.weight"])


@pytest.mark.parametrize("call,match", [
    (lambda: build_net("convnet7", 10, 3, 32), "Did you mean convnet6"),
    (lambda: build_net("timm:resnet19", 10, 3, 32), "Did you mean timm:resnet18"),
    (lambda: build_net("convnet3", 10, 3, 32, nrom="batch"), "Did you mean norm"),
    (lambda: build_net("convnet3", 10, 3, 32, norm="batchnorm"), "expected one of"),
    (lambda: build_net("resnet18", 10, 3, 32, norm="layer"), "expected one of"),
    (lambda: build_net("resnet18", 10, 3, 32, depth=50), "not supported"),
    (lambda: build_net("convnet6", 10, 3, 32), "shrink it to nothing"),
    (lambda: build_net("convnet3", 0, 3, 32), "num_classes must be a positive int"),
    (lambda: build_net("timm:test_resnet", 10, 3, 32, bogus_option=1), "refused the options"),
])
def test_errors_are_config_errors(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_list_archs():
    names = list_archs()
    assert {"convnet3", "convnet6_bn", "resnetap10", "resnet18", "resnet18_bn", "resnet18_tv"} <= set(names)
    assert "timm:resnet18" in list_archs(include_timm=True)
