"""Leaderboard tables from the results store: one table per setting, methods as rows, with their statistics.

One table per (dataset, protocol card, protocol version, protocol settings, IPC, evaluation network): a table
holds one protocol family, so hard- and soft-label numbers never share a ranking. Rows are methods (one per
card version, config and config hash), sorted by mean: rank, test accuracy (mean over distilled sets ± the
95 % interval over sets), sets × evaluations, Δ vs random, DD-Ranking's scores and the share of the whole
dataset's accuracy where those references exist, and the budget the accuracy cost (`budget`). Statistics count
distilled sets (`ddbench.stats`): a cell of one set shows its evaluation spread and is never ranked nor used
for Δ. The `whole` reference (methods/whole.yaml: the whole training split, IPC does not apply) appears in every
IPC table of its (dataset, protocol, network). Rows and tables made by older card versions are marked
superseded (`current` False) and shown apart. With `reported`, the papers' numbers (method cards, `reported:`)
are rows of their own, never ranked nor used for Δ.

    tables = build_tables(store.query(dataset="woof"), metric="last", reported=load_reported([("woof", "idc")]))
    print(render_markdown(tables))          # ddbench.leaderboard.render
The table model (`Table`, `Row`) is plain data: `Table.columns()`, `Table.texts(row)`, `Table.sort_values(row)`
and `Table.details()` give what any renderer prints. Definitions: docs/leaderboards.md.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from .. import stats
from ..errors import ConfigError
from ..records.store import SUMMARY_GROUP
from .budget import budget_facts, seconds_text, size_text, teacher_text, total_bytes
from .cards import (CODE_NOT_RECORDED, NO_HASH, OTHER_CODE, REPORTED_META, by_variant,  # noqa: F401 (re-exported)
                    card_config, card_hash, code_state, config_diff, is_current, load_reported, method_kind,
                    teacher_of, with_label_keys)

# metric flag -> (record field, plain label)
METRICS = {
    "last": ("acc_last", "test accuracy (%) after the last training epoch"),
    "best": ("acc_best", "best test accuracy (%) over the evaluation points (paper-compatible, selected on the "
                         "test set, so optimistic)"),
}
BASELINE = "random"      # the reference method of the Δ column
REFERENCE = "reference"  # method kind of the whole-split reference (methods/whole.yaml)
DASH = "–"
EMBEDDED = ("digits", "fashion", "mnist")  # datasets whose diffusion methods use ddbench's own small generator
DISPLAY_NAMES = {"idc": "ImageIDC", "woof": "ImageWoof", "nette": "ImageNette", "imagenet100": "ImageNet-100",
                 "imagenet1k": "ImageNet-1K"}


def dataset_name(name: str) -> str:
    """How a dataset is shown: `idc` as ImageIDC, so it is not read as the protocol card of the same name."""
    return DISPLAY_NAMES.get(name, name)


def printed(x: float) -> str:
    text = f"{x:g}"
    return text if "." in text or "e" in text else text + ".0"  # YAML turns 90.0 into 90


def method_order(name: str) -> tuple:
    """`random` first, then by name."""
    return (name != BASELINE, name)


def arch_order(arch: str) -> tuple:
    """The papers' row order: ConvNets, then ResNetAP, then ResNet, then anything else; by name within."""
    for rank, prefix in enumerate(("convnet", "resnetap", "resnet")):
        if arch.startswith(prefix):
            return (rank, arch)
    return (3, arch)


# ---------------------------------------------------------------------------------------------- the model

@dataclass
class Row:
    """One method (or reference, or paper number) in one table."""
    label: str                                   # "herding v3", "dit v2 [sampler=ddim]", "herding (paper)"
    method: str
    version: str | None
    kind: str                                    # "method" | "reference" (the whole split) | "reported"
    summary: stats.Summary | None = None         # measured: over distilled sets; None for a paper number
    reported: tuple[float, float | None] | None = None   # a paper's (mean, std)
    rank: int | None = None                      # None: fewer than MIN_RANKED sets, a reference or a paper
    gain: stats.Difference | None = None         # vs random; None when either side has < MIN_GAIN sets
    share: float | None = None                   # mean / the whole split's mean, %
    ddr: stats.DDRankingScores | None = None     # DD-Ranking's HLR / IOR / LRS
    budget: dict = field(default_factory=dict)   # `budget.budget_facts`
    config_hash: str | None = None
    settings: str = ""                           # method settings that differ from the card (full keys)
    current: bool = True                         # made by the current card version
    nonstandard: str | None = None               # why the data are a nonstandard subset (records say so)
    code: str | None = None                      # None: made by this checkout's numerics code (`code_state`)
    source: str = ""                             # a paper row's source

    @property
    def mean(self) -> float:
        return self.summary.mean if self.summary is not None else self.reported[0]

    @property
    def ci(self) -> float | None:
        return None if self.summary is None else stats.interval(self.summary)


