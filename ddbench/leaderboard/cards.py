"""What the leaderboards read from the method and protocol cards: the cards' own configs that settings are named
against (`card_config`, `config_diff`), the keys a card always names in a label (`label_keys`), card kinds and
current versions (`method_kind`, `is_current`), the papers' numbers (`load_reported`), and a record's protocol card
hash and teacher. Tables, the reproduction page, the set metrics and the figures share them.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any, Iterable, Mapping

from ..config import config_hash, leaves
from ..errors import ConfigError

HASH_CHARS = 12
NO_HASH = ""   # records of older code carry no config_hash: they form one group of their own

# ---------------------------------------------------------------------------------------------- variants
# A `--set` override changes a number without changing the card version, so numbers made with overrides
# are never shown as the card's: their protocol settings name a table of their own, their method settings a
# column of their own.
IGNORED_KEYS = {"name", "description", "citation"}  # text that cannot move a number
# Filled in by a method's `resolve` from other settings (herding's `feature_network` follows `feature_recipe:
# shared`): a record without it was made with another setting, which the diff shows; a differing value is shown.
DERIVED_KEYS = {"feature_network"}


@lru_cache(maxsize=None)
def _card_config_cached(kind: str, name: str, dataset: str, version: str | None) -> str | None:
    from ..errors import DDBenchError

    try:
        if kind == "protocol":
            from ..protocol import load_protocol

            card = cfg = load_protocol(name).card
        else:
            from ..method import resolve_method_config

            card, cfg = resolve_method_config(name, dataset)
    except DDBenchError:  # an external set, or a card that no longer exists
        return None
    same = version is not None and str(card.get("version", 1)) == str(version)
    return json.dumps(cfg, sort_keys=True) if same else None


def card_config(kind: str, name: str, dataset: str, version: Any) -> dict | None:
    """The current card's resolved config for `kind` ("method" | "protocol"), or None when the card is unknown
    or has another version than `version` (its settings then cannot name a variant)."""
    text = _card_config_cached(kind, name, dataset, None if version is None else str(version))
    return None if text is None else json.loads(text)


_UNSET = object()


def config_diff(config: Mapping | None, reference: Mapping | None) -> str:
    """"a.b=1, c=x" for the leaves where `config` differs from `reference`; "" when equal or no reference."""
    if reference is None or config is None:
        return ""
    a, b = dict(leaves(config)), dict(leaves(reference))
    expanded = {k.rsplit(".", 1)[0] for k in a if "." in k}  # null in the card, a mapping here: show its leaves
    keys = sorted(k for k in set(a) | set(b)
                  if k.split(".")[0] not in IGNORED_KEYS and a.get(k, _UNSET) != b.get(k, _UNSET)
                  and not (k not in a and any(e == k or e.startswith(k + ".") for e in expanded))
                  and not (k not in a and k.split(".")[0] in DERIVED_KEYS))
    return ", ".join(f"{k}={_show(a.get(k, _UNSET))}" for k in keys)


def _show(v: Any) -> str:
    return "unset" if v is _UNSET else v if isinstance(v, str) else json.dumps(v)


def by_variant(records: Iterable[Mapping], defaults) -> dict[tuple[str, str, str], list[Mapping]]:
    """Records grouped by (protocol settings, method settings with the card's label keys, config hash), each
    settings text naming what differs from the card `defaults(kind, name, dataset, version)` gives."""
    out: dict[tuple[str, str, str], list[Mapping]] = {}
    for r in records:
        pvar = record_variant(r, "protocol", defaults)
        mvar = record_variant(r, "method", defaults)
        out.setdefault((pvar, with_label_keys(mvar, r), r.get("config_hash") or NO_HASH), []).append(r)
    return out


MODIFIED = "modified"  # a record whose config is not its card's, made with overrides it did not keep


def record_variant(record: Mapping, kind: str, defaults) -> str:
    """The `kind` ("method" | "protocol") settings of `record` that differ from its card's own ("" = none).

    Against the current card when it is the card the record ran under (same version and, for records that
    keep it, the same config hash: `extra.card_config_hash`); otherwise — the card has been bumped or edited —
    from what the record kept when it was made: its config equals its card's own (hash) or it shows the
    overrides it ran with (`extra.overrides`). Older records without these fields: the current-card diff."""
    name = record["protocol"] if kind == "protocol" else record["method"]
    config = record.get(f"{kind}_config")
    reference = defaults(kind, name, record["dataset"], record.get(f"{kind}_version"))
    extra = record.get("extra") or {}
    own = (extra.get("card_config_hash") or {}).get(kind) if isinstance(extra, Mapping) else None
    if own is None or (reference is not None and config_hash(reference) == own):
        return config_diff(config, reference)
    if config is not None and config_hash(config) == own:
        return ""
    over = (extra.get("overrides") or {}).get(kind) or {}
    shown = [f"{k}={_show(v)}" for k, v in sorted(leaves(over)) if k.split(".")[0] not in IGNORED_KEYS]
    return ", ".join(shown) or MODIFIED


@lru_cache(maxsize=None)
def label_keys(method: str) -> tuple[str, ...]:
    """Config keys a method card names in every column label (`label_keys:`, e.g. ACS's guidance scale g)."""
    from ..errors import DDBenchError
    from ..method import method_card

    try:
        return tuple(method_card(method).get("label_keys") or ())
    except DDBenchError:  # an external set, or a card that no longer exists
        return ()


def with_label_keys(mvar: str, record: Mapping) -> str:
    """`mvar` preceded by "key=value" for the card's `label_keys` that it does not already name."""
    keys = label_keys(record["method"])
    if not keys:
        return mvar
    cfg = dict(leaves(record.get("method_config") or {}))
    named = {part.split("=", 1)[0] for part in mvar.split(", ") if part}
    shown = [f"{k}={_show(cfg[k])}" for k in keys if k in cfg and k not in named]
    return ", ".join(shown + ([mvar] if mvar else []))





# ---------------------------------------------------------------------------------------------- record facts

def card_hash(protocol_config: Mapping | None) -> str | None:
    """sha256[:12] of a resolved protocol card (canonical JSON): names the exact settings in a table's details."""
    if protocol_config is None:
        return None
    text = json.dumps(protocol_config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def teacher_of(record: Mapping) -> dict | None:
    """A soft-label record's teacher: extra["teacher"] = {arch, source, val_acc, sha256}. Older records have
    no `source`/`val_acc`; their measured `extra.teacher_test_acc` is shown as the accuracy (same split)."""
    extra = record.get("extra") or {}
    t = extra.get("teacher")
    if not isinstance(t, Mapping):
        return None
    acc = t.get("val_acc", extra.get("teacher_test_acc"))
    return {"arch": t.get("arch"), "source": t.get("source"), "val_acc": acc, "sha256": t.get("sha256")}


OTHER_CODE = "other code"          # a record's numerics fingerprint differs from this checkout's
CODE_NOT_RECORDED = "code not recorded"  # a record made before the identity fields (docs/results-schema.md)


@lru_cache(maxsize=None)
def current_numerics(kind: str, name: str) -> str | None:
    """This checkout's numerics fingerprint (ddbench.identity) of method `name` or of protocol family `name`;
    None where the code no longer has it (an external set, a removed method)."""
    from ..errors import DDBenchError
    from ..identity import numerics_fingerprint, numerics_of

    try:
        if kind == "method":
            from ..method import method_registry
            return numerics_fingerprint(numerics_of(method_registry().get(name)))
        from ..protocol import protocol_class
        return numerics_fingerprint(numerics_of(protocol_class(name)))
    except (DDBenchError, ModuleNotFoundError, ImportError):
        return None


def code_state(records: Iterable[Mapping]) -> str | None:
    """Whether records were made by the numerics code of this checkout: None when every one was (its set's and
    its protocol's fingerprints both match), `CODE_NOT_RECORDED` when one predates the identity fields,
    otherwise `OTHER_CODE` when one was made by other code (so the number may not be what this code gives)."""
    state = None
    for r in records:
        ident = (r.get("extra") or {}).get("identity") or {}
        made = ((ident.get("set") or {}).get("numerics"), (ident.get("protocol") or {}).get("numerics"))
        if None in made:
            return CODE_NOT_RECORDED
        family = (r.get("protocol_config") or {}).get("family")
        now = (current_numerics("method", str(r.get("method"))), current_numerics("protocol", str(family)))
        if made != now:
            state = OTHER_CODE
    return state


@lru_cache(maxsize=None)
def method_kind(name: str) -> str:
    """The `kind:` of a method card ("" for an external set or a card that no longer exists)."""
    from ..errors import DDBenchError
    from ..method import method_card

    try:
        return str(method_card(name).get("kind") or "")
    except DDBenchError:
        return ""


@lru_cache(maxsize=None)
def _current_version(kind: str, name: str) -> str | None:
    from ..errors import DDBenchError

    try:
        if kind == "protocol":
            from ..protocol import protocol_card

            return str(protocol_card(name).get("version", 1))
        from ..method import method_card

        return str(method_card(name).get("version", 1))
    except DDBenchError:
        return None


def is_current(kind: str, name: str, version: Any) -> bool:
    """Whether `version` is the current card's version ("method" | "protocol"); an unknown card (an external
    set, a removed card) counts as current: nothing newer supersedes it."""
    now = _current_version(kind, name)
    return now is None or version is None or str(version) == now


# keys of a card's `reported.<dataset>` entry that describe the source, not a protocol's numbers
REPORTED_META = ("source", "protocol_source", "protocol_values")


def load_reported(pairs: Iterable[tuple[str, str]]) -> dict:
    """The `reported:` numbers of every registered method card for the given (dataset, protocol) pairs.

    Card layout: `reported: {<dataset>: {source: "...", <protocol>: {<ipc>: {<arch>: [mean, std]}}}}`;
    std is null when the paper prints none.
    """
    from ..method import list_methods, method_card

    wanted = set(pairs)
    out: dict = {}
    for name in list_methods():
        card_reported = method_card(name).get("reported") or {}
        for (dataset, protocol) in wanted:
            if protocol in REPORTED_META:
                continue
            per_ipc = (card_reported.get(dataset) or {}).get(protocol) or {}
            cells = {}
            for ipc, per_arch in per_ipc.items():
                for arch, value in (per_arch or {}).items():
                    if not (isinstance(value, (list, tuple)) and len(value) == 2 and value[0] is not None):
                        raise ConfigError(f"method card {name}: reported.{dataset}.{protocol}.{ipc}.{arch} = "
                                          f"{value!r}; expected [mean, std] (std null when the paper gives none)")
                    cells[(int(ipc), str(arch))] = (float(value[0]), None if value[1] is None else float(value[1]))
            if cells:
                out.setdefault((dataset, protocol), {})[name] = {
                    "source": card_reported[dataset].get("source", ""), "cells": cells}
    return out


