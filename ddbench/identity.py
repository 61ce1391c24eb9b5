"""What identifies a distilled set and a result: weights by content, the precision actually used, the numerics code.

A cached set or a stored record answers a request only when everything that can move its numbers is the same
(docs/results-schema.md, "Identity"). Three of those inputs are not plain config values, and are computed here:

- **weights by content** — `content_sha256(path)`: sha256 of a file's bytes (a folder: of every file, in sorted
  relative-path order), remembered in `<cache>/hashes.json` by (absolute path, size, mtime_ns), so a 2.7 GB DiT
  is read once, and a retrained teacher saved under the same name and size is still another file;
- **the precision actually used** — `resolved_precision(cfg, device)`: every precision switch of a resolved
  config (`precision:`, `autocast:`, `amp:`) as it resolves on the device (`precision: bf16` runs in fp32 on the
  CPU; `autocast: auto` is bf16 on CUDA only); the protocols and the samplers run what these same functions
  say. A method that trains networks with the engine (`ddbench.engine.train`: bf16 autocast on CUDA by default) also
  gets `engine.amp`;
- **the numerics code** — `numerics_fingerprint(modules)`: sha256 over the source of the modules that compute a
  method's or a protocol's numbers (declared once, as the class attribute `numerics`), so a code change that can
  move a number makes a new cell instead of letting an old record answer.

`set_inputs(method, spec, device, options, cache_dir)` gathers them for a distilled set; the set's key and the
cell hash (`ddbench.records.cellhash`) both cover it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import torch

HASHES_FILE = "hashes.json"
_BLOCK = 1 << 20

# Modules every method's set and every protocol's number pass through (decoding, resizing, the listing of
# the images that make a split). Kept to code that computes numbers: no CLI, store or leaderboard module.
DATA_NUMERICS = ("ddbench.data.images", "ddbench.data.embedded", "ddbench.data.folders")
# Shared groups the `numerics` attributes of the methods and protocols are built from.
TRAIN_NUMERICS = ("ddbench.engine.train", "ddbench.engine.train_many", "ddbench.engine.augment", "ddbench.nets.build", "ddbench.nets.resnet",
                  "ddbench.engine.ddp")
TEACHER_NUMERICS = ("ddbench.teachers.classifier", "ddbench.teachers.rded", *TRAIN_NUMERICS)
DIFFUSION_NUMERICS = ("ddbench.diffusion.dit", "ddbench.diffusion.sampler", "ddbench.diffusion.schedule",
                      "ddbench.diffusion.fast", "ddbench.diffusion.hooks", "ddbench.diffusion.vae",
                      "ddbench.diffusion.load", "ddbench.diffusion.generator", "ddbench.diffusion.train",
                      "ddbench.distilled")


# ---------------------------------------------------------------------------------------------------------
# Weights by content
# ---------------------------------------------------------------------------------------------------------


def _read_sha256(path: Path) -> str:
    """sha256 of a file's bytes (the one place that reads a weights file in full for its identity)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


class HashCache:
    """sha256 of files remembered by (absolute path, size, mtime_ns) in one small JSON file.

    A changed size or modification time means a changed file: it is read again. Two processes writing at once
    may lose one entry (each write replaces the file atomically): the cost is one more read, never a wrong hash.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):  # absent or unreadable: it is a cache, start empty
            self.entries = {}
        if not isinstance(self.entries, dict):
            self.entries = {}

    def sha256(self, file: Path) -> str:
        file = Path(file).expanduser().resolve()
        st = file.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        entry = self.entries.get(str(file))
        if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        digest = _read_sha256(file)
        self.entries[str(file)] = {"stamp": stamp, "sha256": digest}
        self._write()
        return digest

    def _write(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(self.entries, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:  # a read-only cache folder: hashes are then recomputed next time, nothing else changes
            pass


def _cache_dir(cache_dir) -> Path:
    if cache_dir:
        return Path(cache_dir)
    from .method import default_cache_dir

    return default_cache_dir()


def content_sha256(path, cache_dir=None) -> str:
    """sha256 of a weights file, or of a folder (diffusers format): sha256 over "relative path, file sha256" of
    every file in sorted relative-path order. Cached under `<cache_dir>/hashes.json`."""
    p = Path(path).expanduser()
    cache = HashCache(_cache_dir(cache_dir) / HASHES_FILE)
    if not p.is_dir():
        return cache.sha256(p)
    h = hashlib.sha256()
    for f in sorted((f for f in p.rglob("*") if f.is_file()), key=lambda f: f.relative_to(p).as_posix()):
        h.update(f"{f.relative_to(p).as_posix()}\0{cache.sha256(f)}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# The data and the weights files a set is made from
# ---------------------------------------------------------------------------------------------------------


def dataset_identity(spec) -> dict:
    """What of a dataset can move a number: its name, class order, resolutions, channels and normalisation
    (not its root folder, which differs between machines holding the same data)."""
    identity = {"name": spec.name, "classes": list(spec.classes), "resolution": spec.resolution,
                "test_resolution": spec.test_resolution, "channels": spec.channels, "mean": list(spec.mean),
                "std": list(spec.std)}
    if spec.nonstandard:  # e.g. a fastai imagewoof2 download: other images, never one cell with ILSVRC-2012's
        identity["nonstandard"] = spec.nonstandard
    return identity


def file_identity(path, cache_dir=None) -> dict:
    """A user-supplied weights file or folder by its content: {"name", "sha256"} (sha256 of the bytes, a folder's
    files in sorted relative-path order; remembered by path, size and mtime in the cache: ddbench.identity).
    A retrained file saved under the same name and size is another file. A missing path has sha256 None."""
    p = Path(path).expanduser()
    return {"name": p.name, "sha256": content_sha256(p, cache_dir) if p.exists() else None}


def method_weights(method_kind: str, method_cfg: dict, spec, options: dict) -> dict[str, str]:
    """The user-supplied weights a method reads while it distils: the DiT and VAE of a diffusion method on an
    ImageNet subset, the teacher of an inversion method (sre2l, cudd). Part of the set's identity."""
    used = []
    if method_kind == "diffusion" and spec.kind == "imagenet":
        used += ["dit", "vae"]
    if method_kind == "inversion":
        used.append("teacher")
    return weight_paths(used, method_cfg, None, options)