@dataclass
class Table:
    dataset: str
    protocol: str
    protocol_version: str | None
    family: str | None                           # protocol family: "hard" | "soft"
    ipc: int
    arch: str
    metric: str                                  # "last" | "best"
    rows: list[Row] = field(default_factory=list)
    variant: str = ""                            # protocol settings that differ from the card ("epochs=20")
    current: bool = True                         # False: superseded card versions (the archive section)
    card_hashes: list[str] = field(default_factory=list)   # sha256[:12] of the resolved protocol card(s)
    teachers: list[dict] = field(default_factory=list)     # soft-label tables: extra["teacher"] of the records
    devices: list[str] = field(default_factory=list)
    badges: list[str] = field(default_factory=list)        # "smoke scale", "card modified", "CPU", ...

    @property
    def label_type(self) -> str:
        return "soft" if self.family == "soft" else "hard"

    @property
    def key(self) -> tuple:
        return (self.dataset, self.protocol, str(self.protocol_version), self.variant, self.ipc,
                arch_order(self.arch), not self.current)

    def row(self, kind: str, method: str | None = None) -> Row | None:
        """The first row of `kind` (and `method`), current rows first."""
        found = [r for r in self.rows if r.kind == kind and (method is None or r.method == method)]
        return sorted(found, key=lambda r: not r.current)[0] if found else None

    @property
    def has_whole(self) -> bool:
        return self.row(REFERENCE) is not None

    @property
    def has_scores(self) -> bool:
        """DD-Ranking's columns: both references (the whole split and random) are in the table."""
        return (self.has_whole and self.row("method", BASELINE) is not None) or \
            any(r.ddr is not None for r in self.rows)

    def title(self) -> str:
        version = f" v{self.protocol_version}" if self.protocol_version is not None else ""
        return (f"{dataset_name(self.dataset)} · protocol {self.protocol}{version} ({self.label_type} labels) · "
                f"IPC {self.ipc} · {self.arch}")

    def columns(self) -> list[str]:
        head = ["rank", "method", METRIC_COLUMNS[self.metric], "sets × evaluations", "Δ vs random"]
        if self.has_scores:
            head += ["HLR", "IOR", "LRS"]
        if self.has_whole:
            head += ["% of whole"]
        return head + ["set", "stored labels", "teacher", "total", "distill s", "eval s / model"]

    def texts(self, row: Row) -> list[str]:
        """The display strings of `row`, one per column."""
        out = [DASH if row.rank is None else str(row.rank), row_name(row), accuracy_text(row), shape_text(row),
               gain_text(row.gain)]
        if self.has_scores:
            d = row.ddr
            out += [_signed(None if d is None else d.hlr), _signed(None if d is None else d.ior),
                    lrs_text(None if d is None else d.lrs)]
        if self.has_whole:
            out += [_fixed(row.share, 1)]
        b = row.budget
        out += [size_text(b.get("set_bytes")), labels_text(b), teacher_text(b), size_text(total_bytes(b)),
                seconds_text(b.get("distill_s")), seconds_text(b.get("eval_s"))]
        return out

    def sort_values(self, row: Row) -> list[float | str]:
        """What a sort by each column orders by (NaN: empty)."""
        nan = math.nan
        out: list[float | str] = [nan if row.rank is None else row.rank, row.label, row.mean,
                                  nan if row.summary is None else row.summary.n,
                                  nan if row.gain is None else row.gain.value]
        if self.has_scores:
            d = row.ddr or stats.DDRankingScores(None, None, None)
            out += [_num(d.hlr), _num(d.ior), _num(d.lrs)]
        if self.has_whole:
            out += [_num(row.share)]
        b = row.budget
        out += [_num(b.get("set_bytes")), _num(b.get("label_bytes")), _num(b.get("teacher_bytes")),
                _num(total_bytes(b)), _num(b.get("distill_s")), _num(b.get("eval_s"))]
        return out

    def details(self) -> list[str]:
        """Provenance lines: protocol card hash(es) and settings, teacher, each row's card and config hash."""
        overrides = f"settings changed from the card: {self.variant}" if self.variant else "the card's own settings"
        out = [f"Protocol card {self.protocol} v{self.protocol_version} ({self.family or 'family not recorded'}), "
               f"resolved-card hash {', '.join(self.card_hashes) or DASH}; {overrides}."]
        if self.family == "soft":
            out.append("Teacher: " + ("; ".join(_teacher(x) for x in self.teachers) or "not recorded") + ".")
        for r in self.rows:
            if r.kind == "reported":
                out.append(f"{r.label}: {r.source or 'source not given'}"
                           + ("" if r.reported[1] is None else f"; the paper's std {printed(r.reported[1])}") + ".")
                continue
            settings = f"; settings {r.settings}" if r.settings else ""
            note = f"; nonstandard data: {r.nonstandard}" if r.nonstandard else ""
            note += {OTHER_CODE: "; made by numerics code other than this checkout's",
                     CODE_NOT_RECORDED: "; made before records kept their numerics code"}.get(r.code or "", "")
            out.append(f"{r.label}: method card v{r.version or DASH}, config hash {_hash(r.config_hash)}{settings}"
                       f"{note}.")
        return out


