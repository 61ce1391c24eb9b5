"""The soft-label protocol family (rded, fkd): batch pipeline, FKD store replay, rules, loss, end to end."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ddbench.data import get_dataset, load_split
from ddbench.data.spec import DatasetSpec
from ddbench.distilled import DistilledSet
from ddbench.nets.build import build_net
from ddbench.protocol import load_protocol
from ddbench.protocols import soft
from ddbench.engine.train import lr_factor

from fakes import make_idx_folder

SPEC = DatasetSpec(name="tiny", classes=("a", "b", "c"), resolution=8, channels=1, mean=(0.5,), std=(0.25,),
                   kind="embedded", root=None, imagenet_index=None, test_resolution=8)
AUG = {"shuffle_patches": 1, "rrc_scale": [0.08, 1.0], "rrc_ratio": [0.75, 4 / 3], "flip": 0.5, "cutmix_beta": 1.0,
       "size": 8}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is faster, and immune to a busy machine's oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_images(n=12, side=8, seed=0):
    return torch.randint(0, 256, (n, 1, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def tiny_teacher(seed=0):
    return build_net("convnet3_bn", 3, 1, 8, width=8, generator=torch.Generator().manual_seed(seed)).eval()


def plan(**kw):
    base = {"epochs": 3, "batch_size": 5, "aug": dict(AUG), "temperature": 20.0, "extra_bn_forward": False,
            "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01, "wd_on_1d": False},
            "schedule": {"name": "cosine_rded"}}
    return {**base, **kw}


# ---------------------------------------------------------------------------------------------------------
# Loss and rules
# ---------------------------------------------------------------------------------------------------------


def test_kd_loss_is_batchmean_kl_without_t_squared():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    p_t, p_s = F.softmax(t / 4, 1), F.softmax(s / 4, 1)
    want = (p_t * (p_t.log() - p_s.log())).sum() / 6
    assert torch.allclose(soft.kd_loss(s, t, 4.0), want, atol=1e-6)
    assert soft.kd_loss(t, t, 20.0).abs() < 1e-7
    assert soft.kd_loss(s, t, 20.0) < soft.kd_loss(s, t, 1.0)  # a high T flattens both: a smaller loss, no T²


def test_rded_schedule_ends_at_half_the_lr():
    assert lr_factor({"name": "cosine_rded"}, 0, 300) == 1.0
    assert lr_factor({"name": "cosine_rded"}, 299, 300) == pytest.approx(0.5, abs=0.01)
    assert lr_factor({"name": "cosine_rded"}, 150, 300) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor({"name": "cosine"}, 299, 300) < 0.001  # fkd / SRe2L: to zero


def test_train_soft_applies_the_schedule():
    seen = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kw: seen.append(opt.param_groups[0]["lr"]))
    try:
        student = build_net("convnet3_bn", 3, 1, 8, width=8)
        soft.train_soft(student, tiny_images(10), tiny_teacher(), plan(epochs=4, batch_size=10), SPEC,
                        torch.Generator().manual_seed(0), "cpu")
    finally:
        handle.remove()
    want = [1e-3 * 0.5 * (1 + math.cos(math.pi * e / 8)) for e in range(4)]
    assert seen == pytest.approx(want)


@pytest.mark.parametrize("ipc,k,bs", [(1, 10, 10), (10, 10, 50), (50, 10, 100), (10, 100, 100), (50, 1000, 200),
                                      (1, 5, 5), (20, 10, 67), (5, 10, 31), (100, 10, 100)])
def test_rded_batch_size(ipc, k, bs):
    assert soft.rded_batch_size(ipc, k) == bs


def test_rded_batch_size_is_monotone_in_ipc():
    sizes = [soft.rded_batch_size(i, 10) for i in range(1, 120)]
    assert sizes == sorted(sizes)


def test_eval_points():
    assert soft.soft_eval_epochs(300, 10, 9, 0.8) == [250, 260, 270, 280, 290, 300]  # RDED: e > 240, e % 10 == 9
    fkd = soft.soft_eval_epochs(300, 10, 0, None)
    assert fkd[:3] == [1, 11, 21] and fkd[-1] == 300 and len(fkd) == 31
    assert soft.soft_eval_epochs(5, 10, 9, 0.8) == [5]


# ---------------------------------------------------------------------------------------------------------
# Batch pipeline
# ---------------------------------------------------------------------------------------------------------


def test_shuffle_patches_moves_whole_strips():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    same = soft.shuffle_patches(x, torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    assert torch.equal(same, x)
    swapped = soft.shuffle_patches(x, torch.tensor([[1, 0]]), torch.tensor([[1, 0]]))
    assert torch.equal(swapped[0, 0, :2, :2], x[0, 0, 2:, 2:]) and torch.equal(swapped[0, 0, 2:, :2], x[0, 0, :2, 2:])
    odd = soft.shuffle_patches(torch.zeros(2, 3, 5, 5), torch.tensor([[0, 1], [1, 0]]), torch.tensor([[1, 0], [0, 1]]))
    assert odd.shape == (2, 3, 4, 4)  # RDED drops the remainder strip


def test_apply_batch_identity_and_cutmix():
    images = tiny_images(4)
    p = {"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4), "flip": torch.tensor([False, True, False, False])}
    aug = {**AUG, "cutmix_beta": None}
    x = soft.apply_batch(images, p, aug, SPEC)
    ref = (images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(x[0], ref[0], atol=1e-5) and torch.allclose(x[1], ref[1].flip(-1), atol=1e-5)
    p.update(partner=torch.tensor([1, 2, 3, 0]), cutbox=torch.tensor([2, 6, 1, 5]))
    mixed = soft.apply_batch(images, p, aug, SPEC)
    assert torch.allclose(mixed[0, :, 2:6, 1:5], x[1, :, 2:6, 1:5]) and torch.allclose(mixed[0, :, :2], x[0, :, :2])


def test_draw_batch_is_seeded_and_cutbox_in_range():
    a = soft.draw_batch(6, 8, {**AUG, "shuffle_patches": 2}, torch.Generator().manual_seed(3))
    b = soft.draw_batch(6, 8, {**AUG, "shuffle_patches": 2}, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(a) == ["boxes", "cols", "cutbox", "flip", "partner", "rows"]
    y1, y2, x1, x2 = a["cutbox"].tolist()
    assert 0 <= y1 <= y2 <= 8 and 0 <= x1 <= x2 <= 8
    assert ((a["boxes"] >= 0) & (a["boxes"] <= 1)).all()


# ---------------------------------------------------------------------------------------------------------
# FKD store: replayed labels equal freshly computed ones
# ---------------------------------------------------------------------------------------------------------


def test_fkd_replay_matches_fresh_teacher_logits(tmp_path):
    images, teacher, pl = tiny_images(12), tiny_teacher(), plan(epochs=2)
    nbytes = soft.build_store(tmp_path, images, teacher, pl, SPEC, seed=42)
    assert nbytes > 0 and sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0.pt", "epoch_1.pt"]
    for e in range(2):
        for b in torch.load(tmp_path / f"epoch_{e}.pt", weights_only=True)["batches"]:
            assert b["logits"].dtype == torch.float16
            with torch.no_grad():
                fresh = teacher(soft.apply_batch(images[b["idx"]], b, pl["aug"], SPEC))
            assert torch.allclose(fresh, b["logits"].float(), atol=2e-3, rtol=2e-3)  # fp16 precision
    epoch0 = torch.load(tmp_path / "epoch_0.pt", weights_only=True)["batches"]
    assert sorted(torch.cat([b["idx"] for b in epoch0]).tolist()) == list(range(12))  # each image once per epoch
    (tmp_path / "epoch_1.pt").unlink()  # a killed run resumes with the same draws
    before = torch.load(tmp_path / "epoch_0.pt", weights_only=True)["gen_after"]
    soft.build_store(tmp_path, images, teacher, pl, SPEC, seed=42)
    fresh_full = tmp_path.parent / "full"
    soft.build_store(fresh_full, images, teacher, pl, SPEC, seed=42)
    a = torch.load(tmp_path / "epoch_1.pt", weights_only=True)["batches"]
    b = torch.load(fresh_full / "epoch_1.pt", weights_only=True)["batches"]
    assert all(torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["logits"], y["logits"]) for x, y in zip(a, b))
    assert torch.equal(before, torch.load(tmp_path / "epoch_0.pt", weights_only=True)["gen_after"])


def test_stored_and_online_training_see_the_same_batches(tmp_path):
    """Online labels drawn with the FKD seed equal the stored ones: the two modes differ only in storage."""
    images, teacher, pl = tiny_images(10), tiny_teacher(), plan(epochs=2, batch_size=10)
    soft.build_store(tmp_path, images, teacher, pl, SPEC, seed=5)
    nets = [build_net("convnet3_bn", 3, 1, 8, width=8, generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    soft.train_soft(nets[0], images, teacher, pl, SPEC, torch.Generator().manual_seed(5), "cpu")
    soft.train_soft(nets[1], images, None, pl, SPEC, torch.Generator().manual_seed(99), "cpu", store=tmp_path)
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.allclose(p, q, atol=1e-4)  # fp16 stored logits vs fp32 online: tiny differences only


# ---------------------------------------------------------------------------------------------------------
# End to end on a tiny Fashion-MNIST-style folder
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    root = make_idx_folder(tmp_path_factory.mktemp("idx"), n_train=60, n_test=30)
    spec = get_dataset("fashion", data_root=str(root))
    cache = tmp_path_factory.mktemp("cache")
    test = load_split(spec, "test", cache_dir=cache / "data")
    train = load_split(spec, "train", cache_dir=cache / "data")
    idx = torch.arange(20)  # 2 per class (labels are i % 10)
    hard = DistilledSet(train.images[idx], train.labels[idx], spec.classes, {"method": "random"})
    return spec, test, cache, hard


def protocol(name, cache, **over):
    # A 1-epoch teacher on 60 random-pixel images is at chance: the floor (tests/test_gates.py) is off here.
    p = load_protocol(name, {"teacher": {"recipe": {"epochs": 1, "batch_size": 30}, "min_acc_x_chance": 0}, **over})
    p.options["cache_dir"] = str(cache)
    return p


def test_rded_scores_a_hard_label_set(fashion):
    spec, test, cache, hard = fashion
    r = protocol("rded", cache, epochs=3).evaluate(hard, spec, test, None, 0, "cpu")
    assert r.curve[-1][0] == 3 and 0.0 <= r.acc_last <= 100.0
    assert r.extra["arch"] == "convnet3_bn" and r.extra["plan"]["batch_size"] == 16  # IPC 2 -> 10·2^log10(5)
    assert r.extra["soft_label_bytes"] == 0 and r.extra["soft_label_bytes_if_stored_fkd"] > 0
    again = protocol("rded", cache, epochs=3).evaluate(hard, spec, test, None, 0, "cpu")
    assert again.acc_last == r.acc_last  # seeded


def test_fkd_stores_labels_and_records_bytes(fashion):
    spec, test, cache, hard = fashion
    r = protocol("fkd", cache, epochs=2).evaluate(hard, spec, test, None, 0, "cpu")
    store = r.extra["soft_label_store"]
    assert r.extra["soft_label_bytes"] > 2 * 20 * 10 * 2  # at least the fp16 logits of 2 epochs × 20 images
    assert [p.name for p in sorted(__import__("pathlib").Path(store).iterdir())] == ["epoch_0.pt", "epoch_1.pt"]
    assert [e for e, _ in r.curve] == [1, 2]


def test_soft_labelled_set_under_a_hard_card(fashion):
    spec, test, cache, hard = fashion
    relabelled = DistilledSet(hard.images, hard.labels, hard.classes, {}, soft_labels=torch.full((20, 10), 0.1))
    r = load_protocol("dc", {"epochs": 1, "eval_points": 1}).evaluate(relabelled, spec, test, None, 0, "cpu")
    assert r.extra["n_train"] == 20 and r.curve[-1][0] == 1


# ---------------------------------------------------------------------------------------------------------
# Several students at once (train_soft_many): each trains as it would alone
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stored", [False, True])
def test_students_trained_together_equal_lone_students(stored, tmp_path):
    import copy

    images, teacher = tiny_images(10), tiny_teacher()
    pl = plan(epochs=2, batch_size=5, extra_bn_forward=True)
    store = None
    if stored:
        store = tmp_path / "labels"
        soft.build_store(store, images, teacher, pl, SPEC, seed=3)
    students = [build_net("convnet3_bn", 3, 1, 8, width=8, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    lone = [copy.deepcopy(s) for s in students]
    soft.train_soft_many(students, images, teacher, pl, SPEC, [torch.Generator().manual_seed(10 + j) for j in range(2)],
                         "cpu", store=store)
    for j in range(2):
        soft.train_soft(lone[j], images, teacher, pl, SPEC, torch.Generator().manual_seed(10 + j), "cpu", store=store)
        for (name, a), b in zip(students[j].state_dict().items(), lone[j].state_dict().values()):
            if a.is_floating_point():
                assert float((a - b).norm() / b.norm().clamp_min(1e-12)) <= 1e-4, name
    assert not torch.equal(students[0].state_dict()["classifier.weight"], students[1].state_dict()["classifier.weight"])


def test_rded_evaluate_many_equals_lone_evaluations(fashion):
    spec, test, cache, hard = fashion
    p = protocol("rded", cache, epochs=3, eval_after=0.0, eval_every=1, eval_offset=0)  # tests after epochs 2, 3
    together = p.evaluate_many(hard, spec, test, None, [0, 1], "cpu")
    one_image = 100.0 / len(test.labels)
    for seed, t in zip((0, 1), together):
        a = p.evaluate(hard, spec, test, None, seed, "cpu")
        assert [e for e, _ in t.curve] == [e for e, _ in a.curve] == [2, 3]
        assert all(abs(x - y) <= one_image for (_, x), (_, y) in zip(t.curve, a.curve))
        assert t.extra["models_at_once"] == 2 and "models_at_once" not in a.extra
