"""Distilled-set metrics: sanity on sets whose answers are known (the real data itself, copies, shifted sets)."""
import math

import pytest
import torch

from ddbench.data import Split
from ddbench.distilled import DistilledSet
from ddbench.errors import ConfigError
from ddbench.metrics import (class_metrics, feature_recipe, match_images, median_distance, metrics_from_features,
                             mmd2_unbiased, pixel_features, resolve_space, set_metrics)


def _blobs(n_per_class=60, classes=3, dim=8, seed=0):
    """Gaussian blobs, one per class (features n×dim, labels n)."""
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=g), labels


def test_the_real_data_itself_has_zero_mmd_and_perfect_coverage():
    real, labels = _blobs()
    m = metrics_from_features(real, labels, real, labels, 3)
    assert abs(m["overall"]["mmd2"]) < 0.05 and abs(m["overall"]["mmd2_class_mean"]) < 0.05
    assert m["overall"]["coverage"] < 1e-6  # every real image is in the set
    assert m["overall"]["diversity"] > 0.1


def test_mmd_grows_as_the_set_shifts_away():
    real, labels = _blobs()
    g = torch.Generator().manual_seed(1)
    idx = torch.cat([torch.randperm(60, generator=g)[:10] + 60 * c for c in range(3)])
    values = []
    for shift in (0.0, 1.0, 3.0):
        m = metrics_from_features(real[idx] + shift, labels[idx], real, labels, 3)
        values.append(m["overall"]["mmd2_class_mean"])
    assert values[0] < values[1] < values[2]
    assert values[0] < 0.1 < values[2]


def test_identical_images_have_minimal_diversity_and_poor_coverage():
    real, labels = _blobs()
    copies = real[[0] * 5]
    spread = real[[0, 11, 23, 37, 59]]
    same = class_metrics(copies, real[:60], torch.Generator().manual_seed(0))
    varied = class_metrics(spread, real[:60], torch.Generator().manual_seed(0))
    assert same["diversity"] < 1e-6 < varied["diversity"]
    assert same["coverage"] > varied["coverage"]


def test_representativeness_prefers_central_images_to_outliers():
    real, _ = _blobs(n_per_class=200, classes=1)
    centre = real.mean(0)
    order = (real - centre).norm(dim=1).argsort()
    g = torch.Generator().manual_seed(0)
    central = class_metrics(real[order[:5]], real, g)
    outliers = class_metrics(real[order[-5:]], real, g)
    assert central["representativeness"] < outliers["representativeness"]


def test_mmd_estimator_is_unbiased_for_identical_distributions():
    g = torch.Generator().manual_seed(0)
    vals = [mmd2_unbiased(torch.randn(40, 4, generator=g), torch.randn(40, 4, generator=g), 2.0) for _ in range(30)]
    assert abs(sum(vals) / len(vals)) < 0.01  # mean ≈ 0 (the biased V-statistic would be clearly > 0)
    assert min(vals) < 0  # unbiased: single estimates can be negative
    assert median_distance(torch.zeros(5, 3)) == 1.0  # degenerate data: a usable bandwidth, no division by 0


def test_one_image_per_class_has_undefined_diversity():
    real, labels = _blobs()
    m = metrics_from_features(real[[0, 60, 120]], labels[[0, 60, 120]], real, labels, 3)
    assert all(math.isnan(pc["diversity"]) for pc in m["per_class"])
    assert math.isnan(m["overall"]["diversity"])