METRIC_COLUMNS = {"last": "test accuracy (%)", "best": "best-epoch test accuracy (%)"}


def row_name(row: Row) -> str:
    flag = " ⚑ nonstandard subset" if row.nonstandard else ""
    code = f" ⚠ {row.code}" if row.code else ""
    return row.label + flag + code


def accuracy_text(row: Row) -> str:
    """"90.12 ± 0.45" (the 95 % half-width over sets); a single set or a paper number has no ±."""
    if row.summary is None:
        return printed(row.reported[0])
    ci = row.ci
    return f"{row.summary.mean:.2f}" + ("" if ci is None else f" ± {ci:.2f}")


def shape_text(row: Row) -> str:
    """"3 × 1" sets × evaluations per set; "1 set × 3 (sd 0.40)": one set shows its evaluation spread."""
    if row.summary is None:
        return "paper"
    s = row.summary
    if s.n == 1 and not s.deterministic:
        spread = "" if s.eval_std is None else f" (sd {s.eval_std:.2f})"
        return f"1 set × {s.evaluations}{spread}"
    return s.shape


def gain_text(g: stats.Difference | None) -> str:
    if g is None:
        return DASH
    return f"{g.value:+.2f}" + ("" if g.half_width is None else f" ± {g.half_width:.2f}")


def labels_text(b: Mapping) -> str:
    if not b:
        return DASH
    if not b.get("soft"):
        return "hard"
    return size_text(b.get("label_bytes"))


def _signed(x: float | None) -> str:
    return DASH if x is None else f"{x:+.2f}"


def lrs_text(x: float | None) -> str:
    """DD-Ranking's LRS: three decimals; past 1000 (it grows as exp(IOR/2)) "1.23 × 10^4", never "1.23e+04"."""
    if x is None:
        return DASH
    if abs(x) < 1000:
        return f"{x:.3f}"
    exponent = math.floor(math.log10(abs(x)))
    return f"{x / 10 ** exponent:.2f} × 10^{exponent}"


def _fixed(x: float | None, digits: int = 2) -> str:
    return DASH if x is None else f"{x:.{digits}f}"


def _num(x) -> float:
    return math.nan if x is None else float(x)


def _hash(h: str | None) -> str:
    return DASH if not h else h[:12]


def _teacher(t: dict) -> str:
    acc = DASH if t.get("val_acc") is None else f"{float(t['val_acc']):.2f} %"
    return f"arch {t.get('arch') or DASH}, source {t.get('source') or DASH}, real-validation accuracy {acc}"


# ---------------------------------------------------------------------------------------------- cells

def set_id(record: Mapping) -> Any:
    """What identifies a record's distilled set: its sha256 (records without one: the distillation seed)."""
    return record.get("distilled_sha256") or ("seed", record.get("seed"))