def weight_paths(used: list[str], method_cfg: dict, protocol, options: dict) -> dict[str, str]:
    """The path of each weights kind in `used`: --dit / --vae / --teacher (options) > DDBENCH_<KIND> > the card."""
    out = {}
    for key in used:
        path = options.get(key) or os.environ.get(f"DDBENCH_{key.upper()}") or method_cfg.get(key)
        if key == "teacher":  # the card's own path wins where the method or protocol reads one
            card = protocol.card.get("teacher") if protocol is not None else None
            path = method_cfg.get("teacher_path") or (card.get("path") if isinstance(card, dict) else None) or path
        if path:
            out[key] = str(path)
    return out


# ---------------------------------------------------------------------------------------------------------
# The precision actually used
# ---------------------------------------------------------------------------------------------------------


def resolved_precision(cfg: Mapping, device) -> dict[str, str]:
    """{dotted key: "bf16" | "fp32"} for every precision switch of a resolved card or config on `device`.

    `precision:` (protocols, Minimax's fine-tuning) goes through `ddbench.protocol.precision_on`, `autocast:`
    (the samplers' fast path) through `ddbench.diffusion.fast.resolve_precision`: the functions the code runs."""
    from .diffusion.fast import resolve_precision
    from .protocol import precision_on

    device = torch.device(device)
    out = {}
    for key, value in _walk(cfg):
        name = key.rsplit(".", 1)[-1]
        if name == "precision":
            out[key] = precision_on(value, device)
        elif name == "autocast":
            out[key] = resolve_precision(value, device)
        elif name == "amp":  # the engine's switch: bf16 autocast on CUDA when true (ddbench.engine.train._autocast)
            out[key] = "bf16" if value and device.type == "cuda" else "fp32"
    return out


def _walk(d: Mapping, prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from _walk(v, key + ".")
        else:
            yield key, v


# ---------------------------------------------------------------------------------------------------------
# The numerics code
# ---------------------------------------------------------------------------------------------------------


def module_file(name: str) -> Path:
    """The installed source file of module `name` (e.g. "ddbench.engine.train")."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ModuleNotFoundError(f"numerics module {name!r} has no Python source file")
    return Path(spec.origin)


@lru_cache(maxsize=None)
def numerics_fingerprint(modules: tuple[str, ...]) -> str:
    """sha256 (16 hex) over the sources of `modules`, line endings normalised; independent of their order and
    of where the package is installed, so one version of the code has one fingerprint on every machine."""
    digests = sorted(hashlib.sha256(module_file(m).read_bytes().replace(b"\r\n", b"\n")).hexdigest()
                     for m in set(modules))
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16]


def numerics_of(obj) -> tuple[str, ...]:
    """The numerics modules a method or protocol (instance or class) declares, with the data modules."""
    return tuple(obj.numerics) + DATA_NUMERICS


# ---------------------------------------------------------------------------------------------------------
# A distilled set's inputs
# ---------------------------------------------------------------------------------------------------------


def set_inputs(method, spec, device, options: Mapping, cache_dir=None) -> dict:
    """Everything besides the method's config, IPC and seed that makes a set: the dataset identity, the content
    of every weights file the method reads (--dit, --vae, --teacher), the precision it resolves to on `device`,
    and its numerics fingerprint. Self-trained generators and teachers (embedded data) are identified by their
    cache keys, which are functions of the method config and the dataset (both covered here)."""
    weights = method_weights(method.card.get("kind", ""), method.cfg, spec, options)
    precision = resolved_precision(method.precision_config(spec.name), device)
    if set(TRAIN_NUMERICS) <= set(method.numerics):  # it trains networks with the engine's default (bf16 on CUDA)
        precision["engine.amp"] = "bf16" if torch.device(device).type == "cuda" else "fp32"
    return {"dataset": dataset_identity(spec),
            "weights": {k: file_identity(p, cache_dir) for k, p in sorted(weights.items())},
            "precision": precision, "numerics": numerics_fingerprint(numerics_of(method))}
