"""Fidelity to the reference implementations (docs/fidelity.md): one test per closed deviation."""
import importlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ddbench.diffusion import Schedule, ddim_sample, space_timesteps
from ddbench.errors import ConfigError
from ddbench.leaderboard.tables import REPORTED_META

mgd3 = importlib.import_module("ddbench.methods.mgd3")
cudd = importlib.import_module("ddbench.methods.cudd")
selection = importlib.import_module("ddbench.methods.selection")


# ---------------------------------------------------------------------------------------------------------
# Respacing (guided-diffusion / DiT respace.py)
# ---------------------------------------------------------------------------------------------------------


def test_respacing_accumulates_the_stride_as_the_reference():
    # respace.py adds frac_stride to a running float; round(j·stride) differs where the sum lands just below .5
    keep = space_timesteps(1000, "21")
    assert 499 in keep and 500 not in keep
    assert space_timesteps(1000, "31")[15] == 500  # the other direction: the sum lands just above .5
    assert len(space_timesteps(1000, "50")) == 50 and space_timesteps(1000, "50")[:3] == [0, 20, 41]


class _Zero(torch.nn.Module):
    """ε = 0: a deterministic model whose DDIM steps only rescale x; it records the timesteps it is fed."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t, y):
        self.seen.append(int(t[0]))
        return torch.zeros_like(x)


def test_ddim_with_an_integer_step_count_uses_the_ddimN_spacing():
    model = _Zero().eval()
    out = ddim_sample(model, (1, 1, 2, 2), [0], steps=5, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert model.seen == [800, 600, 400, 200, 0]  # "ddim5": range(0, 1000, 200), not 999, 749, …
    model.seen.clear()
    same = ddim_sample(model, (1, 1, 2, 2), [0], schedule=Schedule.respaced("ddim5"), cfg_scale=1.0,
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, same)


# ---------------------------------------------------------------------------------------------------------
# Reported numbers are filed under the protocol their source used
# ---------------------------------------------------------------------------------------------------------


CLASSES = {"woof": 10, "nette": 10, "idc": 10, "imagenet100": 100, "imagenet1k": 1000}


def _reported_blocks():
    from ddbench.method import list_methods, method_card

    for name in list_methods():
        for dataset, block in (method_card(name).get("reported") or {}).items():
            protocols = [k for k in block if k not in REPORTED_META]
            yield name, dataset, block, protocols


def _card_value(card: dict, dotted: str):
    value = card
    for part in dotted.split("."):
        value = value[part]
    return value


def test_every_reported_number_sits_under_a_protocol_with_its_sources_values():
    from ddbench.protocol import load_protocol

    blocks = list(_reported_blocks())
    assert len(blocks) >= 20
    for name, dataset, block, protocols in blocks:
        where = f"{name}.yaml reported.{dataset}"
        assert block.get("protocol_source") and block.get("protocol_values"), f"{where}: no protocol_values"
        k = CLASSES[dataset]
        for protocol in protocols:
            proto = load_protocol(protocol)
            for key, expected in block["protocol_values"].items():
                if key == "epochs" and isinstance(expected, dict):  # per IPC, as the card's plan computes them
                    for ipc in block[protocol]:
                        assert proto.plan(int(ipc) * k, k)["epochs"] == expected[ipc], f"{where} IPC {ipc} epochs"
                    assert set(expected) == set(block[protocol]), f"{where}: epochs for exactly the reported IPCs"
                else:
                    got = _card_value(proto.card, key)
                    if key == "batch_size" and got is None and proto.card.get("large_classes"):
                        got = proto.card["batch_size"]
                    assert got == expected, f"{where}: {protocol} {key}={got!r}, source {expected!r}"


def test_sre2l_numbers_are_under_sre2ls_batch_1024_card_and_cudds_under_fkd():
    from ddbench.leaderboard import load_reported
    from ddbench.protocol import load_protocol

    rep = load_reported([("imagenet1k", "fkd"), ("imagenet1k", "fkd_sre2l")])
    assert "sre2l" in rep[("imagenet1k", "fkd_sre2l")] and "sre2l" not in rep[("imagenet1k", "fkd")]
    assert "cudd" in rep[("imagenet1k", "fkd")]
    sre2l, fkd = load_protocol("fkd_sre2l").card, load_protocol("fkd").card
    assert (sre2l["batch_size"], fkd["batch_size"]) == (1024, 128)
    assert {k: v for k, v in sre2l.items() if k not in ("batch_size", "name", "description", "citation")} == \
        {k: v for k, v in fkd.items() if k not in ("batch_size", "name", "description", "citation")}


def test_idc_epochs_follow_the_code_and_idc_mgd3_the_appendix():
    from ddbench.protocol import load_protocol

    code, paper = load_protocol("idc"), load_protocol("idc_mgd3")
    epochs = lambda p, ipc, k=10: p.plan(ipc * k, k)["epochs"]  # noqa: E731
    assert [epochs(code, i) for i in (10, 20, 50, 70, 100)] == [2000, 1500, 1500, 1000, 1000]
    assert [epochs(paper, i) for i in (10, 20, 50, 70, 100)] == [2000, 1500, 1500, 1500, 1500]
    assert (epochs(code, 100, 100), epochs(paper, 100, 100)) == (600, 1500)


# ---------------------------------------------------------------------------------------------------------
# ACS: the base's sampler, and every column names g
# ---------------------------------------------------------------------------------------------------------


def test_acs_columns_name_their_guidance_scale():
    from ddbench.leaderboard.tables import with_label_keys
    from ddbench.method import resolve_method_config

    cfg = resolve_method_config("acs", "fashion")[1]
    assert cfg["sampling"]["sampler"] is None  # null: the base's sampler (dit: ddpm)
    assert with_label_keys("", {"method": "acs", "method_config": cfg}) == "g=0.01"
    assert with_label_keys("g=0.1", {"method": "acs", "method_config": {**cfg, "g": 0.1}}) == "g=0.1"
    assert with_label_keys("steps=10", {"method": "acs-minimax", "method_config": cfg}) == "g=0.01, steps=10"
    assert with_label_keys("", {"method": "random", "method_config": {}}) == ""


# ---------------------------------------------------------------------------------------------------------
# CUDD: initial images framed as its loader (Resize(256) + CenterCrop(224))
# ---------------------------------------------------------------------------------------------------------


def test_cudd_frames_the_stored_256_square_as_resize256_centercrop224():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, generator=g)
    crop = cudd.frame(x, 224, "cpu", "crop")
    assert torch.equal(crop, x[..., 16:240, 16:240])  # its centre 224: nothing resampled
    shrunk = cudd.frame(x, 224, "cpu", "resize")
    assert shrunk.shape == crop.shape and not torch.equal(shrunk, crop)
    small = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=g)
    assert torch.equal(cudd.frame(small, 28, "cpu"), small)  # embedded data: as stored
    assert cudd.CUDD.defaults["init_frame"] == "crop"
    with pytest.raises(ConfigError, match="init_frame"):
        cudd.frame(x, 224, "cpu", "squash")


# ---------------------------------------------------------------------------------------------------------
# MGD3 mode discovery: ADM center_crop_arr, then a random horizontal flip
# ---------------------------------------------------------------------------------------------------------


def _reference_center_crop_arr(img: Image.Image, side: int) -> np.ndarray:
    """guided-diffusion image_datasets.py center_crop_arr, as MGD3's tsne_plots.py copies it."""
    while min(*img.size) >= 2 * side:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = side / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.array(img)
    cy, cx = (arr.shape[0] - side) // 2, (arr.shape[1] - side) // 2
    return arr[cy:cy + side, cx:cx + side]


