"""The multi-model trainer: K stacked networks must each train as they would alone (ddbench/engine/train_many.py)."""
import copy

import pytest
import torch

from ddbench.engine.augment import Normalize
from ddbench.errors import ConfigError
from ddbench.nets.build import build_net
from ddbench.protocol import load_protocol
from ddbench.engine.train import CutMixCE, train_classifier
from ddbench.engine.train_many import (ModelStack, evaluate_accuracies, mix_inputs, models_at_once, stacked_loss,
                                step_bytes, train_classifiers)
from test_protocols import toy_task

SGD = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}


def nets_for(arch, seeds, size=8, channels=1):
    return [build_net(arch, 10, channels, size, generator=torch.Generator().manual_seed(s)) for s in seeds]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ---------------------------------------------------------------------------------------------------------
# One step: loss and gradients of each stacked model equal its lone step
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["convnet3", "convnet3_bn"])
@pytest.mark.parametrize("mix", [False, True])
def test_stacked_step_gives_each_model_its_lone_loss_and_gradients(arch, mix):
    k, b = 3, 12
    nets = nets_for(arch, range(k))
    lone = [copy.deepcopy(n) for n in nets]
    xs = [torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(100 + j)) for j in range(k)]
    ys = torch.randint(0, 10, (k, b), generator=torch.Generator().manual_seed(7))
    loss_fn = CutMixCE() if mix else "ce"
    from ddbench.engine.train import make_loss

    loss_fn = make_loss(loss_fn)
    stack = ModelStack(nets).train()
    x, partner, r = mix_inputs(loss_fn, xs, [torch.Generator().manual_seed(50 + j) for j in range(k)])
    per_model = stacked_loss(stack(x), ys, partner, r)
    per_model.sum().backward()
    for j in range(k):
        loss, _ = loss_fn(lone[j], xs[j], ys[j], torch.Generator().manual_seed(50 + j))
        loss.backward()
        assert rel(per_model[j].detach(), loss.detach()) <= 1e-5
        # ‖Δg‖/‖g‖ over all the model's gradients (a conv bias before instance norm has a gradient of 0 ± 1e-9,
        # so per-element ratios are noise); measured ≈ 5e-6, the largest single element off by ≈ 2e-5 of the max
        names = [name for name, _ in lone[j].named_parameters()]
        stacked = torch.cat([stack.params[name].grad[j].flatten() for name in names])
        alone = torch.cat([p.grad.flatten() for p in lone[j].parameters()])
        assert float((stacked - alone).norm() / alone.norm()) <= 1e-5
        for name, buf in lone[j].named_buffers():  # BatchNorm statistics move per model
            if buf.is_floating_point():
                assert rel(stack.buffers[name][j], buf) <= 1e-5, name


def test_stack_refuses_networks_of_different_shapes():
    with pytest.raises(ConfigError, match="one architecture"):
        ModelStack([build_net("convnet3", 10, 1, 8), build_net("convnet3", 5, 1, 8)])


# ---------------------------------------------------------------------------------------------------------
# Whole trainings
# ---------------------------------------------------------------------------------------------------------


def test_one_model_is_the_lone_loop_bit_for_bit():
    dset, spec, _ = toy_task(size=8)
    kw = dict(epochs=2, batch_size=16, optimizer=SGD, schedule={"name": "step_half"}, device="cpu")
    a, b = nets_for("convnet3", [0]), nets_for("convnet3", [0])
    h_many = train_classifiers(a, dset.images, dset.labels, augments=[Normalize((0.5,), (0.5,))],
                               generators=[torch.Generator().manual_seed(1)], **kw)[0]
    h_one = train_classifier(b[0], dset.images, dset.labels, augment=Normalize((0.5,), (0.5,)),
                             generator=torch.Generator().manual_seed(1), **kw)
    assert h_many.train_loss == h_one.train_loss
    assert all(torch.equal(p, q) for p, q in zip(a[0].state_dict().values(), b[0].state_dict().values()))


def test_stacked_training_writes_each_model_its_lone_weights_and_curve():
    dset, spec, test = toy_task(size=8)
    kw = dict(epochs=3, batch_size=16, optimizer=SGD, loss=CutMixCE(), device="cpu", eval_every=1)
    tf = Normalize((0.5,), (0.5,))
    nets = nets_for("convnet3_bn", range(3))
    lone = [copy.deepcopy(n) for n in nets]
    hists = train_classifiers(nets, dset.images, dset.labels, augments=[tf] * 3,
                              generators=[torch.Generator().manual_seed(10 + j) for j in range(3)],
                              eval_fn=lambda m: evaluate_accuracies(m, test.images, test.labels, tf), **kw)
    for j in range(3):
        h = train_classifier(lone[j], dset.images, dset.labels, augment=tf, generator=torch.Generator().manual_seed(10 + j),
                             eval_fn=lambda m: evaluate_accuracies(m, test.images, test.labels, tf)[0], **kw)
        assert hists[j].train_loss == pytest.approx(h.train_loss, rel=1e-4)
        for (name, p), q in zip(nets[j].state_dict().items(), lone[j].state_dict().values()):
            assert rel(p.double(), q.double()) <= 1e-4, name
        assert [e for e, _ in hists[j].curve] == [1, 2, 3]
    assert hists[0].train_loss != hists[1].train_loss  # the models did not share their draws


