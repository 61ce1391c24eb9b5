"""The method adapter interface and the loading of method cards.

A method is one module in `methods/` with a class derived from `Method`, one YAML card `methods/<name>.yaml`
and one line in `methods/__init__.py:METHODS`. The card holds `version`, `citation`, `defaults` (the config),
per-dataset overrides under `datasets:` and the numbers the paper reports under `reported:`.
Config precedence: class defaults < card `defaults` < card `datasets.<dataset>` < `--set key=value`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, ClassVar

import torch

from .config import apply_overrides, config_hash, deep_merge, load_card
from .errors import ConfigError
from .registry import Registry
from .schema import validate


@dataclass
class Context:
    """What a method may use while it prepares and distills."""

    spec: "object"  # ddbench.data.DatasetSpec
    device: torch.device
    cache_dir: Path  # shared cache: teachers, generators, fine-tuned weights, features
    train: Callable[[], "object"]  # -> ddbench.data.Split, loaded lazily and cached
    progress: "object" = None  # ddbench.progress.Progress (rich); None = silent
    options: dict = field(default_factory=dict)  # user-supplied paths: dit, vae, teacher, imagenet_root

    def track(self, iterable, description: str, total: int | None = None):
        """Iterate with a progress bar when one is attached."""
        if self.progress is None:
            return iterable
        return self.progress.track(iterable, description=description, total=total)

    def cache_path(self, kind: str, cfg: dict) -> Path:
        """A folder for an artefact of `kind` keyed by the dataset and a config hash."""
        p = self.cache_dir / kind / f"{self.spec.name.replace(':', '_').replace('/', '_')}-{config_hash(cfg)}"
        p.mkdir(parents=True, exist_ok=True)
        return p


class Method:
    """Base class: subclasses set `defaults` and `schema` and implement `distill` (and `prepare` if they need it).

    `schema` declares a rule for every config key (ddbench.schema: `int>=1`, `prob`, `choice[a|b]`, ...): the
    resolved config is checked against it before any work, and a card key without a rule is refused."""

    defaults: ClassVar[dict] = {}
    schema: ClassVar[dict] = {}
    # Modules that compute this method's numbers (its own module and the engine modules it uses), by module
    # name; their source makes the numerics fingerprint of its sets (ddbench.identity). Every method declares it.
    numerics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, card: dict, cfg: dict):
        self.card = card
        self.cfg = cfg
        self.name = card["name"]
        self.version = card.get("version", 1)

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        """Rules across keys that `schema` (one value each) cannot say, e.g. `low ≤ high`: raise ConfigError.
        Called with every resolved config, after the schema check, so a bad pair fails before any work."""

    def prepare(self, ctx: Context) -> None:
        """Expensive one-off work (fine-tuning, teachers, mode discovery), cached under ctx.cache_dir."""

    def distill(self, ctx: Context, ipc: int, seed: int):
        raise NotImplementedError

    def identity(self) -> dict:
        """The method's part of a set's identity: name, card version and resolved config (a guidance method adds
        its base card). `set_identity` adds IPC, seed and the inputs (ddbench.identity.set_inputs)."""
        return {"method": self.name, "version": self.version, "cfg": self.cfg}

    def precision_config(self, dataset: str) -> dict:
        """The config whose precision switches this method runs with on `dataset` (a guidance method: its base's)."""
        return self.cfg

    def set_identity(self, ipc: int, seed: int, inputs: dict) -> dict:
        """Everything that makes the set of (ipc, seed): written into its manifest, checked when it is reused."""
        return {**self.identity(), "ipc": ipc, "seed": seed, "inputs": inputs}

    def distill_key(self, ipc: int, seed: int, inputs: dict) -> str:
        """Identifies the distilled set: a changed config, card version, seed, dataset, weights file content,
        resolved precision or numerics code gives a new set."""
        return config_hash(self.set_identity(ipc, seed, inputs))

    @classmethod
    def resolve(cls, cfg: dict, dataset: str) -> dict:
        """The resolved config, completed with what the card names but does not hold (e.g. the identity of a
        shipped network), so that the config hash covers it. Default: unchanged."""
        return cfg


# ---------------------------------------------------------------------- cards and registry
def _methods_dir() -> Path:
    try:
        return Path(str(resources.files("ddbench.methods")))
    except ModuleNotFoundError:  # running from a source checkout that is not installed
        return Path(__file__).resolve().parent.parent / "methods"


def method_registry() -> Registry:
    from ddbench.methods import METHODS  # lazy mapping: name -> "module:Class"

    reg = Registry("method")
    for name, target in METHODS.items():
        reg.register(name, target)
    return reg


def method_card(name: str) -> dict:
    reg = method_registry()
    reg.get(name)  # unknown name -> ConfigError with suggestions
    path = _methods_dir() / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"method {name!r} has no card at {path}")
    card = load_card(path)
    card.setdefault("name", name)
    return card


def resolve_method_config(name: str, dataset: str, overrides: dict | None = None) -> tuple[dict, dict]:
    """(card, resolved config) for `name` on `dataset`; every value checked against the class's `schema`."""
    card = method_card(name)
    cls = method_registry().get(name)
    cfg = deep_merge(dict(cls.defaults), card.get("defaults") or {})
    per_dataset = card.get("datasets") or {}
    family = dataset.split(":")[0]
    for key in (family, dataset):
        if key in per_dataset:
            cfg = deep_merge(cfg, per_dataset[key])
    card_cfg = cfg
    if overrides:
        cfg = apply_overrides(deep_merge(cfg, {}), overrides, where=f"method {name}")
    validate(cfg, cls.schema, where=f"method {name}", overridden=overrides, card=card_cfg)
    cls.check_config(cfg)
    return card, cls.resolve(cfg, dataset)


def load_method(name: str, dataset: str, overrides: dict | None = None) -> Method:
    card, cfg = resolve_method_config(name, dataset, overrides)
    return method_registry().get(name)(card, cfg)


def list_methods() -> list[str]:
    return method_registry().names()


def default_cache_dir() -> Path:
    return Path(os.environ.get("DDBENCH_CACHE", Path.home() / ".cache" / "ddbench"))