@pytest.mark.parametrize("size", [(1100, 600), (281, 64), (64, 64)])
def test_mgd3_adm_crop_matches_center_crop_arr(size):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours = np.asarray(mgd3.adm_center_crop(img, 32))
    np.testing.assert_array_equal(ours, _reference_center_crop_arr(img, 32))
    assert not np.array_equal(ours, np.asarray(img.resize((32 * size[0] // size[1], 32), Image.BICUBIC))[:, :32]) \
        or size[0] == size[1]


def test_mgd3_discovery_flips_a_seeded_half_of_the_images(tmp_path):
    from ddbench.data import Split
    from ddbench.data.spec import DatasetSpec
    from ddbench.method import Context, load_method

    labels = torch.zeros(40, dtype=torch.long)
    images = torch.randint(0, 256, (40, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    spec = DatasetSpec(name="toy", classes=("a",), resolution=6, channels=1, mean=(0.5,), std=(0.5,),
                       kind="embedded", root=None, imagenet_index=None, test_resolution=6)
    ctx = Context(spec, torch.device("cpu"), tmp_path, lambda: Split(images, labels, [f"train/{i}" for i in range(40)]))
    gen = SimpleNamespace(vae=None, latent_shape=(1, 6, 6), info={},
                          encode=lambda x, mode="mean": x.float() / 127.5 - 1)
    method = load_method("mgd3", "toy")
    assert (method.cfg["discovery_flip"], method.cfg["discovery_crop"]) == (True, "adm")
    flipped = method.class_latents(ctx, gen, 0)
    plain = load_method("mgd3", "toy", {"discovery_flip": False}).class_latents(ctx, gen, 0)
    assert torch.equal(plain, images.float() / 127.5 - 1)  # the ADM crop of an image at its own side: itself
    mirrored = torch.tensor([torch.equal(a, b.flip(-1)) and not torch.equal(a, b) for a, b in zip(flipped, plain)])
    same = torch.tensor([torch.equal(a, b) for a, b in zip(flipped, plain)])
    assert bool((mirrored | same).all()) and 10 < int(mirrored.sum()) < 30
    assert torch.equal(method.class_latents(ctx, gen, 0), flipped)  # seeded: the same images every run


# ---------------------------------------------------------------------------------------------------------
# k-center: the first centre is herding's first pick
# ---------------------------------------------------------------------------------------------------------


def test_kcenter_starts_at_the_image_nearest_the_class_mean():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(50, 8, generator=g)
    nearest = int((feats - feats.mean(0)).norm(dim=1).argmin())
    first = selection.first_centre(feats, "mean", g)
    assert first == nearest == selection.herding_order(feats, 1)[0]
    order = selection.kcenter_order(feats, 3, first)
    assert order[0] == nearest and order[1] == int((feats - feats[nearest]).norm(dim=1).argmax())
    draws = {selection.first_centre(feats, "random", torch.Generator().manual_seed(s)) for s in range(8)}
    assert len(draws) > 1  # the v2 rule: a seeded random start
    assert selection.KCenter.defaults["first_centre"] == "mean"
    with pytest.raises(ConfigError, match="first_centre"):
        selection.first_centre(feats, "median", g)


def test_herding_and_kcenter_select_in_the_datasets_feature_network():
    from ddbench.features import feature_identity
    from ddbench.method import load_method, resolve_method_config

    for name in ("herding", "kcenter"):
        card, cfg = resolve_method_config(name, "fashion")
        assert card["version"] >= 4 and cfg["feature_arch"] == "convnet3"
        assert cfg["feature_recipe"] == "shared" and cfg["feature_network"] == feature_identity("fashion")
        assert cfg["feature_network"]["recipe"]["subset"] == 10000  # v4 = v2's network: 6 epochs on a 10k subset
        v3 = {"feature_recipe": {"epochs": 10, "batch_size": 256, "lr": 0.01, "subset": None}}  # the DC rule
        assert load_method(name, "fashion", v3).cfg["feature_recipe"]["subset"] is None  # still selectable
        assert "feature_network" not in load_method(name, "fashion", v3).cfg


def test_mgd3_does_not_flip_the_embedded_data():
    """Digits and clothes are not mirror-symmetric: v3 discovers their modes unflipped; ImageNet keeps the flip."""
    from ddbench.method import resolve_method_config

    card, _ = resolve_method_config("mgd3", "digits")
    assert int(card["version"]) >= 3
    assert {d: resolve_method_config("mgd3", d)[1]["discovery_flip"] for d in ("digits", "fashion", "mnist", "woof",
                                                                              "imagenet1k")} == \
        {"digits": False, "fashion": False, "mnist": False, "woof": True, "imagenet1k": True}
