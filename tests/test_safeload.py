"""A pickle that runs code, planted where ddbench reads a torch file, runs nothing: every load is weights-only.

Each case plants the same malicious file at one load site and calls the code that reads it, with
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (which makes torch.load run pickles whose call site leaves weights_only
unset). The payload would create a marker file; the marker must not exist afterwards.
"""
from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest
import torch

from ddbench.data import get_dataset, load_split
from ddbench.errors import DataError

ROOT = Path(__file__).resolve().parent.parent


class Payload:
    """Unpickling this calls builtins.exec, which writes `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.fixture
def plant(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "PAYLOAD_RAN"

    def write(path: Path, wrap=lambda p: p) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(wrap(Payload(marker)), path)
        return marker
    return write


def test_the_payload_does_run_when_loaded_unsafely(tmp_path, plant):
    """The planted file is a real exploit: an unsafe load runs it (so the cases below can fail)."""
    marker = plant(tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt")  # weights_only unset + TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1: unsafe
    assert marker.read_text() == "ran"


# ---------------------------------------------------------------------------------------------- load sites

def _digits():
    return get_dataset("digits")


def teacher_cache_weights(tmp_path, plant):
    from ddbench.teacher import resolve_recipe, teacher_dir, train_teacher

    spec = _digits()
    recipe = resolve_recipe(spec, {"epochs": 1})
    marker = plant(teacher_dir(tmp_path / "cache", spec, "convnet3", recipe) / "weights.pt")
    train_teacher(spec, lambda: None, "convnet3", {"epochs": 1}, "cpu", tmp_path / "cache")
    return marker


def teacher_cache_checkpoint(tmp_path, plant):
    from ddbench.teacher import resolve_recipe, teacher_dir, train_teacher

    spec = _digits()
    recipe = resolve_recipe(spec, {"epochs": 1})
    marker = plant(teacher_dir(tmp_path / "cache", spec, "convnet3", recipe) / "checkpoint.pt")
    train = load_split(spec, "train", cache_dir=tmp_path / "data")
    train_teacher(spec, train, "convnet3", {"epochs": 1}, "cpu", tmp_path / "cache")
    return marker


def user_teacher(tmp_path, plant):
    from ddbench.teacher import load_teacher

    marker = plant(tmp_path / "teacher.pth", wrap=lambda p: {"state_dict": {"w": p}})
    load_teacher(tmp_path / "teacher.pth", "convnet3", _digits())
    return marker


def cached_features(tmp_path, plant):
    from ddbench.features import real_features
    from ddbench.method import Context

    spec = _digits()
    train = load_split(spec, "train", cache_dir=tmp_path / "data")
    ctx = Context(spec, torch.device("cpu"), tmp_path / "cache", lambda: train)
    folder = ctx.cache_path("features", {"arch": "convnet3", "recipe": {}, "n": len(train.labels)})
    marker = plant(folder / "features.pt")
    real_features(ctx, "convnet3", {})
    return marker


def mgd3_latents(tmp_path, plant):
    from ddbench.methods.mgd3 import MGD3

    method = MGD3.__new__(MGD3)
    method._discovery_dir = lambda ctx, gen: tmp_path
    marker = plant(tmp_path / "latents-class0000.pt")
    method.class_latents(None, None, 0)
    return marker


def mgd3_modes(tmp_path, plant):
    from ddbench.methods.mgd3 import MGD3

    method = MGD3.__new__(MGD3)
    method._discovery_dir = lambda ctx, gen: tmp_path
    method.cfg = {"modes": "kmeans"}
    marker = plant(tmp_path / "modes-kmeans-class0000-k2.pt")
    method.class_modes(None, None, 0, 2)
    return marker


def soft_labels_of_a_saved_set(tmp_path, plant):
    from ddbench.distilled import DistilledSet

    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    dset = DistilledSet(images, torch.tensor([0, 1]), ("a", "b"), {}, torch.eye(2))
    dset.save(tmp_path / "set")
    marker = plant(tmp_path / "set" / "soft_labels.pt")
    DistilledSet.load(tmp_path / "set")
    return marker


def vico_file(tmp_path, plant):
    from ddbench.distilled import DistilledSet

    marker = plant(tmp_path / "vico.pt")
    DistilledSet.from_tensors(tmp_path / "vico.pt", ("a", "b"))
    return marker


def mtt_folder(tmp_path, plant):
    from ddbench.distilled import DistilledSet

    marker = plant(tmp_path / "mtt" / "images_best.pt")
    torch.save(torch.tensor([0, 1]), tmp_path / "mtt" / "labels_best.pt")
    DistilledSet.from_tensors(tmp_path / "mtt", ("a", "b"))
    return marker


def dit_checkpoint(tmp_path, plant):
    from ddbench.diffusion.load import load_dit

    marker = plant(tmp_path / "DiT-XL-2-256x256.pt", wrap=lambda p: {"ema": {"x_embedder.proj.weight": p}})
    load_dit(tmp_path / "DiT-XL-2-256x256.pt", "cpu")
    return marker


def trained_generator(tmp_path, plant):
    from ddbench.diffusion.train import load_trained

    marker = plant(tmp_path / "generator.pt")
    load_trained(tmp_path / "generator.pt")
    return marker


def decode_cache(tmp_path, plant):
    from ddbench.data.cache import _read

    marker = plant(tmp_path / "digits-train.pt")
    with pytest.warns(UserWarning):  # an unreadable cache is decoded again
        assert _read(tmp_path / "digits-train.pt", ["train/0"]) is None
    return marker


SITES = [teacher_cache_weights, teacher_cache_checkpoint, user_teacher, cached_features, mgd3_latents, mgd3_modes,
         soft_labels_of_a_saved_set, vico_file, mtt_folder, dit_checkpoint, trained_generator, decode_cache]


@pytest.mark.parametrize("site", SITES, ids=[s.__name__ for s in SITES])
def test_a_planted_pickle_runs_nothing(site, tmp_path, plant):
    try:
        marker = site(tmp_path, plant)
    except DataError as e:  # refused with one line naming the file, without PyTorch's unsafe advice
        assert "\n" not in str(e) and "weights_only" not in str(e) and str(tmp_path) in str(e)
        marker = tmp_path / "PAYLOAD_RAN"
    assert not marker.exists()


def test_every_torch_load_in_the_tree_is_weights_only():
    """The sites above are the known ones; this finds any other: torch.load must say weights_only=True."""
    offenders = []
    for folder in ("ddbench", "methods", "protocols", "benchmarks"):
        for file in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "pickle.load"):
                    safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                               for k in node.keywords)
                    if not safe:
                        offenders.append(f"{file.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
