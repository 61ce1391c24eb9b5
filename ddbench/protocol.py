"""Evaluation protocols: the `Protocol` base class, `EvalResult`, and loading versioned protocol cards.

A protocol card `protocols/<name>.yaml` names its `family` (the module `ddbench.protocols.<family>`, which
exposes its class as `PROTOCOL`), a `version`, and every value that can move a number. Adding a card is one
YAML file; adding a family is one module.

    protocol = load_protocol("idc", {"epochs": 5})
    result = protocol.evaluate(dset, spec, test_split, arch="convnet6", seed=0, device="cuda")
    result.acc_last, result.acc_best       # honest metric, paper-compatible metric
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import ClassVar

import torch

from .config import apply_overrides, deep_merge, load_card
from .errors import ConfigError
from .registry import suggest
from .schema import validate

FIXED_KEYS = ("family", "version", "name")  # identify a card; `--set` may not change them
META_KEYS = FIXED_KEYS + ("description", "citation")  # describe a card; everything else has a rule (`schema`)

# ---------------------------------------------------------------------------------------------------------
# Result and base class
# ---------------------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    acc_last: float  # accuracy (%) after the last epoch: the honest number
    acc_best: float  # best accuracy over the evaluation points (paper-compatible)
    best_epoch: int
    curve: list[tuple[int, float]]  # (epoch, test accuracy) at each evaluation point
    seconds: float
    peak_mem_mb: float
    extra: dict = field(default_factory=dict)  # e.g. soft-label storage bytes, the resolved training plan

    def to_dict(self) -> dict:
        d = asdict(self)
        d["curve"] = [[int(e), float(a)] for e, a in self.curve]  # JSON has no tuples
        return d

    @classmethod
    def from_curve(cls, curve: list[tuple[int, float]], seconds: float, peak_mem_mb: float,
                   extra: dict | None = None) -> "EvalResult":
        """acc_last = the last point of `curve` (the final epoch); acc_best / best_epoch = its first maximum."""
        if not curve:
            raise ValueError("an evaluation curve needs at least the final-epoch point")
        best_epoch, best = max(curve, key=lambda p: (p[1], -p[0]))
        return cls(curve[-1][1], best, best_epoch, list(curve), seconds, peak_mem_mb, dict(extra or {}))


class Protocol:
    """Trains fresh networks on a distilled set and tests them on the real test split."""

    family: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}  # code defaults, under the card (code < card < --set)
    schema: ClassVar[dict] = {}  # a rule for every card key but META_KEYS (ddbench.schema), checked on loading
    # Modules that compute this family's numbers (by module name); their source makes the numerics fingerprint
    # in every record's config hash (ddbench.identity). Every family declares it.
    numerics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, card: dict):
        self.card = card
        self.name = card.get("name", self.family)
        self.version = card.get("version")
        if "precision" in card:
            uses_bf16(card)  # a bad value fails when the card is loaded, not after distilling

    def evaluate(self, dset, spec, test, arch: str, seed: int, device) -> EvalResult:
        raise NotImplementedError

    def evaluate_many(self, dset, spec, test, arch: str, seeds: list[int], device, progress=None) -> list[EvalResult]:
        """One result per evaluation seed. A family that can train several networks at once overrides this;
        the result for a seed must not depend on which other seeds share the call (within float tolerance)."""
        return [self.evaluate(dset, spec, test, arch, seed, device) for seed in seeds]


PRECISIONS = ("bf16", "fp32")


def uses_bf16(card: dict) -> bool:
    """True when the card's `precision` is bf16 (autocast on CUDA only; CPU always computes in fp32)."""
    precision = card.get("precision")
    if precision not in PRECISIONS:
        raise ConfigError(f"protocol {card.get('name')}: precision {precision!r} is not one of {', '.join(PRECISIONS)} "
                          "(--set protocol.precision=fp32)")
    return precision == "bf16"


def precision_on(precision, device) -> str:
    """A card's `precision` as it runs on `device`: "bf16" (autocast) on CUDA only, "fp32" on every other device.
    The training loops take their `amp` switch from here and the identity of a set or record hashes this value
    (ddbench.identity.resolved_precision), so the two cannot disagree."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)} (--set ...precision=fp32)")
    return "bf16" if precision == "bf16" and torch.device(device).type == "cuda" else "fp32"


def resolved_precision(card: dict, device) -> str:
    """The precision a protocol card trains and tests with on `device` (see `precision_on`)."""
    uses_bf16(card)  # an unknown value: the card-level error message
    return precision_on(card.get("precision"), device)


class ResourceMeter:
    """Wall time and peak memory (MB) of a block: CUDA max allocated on GPU, process peak RSS on CPU."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.seconds = 0.0
        self.peak_mb = 0.0

    def __enter__(self) -> "ResourceMeter":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:  # ru_maxrss is in KiB on Linux: the peak of the whole process so far
            import resource  # POSIX only

            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.seconds = time.perf_counter() - self._start


