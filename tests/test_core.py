"""Registry, configuration and distilled-set I/O."""

import copy
from pathlib import Path

import pytest
import torch

from ddbench.config import apply_overrides, config_hash, parse_int_list, parse_overrides
from ddbench.distilled import DistilledSet
from ddbench.errors import ConfigError, DataError
from ddbench.registry import Registry


def test_registry_lazy_targets_duplicates_and_suggestions():
    reg = Registry("method")
    reg.register("herding", "ddbench.config:config_hash")
    assert reg.get("herding") is config_hash
    with pytest.raises(ValueError):
        reg.register("herding", "x:y")
    with pytest.raises(ConfigError, match="Did you mean herding"):
        reg.get("hearding")


def test_overrides_parse_types_and_reject_unknown_keys():
    over = parse_overrides(["epochs=5", "opt.lr=0.1", "archs=[a, b]", "name=x"])
    assert over == {"epochs": 5, "opt": {"lr": 0.1}, "archs": ["a", "b"], "name": "x"}
    cfg = apply_overrides({"epochs": 300, "opt": {"lr": 0.01, "wd": 5e-4}, "archs": [], "name": ""}, over)
    assert cfg["opt"] == {"lr": 0.1, "wd": 5e-4}
    with pytest.raises(ConfigError, match="Did you mean epochs"):
        apply_overrides({"epochs": 1}, {"epoch": 2})
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


CARD = {"epochs": 300, "opt": {"lr": 0.01}, "amp": True, "name": "dc", "scale": 0.5, "channels": 3, "betas": [0.5, 0.9],
        "resize": None}
RULES = {"epochs": "int>=1", "opt": {"lr": "float>=0"}, "amp": "bool", "name": "str", "scale": "prob",
         "channels": "int>=1 | choice[all]", "betas": "tuple[prob, prob]", "resize": "int>=1?"}


def _validated(over):
    from ddbench.schema import validate

    cfg = apply_overrides(copy.deepcopy(CARD), over)
    validate(cfg, RULES, where="card dc", overridden=over, card=CARD)
    return cfg


@pytest.mark.parametrize("over, message", [
    ({"epochs": "abc"}, "--set epochs='abc': expected a whole number ≥ 1 (card dc has 300)"),
    ({"epochs": 0}, "--set epochs=0: expected a whole number ≥ 1"),
    ({"epochs": 2.5}, "--set epochs=2.5: expected a whole number ≥ 1 (card dc has 300)"),
    ({"epochs": True}, "--set epochs=True: expected a whole number ≥ 1"),
    ({"opt": {"lr": -0.1}}, "--set opt.lr=-0.1: expected a number ≥ 0"),
    ({"opt": {"lr": "fast"}}, "--set opt.lr='fast': expected a number ≥ 0 (card dc has 0.01)"),
    ({"opt": 3}, "--set opt=3: expected a mapping of lr"),
    ({"amp": 1}, "--set amp=1: expected true or false"),
    ({"scale": 7}, "--set scale=7: expected a number in 0..1 (card dc has 0.5)"),
    ({"scale": [1]}, "--set scale=[1]: expected a number in 0..1"),
    ({"channels": "some"}, "--set channels='some': expected a whole number ≥ 1, or the word all"),
    ({"betas": 0.5}, "--set betas=0.5: expected a list of 2 entries: (a number in 0..1), (a number in 0..1)"),
    ({"betas": [0.5]}, "--set betas=[0.5]: expected a list of 2 entries"),
    ({"resize": "big"}, "--set resize='big': expected a whole number ≥ 1, or null"),
    ({"nosuch": {"key": 1}}, "Known keys: amp, betas, channels, epochs, name, opt, resize, scale."),
])
def test_override_values_are_checked_against_the_declared_rules(over, message):
    with pytest.raises(ConfigError) as e:
        _validated(over)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_allowed_values_pass_and_every_bad_value_gets_its_own_line():
    ok = _validated({"epochs": 3, "opt": {"lr": 1}, "amp": False, "channels": "all", "resize": None, "scale": 0})
    assert ok["opt"]["lr"] == 1 and ok["channels"] == "all" and ok["resize"] is None  # a word where the rule has one
    with pytest.raises(ConfigError) as e:
        _validated({"epochs": 0, "amp": "yes"})
    assert str(e.value).splitlines() == ["--set epochs=0: expected a whole number ≥ 1 (card dc has 300)",
                                         "--set amp='yes': expected true or false (card dc has True)"]
    with pytest.raises(ConfigError, match="has no settings to override"):
        apply_overrides({}, {"nosuch": {"key": 1}}, where="method random")


