"""Protocol cards, the hard-label rules (epochs by IPC, class-count hyper-parameters, schedules), the shared
training loop, and end-to-end evaluations that fail when training is broken."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from ddbench.data.spec import DatasetSpec, Split
from ddbench.errors import ConfigError
from ddbench.protocol import EvalResult, list_protocols, load_protocol, protocol_card
from ddbench.engine.train import evaluate_accuracy, lr_factor, train_classifier

from ddbench.protocols import hard

# ---------------------------------------------------------------------------------------------------------
# Tiny data
# ---------------------------------------------------------------------------------------------------------


def toy_spec(k: int = 10, size: int = 16, channels: int = 1) -> DatasetSpec:
    return DatasetSpec("toy", tuple(f"c{i}" for i in range(k)), size, channels, (0.5,) * channels,
                       (0.5,) * channels, "embedded", None, None, size)


def separable(k: int, n_per: int, size: int, seed: int, channels: int = 1):
    """k fixed binary patterns (seed 0) plus per-image noise (seed `seed`): linearly separable classes."""
    protos = (torch.rand((k, channels, size, size), generator=torch.Generator().manual_seed(0)) > 0.5).float()
    noise = 0.3 * torch.randn((k * n_per, channels, size, size), generator=torch.Generator().manual_seed(seed))
    x = (protos.repeat_interleave(n_per, 0) + noise).clamp(0, 1)
    return (x * 255).round().to(torch.uint8), torch.arange(k).repeat_interleave(n_per)


def toy_task(k=10, n_train=5, n_test=10, size=16, channels=1):
    spec = toy_spec(k, size, channels)
    x, y = separable(k, n_train, size, 1, channels)
    tx, ty = separable(k, n_test, size, 2, channels)
    dset = SimpleNamespace(images=x, labels=y, classes=spec.classes, soft_labels=None)
    return dset, spec, Split(tx, ty, [f"test/{i}" for i in range(len(ty))])


class TinyNet(nn.Module):
    def __init__(self, k=4, size=8):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(size * size, 32), nn.ReLU())
        self.head = nn.Linear(32, k)

    def forward(self, x):
        return self.head(self.body(x))


# ---------------------------------------------------------------------------------------------------------
# IDC rules (protocol-facts §2.2, §2.3)
# ---------------------------------------------------------------------------------------------------------

IPCS = (1, 10, 20, 50, 70, 100, 200, 500, 1000)


@pytest.mark.parametrize("classes,expected", [
    (10, (3000, 2000, 1500, 1500, 1000, 1000, 1000, 500, 300)),
    (1000, (3000, 2000, 1500, 1500, 1000, 1000, 1000, 500, 300)),
    (100, (2000, 1300, 1000, 1000, 600, 600, 600, 300, 200)),
])
def test_idc_epochs_by_ipc(classes, expected):
    p = load_protocol("idc")
    assert tuple(p.plan(ipc * classes, classes)["epochs"] for ipc in IPCS) == expected


def test_idc_milestones_and_eval_cadence():
    plan = load_protocol("idc").plan(100, 10)  # IPC 10 -> 2000 epochs
    assert plan["schedule"] == {"name": "multistep", "milestones": [1333, 1666], "gamma": 0.2}
    assert plan["eval_every"] == 20
    assert [lr_factor(plan["schedule"], e, 2000) for e in (0, 1332, 1333, 1665, 1666, 1999)] == \
        pytest.approx([1, 1, 0.2, 0.2, 0.04, 0.04])


def test_idc_lr_wd_batch_by_class_count():
    p = load_protocol("idc")
    small = {"lr": 0.01, "weight_decay": 5e-4, "batch_size": 64}
    for classes, want in ((10, small), (100, small), (1000, {"lr": 0.1, "weight_decay": 1e-4, "batch_size": 128})):
        plan = p.plan(10 * classes, classes)
        got = {"lr": plan["optimizer"]["lr"], "weight_decay": plan["optimizer"]["weight_decay"],
               "batch_size": plan["batch_size"]}
        assert got == want, classes
    idc_rule = load_protocol("idc", {"large_classes": {"threshold": 99}})  # IDC's own `nclass >= 100`
    assert idc_rule.plan(1000, 100)["optimizer"]["lr"] == 0.1


def test_dc_plan_and_step_half():
    plan = load_protocol("dc").plan(100, 10)
    assert (plan["epochs"], plan["batch_size"], plan["optimizer"]["lr"], plan["eval_every"]) == (300, 256, 0.01, 30)
    assert [lr_factor(plan["schedule"], e, 300) for e in (0, 149, 150, 299)] == pytest.approx([1, 1, 0.1, 0.1])
    assert load_protocol("dc_dsa").plan(100, 10)["epochs"] == 1000


def test_other_schedules():
    assert lr_factor({"name": "cosine"}, 0, 10) == 1.0 and lr_factor({"name": "cosine"}, 10, 10) == pytest.approx(0)
    assert lr_factor({"name": "cosine_rded"}, 300, 300) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="not supported"):
        lr_factor({"name": "linear"}, 0, 10)


# ---------------------------------------------------------------------------------------------------------
# Cards and overrides
# ---------------------------------------------------------------------------------------------------------


def test_cards_are_listed_versioned_and_overridable():
    assert {"dc", "dc_dsa", "idc"} <= set(list_protocols())
    for name in ("dc", "dc_dsa", "idc"):
        card = protocol_card(name)
        assert card["family"] == "hard" and card["version"] == 1 and card["name"] == name
    assert load_protocol("dc", {"epochs": 5}).plan(100, 10)["epochs"] == 5
    assert load_protocol("idc", {"epochs": 7}).plan(100, 10)["epochs"] == 7
    assert load_protocol("dc_dsa").card["augment"] == "dsa" and load_protocol("dc_dsa").card["batch_size"] == 256


def test_unknown_names_and_keys_fail_with_suggestions():
    with pytest.raises(ConfigError, match="Did you mean dc"):
        load_protocol("dcc")
    with pytest.raises(ConfigError, match="Did you mean epochs"):
        load_protocol("dc", {"epoch": 5})
    with pytest.raises(ConfigError, match="Did you mean lr"):
        load_protocol("idc", {"large_classes": {"lrr": 0.2}})
    with pytest.raises(ConfigError, match="cannot be overridden"):
        load_protocol("dc", {"version": 2})
    with pytest.raises(ConfigError, match="augment"):
        load_protocol("dc", {"augment": "autoaugment"})


def test_eval_result_from_curve_and_to_dict():
    r = EvalResult.from_curve([(10, 50.0), (20, 70.0), (30, 70.0), (40, 60.0)], 1.5, 12.0, {"a": 1})
    assert (r.acc_last, r.acc_best, r.best_epoch) == (60.0, 70.0, 20)
    d = r.to_dict()
    assert d["curve"] == [[10, 50.0], [20, 70.0], [30, 70.0], [40, 60.0]] and d["extra"] == {"a": 1}
    assert set(d) == {"acc_last", "acc_best", "best_epoch", "curve", "seconds", "peak_mem_mb", "extra"}


# ---------------------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------------------


def _train_tiny(seed: int, epochs: int = 20, loss="ce"):
    x, y = separable(4, 8, 8, 1)
    tx, ty = separable(4, 16, 8, 2)
    torch.manual_seed(0)  # the same initial weights for every call; the data order follows `seed`
    net = TinyNet()
    hist = train_classifier(net, x, y, epochs=epochs, batch_size=10, loss=loss,
                            optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
                            schedule={"name": "step_half", "gamma": 0.1},
                            eval_fn=lambda m: evaluate_accuracy(m, tx, ty), eval_every=5,
                            generator=torch.Generator().manual_seed(seed), device="cpu")
    return net, hist


def test_train_classifier_learns_and_records_history():
    _, hist = _train_tiny(0)
    assert [e for e, _ in hist.curve] == [5, 10, 15, 20]
    assert hist.curve[-1][1] == 100.0
    assert hist.train_loss[-1] < 0.5 * hist.train_loss[0]
    assert hist.lr[:10] == [0.1] * 10 and hist.lr[10:] == pytest.approx([0.01] * 10)
    assert len(hist.train_acc) == 20 and hist.train_acc[-1] == 100.0


def test_train_classifier_is_deterministic_under_a_seed():
    a, _ = _train_tiny(3, epochs=3)
    b, _ = _train_tiny(3, epochs=3)
    c, _ = _train_tiny(4, epochs=3)
    wa, wb, wc = (torch.cat([p.flatten() for p in n.parameters()]) for n in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_cutmix_loss_and_no_wd_on_1d_params_run():
    _, hist = _train_tiny(0, epochs=4, loss="cutmix_ce")
    assert all(torch.isfinite(torch.tensor(hist.train_loss)))
    net = TinyNet()
    from ddbench.engine.train import build_optimizer

    opt = build_optimizer(net, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01, "wd_on_1d": False})
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    assert all(p.ndim == 1 for p in opt.param_groups[1]["params"])


def test_evaluate_accuracy_counts_correct_predictions():
    class Oracle(nn.Module):  # predicts the class stored in the first pixel
        def forward(self, x):
            return nn.functional.one_hot((x[:, 0, 0, 0] * 255).round().long(), 4).float()

    x = torch.zeros(10, 1, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    y = x[:, 0, 0, 0].long().clone()
    y[:3] = 3  # three wrong labels
    assert evaluate_accuracy(Oracle(), x, y, batch_size=4) == pytest.approx(70.0)


# ---------------------------------------------------------------------------------------------------------
# End to end (real networks from ddbench.nets.build)
# ---------------------------------------------------------------------------------------------------------


def test_dc_evaluation_learns_separable_data():
    dset, spec, test = toy_task(k=10, n_train=5, n_test=10, size=16)
    result = load_protocol("dc", {"epochs": 12, "eval_points": 4}).evaluate(dset, spec, test, "convnet3", 0, "cpu")
    assert result.acc_last >= 90.0, result.curve
    assert result.acc_best >= result.acc_last and [e for e, _ in result.curve] == [3, 6, 9, 12]
    assert result.extra["plan"]["epochs"] == 12 and result.extra["resolution"] == 16
    assert result.seconds > 0 and result.peak_mem_mb > 0


def test_untrained_dc_evaluation_is_near_chance():
    """The counterpart of the test above: with a zero learning rate nothing is learned."""
    dset, spec, test = toy_task(k=10, n_train=5, n_test=10, size=16)
    over = {"epochs": 3, "optimizer": {"lr": 0.0}}
    result = load_protocol("dc", over).evaluate(dset, spec, test, "convnet3", 0, "cpu")
    assert result.acc_best <= 40.0


def test_dc_keeps_28px_data_at_28_and_remaps_class_order():
    dset, spec, test = toy_task(k=3, n_train=2, n_test=2, size=28)
    flipped = SimpleNamespace(images=dset.images, labels=2 - dset.labels, classes=spec.classes[::-1])
    result = load_protocol("dc", {"epochs": 1}).evaluate(flipped, spec, test, None, 0, "cpu")
    assert result.extra["resolution"] == 28 and result.extra["arch"] == "convnet3"
    assert hard.aligned_labels(flipped, spec).tolist() == dset.labels.tolist()


@pytest.mark.parametrize("name,over", [
    ("dc_dsa", {"epochs": 2}),
    ("idc", {"epochs": 2, "resolution": 12, "eval_points": 2}),
])
def test_augmented_cards_run_and_repeat_exactly(name, over):
    dset, spec, test = toy_task(k=3, n_train=4, n_test=4, size=16, channels=3)
    proto = load_protocol(name, over)
    a = proto.evaluate(dset, spec, test, "convnet3", 7, "cpu")
    b = proto.evaluate(dset, spec, test, "convnet3", 7, "cpu")
    assert a.curve == b.curve and a.extra["train_loss_last"] == b.extra["train_loss_last"]
    assert a.extra["resolution"] == over.get("resolution", 16)


def test_channel_mismatch_is_a_data_error():
    from ddbench.errors import DataError

    dset, spec, test = toy_task(k=3, n_train=2, n_test=2, size=16, channels=3)
    with pytest.raises(DataError, match="channel"):
        load_protocol("dc").evaluate(dset, toy_spec(3, 16, 1), test, None, 0, "cpu")
