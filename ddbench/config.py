"""Configuration: YAML cards, `--set key=value` overrides and stable hashes of resolved configs.

Precedence is code defaults < YAML card < CLI overrides. A resolved config is a plain dict of JSON types; its
hash (`config_hash`) keys every cache (distilled sets, fine-tuned weights, teachers) so that a changed value
never silently reuses an old artefact.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .errors import ConfigError


def load_card(path: Path) -> dict:
    """Read a YAML card; `include: other.yaml` merges a sibling card underneath (the including card wins)."""
    try:
        card = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"card {path} is not valid YAML: {e}") from None
    if not isinstance(card, dict):
        raise ConfigError(f"card {path} must be a mapping at the top level, got {type(card).__name__}")
    base = card.pop("include", None)
    if base:
        card = deep_merge(load_card(Path(path).parent / base), card)
    return card


def leaves(d, prefix: str = ""):
    """(dotted key, value) of every leaf of a nested mapping; an empty mapping is a leaf."""
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def deep_merge(base: dict, over: dict) -> dict:
    """A new dict: `over` merged into `base`, recursing into nested dicts."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_int_list(text: str) -> list[int]:
    """'0,1,2' or '0-4' (or a mix, '0-2,7') -> ints; an empty or descending range is an error, not nothing, and
    a number given twice is an error too (seed 0 trained twice would count as two results of one set)."""
    out = []
    for part in str(text).split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            lo_i, hi_i = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ConfigError(f"{text!r} is not a list of integers like 0,1,2 or 0-4") from None
        if hi_i < lo_i:
            raise ConfigError(f"{text!r}: the range {part.strip()} is empty; write it low-high, e.g. {hi_i}-{lo_i}")
        out += list(range(lo_i, hi_i + 1))
    check_unique(out, repr(str(text)))
    return out


def check_unique(values: list, what: str) -> None:
    """Refuse a list that names a value twice (one line: which value, and that each is given once)."""
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ConfigError(f"{what} names {', '.join(map(str, twice))} more than once; list each value once")


def parse_overrides(items: Iterable[str]) -> dict:
    """`["a.b=3", "name=x"]` -> `{"a": {"b": 3}, "name": "x"}`; values are parsed as YAML scalars/lists."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. --set epochs=50)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                first = ".".join(parts[:i + 1])
                raise ConfigError(f"--set {item}: {first} was already set to {node!r} by an earlier --set; a key "
                                  f"takes either a value or sub-keys ({first}.KEY=...), not both")
        if isinstance(node.get(parts[-1]), dict) and not isinstance(value, dict):
            raise ConfigError(f"--set {item}: {key.strip()} already has sub-keys from an earlier --set "
                              f"({key.strip()}.KEY=...); a key takes either a value or sub-keys, not both")
        node[parts[-1]] = value
    return out


def apply_overrides(cfg: dict, overrides: dict, *, known: dict | None = None, where: str = "config",
                    prefix: str = "") -> dict:
    """Merge overrides into cfg, refusing keys that `known` (default: cfg) does not have. Values are checked
    afterwards, on the whole resolved config, against the declared rules (ddbench.schema). `prefix` is how the
    user names this level (e.g. "protocol.")."""
    known = cfg if known is None else known
    for k, v in overrides.items():
        if k not in known:
            from .registry import suggest

            listed = f" Known keys: {', '.join(prefix + str(n) for n in sorted(known))}." if known else \
                f" {where} has no settings to override."
            raise ConfigError(f"--set {prefix}{k}=...: {where} has no key {k!r}.{suggest(k, list(known))}{listed}")
        if isinstance(v, dict) and isinstance(known[k], dict):
            apply_overrides(cfg.setdefault(k, {}), v, known=known[k], where=f"{where}.{k}", prefix=f"{prefix}{k}.")
        else:
            cfg[k] = v
    return cfg


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any, n: int = 12) -> str:
    """Short, stable hash of a JSON-able object (key order does not matter)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]
