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
from typing import Any, Iterable

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


def deep_merge(base: dict, over: dict) -> dict:
    """A new dict: `over` merged into `base`, recursing into nested dicts."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_int_list(text: str) -> list[int]:
    """'0,1,2' or '0-4' (or a mix, '0-2,7') -> ints; an empty or descending range is an error, not nothing."""
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
    return out


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
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def apply_overrides(cfg: dict, overrides: dict, *, known: dict | None = None, where: str = "config") -> dict:
    """Merge overrides into cfg, refusing keys that `known` (default: cfg) does not have."""
    known = cfg if known is None else known
    for k, v in overrides.items():
        if k not in known:
            from .registry import suggest

            raise ConfigError(
                f"--set {k}=...: {where} has no key {k!r}.{suggest(k, list(known))} Known keys: {', '.join(sorted(known))}."
            )
        if isinstance(v, dict) and isinstance(known[k], dict):
            apply_overrides(cfg.setdefault(k, {}), v, known=known[k], where=f"{where}.{k}")
        else:
            cfg[k] = v
    return cfg


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any, n: int = 12) -> str:
    """Short, stable hash of a JSON-able object (key order does not matter)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]
