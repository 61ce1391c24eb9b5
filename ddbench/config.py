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


def apply_overrides(cfg: dict, overrides: dict, *, known: dict | None = None, where: str = "config",
                    prefix: str = "") -> dict:
    """Merge overrides into cfg, refusing keys that `known` (default: cfg) does not have and values that do not
    fit the card's (`check_value`). `prefix` is how the user names this level (e.g. "protocol.")."""
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
            check_value(f"{prefix}{k}", v, known[k])
            cfg[k] = v
    return cfg


# Keys (the last part of the name) whose numbers count something: a positive integer, or the run breaks late.
_COUNT_SUFFIXES = ("epochs", "steps", "batch_size", "_batch", "iterations", "eval_points")


def check_value(key: str, value: Any, card_value: Any) -> None:
    """A `--set key=value` must fit the card: true/false where the card has a flag, a whole number ≥ 1 for a count
    (epochs, steps, batch sizes), a number ≥ 0 for a learning rate, a number (or a word: some cards take one,
    e.g. `cfg_channels: all`) where the card has a number. One line naming key, value and what is allowed."""
    if value is None and card_value is None:  # null stays null ("no cap", "the default")
        return
    name = key.rsplit(".", 1)[-1]
    is_count = any(name.endswith(s) for s in _COUNT_SUFFIXES) and not isinstance(card_value, (str, list, dict))
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    expected = None
    if isinstance(card_value, bool) and not isinstance(value, bool):
        expected = "true or false"
    elif is_count and not (number and isinstance(value, int) and value >= 1):
        expected = "a whole number ≥ 1"
    elif (name == "lr" or name.endswith("_lr")) and not (number and value >= 0):
        expected = "a number ≥ 0"  # 0 is allowed: a run that learns nothing is a sanity check
    elif isinstance(card_value, (int, float)) and not isinstance(card_value, bool) \
            and not (number or isinstance(value, str)):
        expected = "a number"
    if expected is not None:
        shown = "" if card_value is None else f" (the card has {card_value!r})"
        raise ConfigError(f"--set {key}={value!r}: expected {expected}{shown}")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any, n: int = 12) -> str:
    """Short, stable hash of a JSON-able object (key order does not matter)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]