def test_set_metrics_in_pixel_space_resizes_and_checks_classes():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (40, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.arange(2).repeat(20)
    real = Split(imgs, labels, [f"train/{i}" for i in range(40)])

    class Spec:
        name, classes = "toy", ("a", "b")

    big = torch.nn.functional.interpolate(imgs[:6].float(), size=16, mode="nearest").to(torch.uint8)
    dset = DistilledSet(big, labels[:6], ("a", "b"), {"method": "toy"})
    assert match_images(big, imgs).shape[-2:] == (8, 8)
    m = set_metrics(dset, Spec, real, "cpu", "/tmp", space="pixels")
    assert m["space"] == "pixels" and len(m["per_class"]) == 2
    assert pixel_features(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, 3 * 32 * 32)
    Spec.kind = "embedded"
    assert resolve_space(Spec, "auto") == "convnet3" and feature_recipe(Spec, "pixels") is None
    Spec.kind = "imagenet"
    assert resolve_space(Spec, "auto") == "resnetap10" and feature_recipe(Spec, "resnetap10")["epochs"] == 30
    with pytest.raises(ConfigError, match="feature space"):
        resolve_space(Spec, "inception")


def test_inspect_command_prints_the_manifest_and_the_metrics(tmp_path, capsys):
    import json

    from ddbench.cli import main
    from ddbench.data import get_dataset, load_split

    spec = get_dataset("digits")
    train = load_split(spec, "train", cache_dir=tmp_path / "data")
    idx = torch.cat([(train.labels == c).nonzero().flatten()[:3] for c in range(10)])
    dset = DistilledSet(train.images[idx], train.labels[idx], spec.classes, {"method": "toy-pick", "seed": 7})
    digest = dset.save(tmp_path / "set")
    rc = main(["inspect", str(tmp_path / "set"), "--dataset", "digits", "--space", "pixels", "--per-class",
               "--cache-dir", str(tmp_path), "--device", "cpu", "--json", str(tmp_path / "m.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "toy-pick" in out and digest in out and "representativeness" in out and "per class" in out
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["summary"]["seed"] == 7 and saved["summary"]["images_per_class"] == [3]
    assert saved["metrics"]["overall"]["coverage"] > 0  # 3 real images per class do not cover the class


def test_every_distilled_set_is_recorded_with_its_metrics(tmp_path, monkeypatch):
    """runner.run computes the metrics once per set, keeps them beside the set and in each result record."""
    import json

    from ddbench.metrics import METRICS_FILE
    from ddbench.runner import RunRequest, run

    monkeypatch.setenv("DDBENCH_SET_METRICS", "pixels")
    req = RunRequest("random", "digits", 2, eval_seeds=[0, 1], protocol_overrides={"epochs": 2},
                     out=tmp_path, device="cpu")
    records = run(req, log=lambda *_: None)
    (folder,) = (tmp_path / "distilled" / "random" / "digits").iterdir()
    saved = json.loads((folder / METRICS_FILE).read_text())
    assert saved["space"] == "pixels" and len(saved["per_class"]) == 10
    for r in records:
        assert r["extra"]["set_metrics"]["space"] == "pixels"
        assert r["extra"]["set_metrics"]["coverage"] == pytest.approx(saved["overall"]["coverage"])
    # a second run with a new evaluation seed reuses the set and its metrics file
    (folder / METRICS_FILE).write_text(json.dumps({**saved, "overall": {**saved["overall"], "coverage": -1.0}}))
    again = run(RunRequest("random", "digits", 2, eval_seeds=[2], protocol_overrides={"epochs": 2},
                           out=tmp_path, device="cpu"), log=lambda *_: None)
    assert again[0]["extra"]["set_metrics"]["coverage"] == -1.0


def test_set_metrics_option_rejects_unknown_spaces_and_can_be_switched_off(monkeypatch):
    from ddbench.metrics import metrics_space_option, recorded_set_metrics

    monkeypatch.delenv("DDBENCH_SET_METRICS", raising=False)
    assert metrics_space_option(None) == "auto"
    with pytest.raises(ConfigError, match="set-metrics"):
        metrics_space_option("tsne")
    assert recorded_set_metrics(None, None, None, None, None, None, "off") is None


def test_a_one_image_per_class_set_is_recorded_with_diversity_null(tmp_path):
    from ddbench.runner import RunRequest, run

    (record,) = run(RunRequest("random", "digits", 1, protocol_overrides={"epochs": 1}, out=tmp_path, device="cpu"),
                    log=lambda *_: None)
    assert record["extra"]["set_metrics"]["diversity"] is None
    assert record["extra"]["set_metrics"]["mmd2"] is not None
