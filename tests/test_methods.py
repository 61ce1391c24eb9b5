"""Every registered method runs a tiny CPU configuration (the card's `tiny:` overrides) on `digits`."""
import pytest
import torch

from ddbench.data import get_dataset, load_split
from ddbench.method import Context, list_methods, load_method, method_card


@pytest.fixture(scope="module")
def digits_ctx(tmp_path_factory):
    spec = get_dataset("digits")
    cache = tmp_path_factory.mktemp("methods-cache")
    split = load_split(spec, "train", cache_dir=cache / "data")
    return Context(spec, torch.device("cpu"), cache, lambda: split)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_distills_a_tiny_set_deterministically(name, digits_ctx):
    card = method_card(name)
    assert {"version", "citation", "description"} <= set(card), f"card of {name} lacks provenance fields"
    assert "tiny" in card, f"card of {name} needs a `tiny:` section so this test stays fast"
    method = load_method(name, "digits", card["tiny"])
    method.prepare(digits_ctx)
    spec = digits_ctx.spec
    dset = method.distill(digits_ctx, ipc=2, seed=0)
    assert dset.images.dtype == torch.uint8
    assert dset.images.shape[1:] == (spec.channels, spec.resolution, spec.resolution)
    counts = torch.bincount(dset.labels, minlength=len(spec.classes)).tolist()
    if card.get("kind") == "reference":  # the whole training split: IPC does not apply
        assert counts == torch.bincount(digits_ctx.train().labels, minlength=len(spec.classes)).tolist()
    else:
        assert counts == [2] * len(spec.classes)
    assert dset.classes == spec.classes
    again = method.distill(digits_ctx, ipc=2, seed=0)
    assert again.sha256() == dset.sha256(), "same seed must give the same distilled set"