def cell_summary(records: list[Mapping], field_name: str, family: str | None = None) -> stats.Summary:
    """Two-level summary of one cell's records: evaluations averaged per set, then over sets; a method whose
    seeds all gave one set is deterministic (`stats.deterministic`). One run is one evaluation: records of one
    set under one evaluation seed (a rerun, or a deterministic method's seeds each evaluated with the same
    evaluation seed) repeat one question and count once, at the mean of their copies."""
    runs: dict[Any, list[Mapping]] = {}
    for i, r in enumerate(records):
        key = (set_id(r), r["eval_seed"]) if r.get("eval_seed") is not None else ("record", i)
        runs.setdefault(key, []).append(r)
    units = [(copies[0].get("seed"), set_id(copies[0]), statistics.fmean(float(c[field_name]) for c in copies))
             for copies in runs.values()]
    return stats.deterministic(units, family, seeds={r.get("seed") for r in records})


def cells_of(records: Iterable[Mapping], defaults=None) -> list[dict]:
    """One dict per cell: the SUMMARY_GROUP fields, `pvariant` / `mvariant` (settings that differ from the
    cards, "" = the card's own), `config_hash`, and `records` (the cell's records)."""
    out = []
    for (pvar, mvar, chash), part in by_variant(records, defaults or card_config).items():
        groups: dict[tuple, list] = {}
        for r in part:
            groups.setdefault(tuple(_text(r.get(k)) for k in SUMMARY_GROUP), []).append(r)
        for key in sorted(groups, key=lambda g: tuple("" if v is None else v for v in g)):
            cell = dict(zip(SUMMARY_GROUP, key), pvariant=pvar, mvariant=mvar, config_hash=chash or None,
                        records=groups[key])
            cell["ipc"] = int(groups[key][0]["ipc"])
            out.append(cell)
    return out


def complete_cells(records: Iterable[Mapping], min_units: int, defaults=None,
                   min_reference: int | None = None) -> tuple[list[dict], list[str]]:
    """The records of the cells that have at least `min_units` units of evidence — distilled sets; a
    deterministic method's distinct evaluations of its one set; the whole split's evaluations (a reference
    has one set; `min_reference` of them, default `min_units`: it is never ranked, and one evaluation of it
    can cost hours on a CPU) — and one line per cell left out ("dit digits IPC 10 dc convnet3: 2 sets"). For
    publishing only what a table can read (`ddbench export --min-sets`, `--min-reference`)."""
    kept, left = [], []
    for cell in cells_of(records, defaults):
        recs = cell["records"]
        s = cell_summary(recs, "acc_last")
        reference = method_kind(cell["method"]) == REFERENCE
        units = s.evaluations if reference else s.n
        if units >= (min_units if not reference or min_reference is None else min_reference):
            kept += recs
        else:
            what = "evaluation(s)" if reference or s.deterministic else "set(s)"
            label = cell["method"] + (f" [{cell['mvariant']}]" if cell["mvariant"] else "")
            left.append(f"{label} {cell['dataset']} IPC {cell['ipc']} {cell['protocol']} {cell['arch']}: "
                        f"{units} {what}")
    return kept, left


def variant_summary(records: Iterable[Mapping], defaults=None, extra: Callable | None = None) -> pd.DataFrame:
    """One row per cell, two-level: `n` = distilled sets, `evaluations`, `<metric>_mean` = the mean over sets of
    each set's mean, `<metric>_std` = the sample std over sets (0 for one set); the `cells_of` columns but the
    records. `extra(cell_records)` -> dict adds columns."""
    rows = []
    for cell in cells_of(records, defaults):
        recs = cell.pop("records")
        entry = dict(cell, seeds=sorted({r["seed"] for r in recs}), eval_seeds=sorted({r["eval_seed"] for r in recs}))
        for metric in ("acc_last", "acc_best"):
            s = cell_summary(recs, metric)
            entry.update({f"{metric}_mean": s.mean, f"{metric}_std": s.std})
        entry.update(n=s.n, evaluations=s.evaluations)
        if extra is not None:
            entry.update(extra(recs))
        rows.append(entry)
    return pd.DataFrame(rows)


def _text(v: Any) -> str | None:
    return None if v is None else str(v)


# ---------------------------------------------------------------------------------------------- labels