# ---------------------------------------------------------------------------------------------------------
# Finding cards and family modules (installed as ddbench.protocols, or the checkout's protocols/ folder)
# ---------------------------------------------------------------------------------------------------------


def _protocols_package():
    """`ddbench.protocols`; in an uninstalled checkout, the top-level `protocols/` folder under that name."""
    try:
        return importlib.import_module("ddbench.protocols")
    except ModuleNotFoundError as e:
        if e.name != "ddbench.protocols":
            raise
    folder = Path(__file__).resolve().parent.parent / "protocols"
    spec = importlib.util.spec_from_file_location("ddbench.protocols", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    if spec is None:
        raise ConfigError(f"no protocol cards found: {folder} is missing; reinstall ddbench (pip install -e .)")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ddbench.protocols"] = module
    spec.loader.exec_module(module)
    return module


def protocols_dir() -> Path:
    return Path(str(resources.files(_protocols_package())))


def list_protocols() -> list[str]:
    """Names of the protocol cards (file stems of protocols/*.yaml), sorted."""
    return sorted(p.stem for p in protocols_dir().glob("*.yaml"))


class _CardIndex:
    """`PROTOCOLS`: the introspectable set of protocol card names (`names()`, `in`, iteration, `get` -> card)."""

    def names(self) -> list[str]:
        return list_protocols()

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def __iter__(self):
        return iter(self.names())

    def get(self, name: str) -> dict:
        return protocol_card(name)


PROTOCOLS = _CardIndex()


def protocol_card(name: str) -> dict:
    """The card `protocols/<name>.yaml` as written (with `name` filled in); unknown names fail with suggestions."""
    known = list_protocols()
    if name not in known:
        raise ConfigError(f"unknown protocol {name!r}.{suggest(name, known)} Known protocols: {', '.join(known)} "
                          f"(see `ddbench list protocols`).")
    card = load_card(protocols_dir() / f"{name}.yaml")
    card.setdefault("name", name)
    for key in ("family", "version"):
        if key not in card:
            raise ConfigError(f"protocol card {name}.yaml has no {key!r}; every card needs `family:` and `version:`")
    return card


def protocol_class(family: str) -> type[Protocol]:
    """The `PROTOCOL` class of the module `ddbench.protocols.<family>`."""
    _protocols_package()
    try:
        module = importlib.import_module(f"ddbench.protocols.{family}")
    except ModuleNotFoundError as e:
        if e.name != f"ddbench.protocols.{family}":
            raise
        families = sorted(p.stem for p in protocols_dir().glob("*.py") if not p.stem.startswith("_"))
        raise ConfigError(f"protocol family {family!r} has no module protocols/{family}.py."
                          f"{suggest(family, families)} Families: {', '.join(families)}.") from None
    cls = getattr(module, "PROTOCOL", None)
    if not (isinstance(cls, type) and issubclass(cls, Protocol)):
        raise ConfigError(f"protocols/{family}.py must define PROTOCOL = <a Protocol subclass>")
    return cls


def load_protocol(name: str, overrides: dict | None = None) -> Protocol:
    """The protocol of card `name`, with code defaults under the card and `overrides` (--set) over it."""
    card = protocol_card(name)
    cls = protocol_class(card["family"])
    card = deep_merge(cls.defaults, card)
    overrides = dict(overrides or {})
    for key in FIXED_KEYS:
        if key in overrides and overrides[key] != card.get(key):
            raise ConfigError(f"--set protocol.{key}=...: a card's {key} cannot be overridden; "
                              f"write a new card protocols/<name>.yaml instead")
    card_only = card
    card = apply_overrides(deep_merge(card, {}), overrides, where=f"protocol card {name}", prefix="protocol.")
    validate({k: v for k, v in card.items() if k not in META_KEYS}, cls.schema, where=f"protocol card {name}",
             overridden=overrides, card=card_only, prefix="protocol.")
    return cls(card)
