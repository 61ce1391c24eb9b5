"""Gates on what users feed in (class order, which ImageNet, teacher floor) and RDED's released teacher files."""
import argparse
import hashlib
import json
import os
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from ddbench import runner
from ddbench.records import cellhash
from ddbench.teachers import classifier as teacher_mod
from ddbench.cli.options import options_of
from ddbench.data import get_dataset
from ddbench.data import gates, spec as spec_mod
from ddbench.data.spec import DatasetSpec, Split, class_order_sha256, imagenet_index, read_class_list
from ddbench.distilled import DistilledSet
from ddbench.errors import ConfigError, DataError
from ddbench.nets.build import build_net
from ddbench.protocol import EvalResult, load_protocol
from ddbench.protocols import soft

from fakes import make_imagenet_tree

LISTS = ("idc", "imagenet100", "imagenet1k", "nette", "woof")


def imagenet_like(name: str, channels=3, side=32) -> DatasetSpec:
    wnids = read_class_list(name)
    return DatasetSpec(name=name, classes=wnids, resolution=side, channels=channels, mean=(0.5,) * channels,
                       std=(0.25,) * channels, kind="imagenet", root=None, imagenet_index=imagenet_index(wnids),
                       test_resolution=side)


# ---------------------------------------------------------------------------------------------------------
# Class order
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LISTS)
def test_class_lists_match_their_checked_in_hashes(name):
    path = spec_mod.CLASS_LIST_DIR / f"{name}.txt"
    digest = class_order_sha256(read_class_list(name))
    assert digest == spec_mod.checked_in_sha256()[f"{name}.txt"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_edited_class_list_is_refused(tmp_path, monkeypatch):
    woof = list(read_class_list("woof"))
    (tmp_path / "woof.txt").write_text("".join(f"{w}\n" for w in sorted(woof)))  # the fastai (sorted) order
    (tmp_path / "SHA256SUMS").write_text((spec_mod.CLASS_LIST_DIR / "SHA256SUMS").read_text())
    monkeypatch.setattr(spec_mod, "CLASS_LIST_DIR", tmp_path)
    spec_mod.read_class_list.cache_clear()
    spec_mod.checked_in_sha256.cache_clear()
    try:
        with pytest.raises(DataError, match="SHA256SUMS says ce2540cde890"):
            read_class_list("woof")
    finally:
        spec_mod.read_class_list.cache_clear()
        spec_mod.checked_in_sha256.cache_clear()


def test_another_order_is_refused_naming_both():
    woof = imagenet_like("woof")
    swapped = sorted(woof.classes)
    with pytest.raises(DataError) as e:
        gates.check_class_order(swapped, woof, "distilled set x")
    text = str(e.value)
    assert class_order_sha256(swapped)[:12] in text and class_order_sha256(woof.classes)[:12] in text
    assert "first differ at label 0 (n02086240 vs n02096294)" in text
    with pytest.raises(DataError, match="missing n01440764"):
        gates.check_class_order(read_class_list("nette")[1:] + ("n99999999",), imagenet_like("nette"), "teacher y")
    gates.check_class_order(list(woof.classes), woof, "same order")  # passes


def test_evaluate_refuses_a_saved_set_in_another_order(tmp_path):
    spec = get_dataset("digits")
    flipped = tuple(reversed(spec.classes))
    images = torch.zeros(10, spec.channels, spec.resolution, spec.resolution, dtype=torch.uint8)
    DistilledSet(images, torch.arange(10), flipped, {"method": "x"}).save(tmp_path / "set")
    with pytest.raises(DataError, match="in another order") as e:
        runner.evaluate_folder(tmp_path / "set", "digits", None, "dc", None, [0], {}, tmp_path / "out", "cpu", {})
    assert class_order_sha256(flipped)[:12] in str(e.value) and class_order_sha256(spec.classes)[:12] in str(e.value)


def test_teacher_file_naming_another_order_is_refused(tmp_path):
    spec = DatasetSpec(name="tiny", classes=("a", "b", "c"), resolution=8, channels=1, mean=(0.5,), std=(0.25,),
                       kind="embedded", root=None, imagenet_index=None, test_resolution=8)
    state = build_net("convnet3_bn", 3, 1, 8).state_dict()
    torch.save({"state_dict": state, "classes": ["b", "a", "c"]}, tmp_path / "in.pth")
    with pytest.raises(DataError, match="teacher .*in.pth lists the classes of tiny in another order"):
        teacher_mod.load_teacher(tmp_path / "in.pth", "convnet3_bn", spec)
    torch.save(state, tmp_path / "side.pth")
    (tmp_path / "side.pth.json").write_text(json.dumps({"classes": ["c", "b", "a"]}))
    with pytest.raises(DataError, match="first differ at label 0 \\(c vs a\\)"):
        teacher_mod.load_teacher(tmp_path / "side.pth", "convnet3_bn", spec)
    (tmp_path / "side.pth.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    assert teacher_mod.load_teacher(tmp_path / "side.pth", "convnet3_bn", spec).classifier.out_features == 3


# ---------------------------------------------------------------------------------------------------------
# Which ImageNet
# ---------------------------------------------------------------------------------------------------------


def test_fastai_download_is_named_and_refused_unless_allowed(tmp_path, monkeypatch):
    root = make_imagenet_tree(tmp_path / "imagewoof2-160", read_class_list("woof"), n_train=3, n_val=2)
    (root / "noisy_imagewoof.csv").write_text("path,noisy_labels_0\n")
    monkeypatch.delenv(gates.ALLOW_ENV, raising=False)
    with pytest.raises(DataError, match="fastai imagewoof2 download .*val 2-2 images per class.*"
                                        "--allow-nonstandard-subset"):
        get_dataset("woof", imagenet_root=str(root))
    options_of(argparse.Namespace(allow_nonstandard_subset=True))  # --allow-nonstandard-subset
    assert os.environ[gates.ALLOW_ENV] == "1"
    spec = get_dataset("woof", imagenet_root=str(root))
    assert spec.nonstandard.startswith("the fastai imagewoof2 download")


def test_ilsvrc_counts_pass_without_the_flag(tmp_path, monkeypatch):
    root = tmp_path / "ilsvrc"
    for k, wnid in enumerate(read_class_list("nette")):  # empty files: counting lists, never decodes
        for split, n in (("train", 1300 - 50 * (k == 3)), ("val", 50)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.JPEG").touch()
    monkeypatch.delenv(gates.ALLOW_ENV, raising=False)
    assert get_dataset("nette", imagenet_root=str(root)).nonstandard is None
    (root / "val" / read_class_list("nette")[0] / "extra.JPEG").touch()  # 51 val images: not ILSVRC-2012
    gates.class_counts.cache_clear()
    with pytest.raises(DataError, match="not ILSVRC-2012 counts: train 1250-1300 and val 50-51"):
        get_dataset("nette", imagenet_root=str(root))


class _FixedProtocol:
    card = {"version": 1}

    def evaluate(self, dset, spec, test, arch, seed, device):
        return EvalResult.from_curve([(1, 50.0)], 0.0, 0.0, {"plan": {}})

    def evaluate_many(self, dset, spec, test, arch, seeds, device, progress=None):
        return [self.evaluate(dset, spec, test, arch, seed, device) for seed in seeds]


def test_every_record_says_the_subset_is_nonstandard(tmp_path):
    spec = DatasetSpec(name="nette", classes=("a", "b"), resolution=8, channels=1, mean=(0.5,), std=(0.25,),
                       kind="imagenet", root=None, imagenet_index=None, test_resolution=8,
                       nonstandard="the fastai imagenette2 download")
    dset = DistilledSet(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.arange(2), spec.classes, {})
    keys = [dict(method="m", dataset="nette", ipc=1, seed=0, protocol="p", arch="a", eval_seed=e,
                 config_hash="0123456789abcdef") for e in (0, 1)]
    phases = {"timings": {}, "peak_mem": {}}
    with runner.ResultStore(tmp_path / "r.db") as store:
        records = runner.evaluate_cells(dset, spec, _FixedProtocol(), keys, store, None, torch.device("cpu"),
                                        {"method_version": 1, "method_config": {}}, phases, lambda *_: None)
        stored = store.query(method="m")
    assert len(stored) == 2
    assert all(r["extra"]["nonstandard_subset"] == "the fastai imagenette2 download" for r in records + stored)
    # other data, another cell: the reason is part of the dataset identity the config hash covers
    assert cellhash.dataset_identity(spec)["nonstandard"] == "the fastai imagenette2 download"
    assert "nonstandard" not in cellhash.dataset_identity(replace(spec, nonstandard=None))


# ---------------------------------------------------------------------------------------------------------
# Teacher floor on the real validation split, and the record's teacher
# ---------------------------------------------------------------------------------------------------------

TEN = DatasetSpec(name="ten", classes=tuple("abcdefghij"), resolution=8, channels=1, mean=(0.5,), std=(0.25,),
                  kind="embedded", root=None, imagenet_index=None, test_resolution=8)


def ten_class_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 10
    return images, labels


def test_a_teacher_below_the_floor_is_refused_before_any_student(tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"
    torch.save(build_net("convnet3_bn", 10, 1, 8, generator=torch.Generator().manual_seed(0)).state_dict(), path)
    images, labels = ten_class_data()
    test = Split(images, labels, [f"test/{i}" for i in range(len(labels))])
    dset = DistilledSet(images[:10], labels[:10], TEN.classes, {})

    def no_student(*a, **k):
        raise AssertionError("a student was trained with a refused teacher")

    p = load_protocol("rded", {"epochs": 1, "teacher": {"path": str(path)}})
    p.options["cache_dir"] = str(tmp_path)
    monkeypatch.setattr(soft, "train_soft", no_student)
    monkeypatch.setattr(soft, "build_store", no_student)
    with pytest.raises(DataError, match=r"teacher \(user:.*weights.pth\) reaches .*below the floor 30.00% \(3.0x"):
        p.evaluate(dset, TEN, test, None, 0, "cpu")

    monkeypatch.undo()
    p = load_protocol("rded", {"epochs": 1, "teacher": {"path": str(path), "min_acc_x_chance": 0}})
    p.options["cache_dir"] = str(tmp_path)
    result = p.evaluate(dset, TEN, test, None, 0, "cpu")
    teacher = result.extra["teacher"]
    assert set(teacher) == {"arch", "source", "val_acc", "sha256"}
    assert teacher["arch"] == "convnet3_bn" and teacher["source"] == f"user:{path.resolve()}"
    assert teacher["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    net = teacher_mod.load_teacher(path, "convnet3_bn", TEN)
    with torch.no_grad():
        own = (net(soft.normalize(images.float() / 255, TEN.mean, TEN.std)).argmax(1) == labels).float().mean() * 100
    assert teacher["val_acc"] == pytest.approx(float(own))


def test_the_floor_is_a_card_value():
    assert load_protocol("rded").card["teacher"]["min_acc_x_chance"] == 3.0
    assert load_protocol("fkd").card["teacher"]["min_acc_x_chance"] == 3.0


# ---------------------------------------------------------------------------------------------------------
# RDED's released teachers: {subset}_{model}.pth = {"model": state dict}, head rows in ImageNet-index order
# ---------------------------------------------------------------------------------------------------------


class RdedConvNet(nn.Module):
    """The module layout of RDED's synthesize/models.py ConvNet (BatchNorm, ReLU, avg-pool), so its keys."""

    def __init__(self, num_classes, depth, im_size, width=128):
        super().__init__()
        layers = {"conv": [], "norm": [], "act": [], "pool": []}
        c, side = 3, im_size
        for _ in range(depth):
            layers["conv"].append(nn.Conv2d(c, width, kernel_size=3, padding=1))
            layers["norm"].append(nn.BatchNorm2d(width, affine=True))
            layers["act"].append(nn.ReLU())
            layers["pool"].append(nn.AvgPool2d(kernel_size=2, stride=2))
            c, side = width, side // 2
        self.depth = depth
        self.layers = nn.ModuleDict({k: nn.ModuleList(v) for k, v in layers.items()})
        self.classifier = nn.Linear(width * side * side, num_classes)

    def forward(self, x):
        for d in range(self.depth):
            x = self.layers["pool"][d](self.layers["act"][d](self.layers["norm"][d](self.layers["conv"][d](x))))
        return self.classifier(x.view(x.shape[0], -1))


def randomise_bn(net: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics, so a wrong BatchNorm key would change the output."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def test_rded_conv5_teacher_loads_at_128px_in_ddbench_order(tmp_path):
    torch.manual_seed(0)
    ref = randomise_bn(RdedConvNet(10, depth=5, im_size=128), 1)
    path = tmp_path / "imagenet-woof_conv5.pth"
    torch.save({"model": ref.state_dict()}, path)
    woof = imagenet_like("woof")
    net = teacher_mod.load_teacher(path, None, woof)
    x = torch.randn(2, 3, 128, 128)
    rows = [5, 4, 8, 2, 0, 3, 1, 9, 6, 7]  # rank of each woof label's ImageNet index (193, 182, 258, 162, ...)
    assert soft_rows(woof) == rows
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x)[:, rows], atol=1e-5)
    info = teacher_mod.teacher_identity(woof, None, None, path, tmp_path)
    assert info == {"arch": "convnet5_bn", "source": "rded-released:imagenet-woof_conv5.pth",
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "input_size": 128}
    assert load_protocol("rded").plan(100, woof, info["input_size"])["aug"]["size"] == 128


def soft_rows(spec):
    from ddbench.teachers.rded import row_order

    return row_order(spec.imagenet_index)


def test_rded_resnet18_teacher_and_refusals(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = randomise_bn(torchvision.models.resnet18(num_classes=10), 2)
    nette = imagenet_like("nette")
    path = tmp_path / "imagenet-nette_resnet18.pth"
    torch.save({"model": ref.state_dict()}, path)
    net = teacher_mod.load_teacher(path, None, nette)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), atol=1e-5)  # nette's list is in ImageNet-index order already
    assert teacher_mod.teacher_identity(nette, None, None, path, tmp_path)["arch"] == "resnet18_tv"
    with pytest.raises(ConfigError, match="imagenet-nette resnet18_tv teacher, but teacher.arch is 'convnet6'"):
        teacher_mod.load_teacher(path, "convnet6", nette)
    with pytest.raises(DataError, match="RDED's imagenet-nette teacher \\(nette in ddbench\\), not one for woof"):
        teacher_mod.load_teacher(path, None, imagenet_like("woof"))
    bare = tmp_path / "imagenet-woof_resnet18.pth"
    torch.save(ref.state_dict(), bare)
    with pytest.raises(DataError, match="no 'model' state dict"):
        teacher_mod.load_teacher(bare, None, imagenet_like("woof"))
    cifar = tmp_path / "cifar10_conv3.pth"
    torch.save({"model": {}}, cifar)
    with pytest.raises(DataError, match="not one of RDED's ImageNet-subset teachers"):
        teacher_mod.load_teacher(cifar, None, nette)


def test_rded_conv_side_follows_the_head(tmp_path):
    """RDED's README lists its ImageNet-10 Conv5 at 128 px, where load_model's rule says 224: the head decides."""
    torch.manual_seed(0)
    ref = randomise_bn(RdedConvNet(10, depth=5, im_size=128), 3)
    path = tmp_path / "imagenet-10_conv5.pth"
    torch.save({"model": ref.state_dict()}, path)
    idc = imagenet_like("idc")
    assert teacher_mod.teacher_input_size(idc, path=path) == 128
    net = teacher_mod.load_teacher(path, None, idc)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x)[:, soft_rows(idc)], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Precision: a visible card value, checked when the card is loaded
# ---------------------------------------------------------------------------------------------------------


def test_precision_is_a_card_value():
    from ddbench.methods.minimax import FINETUNE
    from ddbench.protocol import list_protocols

    assert {load_protocol(n).card["precision"] for n in list_protocols()} == {"bf16"}
    assert FINETUNE["precision"] == "bf16"
    assert load_protocol("idc", {"precision": "fp32"}).plan(10, 10)["epochs"] > 0  # idc: a hard-family plan
    assert soft.uses_bf16(load_protocol("rded", {"precision": "fp32"}).card) is False
    with pytest.raises(ConfigError, match="precision='fp16': expected one of bf16, fp32"):
        load_protocol("rded", {"precision": "fp16"})
