"""SRe2L / CUDD and the teachers: BN loss, curriculum schedule, initialisation rules, recover terms, distill."""
import math

import pytest
import torch
import torch.nn as nn

from ddbench.engine.bnloss import BNStatsLoss, bn_stat_distance
from ddbench.data.spec import DatasetSpec, Split
from ddbench.errors import ConfigError, DataError
from ddbench.method import Context, load_method
from ddbench.methods import cudd as cudd_mod
from ddbench.methods import sre2l as sre2l_mod
from ddbench.methods.cudd import curriculum_ends, num_curricula, select_initial
from ddbench.nets.build import build_net
from ddbench.teachers import classifier as teacher_mod

SIDE = 8


def tiny_spec(kind="embedded", imagenet_index=None, classes=3):
    return DatasetSpec(name="tiny", classes=tuple(f"c{i}" for i in range(classes)), resolution=SIDE, channels=1,
                       mean=(0.5,), std=(0.25,), kind=kind, root=None, imagenet_index=imagenet_index,
                       test_resolution=SIDE)


def tiny_split(n_per_class=24, classes=3, seed=0) -> Split:
    """Class c = a bright horizontal band (rows 3c, 3c+1) on dim noise: flip-invariant, learnt in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.rand(len(labels), 1, SIDE, SIDE, generator=g) * 60
    for i, c in enumerate(labels.tolist()):
        x[i, :, 3 * c:3 * c + 2, :] += 180
    return Split(x.round().clamp(0, 255).to(torch.uint8), labels, [f"train/{i}" for i in range(len(labels))])


def tiny_net(seed=0, width=8, classes=3):
    return build_net("convnet3_bn", classes, 1, SIDE, width=width, generator=torch.Generator().manual_seed(seed))


def fit(net, split, spec, steps=60, seed=0):
    """A few full-batch Adam steps: a BN net that classifies the tiny data."""
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    x = sre2l_mod.normalise(split.images, spec)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), split.labels).backward()
        opt.step()
    return sre2l_mod.freeze(net)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is faster, and immune to a busy machine's oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained():
    spec, split = tiny_spec(), tiny_split()
    return spec, split, fit(tiny_net(0), split, spec), fit(tiny_net(1), split, spec, steps=15)


# ---------------------------------------------------------------------------------------------------------
# BN-statistics loss
# ---------------------------------------------------------------------------------------------------------


def test_bn_distance_formula():
    bn = nn.BatchNorm2d(4).eval()
    bn.running_mean.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    bn.running_var.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.randn(5, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    mean, var = x.mean((0, 2, 3)), x.permute(1, 0, 2, 3).reshape(4, -1).var(1, unbiased=False)
    want = (var - bn.running_var).norm() + (mean - bn.running_mean).norm()
    assert torch.allclose(bn_stat_distance(x, bn), want)


def test_bn_loss_is_zero_when_batch_stats_equal_running_stats():
    net = tiny_net(0).eval()
    x = torch.randn(16, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1)) * 2 + 1
    layers = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for layer in layers:  # in order: a layer's input depends on the earlier layers' statistics
        seen = {}
        h = layer.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach()))
        net(x)
        h.remove()
        layer.running_mean.copy_(seen["x"].mean((0, 2, 3)))
        layer.running_var.copy_(seen["x"].var((0, 2, 3), unbiased=False))
    with BNStatsLoss(net, first_multiplier=10.0) as bn:
        net(x)
        assert bn.loss().item() < 1e-4
        net(x * 3 + 2)  # other statistics: a clearly positive loss
        assert bn.loss().item() > 1.0
    assert all(not layer._forward_hooks for layer in layers)  # hooks removed on exit


def test_bn_loss_first_layer_multiplier():
    net = tiny_net(0).eval()
    x = torch.randn(8, 1, SIDE, SIDE)
    with BNStatsLoss(net, 1.0) as plain, BNStatsLoss(net, 10.0) as scaled:
        net(x)
        first = plain.terms[0]
        assert torch.allclose(scaled.loss() - plain.loss(), 9 * first)


def test_bn_loss_needs_batchnorm():
    with pytest.raises(ConfigError, match="BatchNorm"):
        BNStatsLoss(build_net("convnet3", 3, 1, SIDE, width=8))


# ---------------------------------------------------------------------------------------------------------
# Curriculum schedule
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ipc,j,ends", [(1, 1, [1]), (5, 1, [5]), (10, 2, [5, 10]), (20, 3, [5, 10, 20]),
                                        (50, 4, [5, 10, 20, 50]), (100, 5, [5, 10, 20, 40, 100])])
def test_curriculum_schedule(ipc, j, ends):
    assert num_curricula(ipc) == j == max(0, math.floor(math.log2(ipc / 5))) + 1
    assert curriculum_ends(ipc) == ends
    sizes = [b - a for a, b in zip([0] + ends, ends)]
    assert sum(sizes) == ipc and all(s > 0 for s in sizes)


def test_curriculum_j_matches_formula_everywhere():
    for ipc in range(1, 700):
        assert num_curricula(ipc) == max(0, math.floor(math.log2(ipc / 5))) + 1
        assert len(curriculum_ends(ipc)) == num_curricula(ipc)


def test_explicit_curricula():
    assert curriculum_ends(50, [20, 50]) == [20, 50]
    for bad in ([20, 40], [30, 20, 50]):
        with pytest.raises(ConfigError, match="curricula"):
            curriculum_ends(50, bad)


# ---------------------------------------------------------------------------------------------------------
# Initialisation rules
# ---------------------------------------------------------------------------------------------------------


def lookup(pred):
    return lambda idx: pred[idx]


def test_init_prefers_teacher_right_student_wrong():
    labels = torch.arange(2).repeat_interleave(10)  # class 0: 0..9, class 1: 10..19
    teacher = labels.clone()
    teacher[[0, 1, 10]] = 1 - labels[[0, 1, 10]]  # teacher wrong on 0, 1, 10
    student = labels.clone()
    student[[0, 2, 3, 4, 10, 11, 12]] = 1 - labels[[0, 2, 3, 4, 10, 11, 12]]  # student wrong on these
    used = torch.zeros(20, dtype=torch.bool)
    used[3] = True
    idx, tiers = select_initial(labels, 2, 2, used, lookup(teacher), lookup(student), torch.Generator().manual_seed(0))
    assert idx.shape == (2, 2)
    assert set(idx[0].tolist()) == {2, 4}  # teacher ✓, student ✗, unused (3 is used; 0 teacher ✗)
    assert set(idx[1].tolist()) == {11, 12}
    assert tiers == {"medium": 4}


def test_init_fallback_order_and_no_reuse():
    labels = torch.zeros(8, dtype=torch.long)
    teacher = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0])  # wrong on 3, 4, 5
    student = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0])  # wrong on 0 and 3
    # medium = {0}; hard = {3} (both wrong); other = anything else unused
    used = torch.zeros(8, dtype=torch.bool)
    idx, tiers = select_initial(labels, 1, 3, used, lookup(teacher), lookup(student), torch.Generator().manual_seed(1))
    chosen = idx[0].tolist()
    assert chosen[:2] == [0, 3] and tiers == {"medium": 1, "hard": 1, "other": 1}
    used[idx.flatten()] = True
    idx2, tiers2 = select_initial(labels, 1, 3, used, lookup(teacher), lookup(student), torch.Generator().manual_seed(1))
    assert not set(idx2[0].tolist()) & set(chosen)  # never reused across curricula
    assert tiers2 == {"medium": 0, "hard": 0, "other": 3}


def test_first_curriculum_takes_teacher_correct_images():
    labels = torch.arange(3).repeat_interleave(6)
    teacher = labels.clone()
    teacher[::2] = (labels[::2] + 1) % 3  # wrong on every other image
    used = torch.zeros(len(labels), dtype=torch.bool)
    idx, tiers = select_initial(labels, 3, 3, used, lookup(teacher), None, torch.Generator().manual_seed(0))
    assert (teacher[idx] == labels[idx]).all() and tiers == {"simple": 9}
    assert (labels[idx] == torch.arange(3)[:, None]).all()
    with pytest.raises(ConfigError, match="unused training images"):
        select_initial(labels, 3, 7, used, lookup(teacher), None, torch.Generator())


# ---------------------------------------------------------------------------------------------------------
# Recover terms
# ---------------------------------------------------------------------------------------------------------

CFG = {"iterations": 25, "lr": 0.1, "betas": [0.5, 0.9], "weight_decay": 0.0, "r_bn": 0.01,
       "first_bn_multiplier": 10.0, "jitter": 1, "min_crop": 0.5, "alpha_reg": 1.0}


def run_recover(trained, alpha_adv, targets=None):
    spec, split, teacher, student = trained
    x0 = sre2l_mod.normalise(split.images[::8], spec)
    y = split.labels[::8] if targets is None else targets
    out = sre2l_mod.recover(teacher, x0, y, {**CFG, "alpha_adv": alpha_adv}, spec, torch.Generator().manual_seed(0),
                            originals=x0, student=student)
    with torch.no_grad():
        p_true = student(out).softmax(1).gather(1, y[:, None]).mean().item()
    return out, p_true


def test_adversarial_term_lowers_student_confidence(trained):
    _, p_plain = run_recover(trained, 0.0)
    _, p_adv = run_recover(trained, 5.0)
    assert p_adv < p_plain - 0.05


def test_adversarial_term_ignored_where_teacher_is_wrong(trained):
    spec, split, teacher, student = trained
    x0 = sre2l_mod.normalise(split.images[::8], spec)
    y = (split.labels[::8] + 1) % 3  # labels the teacher gets wrong
    with torch.no_grad():
        assert (teacher(x0).argmax(1) != y).all()
    cfg = {**CFG, "iterations": 1, "min_crop": 1.0, "jitter": 0}  # full view: flips keep the bands in place
    one = [sre2l_mod.recover(teacher, x0, y, {**cfg, "alpha_adv": a}, spec,
                             torch.Generator().manual_seed(0), originals=x0, student=student) for a in (0.0, 5.0)]
    assert torch.equal(one[0], one[1])  # the step where the teacher is wrong everywhere ignores the student


def test_recover_keeps_pixels_in_range_and_is_seeded(trained):
    spec, split, teacher, _ = trained
    x0 = torch.randn(6, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(3)) * 3
    y = torch.arange(3).repeat(2)
    runs = [sre2l_mod.recover(teacher, x0, y, {**CFG, "iterations": 5}, spec, torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    lo, hi = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    assert runs[0].min() >= lo - 1e-6 and runs[0].max() <= hi + 1e-6


def test_class_batches_hold_one_image_per_class():
    k, n_ipc = 7, 3
    batches = sre2l_mod.class_batches(n_ipc, k, 4)
    labels = torch.arange(k).repeat(n_ipc)  # the (IPC index, class) order both methods use
    covered = torch.cat([torch.arange(len(labels))[sl] for sl in batches])
    assert sorted(covered.tolist()) == list(range(n_ipc * k))  # every image exactly once
    assert all(len(set(labels[sl].tolist())) == len(labels[sl]) <= 4 for sl in batches)


# ---------------------------------------------------------------------------------------------------------
# Whole distill on CPU (tiny teacher injected)
# ---------------------------------------------------------------------------------------------------------


def tiny_ctx(tmp_path, split, spec):
    return Context(spec, torch.device("cpu"), tmp_path, lambda: split)


@pytest.mark.parametrize("name", ["sre2l", "cudd"])
def test_distill_produces_ipc_images_per_class(tmp_path, monkeypatch, trained, name):
    spec, split, teacher, _ = trained
    monkeypatch.setattr(sre2l_mod.SRe2L, "teacher", lambda self, ctx: teacher)
    monkeypatch.setattr(cudd_mod, "_default_arch", lambda spec: "convnet3_bn")
    over = {"iterations": 3, "jitter": 1}
    if name == "cudd":
        over.update(student_epochs=2, student_batch=8, student_arch="convnet3_bn")
    method = load_method(name, "fashion", over)
    dset = method.distill(tiny_ctx(tmp_path, split, spec), 10, seed=0)
    assert dset.images.dtype == torch.uint8 and dset.images.shape == (30, 1, SIDE, SIDE)
    assert torch.bincount(dset.labels, minlength=3).tolist() == [10, 10, 10]
    assert dset.soft_labels.shape == (30, 3) and torch.allclose(dset.soft_labels.sum(1), torch.ones(30))
    if name == "cudd":
        log = dset.provenance["curricula"]
        assert [c["ipc"] for c in log] == [[0, 5], [5, 10]] and [c["adversarial"] for c in log] == [False, True]
        assert sum(log[0]["init_tiers"].values()) == 15 and sum(log[1]["init_tiers"].values()) == 15
        assert len(set(dset.provenance["source_ids"])) == 30  # no real image initialises two synthetic ones


# ---------------------------------------------------------------------------------------------------------
# Teachers: caching, resuming, loading torchvision-format weights
# ---------------------------------------------------------------------------------------------------------


def test_train_teacher_caches_and_resumes(tmp_path, monkeypatch):
    spec, split = tiny_spec(), tiny_split(n_per_class=8)
    recipe = {"epochs": 2, "batch_size": 12, "chunk_epochs": 1, "lr": 0.05}
    full = teacher_mod.train_teacher(spec, split, "convnet3_bn", recipe, "cpu", tmp_path / "a")
    folder = teacher_mod.teacher_dir(tmp_path / "a", spec, "convnet3_bn", teacher_mod.resolve_recipe(spec, recipe))
    assert (folder / "weights.pt").exists() and (folder / "recipe.json").exists()
    again = teacher_mod.teacher_for(spec, "convnet3_bn", "cpu", tmp_path / "a", lambda: 1 / 0, cfg=recipe)
    assert all(torch.equal(p, q) for p, q in zip(full.state_dict().values(), again.state_dict().values()))

    real_epoch, calls = teacher_mod._train_epoch, []

    def dies_in_second_epoch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*a, **k)

    monkeypatch.setattr(teacher_mod, "_train_epoch", dies_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        teacher_mod.train_teacher(spec, split, "convnet3_bn", recipe, "cpu", tmp_path / "b")
    monkeypatch.setattr(teacher_mod, "_train_epoch", real_epoch)
    resumed = teacher_mod.train_teacher(spec, split, "convnet3_bn", recipe, "cpu", tmp_path / "b")
    assert all(torch.allclose(p, q) for p, q in zip(full.state_dict().values(), resumed.state_dict().values()))
    with pytest.raises(ConfigError, match="no key"):
        teacher_mod.resolve_recipe(spec, {"epoch": 3})


def test_load_teacher_cuts_imagenet_head(tmp_path):
    full = build_net("convnet3_bn", 1000, 1, SIDE).eval()
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, path)
    spec = tiny_spec(kind="imagenet", imagenet_index=(7, 500, 3))
    cut = teacher_mod.load_teacher(path, "convnet3_bn", spec, size=SIDE)
    x = torch.randn(4, 1, SIDE, SIDE)
    with torch.no_grad():
        assert torch.allclose(cut(x), full(x)[:, [7, 500, 3]], atol=1e-5)
    with pytest.raises(DataError, match="do not exist"):
        teacher_mod.load_teacher(tmp_path / "missing.pth", "convnet3_bn", spec, size=SIDE)