def test_a_card_value_that_breaks_its_rule_or_has_no_rule_is_named_as_the_cards():
    from ddbench.schema import validate

    with pytest.raises(ConfigError) as e:
        validate({**CARD, "epochs": -1, "extra": 1}, RULES, where="card dc")
    lines = str(e.value).splitlines()
    assert lines[0] == "card dc: epochs=-1 in the card: expected a whole number ≥ 1; correct the card"
    assert lines[1].startswith("card dc: extra=1 in the card has no declared rule; declare one in the `schema`")
    assert lines[1].endswith("; known keys: amp, betas, channels, epochs, name, opt, resize, scale")


@pytest.mark.parametrize("items, message", [
    (["a=1", "a.b=2"], "--set a.b=2: a was already set to 1 by an earlier --set"),
    (["a.b=2", "a=1"], "--set a=1: a already has sub-keys from an earlier --set"),
])
def test_a_key_given_both_a_value_and_sub_keys_is_one_line(items, message):
    with pytest.raises(ConfigError) as e:
        parse_overrides(items)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert parse_overrides(["r={epochs: 1}", "r.subset=5"]) == {"r": {"epochs": 1, "subset": 5}}


def test_int_lists_refuse_a_number_given_twice():
    assert parse_int_list("0-2,5") == [0, 1, 2, 5]
    for text in ("0,0", "0-2,1"):
        with pytest.raises(ConfigError, match="more than once; list each value once"):
            parse_int_list(text)


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def _toy_set(seed=0, channels=3):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (6, channels, 8, 8), generator=g, dtype=torch.uint8)
    return DistilledSet(images, torch.tensor([0, 0, 1, 1, 2, 2]), ("n01", "n02", "n03"), {"method": "toy"})


@pytest.mark.parametrize("channels", [1, 3])
def test_distilled_set_round_trip_is_lossless(tmp_path, channels):
    dset = _toy_set(channels=channels)
    digest = dset.save(tmp_path / "set")
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["manifest.json", "n01", "n02", "n03"]
    back = DistilledSet.load(tmp_path / "set")
    assert torch.equal(back.images, dset.images) and torch.equal(back.labels, dset.labels)
    assert back.sha256() == digest and back.ipc == 2
    assert _toy_set(seed=1).sha256() != digest


def test_tampered_file_is_detected(tmp_path):
    _toy_set().save(tmp_path / "set")
    (tmp_path / "set" / "n02" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="sha256"):
        DistilledSet.load(tmp_path / "set")


def test_foreign_imagefolder_uses_the_given_class_order(tmp_path):
    dset = _toy_set()
    dset.save(tmp_path / "set")
    (tmp_path / "set" / "manifest.json").unlink()
    back = DistilledSet.load(tmp_path / "set", classes=("n03", "n01", "n02"))
    # folder n03 now has label 0: the class list, not the sorted folders, defines labels
    assert back.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(back.images[:2], dset.images[4:])
    with pytest.raises(DataError, match="not in the dataset's class list"):
        DistilledSet.load(tmp_path / "set", classes=("n01", "n02"))


def test_vico_tensor_import(tmp_path):
    images = torch.randn(4, 3, 8, 8)
    torch.save({"data": [[images, torch.tensor([0, 1, 0, 1])]]}, tmp_path / "res.pt")
    dset = DistilledSet.from_tensors(tmp_path / "res.pt", ("a", "b"))
    assert dset.images.dtype == torch.uint8 and dset.labels.tolist() == [0, 1, 0, 1]
    assert int(dset.images[0].max()) == 255 and int(dset.images[0].min()) == 0


def test_atomic_save_leaves_no_partial_set(tmp_path, monkeypatch):
    dset = _toy_set()
    import ddbench.distilled as mod

    calls = {"n": 0}
    real = mod._png

    def failing(img):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("killed")
        return real(img)

    monkeypatch.setattr(mod, "_png", failing)
    with pytest.raises(RuntimeError):
        dset.save(tmp_path / "set")
    assert list(tmp_path.iterdir()) == []  # neither the set nor a temporary folder remains


def test_a_test_session_never_writes_the_users_cache(tmp_path, tmp_path_factory):
    """tests/conftest.py: a user's DDBENCH_CACHE is ignored; only DDBENCH_TEST_CACHE opts into a shared cache."""
    import os

    from conftest import session_cache
    from ddbench.method import default_cache_dir

    user = {"DDBENCH_CACHE": str(tmp_path / "real-cache")}
    assert session_cache(user, lambda: tmp_path / "fresh") == str(tmp_path / "fresh")
    shared = {**user, "DDBENCH_TEST_CACHE": str(tmp_path / "ci-cache")}
    assert session_cache(shared, lambda: tmp_path / "fresh") == str(tmp_path / "ci-cache")
    # this session: the opted-in shared cache, or a folder under pytest's temporary root
    live = Path(os.environ["DDBENCH_CACHE"])
    assert default_cache_dir() == live
    if os.environ.get("DDBENCH_TEST_CACHE"):
        assert live == Path(os.environ["DDBENCH_TEST_CACHE"]).resolve()
    else:
        assert tmp_path_factory.getbasetemp() in live.parents
