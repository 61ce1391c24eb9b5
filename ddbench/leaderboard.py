"""Leaderboard tables from the results store, in the papers' layout.

One table per (dataset, protocol, protocol version): rows IPC × evaluation network, one column per method
(`random` first, then by name), cells "mean ± std (n)" over distillation seeds × evaluation seeds, the best
measured cell of a row in bold, and a last column "Δ vs random" = the best non-random method's mean minus
`random`'s mean in the same row (same dataset, protocol, IPC and network). Numbers made with `--set`
overrides get a table (protocol settings) or a column (method settings) of their own, named by the values
that differ from the card. With `reported`, the numbers the papers print (method cards, `reported:`) sit
next to each method's column, marked "(reported)"; they are never bolded nor used for Δ: they were not
measured here and use the papers' metric.

    tables = build_tables(store.query(dataset="woof"), metric="last", reported=load_reported([("woof", "idc")]))
    print(render_markdown(tables))
Layout and metric definitions: docs/leaderboards.md.
"""
from __future__ import annotations

import html
import io
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from .errors import ConfigError
from .store import SUMMARY_GROUP, summary

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
    std: float | None              # None: a paper number printed without a spread
    n: int | None = None           # None: a reported (paper) number

    def text(self) -> str:
        if self.n is None:  # paper numbers with the digits the card gives (no invented precision)
            return _printed(self.mean) if self.std is None else f"{_printed(self.mean)} ± {_printed(self.std)}"
        return f"{self.mean:.2f} ± {self.std:.2f} ({self.n})"


def _printed(x: float) -> str:
    text = f"{x:g}"
    return text if "." in text or "e" in text else text + ".0"  # YAML turns 90.0 into 90


@dataclass
class Row:
    ipc: int
    arch: str
    cells: dict[str, Cell] = field(default_factory=dict)      # column label -> measured cell
    reported: dict[str, Cell] = field(default_factory=dict)   # method name -> paper cell

    def best_labels(self) -> set[str]:
        """Column labels holding the highest measured mean of the row (ties: all of them)."""
        if not self.cells:
            return set()
        top = max(c.mean for c in self.cells.values())
        return {label for label, c in self.cells.items() if c.mean == top}

    def gain(self, baseline_label: str | None) -> tuple[float, str] | None:
        """(best non-random mean − random mean, that method's label), or None when either is missing."""
        if baseline_label is None or baseline_label not in self.cells:
            return None
        others = {k: c for k, c in self.cells.items() if k != baseline_label}
        if not others:
            return None
        label = max(others, key=lambda k: (others[k].mean, k))
        return others[label].mean - self.cells[baseline_label].mean, label


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
    df = variant_summary(records, defaults)
    reported = reported or {}
    tables = []
    if not df.empty:
        keys = ["dataset", "protocol", "protocol_version", "pvariant"]
        for (dataset, protocol, pversion, pvar), group in df.groupby(keys, dropna=False, sort=True):
            paper = {} if pvar else reported.get((dataset, protocol), {})  # papers ran the card's own settings
            tables.append(_table(dataset, protocol, None if pd.isna(pversion) else pversion, metric, field_name,
                                 column_labels(group), paper, pvar))
    measured = {(t.dataset, t.protocol) for t in tables if not t.variant}
    empty = pd.DataFrame(columns=["method", "method_version", "label"])
    for (dataset, protocol), paper in reported.items():  # papers' numbers for data not run yet
        if (dataset, protocol) not in measured and paper:
            tables.append(_table(dataset, protocol, None, metric, field_name, empty, paper, ""))
    return sorted(tables, key=lambda t: (t.dataset, t.protocol, str(t.protocol_version), t.variant))


def column_labels(group: pd.DataFrame) -> pd.DataFrame:
    """Column labels: the method name, + " v<version>" when it was measured under two card versions,
    + " [key=value, ...]" when its config differs from its card's, + " #<config hash>" when records of one such
    label still differ in config hash (data, weights, or a store migrated from schema 1): never one column."""
    group = group.copy()
    several = group.groupby("method")["method_version"].transform("nunique") > 1
    group["label"] = [m + (f" v{v}" if many else "") + (f" [{var}]" if var else "")
                      for m, v, many, var in zip(group["method"], group["method_version"], several, group["mvariant"])]
    hashes = group["config_hash"].fillna("") if "config_hash" in group else pd.Series("", index=group.index)
    split = hashes.groupby(group["label"]).transform("nunique") > 1
    group["label"] = [lb + (f" #{h[:10]}" if sp else "") for lb, h, sp in zip(group["label"], hashes, split)]
    return group


# ---------------------------------------------------------------------------------------------- variants
# A `--set` override changes a number without changing the card version, so numbers made with overrides
# are never shown as the card's: their protocol settings name a table of their own, their method settings a
# column of their own.
IGNORED_KEYS = {"name", "description", "citation"}  # text that cannot move a number