def short_settings(settings: str) -> str:
    """"sampling.sampler=ddim, g=0.01" -> "sampler=ddim, g=0.01": leaf names, one format for every method
    (a full key where two settings share a leaf name). The full keys are in the provenance."""
    parts = [p for p in settings.split(", ") if p]
    leaf = [p.split("=", 1)[0].rsplit(".", 1)[-1] for p in parts]
    return ", ".join(p.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + p.split("=", 1)[1] if leaf.count(lf) == 1 else p
                     for p, lf in zip(parts, leaf))


def row_label(method: str, version: Any, settings: str, suffix: str = "") -> str:
    """"mgd3 v3", "dit v2 [sampler=ddim]": the version always, so one name never means two versions."""
    v = f" v{version}" if version is not None and not (isinstance(version, float) and math.isnan(version)) else ""
    return f"{method}{v}" + (f" [{short_settings(settings)}]" if settings else "") + suffix


def column_labels(group: pd.DataFrame) -> pd.DataFrame:
    """Adds `label` (`row_label`, + " @<config hash>" when a method has numbers of two config hashes with the
    same version and settings in `group`) to a `variant_summary` frame."""
    group = group.copy()
    hashes = group["config_hash"].fillna(NO_HASH)
    split = hashes.groupby([group["method"], group["method_version"].fillna(""), group["mvariant"]]) \
        .transform("nunique") > 1
    group["label"] = [row_label(m, v, var, f" @{h[:6] if h != NO_HASH else DASH}" if s else "")
                      for m, v, var, h, s in zip(group["method"], group["method_version"], group["mvariant"],
                                                 hashes, split)]
    return group


# ---------------------------------------------------------------------------------------------- tables

def build_tables(records: Iterable[Mapping], metric: str = "last",
                 reported: Mapping[tuple[str, str], Mapping] | None = None,
                 defaults: Callable[[str, str, str, Any], dict | None] | None = None,
                 current: Callable[[str, str, Any], bool] | None = None) -> list[Table]:
    """Tables for every (dataset, protocol, version, settings, IPC, network) among `records`; superseded rows
    and tables (older card versions) come back with `current` False.

    `reported` maps (dataset, protocol) -> {method: {"source": str, "cells": {(ipc, arch): (mean, std)}}}
    (see `load_reported`); None leaves the paper numbers out. `defaults(kind, name, dataset, version)` gives
    the card's own config that variants are named against (default: `card_config`, the current cards);
    `current(kind, name, version)` whether a card version is the current one (default: `is_current`).
    """
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    field_name = METRICS[metric][0]
    current = current or is_current
    tables: dict[tuple, Table] = {}
    references = []
    cells = cells_of(records, defaults)
    split = _hash_splits(cells)
    for cell in cells:
        row = _measured_row(cell, field_name, current, split)
        if row.kind == REFERENCE:
            references.append((cell, row))
            continue
        t = _table_for(tables, cell, metric, current)
        t.rows.append(row)
    for cell, row in references:  # the whole split: in every IPC table of its dataset, protocol and network
        for t in tables.values():
            if (t.dataset, t.protocol, t.protocol_version, t.arch) == \
                    (cell["dataset"], cell["protocol"], cell["protocol_version"], cell["arch"]):
                t.rows.append(row)
    _add_reported(tables, reported or {}, metric)
    for t in tables.values():
        _complete(t, records)
    _archive_baselines(tables)
    for t in tables.values():
        _score(t)
    _soft_scores(list(tables.values()))
    return sorted(tables.values(), key=lambda t: t.key)


def _hash_splits(cells: list[dict]) -> set[tuple]:
    """(dataset, protocol, version, settings, ipc, arch, method, version, mvariant) with two config hashes."""
    seen: dict[tuple, set] = {}
    for c in cells:
        k = tuple(c[f] for f in ("dataset", "protocol", "protocol_version", "pvariant", "ipc", "arch", "method",
                                 "method_version", "mvariant"))
        seen.setdefault(k, set()).add(c["config_hash"] or NO_HASH)
    return {k for k, v in seen.items() if len(v) > 1}