def test_dc_protocol_with_k_models_equals_k_single_runs():
    """A short `dc` evaluation of 3 seeds trained together gives each seed the accuracy of its lone run."""
    dset, spec, test = toy_task(size=16)
    protocol = load_protocol("dc", {"epochs": 4, "eval_points": 2, "batch_size": 16})
    together = protocol.evaluate_many(dset, spec, test, "convnet3", [0, 1, 2], "cpu")
    alone = [protocol.evaluate(dset, spec, test, "convnet3", s, "cpu") for s in (0, 1, 2)]
    one_image = 100.0 / len(test.labels)
    for t, a in zip(together, alone):
        assert [e for e, _ in t.curve] == [e for e, _ in a.curve]
        assert all(abs(x - y) <= one_image for (_, x), (_, y) in zip(t.curve, a.curve))  # a borderline image may flip
        # float differences of ~1e-6 per step grow over training: measured 4e-4 relative after 12 steps here
        assert t.extra["train_loss_last"] == pytest.approx(a.extra["train_loss_last"], rel=2e-3)
        assert t.extra["models_at_once"] == 3 and "models_at_once" not in a.extra
    assert len({r.extra["train_loss_last"] for r in together}) == 3


def test_protocol_evaluate_is_evaluate_many_of_one_bit_for_bit():
    dset, spec, test = toy_task(size=16)
    protocol = load_protocol("dc", {"epochs": 2, "eval_points": 1, "batch_size": 16})
    a = protocol.evaluate(dset, spec, test, "convnet3", 5, "cpu")
    b = protocol.evaluate_many(dset, spec, test, "convnet3", [5], "cpu")[0]
    assert (a.curve, a.extra["train_loss_last"]) == (b.curve, b.extra["train_loss_last"])


def test_train_classifiers_names_a_count_mismatch():
    dset, _, _ = toy_task(size=8)
    with pytest.raises(ConfigError, match="one of each per model"):
        train_classifiers(nets_for("convnet3", [0, 1]), dset.images, dset.labels, epochs=1, batch_size=8,
                          optimizer=SGD, generators=[torch.Generator()])


# ---------------------------------------------------------------------------------------------------------
# How many at once
# ---------------------------------------------------------------------------------------------------------


def test_models_at_once_rules():
    assert models_at_once(4, "cpu", 10) == 4
    assert models_at_once(40, "cpu", 10) == 10  # never more than there are models
    assert models_at_once(None, "cpu", 10) == 1  # the measured CPU rule: one network after another
    with pytest.raises(ConfigError, match="positive"):
        models_at_once(0, "cpu", 3)


