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
    from ddbench.teachers.classifier import resolve_recipe, teacher_dir, train_teacher

    spec = _digits()
    recipe = resolve_recipe(spec, {"epochs": 1})
    marker = plant(teacher_dir(tmp_path / "cache", spec, "convnet3", recipe) / "weights.pt")
    train_teacher(spec, lambda: None, "convnet3", {"epochs": 1}, "cpu", tmp_path / "cache")
    return marker


def teacher_cache_checkpoint(tmp_path, plant):
    from ddbench.teachers.classifier import resolve_recipe, teacher_dir, train_teacher

    spec = _digits()
    recipe = resolve_recipe(spec, {"epochs": 1})
    marker = plant(teacher_dir(tmp_path / "cache", spec, "convnet3", recipe) / "checkpoint.pt")
    train = load_split(spec, "train", cache_dir=tmp_path / "data")
    train_teacher(spec, train, "convnet3", {"epochs": 1}, "cpu", tmp_path / "cache")
    return marker


def user_teacher(tmp_path, plant):
    from ddbench.teachers.classifier import load_teacher

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


# ---------------------------------------------------------------------------------------------- the source guard

# Calls that unpickle: torch's loaders unless weights_only=True, numpy's with allow_pickle=True, pickle's always.
TORCH_LOADS = {"torch.load", "torch.serialization.load"}
PICKLE_LOADS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "dill.load",
                "dill.loads", "joblib.load", "pandas.read_pickle"}
NUMPY_LOADS = {"numpy.load"}
# Reviewed exceptions, (file, call) -> why it is safe.
ALLOWED = {("ddbench/engine/ddp.py", "pickle.loads"): "rank 0's return value, written by a rank this process spawned into "
                                                 "a private temporary directory it created"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted module path, from every import of the file (`import pickle as p`: p -> pickle;
    `from torch import load as L`: L -> torch.load; `import numpy as np`: np -> numpy)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _keyword(node: ast.Call, name: str):
    """The constant value of keyword `name` (None when absent; ... when it is not a constant)."""
    for k in node.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else ...
    return None


def unsafe_loads(source: str) -> list[tuple[int, str]]:
    """(line, resolved call) of every call in `source` that can unpickle arbitrary objects."""
    tree = ast.parse(source)
    aliases, found = _aliases(tree), []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        head, _, rest = ast.unparse(node.func).partition(".")
        name = aliases.get(head, head) + (f".{rest}" if rest else "")
        if (name in PICKLE_LOADS or name in TORCH_LOADS and _keyword(node, "weights_only") is not True
                or name in NUMPY_LOADS and _keyword(node, "allow_pickle") not in (None, False)):
            found.append((node.lineno, name))
    return found


UNSAFE_SNIPPETS = [
    "import torch\ntorch.load('f')",
    "import torch\ntorch.load('f', weights_only=False)",
    "import torch as T\nT.load('f')",
    "from torch import load as L\nL('f')",
    "import torch\ntorch.serialization.load('f')",
    "from torch.serialization import load\nload('f')",
    "import pickle\npickle.load(open('f', 'rb'))",
    "import pickle as p\np.loads(b'')",
    "from pickle import loads\nloads(b'')",
    "import numpy as np\nnp.load('f', allow_pickle=True)",
    "import numpy\nflag = True\nnumpy.load('f', allow_pickle=flag)",
]
SAFE_SNIPPETS = [
    "import torch\ntorch.load('f', weights_only=True)",
    "from torch import load as L\nL('f', map_location='cpu', weights_only=True)",
    "import numpy as np\nnp.load('f')",
    "import numpy as np\nnp.load('f', allow_pickle=False)",
    "from ddbench.protocol import load_protocol\nload_protocol('dc')",
    "import json\njson.loads('{}')",
]


@pytest.mark.parametrize("source", UNSAFE_SNIPPETS)
def test_the_guard_sees_an_unsafe_load_under_any_name(source):
    assert len(unsafe_loads(source)) == 1


@pytest.mark.parametrize("source", SAFE_SNIPPETS)
def test_the_guard_passes_safe_loads(source):
    assert unsafe_loads(source) == []


def test_every_load_in_the_tree_is_weights_only():
    """The sites above are the known ones; this finds any other: a call that can unpickle code must be
    weights-only, or a reviewed exception in ALLOWED."""
    offenders, used = [], set()
    for folder in ("ddbench", "methods", "protocols", "benchmarks"):
        for file in (ROOT / folder).rglob("*.py"):
            rel = str(file.relative_to(ROOT))
            for line, name in unsafe_loads(file.read_text()):
                if (rel, name) in ALLOWED:
                    used.add((rel, name))
                else:
                    offenders.append(f"{rel}:{line} {name}")
    assert offenders == []
    assert used == set(ALLOWED)  # an exception no longer needed is removed from the list


def test_a_pickled_bin_in_a_vae_folder_is_refused(tmp_path, plant):
    """A diffusers VAE folder with `diffusion_pytorch_model.bin` (a torch pickle) instead of safetensors."""
    from diffusers import AutoencoderKL

    from ddbench.diffusion.vae import load_vae

    AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                  norm_num_groups=4).save_pretrained(tmp_path / "vae", safe_serialization=False)
    weights = tmp_path / "vae" / "diffusion_pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    marker = plant(weights, wrap=lambda p: {**state, "extra": p})
    with pytest.raises(DataError, match=r"cannot read VAE weights .*diffusion_pytorch_model.bin: it holds Python "
                                        r"objects \((builtins\.)?exec\)"):
        load_vae(tmp_path / "vae")
    assert not marker.exists()
