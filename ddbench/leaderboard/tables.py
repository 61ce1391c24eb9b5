"""Leaderboard tables from the results store, in the papers' layout, with their statistics.

One table per (dataset, protocol card, protocol version, protocol settings): a table holds one protocol family,
so hard- and soft-label numbers never share a column or a ranking. Rows IPC × evaluation network, one column
per method (`random` first, then by name; one per card version and per config hash), cells "mean ± 95 % CI (n)"
over distillation seeds × evaluation seeds with the cell's rank in the row (ties by Welch's test; n < 3 marked,
not ranked: `ddbench.stats`), and a last column "Δ vs random" = the best non-random method's mean minus
`random`'s, with its own Welch interval. Numbers made with `--set` overrides get a table (protocol settings)
or a column (method settings) of their own, named by the values that differ from the card. With `reported`,
the numbers the papers print (method cards, `reported:`) sit next to each method's column, marked
"(reported)"; they are never ranked nor used for Δ: they were not measured here and use the papers' metric.

    tables = build_tables(store.query(dataset="woof"), metric="last", reported=load_reported([("woof", "idc")]))
    print(render_markdown(tables))          # ddbench.leaderboard.render
Layout, statistics and metric definitions: docs/leaderboards.md.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from .. import stats
from ..config import leaves
from ..errors import ConfigError
from ..store import SUMMARY_GROUP, summary

# metric flag -> (record field, header text)
METRICS = {
    "last": ("acc_last", "test accuracy (%) after the last training epoch: the honest number"),
    "best": ("acc_best", "best test accuracy (%) over the evaluation points: paper-compatible, selected on the "
                         "test set, so optimistic"),
}
BASELINE = "random"   # the reference method of the Δ column
DASH = "–"


# ---------------------------------------------------------------------------------------------- tables

@dataclass
class Cell:
    mean: float
    std: float | None              # sample std (n − 1) of the runs; the paper's std (None: none printed)
    n: int | None = None           # None: a reported (paper) number
    family: str | None = None      # protocol family of a measured cell ("hard" | "soft")
    rank: int | None = None        # rank in its row (None: n < 3, or a reported number)

    @property
    def summary(self) -> stats.Summary:
        return stats.Summary(self.mean, self.std, self.n or 0, self.family)

    @property
    def ci(self) -> float | None:
        """Half-width of the 95 % confidence interval of the mean; None for n < 2 or a paper number."""
        return None if self.n is None else stats.interval(self.summary)

    def text(self) -> str:
        if self.n is None:  # paper numbers with the digits the card gives (no invented precision)
            return printed(self.mean) + ("" if self.std is None else f" ± {printed(self.std)}")
        ci = DASH if self.ci is None else f"{self.ci:.2f}"
        mark = f"#{self.rank}" if self.rank is not None else f"n<{stats.MIN_RANKED}"
        return f"{self.mean:.2f} ± {ci} ({self.n}) {mark}"


def printed(x: float) -> str:
    text = f"{x:g}"
    return text if "." in text or "e" in text else text + ".0"  # YAML turns 90.0 into 90


@dataclass
class Row:
    ipc: int
    arch: str
    cells: dict[str, Cell] = field(default_factory=dict)      # column label -> measured cell
    reported: dict[str, Cell] = field(default_factory=dict)   # method name -> paper cell

    def rank(self) -> None:
        """Set every measured cell's rank (ties: `stats.rank_row`)."""
        for label, r in stats.rank_row({k: c.summary for k, c in self.cells.items()}).items():
            self.cells[label].rank = r

    def best_labels(self) -> set[str]:
        """Column labels of rank 1 (the best ranked cell and every one not significantly worse)."""
        return {label for label, c in self.cells.items() if c.rank == 1}

    def gain(self, baseline_label: str | None) -> tuple[stats.Difference, str] | None:
        """(best non-random mean − random mean with its Welch interval, that method's label), or None when
        either is missing."""
        if baseline_label is None or baseline_label not in self.cells:
            return None
        others = {k: c for k, c in self.cells.items() if k != baseline_label}
        if not others:
            return None
        label = max(others, key=lambda k: (others[k].mean, k))
        return stats.gain(others[label].summary, self.cells[baseline_label].summary), label


