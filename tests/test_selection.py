"""The greedy selection rules and the first-N / random semantics."""
import torch

from ddbench.data import Split
from ddbench.method import Context
from ddbench.methods.selection import FirstN, RandomSelection, herding_order, kcenter_order


def test_herding_first_pick_is_closest_to_the_mean_and_running_mean_tracks_it():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(50, 4, generator=g)
    order = herding_order(feats, 10)
    assert order[0] == int((feats - feats.mean(0)).norm(dim=1).argmin())
    assert len(set(order)) == 10
    # herding's selected mean approaches the full mean faster than the first 10 points do
    assert (feats[order].mean(0) - feats.mean(0)).norm() < (feats[:10].mean(0) - feats.mean(0)).norm()


def test_kcenter_picks_the_farthest_point_each_step():
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [5.0, 0.0]])
    assert kcenter_order(pts, 3, first=0) == [0, 2, 3]


def _ctx(ids, labels):
    images = torch.arange(len(ids), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    split = Split(images, torch.tensor(labels), ids)

    class Spec:
        name, classes = "toy", ("a", "b")

    return Context(Spec, torch.device("cpu"), None, lambda: split)


def test_first_n_is_lexicographic_and_random_is_seeded():
    ids = ["a/2.png", "a/10.png", "a/1.png", "b/3.png", "b/20.png", "b/100.png"]
    ctx = _ctx(ids, [0, 0, 0, 1, 1, 1])
    first = FirstN({"name": "first-n"}, {}).distill(ctx, ipc=2, seed=0)
    assert first.provenance["source_ids"] == ["a/1.png", "a/10.png", "b/100.png", "b/20.png"]
    rnd = RandomSelection({"name": "random"}, {})
    picks = {tuple(rnd.distill(ctx, ipc=2, seed=s).provenance["source_ids"]) for s in range(8)}
    assert len(picks) > 1, "different seeds should give different random subsets"
    assert rnd.distill(ctx, 2, 3).sha256() == rnd.distill(ctx, 2, 3).sha256()