def _measured_row(cell: dict, field_name: str, current, split: set) -> Row:
    recs = cell["records"]
    family = _family(recs)
    kind = REFERENCE if method_kind(cell["method"]) == REFERENCE else "method"
    k = tuple(cell[f] for f in ("dataset", "protocol", "protocol_version", "pvariant", "ipc", "arch", "method",
                                "method_version", "mvariant"))
    chash = cell["config_hash"]
    suffix = f" @{(chash or DASH)[:6]}" if k in split else ""
    settings = cell["pvariant"] if kind == REFERENCE else cell["mvariant"]  # the whole split: its own epochs
    nonstandard = sorted({str((r.get("extra") or {}).get("nonstandard_subset")) for r in recs
                          if (r.get("extra") or {}).get("nonstandard_subset")})
    is_current = current("method", cell["method"], cell["method_version"]) and "=unset" not in cell["mvariant"]
    return Row(row_label(cell["method"], cell["method_version"], settings, suffix), cell["method"],
               cell["method_version"], kind, cell_summary(recs, field_name, family), budget=row_facts(recs),
               config_hash=chash, settings=settings, current=is_current,
               nonstandard="; ".join(nonstandard) or None, code=code_state(recs))


def _family(recs: list[Mapping]) -> str | None:
    families = sorted({(r.get("protocol_config") or {}).get("family") or "" for r in recs} - {""})
    return "/".join(families) or None


def _table_for(tables: dict, cell: dict, metric: str, current) -> Table:
    """The table of `cell`'s setting; a superseded protocol card (older version, or the same version made before
    the card gained a key: "=unset" in its settings) puts the whole table in the archive."""
    pv = cell["protocol_version"]
    table_current = current("protocol", cell["protocol"], pv) and "=unset" not in cell["pvariant"]
    key = (cell["dataset"], cell["protocol"], pv, cell["pvariant"], cell["ipc"], cell["arch"], table_current)
    if key not in tables:
        tables[key] = Table(cell["dataset"], cell["protocol"], pv, None, cell["ipc"], cell["arch"], metric,
                            variant=cell["pvariant"], current=table_current)
    return tables[key]


def _add_reported(tables: dict, reported: Mapping, metric: str) -> None:
    """Paper numbers as rows of the current table of the card's own settings (made if nothing was measured)."""
    for (dataset, protocol), paper in reported.items():
        for method, entry in paper.items():
            for (ipc, arch), (mean, std) in entry["cells"].items():
                own = [t for t in tables.values() if (t.dataset, t.protocol, t.ipc, t.arch, t.variant, t.current)
                       == (dataset, protocol, int(ipc), arch, "", True)]
                if own:
                    t = own[0]
                else:
                    t = tables.setdefault((dataset, protocol, None, "", int(ipc), arch, True),
                                          Table(dataset, protocol, None, None, int(ipc), arch, metric))
                t.rows.append(Row(f"{method} (paper)", method, None, "reported", reported=(mean, std),
                                  source=entry.get("source", "")))


def _complete(t: Table, records) -> None:
    """Family (refusing two), card hashes, teachers, devices and badges of a filled table."""
    measured = [r for r in t.rows if r.summary is not None and r.kind == "method"]
    families = sorted({r.summary.family for r in measured if r.summary.family})
    if len(families) > 1 or any("/" in f for f in families):
        raise ConfigError(f"{t.dataset} · protocol {t.protocol} v{t.protocol_version}: records of protocol families "
                          f"{', '.join(sorted(set('/'.join(families).split('/'))))} under one card version; hard- "
                          "and soft-label results cannot share a table — bump the protocol card's version when its "
                          "family changes")
    t.family = families[0] if families else (t.rows[0].summary.family if t.rows and t.rows[0].summary else None)
    facts = [r.budget for r in t.rows if r.budget]
    t.card_hashes = sorted({h for b in facts for h in b.get("card_hashes", [])})
    t.teachers = [json.loads(x) for x in sorted({json.dumps(tt, sort_keys=True) for b in facts
                                                  for tt in b.get("teachers", [])})]
    t.devices = sorted({d for b in facts for d in b.get("devices", [])})
    t.badges = badges(t)


def badges(t: Table) -> list[str]:
    """The scale of a table, automatically: "smoke scale" and why (card modified / self-trained generator /
    CPU), and a nonstandard subset. A table of the card's own settings, on a GPU, with real generators gets none."""
    why = []
    if t.variant:
        why.append("card modified")
    if t.dataset in EMBEDDED and any(method_kind(r.method) == "diffusion" for r in t.rows if r.kind == "method"):
        why.append("self-trained generator")
    if t.devices and all(d.lower().startswith("cpu") for d in t.devices):
        why.append("CPU")
    out = (["smoke scale"] + why) if why else []
    if any(r.nonstandard for r in t.rows):
        out.append("nonstandard subset")
    out += sorted({r.code for r in t.rows if r.code})
    return out


