"""The dataset's feature network: shipped for digits and fashion (sha256-checked), shared by herding, k-center,
the set metrics and the generator judge, and part of the identity of every cell that uses it."""
import json
import shutil

import pytest
import torch

from ddbench import features
from ddbench.data import get_dataset, load_split
from ddbench.errors import DataError


def _no_training():
    raise AssertionError("the shipped feature network must be used, not a training on the real data")


@pytest.mark.parametrize("name", ["digits", "fashion"])
def test_the_embedded_datasets_ship_a_verified_feature_network(name, tmp_path):
    if name == "fashion" and not (features.WEIGHTS_DIR / "fashion-convnet3.pt").exists():
        pytest.skip("fashion's network is not shipped in this checkout")
    spec = get_dataset("digits") if name == "digits" else _fashion_spec()
    identity = features.feature_identity(name)
    path = features.WEIGHTS_DIR / features.shipped_name(name)
    assert identity["sha256"] == features.file_sha256(path) and path.stat().st_size < 4_000_000
    net = features.feature_network(spec, "cpu", tmp_path, _no_training)
    assert net(torch.zeros(2, 1, spec.resolution, spec.resolution)).shape == (2, 10)
    assert not (tmp_path / "teachers").exists()  # nothing trained, nothing cached


def _fashion_spec():
    """fashion's spec without its IDX folder (loading the network reads no data)."""
    from ddbench.data.embedded import FASHION_CLASSES, FASHION_MEAN, FASHION_STD
    from ddbench.data.spec import DatasetSpec

    return DatasetSpec("fashion", FASHION_CLASSES, 28, 1, FASHION_MEAN, FASHION_STD, "embedded", None, None, 28)


@pytest.fixture
def own_weights_dir(tmp_path, monkeypatch):
    """An empty package weights folder whose card trains digits' network in one epoch."""
    folder = tmp_path / "weights"
    folder.mkdir()
    card = {"version": 1, "arch": "convnet3", "recipes": {"digits": {"epochs": 1, "batch_size": 256, "lr": 0.01}},
            "default": {"epochs": 1}}
    (folder / "features.yaml").write_text(json.dumps(card))
    monkeypatch.setattr(features, "WEIGHTS_DIR", folder)
    return folder


def test_ship_then_load_and_refuse_a_changed_file(own_weights_dir, tmp_path):
    spec, cache = get_dataset("digits"), tmp_path / "cache"
    train = load_split(spec, "train", cache_dir=cache / "data")
    assert features.feature_identity("digits")["sha256"] is None  # nothing shipped: trained from the recipe
    trained = features.feature_network(spec, "cpu", cache, train)
    dest = features.ship(spec, cache)
    assert features.feature_identity("digits")["sha256"] == features.file_sha256(dest)
    loaded = features.feature_network(spec, "cpu", tmp_path / "empty", _no_training)
    for k, v in trained.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k

    side = json.loads(dest.with_suffix(".json").read_text())
    dest.with_suffix(".json").write_text(json.dumps({**side, "resolution": 32}))
    with pytest.raises(DataError, match="another resolution .* --ship"):
        features.feature_network(spec, "cpu", cache, _no_training)
    dest.with_suffix(".json").write_text(json.dumps(side))
    raw = bytearray(dest.read_bytes())
    raw[-100] ^= 1
    dest.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="sha256 .* changed or damaged"):
        features.feature_network(spec, "cpu", cache, _no_training)
    dest.unlink()
    with pytest.raises(DataError, match="is missing; reinstall ddbench"):
        features.feature_network(spec, "cpu", cache, _no_training)


def test_herding_kcenter_and_the_set_metrics_share_the_network_and_its_identity(own_weights_dir, tmp_path):
    from ddbench.records.cellhash import cell_config_hash
    from ddbench.method import Context, load_method
    from ddbench.metrics import recorded_set_metrics
    from ddbench.protocol import load_protocol

    spec, cache = get_dataset("digits"), tmp_path / "cache"
    train = load_split(spec, "train", cache_dir=cache / "data")
    features.feature_network(spec, "cpu", cache, train)
    features.ship(spec, cache)
    shutil.rmtree(cache / "teachers")  # from here on only the shipped file can serve
    herding, kcenter = load_method("herding", "digits"), load_method("kcenter", "digits")
    sha = features.feature_identity("digits")["sha256"]
    assert herding.cfg["feature_network"]["sha256"] == kcenter.cfg["feature_network"]["sha256"] == sha
    ctx = Context(spec, torch.device("cpu"), cache, lambda: train)
    dset = herding.distill(ctx, ipc=2, seed=0)
    assert kcenter.distill(ctx, ipc=1, seed=0).images.equal(dset.images[::2])  # both start at the class mean
    m = recorded_set_metrics(dset, tmp_path, spec, lambda: train, "cpu", cache, space="convnet3")
    assert m["network_sha256"] == sha and not (cache / "teachers").exists()

    info = {"method_version": herding.version, "method_config": herding.cfg, "method_kind": "selection"}
    before = cell_config_hash(info, load_protocol("dc"), spec, {}, torch.device("cpu"))
    (own_weights_dir / "SHA256SUMS").write_text(f"{'0' * 64}  digits-convnet3.pt\n")  # a re-made network
    again = load_method("herding", "digits")
    info = {**info, "method_config": again.cfg}
    assert cell_config_hash(info, load_protocol("dc"), spec, {}, torch.device("cpu")) != before
    assert again.distill_key(2, 0, {}) != herding.distill_key(2, 0, {})