@dataclass
class Table:
    dataset: str
    protocol: str
    protocol_version: str | None
    metric: str                                   # "last" | "best"
    columns: list[tuple[str, str]]                # (label, "measured" | "reported"), in display order
    versions: dict[str, str | None]               # measured column label -> method card version
    rows: list[Row]
    sources: dict[str, str] = field(default_factory=dict)  # method -> where its reported numbers come from
    variant: str = ""                             # protocol settings that differ from the card ("epochs=20")
    family: str | None = None                     # protocol family: "hard" | "soft"
    card_hashes: list[str] = field(default_factory=list)   # sha256[:12] of the resolved protocol card(s)
    config_hashes: dict[str, str | None] = field(default_factory=dict)  # column label -> record config_hash
    teachers: list[dict] = field(default_factory=list)     # soft-label tables: extra["teacher"] of the records

    @property
    def baseline_label(self) -> str | None:
        return BASELINE if BASELINE in self.versions else None


def method_order(name: str) -> tuple:
    """`random` first, then by name."""
    return (name != BASELINE, name)


def arch_order(arch: str) -> tuple:
    """The papers' row order: ConvNets, then ResNetAP, then ResNet, then anything else; by name within."""
    for rank, prefix in enumerate(("convnet", "resnetap", "resnet")):
        if arch.startswith(prefix):
            return (rank, arch)
    return (3, arch)


def build_tables(records: Iterable[Mapping], metric: str = "last",
                 reported: Mapping[tuple[str, str], Mapping] | None = None,
                 defaults: Callable[[str, str, str, Any], dict | None] | None = None) -> list[Table]:
    """Tables for every (dataset, protocol, protocol version, protocol variant) among `records`.

    `reported` maps (dataset, protocol) -> {method: {"source": str, "cells": {(ipc, arch): (mean, std)}}}
    (see `load_reported`); None leaves the paper numbers out. `defaults(kind, name, dataset, version)` gives
    the card's own config that variants are named against (default: `card_config`, the current cards).
    """
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    field_name = METRICS[metric][0]
    df = variant_summary(records, defaults, extra=cell_facts)
    reported = reported or {}
    tables = []
    if not df.empty:
        keys = ["dataset", "protocol", "protocol_version", "pvariant"]
        for (dataset, protocol, pversion, pvar), group in df.groupby(keys, dropna=False, sort=True):
            paper = {} if pvar else reported.get((dataset, protocol), {})  # papers ran the card's own settings
            tables.append(_table(dataset, protocol, None if pd.isna(pversion) else pversion, metric, field_name,
                                 column_labels(group), paper, pvar))
    measured = {(t.dataset, t.protocol) for t in tables if not t.variant}
    empty = pd.DataFrame(columns=["method", "method_version", "label", "config_hash", "family", "card_hash",
                                  "teacher"])
    for (dataset, protocol), paper in reported.items():  # papers' numbers for data not run yet
        if (dataset, protocol) not in measured and paper:
            tables.append(_table(dataset, protocol, None, metric, field_name, empty, paper, ""))
    return sorted(tables, key=lambda t: (t.dataset, t.protocol, str(t.protocol_version), t.variant))


def column_labels(group: pd.DataFrame) -> pd.DataFrame:
    """Column labels: the method name, + " v<version>" when it was measured under two card versions,
    + " [key=value, ...]" when its config differs from its card's, + " @<config hash>" when the method has
    numbers of two config hashes in the table ("@–": older records without one)."""
    group = group.copy()
    several = group.groupby("method")["method_version"].transform("nunique") > 1
    hashes = group["config_hash"].fillna(NO_HASH)
    many_hashes = hashes.groupby([group["method"], group["method_version"].fillna(""), group["mvariant"]]) \
        .transform("nunique") > 1
    group["label"] = [m + (f" v{v}" if many else "") + (f" [{var}]" if var else "")
                      + (f" @{h[:HASH_CHARS] if h != NO_HASH else DASH}" if split else "")
                      for m, v, many, var, h, split in zip(group["method"], group["method_version"], several,
                                                         group["mvariant"], hashes, many_hashes)]
    return group


# ---------------------------------------------------------------------------------------------- cell facts
HASH_CHARS = 12
NO_HASH = ""   # records of older code carry no config_hash: they form one group of their own


def card_hash(protocol_config: Mapping | None) -> str | None:
    """sha256[:12] of a resolved protocol card (canonical JSON): names the exact settings in a table header."""
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