def _archive_baselines(tables: dict) -> None:
    """Superseded rows of a current table move to its archive twin; an archive table borrows the current
    table's random and whole rows, so its Δ and shares are read against the same references."""
    for t in list(tables.values()):
        old = [r for r in t.rows if not r.current and r.kind != "reported"] if t.current else []
        if old:
            key = (t.dataset, t.protocol, t.protocol_version, t.variant, t.ipc, t.arch, False)
            twin = tables.setdefault(key, Table(t.dataset, t.protocol, t.protocol_version, t.family, t.ipc, t.arch,
                                                t.metric, variant=t.variant, current=False,
                                                card_hashes=t.card_hashes, teachers=t.teachers, devices=t.devices,
                                                badges=t.badges))
            twin.rows += old
            t.rows = [r for r in t.rows if r not in old]
    for key, t in tables.items():
        twin = tables.get(key[:-1] + (True,))
        if t.current or twin is None:
            continue
        for kind, method in (("method", BASELINE), (REFERENCE, None)):
            if t.row(kind, method) is None and (ref := twin.row(kind, method)) is not None:
                t.rows.append(ref)


def _score(t: Table) -> None:
    """Ranks (measured methods only), Δ vs random, shares of the whole split and DD-Ranking's scores (hard)."""
    measured = [r for r in t.rows if r.kind == "method"]
    ranks = stats.rank_row({id(r): r.summary for r in measured})
    for r in measured:
        r.rank = ranks[id(r)]
    base, whole = t.row("method", BASELINE), t.row(REFERENCE)
    for r in t.rows:
        if r.kind == "reported":
            continue
        usable = r.summary.n >= stats.MIN_GAIN
        if r.kind == "method" and base is not None and r is not base and usable and base.summary.n >= stats.MIN_GAIN:
            r.gain = stats.gain(r.summary, base.summary)
        if whole is not None and r is not whole:
            r.share = 100 * r.mean / whole.mean if whole.mean else None
        if t.family != "soft" and r.kind == "method" and whole is not None and base is not None and usable \
                and base.summary.n >= stats.MIN_GAIN:
            r.ddr = stats.ddranking_scores(whole.mean, r.mean, r.mean, base.mean)
    t.rows.sort(key=lambda r: (-r.mean, r.label))


def _soft_scores(tables: list[Table]) -> None:
    """Soft-label tables: DD-Ranking's HLR needs each set's hard-label accuracy and the whole split's under hard
    labels: read from the one current hard-label table of the same dataset, IPC and network (none, or two hard
    protocols to choose from: HLR and LRS stay empty; IOR is the soft-label gain over random)."""
    for t in tables:
        if t.family != "soft":
            continue
        base = t.row("method", BASELINE)
        hard = [h for h in tables if h.family == "hard" and h.current and (h.dataset, h.ipc, h.arch) ==
                (t.dataset, t.ipc, t.arch)]
        twin = hard[0] if len({h.protocol for h in hard}) == 1 and len(hard) == 1 else None
        whole = twin.row(REFERENCE) if twin else None
        for r in t.rows:
            if r.kind != "method" or base is None or r.summary.n < stats.MIN_GAIN or base.summary.n < stats.MIN_GAIN:
                continue
            same = next((h for h in (twin.rows if twin else []) if (h.method, h.version, h.settings) ==
                         (r.method, r.version, r.settings) and h.summary is not None), None)
            usable = same is not None and same.summary.n >= stats.MIN_GAIN
            r.ddr = stats.ddranking_scores(whole.mean if whole else None, same.mean if usable else None,
                                           r.mean, base.mean)

# ---------------------------------------------------------------------------------------------- cell facts

def row_facts(records: list[Mapping]) -> dict:
    """`budget.budget_facts` + the provenance a table collects from its rows: card hashes, teachers, devices."""
    return {**budget_facts(records),
            "card_hashes": sorted({card_hash(r.get("protocol_config")) or DASH for r in records}),
            "teachers": [t for r in records if (t := teacher_of(r)) is not None],
            "devices": sorted({str(r["device"]) for r in records if r.get("device")})}