@lru_cache(maxsize=None)
def _card_config_cached(kind: str, name: str, dataset: str, version: str | None) -> str | None:
    from .errors import DDBenchError

    try:
        if kind == "protocol":
            from .protocol import load_protocol

            card = cfg = load_protocol(name).card
        else:
            from .method import resolve_method_config

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
    a, b = dict(_flat(config)), dict(_flat(reference))
    expanded = {k.rsplit(".", 1)[0] for k in a if "." in k}  # null in the card, a mapping here: show its leaves
    keys = sorted(k for k in set(a) | set(b)
                  if k.split(".")[0] not in IGNORED_KEYS and a.get(k, _UNSET) != b.get(k, _UNSET)
                  and not (k not in a and any(e == k or e.startswith(k + ".") for e in expanded)))
    return ", ".join(f"{k}={_show(a.get(k, _UNSET))}" for k in keys)


def _show(v: Any) -> str:
    return "unset" if v is _UNSET else v if isinstance(v, str) else json.dumps(v)


def _flat(d: Mapping, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def variant_summary(records: Iterable[Mapping], defaults=None, extra: Callable | None = None) -> pd.DataFrame:
    """`store.summary` rows as a DataFrame, split by settings: columns `pvariant` / `mvariant` hold the
    protocol / method settings that differ from the card ("" = the card's own). `extra(group_records)`
    -> dict adds columns computed from each row's records."""
    frames = []
    for (pvar, mvar), part in _by_variant(records, defaults or card_config).items():
        frame = pd.DataFrame(summary(part)).assign(pvariant=pvar, mvariant=mvar)
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


def _by_variant(records: Iterable[Mapping], defaults) -> dict[tuple[str, str], list[Mapping]]:
    out: dict[tuple[str, str], list[Mapping]] = {}
    for r in records:
        pvar = config_diff(r.get("protocol_config"), defaults("protocol", r["protocol"], r["dataset"],
                                                              r.get("protocol_version")))
        mvar = config_diff(r.get("method_config"), defaults("method", r["method"], r["dataset"],
                                                            r.get("method_version")))
        out.setdefault((pvar, with_label_keys(mvar, r)), []).append(r)
    return out


@lru_cache(maxsize=None)
def label_keys(method: str) -> tuple[str, ...]:
    """Config keys a method card names in every column label (`label_keys:`, e.g. ACS's guidance scale g)."""
    from .errors import DDBenchError
    from .method import method_card

    try:
        return tuple(method_card(method).get("label_keys") or ())
    except DDBenchError:  # an external set, or a card that no longer exists
        return ()


def with_label_keys(mvar: str, record: Mapping) -> str:
    """`mvar` preceded by "key=value" for the card's `label_keys` that it does not already name."""
    keys = label_keys(record["method"])
    if not keys:
        return mvar
    cfg = dict(_flat(record.get("method_config") or {}))
    named = {part.split("=", 1)[0] for part in mvar.split(", ") if part}
    shown = [f"{k}={_show(cfg[k])}" for k in keys if k in cfg and k not in named]
    return ", ".join(shown + ([mvar] if mvar else []))


def _table(dataset, protocol, pversion, metric, field_name, group: pd.DataFrame, paper: Mapping,
           variant: str) -> Table:
    rows: dict[tuple[int, str], Row] = {}
    for rec in group.itertuples(index=False):
        row = rows.setdefault((int(rec.ipc), rec.arch), Row(int(rec.ipc), rec.arch))
        row.cells[rec.label] = Cell(float(getattr(rec, f"{field_name}_mean")), float(getattr(rec, f"{field_name}_std")),
                                    int(rec.n))
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
    return Table(dataset, protocol, pversion, metric, columns, versions, ordered,
                 {m: e.get("source", "") for m, e in paper.items()}, variant)


def load_reported(pairs: Iterable[tuple[str, str]]) -> dict:
    """The `reported:` numbers of every registered method card for the given (dataset, protocol) pairs.

    Card layout: `reported: {<dataset>: {source: "...", <protocol>: {<ipc>: {<arch>: [mean, std]}}}}`.
    """
    from .method import list_methods, method_card

    wanted = set(pairs)
    out: dict = {}
    for name in list_methods():
        card_reported = method_card(name).get("reported") or {}
        for (dataset, protocol) in wanted:
            per_ipc = (card_reported.get(dataset) or {}).get(protocol) or {}
            cells = {}
            for ipc, per_arch in per_ipc.items():
                for arch, value in (per_arch or {}).items():
                    if not (isinstance(value, (list, tuple)) and len(value) == 2):
                        raise ConfigError(f"method card {name}: reported.{dataset}.{protocol}.{ipc}.{arch} = "
                                          f"{value!r}; expected [mean, std]")
                    # a paper that prints no spread has std null
                    cells[(int(ipc), str(arch))] = (float(value[0]), None if value[1] is None else float(value[1]))
            if cells:
                out.setdefault((dataset, protocol), {})[name] = {
                    "source": card_reported[dataset].get("source", ""), "cells": cells}
    return out


# ---------------------------------------------------------------------------------------------- headers

def _title(t: Table) -> str:
    version = f" v{t.protocol_version}" if t.protocol_version is not None else ""
    variant = f" · modified: {t.variant}" if t.variant else ""
    return f"{t.dataset} · protocol {t.protocol}{version}{variant}"


def _notes(t: Table) -> list[str]:
    field_name, meaning = METRICS[t.metric]
    cards = ", ".join(f"{label} v{v}" if v is not None else f"{label} (no version)" for label, v in sorted(t.versions.items(), key=lambda kv: method_order(kv[0])))
    notes = [f"Metric: {field_name} = {meaning}.",
             "Cells: mean ± std (n) over distillation seeds × evaluation seeds; bold = best measured in the row.",
             f"Δ vs random: the best non-random method's mean minus {BASELINE}'s, same protocol, network and IPC.",
             f"Method cards: {cards}." if cards else "Method cards: nothing measured yet."]
    if t.sources:
        notes.append("(reported): numbers printed in the papers, not measured here (their metric: best test epoch "
                     "for the hard-label protocols); never bolded nor used for Δ. Sources: "
                     + "; ".join(f"{m}: {s}" for m, s in sorted(t.sources.items())) + ".")
    return notes


def _header(t: Table) -> list[str]:
    return ["IPC", "arch"] + [f"{lb} (reported)" if kind == "reported" else lb for lb, kind in t.columns] + \
        ["Δ vs random"]


def _row_texts(t: Table, row: Row, bold) -> list[str]:
    best = row.best_labels()
    out = [str(row.ipc), row.arch]
    for label, kind in t.columns:
        cell = (row.reported if kind == "reported" else row.cells).get(label)
        text = DASH if cell is None else cell.text()
        out.append(bold(text) if kind == "measured" and label in best else text)
    gain = row.gain(t.baseline_label)
    out.append(DASH if gain is None else f"{gain[0]:+.2f} ({gain[1]})")
    return out


# ---------------------------------------------------------------------------------------------- renderers

def render_markdown(tables: list[Table], command: str = "ddbench leaderboard") -> str:
    parts = [f"<!-- generated by `{command}` from the results store; do not edit by hand -->\n"]
    for t in tables:
        lines = [f"## {_title(t)}", ""] + [f"{n}  " for n in _notes(t)[:-1]] + [_notes(t)[-1], ""]
        header = _header(t)
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---:", "---"] + ["---"] * (len(header) - 2)) + "|")
        for row in t.rows:
            lines.append("| " + " | ".join(_row_texts(t, row, lambda s: f"**{s}**")) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def render_html(tables: list[Table], command: str = "ddbench leaderboard") -> str:
    esc = html.escape
    body = [f"<!-- generated by {esc(command)} from the results store; do not edit by hand -->"]
    for t in tables:
        body.append(f"<h2>{esc(_title(t))}</h2>")
        body += [f"<p>{esc(n)}</p>" for n in _notes(t)]
        body.append("<table>\n<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in _header(t)) + "</tr></thead>\n<tbody>")
        for row in t.rows:
            # escape first, then wrap: the bold marker must not be escaped
            texts = _row_texts(t, row, lambda s: f"\0{s}\1")
            cells = [esc(s).replace("\0", "<strong>").replace("\1", "</strong>") for s in texts]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        body.append("</tbody>\n</table>")
    style = "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>ddbench leaderboard</title>"
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def render_csv(tables: list[Table]) -> str:
    """Long form, one line per (table, row, column): for analysis, not for reading."""
    lines = []
    for t in tables:
        gain_base = t.baseline_label
        for row in t.rows:
            for label, kind in t.columns:
                cell = (row.reported if kind == "reported" else row.cells).get(label)
                if cell is None:
                    continue
                base = row.cells.get(gain_base) if gain_base else None
                lines.append({"dataset": t.dataset, "protocol": t.protocol, "protocol_version": t.protocol_version,
                              "metric": METRICS[t.metric][0], "ipc": row.ipc, "arch": row.arch, "method": label,
                              "method_version": t.versions.get(label) if kind == "measured" else None,
                              "source": kind, "mean": cell.mean, "std": cell.std, "n": cell.n,
                              "gain_vs_random": cell.mean - base.mean if kind == "measured" and base else None,
                              "best_in_row": kind == "measured" and label in row.best_labels()})
    buf = io.StringIO()
    pd.DataFrame(lines, columns=["dataset", "protocol", "protocol_version", "metric", "ipc", "arch", "method",
                                 "method_version", "source", "mean", "std", "n", "gain_vs_random",
                                 "best_in_row"]).astype({"n": "Int64"}).to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


RENDERERS = {"md": render_markdown, "html": render_html, "csv": lambda tables, command=None: render_csv(tables)}