def test_the_planner_arithmetic_on_given_byte_counts(monkeypatch):
    """step_bytes of Linear(4, 3) on a batch of 2: 15 parameters, one 2×3 output, fp32:
    4 B × (4 × 15 weights, gradients and two optimizer states + 2 × 6 kept outputs) = 288 B; then K = the share of
    free memory over that, floored."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    assert step_bytes(net, (2, 4)) == 4 * (4 * 15 + 2 * 6) == 288
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10_000, 80_000))
    assert models_at_once(None, "cuda", 50, bytes_per_model=288) == 27  # 0.8 × 10 000 // 288 = 27.7 → 27
    assert models_at_once(None, "cuda", 50, bytes_per_model=8000) == 1  # exactly one fits
    assert models_at_once(None, "cuda", 50, bytes_per_model=None) == 1  # no plan: one at a time


def test_step_bytes_grows_with_batch_and_counts_parameters():
    net = build_net("convnet3", 10, 3, 32)
    small, big = step_bytes(net, (8, 3, 32, 32)), step_bytes(net, (64, 3, 32, 32))
    n_params = sum(p.numel() for p in net.parameters())
    assert small > 16 * n_params and big > small
    assert next(net.parameters()).device.type == "cpu"  # the planning left the real network alone


def test_models_at_once_on_cuda_fills_a_share_of_the_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * 2**30, 80 * 2**30))
    assert models_at_once(None, "cuda", 50, bytes_per_model=2**30) == 8  # 80 % of 10 GiB at 1 GiB each
    assert models_at_once(None, "cuda", 5, bytes_per_model=2**30) == 5  # never more than there are models
    assert models_at_once(None, "cuda", 500, bytes_per_model=2**20) == 100  # the cap
    assert models_at_once(None, "cuda", 50, bytes_per_model=64 * 2**30) == 1  # one always runs


# ---------------------------------------------------------------------------------------------------------
# When the plan does not fit: out of memory halves K; random layers train one at a time
# ---------------------------------------------------------------------------------------------------------


class Sink:
    def __init__(self):
        self.records = []

    def add(self, record, *, replace=False):
        self.records.append(record)
        return True


def run_cells(protocol, eval_seeds, models_at_once, arch="convnet3"):
    """runner.evaluate_cells on the toy task; returns (records, log lines)."""
    from ddbench import runner
    from ddbench.distilled import DistilledSet

    dset, spec, test = toy_task(size=8)
    dset = DistilledSet(dset.images, dset.labels, spec.classes, {})
    keys = [dict(method="m", dataset="toy", ipc=5, seed=0, protocol="dc", arch=arch, eval_seed=e,
                 config_hash="0123456789abcdef") for e in eval_seeds]
    lines = []
    records = runner.evaluate_cells(dset, spec, protocol, keys, Sink(), test, torch.device("cpu"),
                                    {"method_version": 1, "method_config": {}}, {"timings": {}, "peak_mem": {}},
                                    lambda *p: lines.append(" ".join(map(str, p))), models_at_once=models_at_once)
    return records, lines


TINY_DC = {"epochs": 1, "eval_points": 1, "batch_size": 16}


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8")])
def test_an_out_of_memory_job_is_retried_with_half_the_networks(monkeypatch, error):
    from ddbench.protocols import hard

    sizes = []

    def trainer(nets, *a, **kw):
        sizes.append(len(nets))
        if len(nets) > 1:
            raise error
        return train_classifiers(nets, *a, **kw)

    monkeypatch.setattr(hard, "train_classifiers", trainer)
    records, lines = run_cells(load_protocol("dc", TINY_DC), [0, 1, 2, 3], models_at_once=4)
    assert sizes == [4, 2, 1, 1, 1, 1]
    assert [r["eval_seed"] for r in records] == [0, 1, 2, 3]
    assert all(r["extra"]["models_at_once"] == 1 and r["extra"]["models_at_once_planned"] == 4 for r in records)
    assert sum("out of memory with 4 networks at once; retrying with 2" in line for line in lines) == 1
    assert sum("retrying with 1" in line for line in lines) == 1


def test_one_network_out_of_memory_is_one_clear_error_and_other_errors_pass_through(monkeypatch):
    from ddbench.errors import ResourceError
    from ddbench.protocols import hard

    def oom(nets, *a, **kw):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(hard, "train_classifiers", oom)
    with pytest.raises(ResourceError, match=r"out of memory training one convnet3 network .*protocol.batch_size"):
        run_cells(load_protocol("dc", TINY_DC), [0, 1], models_at_once=2)

    def broken(nets, *a, **kw):
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(hard, "train_classifiers", broken)
    with pytest.raises(RuntimeError, match="a bug, not memory"):
        run_cells(load_protocol("dc", TINY_DC), [0, 1], models_at_once=2)


class DropoutNet(torch.nn.Module):
    """A network whose training forward draws random numbers (dropout 0.5)."""

    def __init__(self, channels, num_classes, im_size):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(channels * im_size ** 2, 16),
                                        torch.nn.ReLU(), torch.nn.Dropout(0.5))
        self.head = torch.nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def test_a_dropout_network_trains_one_at_a_time_when_k_is_asked_for(monkeypatch):
    from ddbench.nets.build import ARCHS
    from ddbench.engine.train_many import random_layers

    monkeypatch.setitem(ARCHS._targets, "dropnet", DropoutNet)
    assert random_layers(DropoutNet(1, 10, 8)) == ["body.3"] and random_layers(build_net("convnet3", 10, 1, 8)) == []
    protocol = load_protocol("dc", TINY_DC)
    records, lines = run_cells(protocol, [0, 1], models_at_once=2, arch="dropnet")
    assert [r["eval_seed"] for r in records] == [0, 1]
    assert any("dropnet has random layers (body.3)" in line for line in lines)
    assert all("models_at_once" not in r["extra"] for r in records)  # trained alone: nothing shared
    dset, _, _ = toy_task(size=8)
    # the trainer itself refuses to stack them too (it would fail under vmap)
    nets = [DropoutNet(1, 10, 8) for _ in range(2)]
    hists = train_classifiers(nets, dset.images, dset.labels, epochs=1, batch_size=16, optimizer=SGD,
                              generators=[torch.Generator().manual_seed(s) for s in (0, 1)])
    assert len(hists) == 2