def cell_facts(records: list[Mapping]) -> dict:
    """The columns `build_tables` adds to each cell: protocol family, card hash(es) and teacher(s)."""
    families = sorted({(r.get("protocol_config") or {}).get("family") or "" for r in records})
    teachers = sorted({json.dumps(t, sort_keys=True) for r in records if (t := teacher_of(r)) is not None})
    return {"family": "/".join(families), "card_hash": " ".join(sorted({card_hash(r.get("protocol_config")) or DASH
                                                                         for r in records})),
            "teacher": "\n".join(teachers)}


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



def variant_summary(records: Iterable[Mapping], defaults=None, extra: Callable | None = None) -> pd.DataFrame:
    """`store.summary` rows as a DataFrame, split by settings and by config hash: columns `pvariant` /
    `mvariant` hold the protocol / method settings that differ from the card ("" = the card's own),
    `config_hash` the records' hash (None: older records without one, grouped by card versions as before).
    `extra(group_records)` -> dict adds columns computed from each row's records."""
    frames = []
    for (pvar, mvar, chash), part in _by_variant(records, defaults or card_config).items():
        frame = pd.DataFrame(summary(part)).assign(pvariant=pvar, mvariant=mvar, config_hash=chash or None)
        if extra is not None:
            groups: dict[tuple, list] = {}
            for r in part:
                groups.setdefault(tuple(_text(r.get(k)) for k in SUMMARY_GROUP), []).append(r)
            keys = zip(*(frame[k] for k in SUMMARY_GROUP))
            frame = frame.assign(**pd.DataFrame([extra(groups[tuple(map(_text, k))]) for k in keys]))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _text(v: Any) -> str | None:
    return None if v is None else str(v)


def _by_variant(records: Iterable[Mapping], defaults) -> dict[tuple[str, str, str], list[Mapping]]:
    out: dict[tuple[str, str, str], list[Mapping]] = {}
    for r in records:
        pvar = config_diff(r.get("protocol_config"), defaults("protocol", r["protocol"], r["dataset"],
                                                              r.get("protocol_version")))
        mvar = config_diff(r.get("method_config"), defaults("method", r["method"], r["dataset"],
                                                            r.get("method_version")))
        out.setdefault((pvar, with_label_keys(mvar, r), r.get("config_hash") or NO_HASH), []).append(r)
    return out


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


def _table(dataset, protocol, pversion, metric, field_name, group: pd.DataFrame, paper: Mapping,
           variant: str) -> Table:
    families = sorted(set("/".join(group["family"]).split("/")) - {""})
    if len(families) > 1:  # one card version changed family without a version bump: never rank them together
        raise ConfigError(f"{dataset} · protocol {protocol} v{pversion}: records of protocol families "
                          f"{', '.join(families)} under one card version; hard- and soft-label results cannot "
                          "share a table — bump the protocol card's version when its family changes")
    family = families[0] if families else None
    rows: dict[tuple[int, str], Row] = {}
    for rec in group.itertuples(index=False):
        row = rows.setdefault((int(rec.ipc), rec.arch), Row(int(rec.ipc), rec.arch))
        row.cells[rec.label] = Cell(float(getattr(rec, f"{field_name}_mean")), float(getattr(rec, f"{field_name}_std")),
                                    int(rec.n), family)
    for row in rows.values():
        row.rank()
    for method, entry in paper.items():
        for (ipc, arch), (mean, std) in entry["cells"].items():
            rows.setdefault((int(ipc), arch), Row(int(ipc), arch)).reported[method] = Cell(float(mean), None if std is None else float(std))
    versions = {lb: None if pd.isna(v) else v for lb, v in zip(group["label"], group["method_version"])}
    methods = {label: m for label, m in zip(group["label"], group["method"])}
    # measured columns in method order; a method's reported column follows its (last) measured column
    names = sorted(set(methods.values()) | set(paper), key=method_order)
    columns = []
    for name in names:
        labels = sorted((lb for lb, m in methods.items() if m == name), key=str)
        columns += [(lb, "measured") for lb in labels]
        if name in paper:
            columns.append((name, "reported"))
    ordered = [rows[k] for k in sorted(rows, key=lambda k: (k[0], arch_order(k[1])))]
    card_hashes = sorted(set(" ".join(group["card_hash"]).split()))
    teachers = [json.loads(t) for t in sorted(set("\n".join(group["teacher"]).split("\n")) - {""})]
    hashes = {lb: (None if h is None or pd.isna(h) else h) for lb, h in zip(group["label"], group["config_hash"])}
    return Table(dataset, protocol, pversion, metric, columns, versions, ordered,
                 {m: e.get("source", "") for m, e in paper.items()}, variant, family, card_hashes, hashes, teachers)


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


