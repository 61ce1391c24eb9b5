"""DDP on CPU (gloo): 2 ranks train exactly what 1 process trains with the same global batch."""
import pytest
import torch
import torch.nn as nn

from ddbench.engine import ddp
from ddbench.engine.train import CutMixCE, evaluate_accuracy, train_classifier


def tiny_net() -> nn.Module:
    """Conv → GroupNorm (per sample: no cross-sample statistics) → pool → linear; 1×8×8 in, 3 classes out."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(4, 4), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 4 * 4, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Seeded per-sample horizontal flip: the draw must be the same on every rank."""
    mask = torch.rand(len(x), generator=g, device=x.device) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def data(n: int):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) % 3


def train(n: int, batch_size: int, epochs: int = 3) -> dict:
    """Train the tiny net (wrapped when distributed); returns its final weights and the accuracies it saw."""
    images, labels = data(n)
    net = ddp.maybe_wrap_ddp(tiny_net(), "cpu")
    hist = train_classifier(net, images, labels, epochs=epochs, batch_size=batch_size,
                            optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
                            schedule={"name": "step_half", "gamma": 0.1}, augment=flip, loss=CutMixCE(1.0, 0.5),
                            eval_fn=lambda m: evaluate_accuracy(m, images, labels, batch_size=5), eval_every=1,
                            generator=torch.Generator().manual_seed(7), device="cpu")
    weights = {k: v.detach().clone() for k, v in ddp.unwrap(net).state_dict().items()}
    return {"weights": weights, "curve": hist.curve, "loss": hist.train_loss, "world": ddp.world_size()}


# (samples, global batch): even shards, uneven shards (4 + 3), and a last batch of 1 (rank 1's shard is empty)
CASES = [(22, 8), (23, 7), (9, 4)]


def train_cases() -> list[dict]:
    return [train(n, batch_size) for n, batch_size in CASES]


def every_case() -> dict:
    return {"k1": train_cases(), "k2": k2_cases()}


@pytest.fixture(scope="module")
def two_ranks() -> dict:
    """Every case on 2 gloo ranks in one start: starting the ranks is the slow part."""
    return ddp.spawn(every_case, 2)


def test_two_ranks_equal_one_process(two_ranks):
    doubles = two_ranks["k1"]
    for (n, batch_size), double in zip(CASES, doubles):
        single = train(n, batch_size)
        assert single["world"] == 1 and double["world"] == 2
        for k, w in single["weights"].items():
            torch.testing.assert_close(double["weights"][k], w, rtol=1e-4, atol=1e-5, msg=f"{n}/{batch_size} {k}")
        assert [e for e, _ in double["curve"]] == [e for e, _ in single["curve"]]  # the same evaluation points
        assert [a for _, a in double["curve"]] == pytest.approx([a for _, a in single["curve"]])  # flat: approx takes no nesting
        assert double["loss"] == pytest.approx(single["loss"], rel=1e-4)
        initial = tiny_net().state_dict()
        assert any(not torch.allclose(single["weights"][k], initial[k]) for k in initial)  # it did train


def protocol_k2() -> list[dict]:
    """A `dc` evaluation of eval seeds 0 and 1 in one call (K = 2), as `ddbench run --eval-seeds 0,1` makes it."""
    from ddbench.protocol import load_protocol
    from test_protocols import toy_task

    dset, spec, test = toy_task(size=16)
    protocol = load_protocol("dc", {"epochs": 3, "eval_points": 3, "batch_size": 16})
    results = protocol.evaluate_many(dset, spec, test, "convnet3", [0, 1], "cpu")
    return [{"curve": r.curve, "loss": r.extra["train_loss_last"], "world": ddp.world_size()} for r in results]


def train_k2() -> dict:
    """Two tiny nets of their own seeds through the multi-model trainer (wrapped when distributed)."""
    from ddbench.engine.train_many import evaluate_accuracies, train_classifiers

    images, labels = data(22)
    nets = [ddp.maybe_wrap_ddp(tiny_net(), "cpu") for _ in range(2)]
    with torch.no_grad():  # two different initialisations
        next(ddp.unwrap(nets[1]).parameters()).mul_(-1)
    hists = train_classifiers(nets, images, labels, epochs=2, batch_size=8,
                              optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
                              augments=[flip, flip], loss=CutMixCE(1.0, 0.5), eval_every=1,
                              eval_fn=lambda m: evaluate_accuracies(m, images, labels, batch_size=5),
                              generators=[torch.Generator().manual_seed(s) for s in (3, 4)], device="cpu")
    return {"weights": [{k: v.detach().clone() for k, v in ddp.unwrap(n).state_dict().items()} for n in nets],
            "loss": [h.train_loss for h in hists], "world": ddp.world_size()}


def k2_cases() -> dict:
    return {"train": train_k2(), "protocol": protocol_k2()}


def test_two_ranks_with_two_eval_seeds_equal_one_process(two_ranks):
    """K = 2 under DDP: the stacked (vmap) trainer cannot run over DDP, so each seed trains alone on the ranks and
    every seed still gets the numbers of a single process."""
    double = two_ranks["k2"]
    single = k2_cases()
    assert double["train"]["world"] == 2 and single["train"]["world"] == 1
    for j in range(2):
        for k, w in single["train"]["weights"][j].items():
            torch.testing.assert_close(double["train"]["weights"][j][k], w, rtol=1e-4, atol=1e-5, msg=f"net {j} {k}")
        assert double["train"]["loss"][j] == pytest.approx(single["train"]["loss"][j], rel=1e-4)
    assert single["train"]["loss"][0] != single["train"]["loss"][1]
    one_image = 100.0 / 100  # toy_task: 100 test images; a borderline image may flip
    for d, s in zip(double["protocol"], single["protocol"]):
        assert d["world"] == 2 and [e for e, _ in d["curve"]] == [e for e, _ in s["curve"]]
        assert all(abs(x - y) <= one_image for (_, x), (_, y) in zip(d["curve"], s["curve"]))
        assert d["loss"] == pytest.approx(s["loss"], rel=2e-3)


def test_the_distributed_predicate_sees_every_wrapper():
    net = tiny_net()
    assert not ddp.is_wrapped(net)
    assert ddp.is_wrapped(ddp.ShardedForward(net))


def test_shard_bounds_cover_the_batch_once():
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            bounds = [ddp.shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_single_process_is_untouched():
    net = tiny_net()
    assert ddp.maybe_wrap_ddp(net, "cpu") is net and ddp.maybe_shard(net) is net
    assert ddp.is_main() and ddp.world_size() == 1
    x = torch.zeros(3, 2)
    assert ddp.shard_batch(x) is x
    with ddp.main_first():
        pass
