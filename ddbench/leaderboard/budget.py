"""Budget tables (`ddbench leaderboard --budget`): what each leaderboard cell cost to make and what the student
needs besides its network.

One table per leaderboard table (dataset × protocol card × version × settings), one line per (IPC, network,
method column): the accuracy (mean ± 95 % CI, n), the bytes the evaluation needs — the distilled set as stored
(`extra.budget.set_bytes`), the labels (0 for hard labels and for soft labels made on the fly; the stored
soft labels of `fkd`, `extra.soft_label_bytes`), the teacher a soft-label protocol ships
(`extra.budget.teacher_params/bytes`) — their total, the accuracy per MB of that total, and the device
seconds of distillation (prepare once + distill per set) and of evaluation (per trained model). A field the
records lack (records of older code) is shown as "–", never estimated. Definitions: docs/leaderboards.md.
"""
from __future__ import annotations

import math
import statistics
from typing import Iterable, Mapping

import pandas as pd

from .. import stats
from .tables import DASH, METRICS, arch_order, column_labels, method_order, variant_summary
from .render import FAMILIES, markdown_table

HEADER = ["IPC", "arch", "method", "accuracy (%)", "set", "labels", "teacher", "total", "acc / MB",
          "distill s", "eval s / model", "device"]


# ---------------------------------------------------------------------------------------------- facts

def _one(values: list):
    """The common value of a field over a cell's sets; None when any set lacks it."""
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(values)


def budget_facts(records: list[Mapping]) -> dict:
    """Budget columns of one cell, from its records (each distilled set counted once, by sha256)."""
    from ..plots import distill_seconds

    sets: dict = {}
    for r in records:
        sets.setdefault(r.get("distilled_sha256") or id(r), r)
    budgets = [((r.get("extra") or {}).get("budget") or {}) for r in sets.values()]
    family = {(r.get("protocol_config") or {}).get("family") for r in records}
    soft = family == {"soft"}
    labels = [(r.get("extra") or {}).get("soft_label_bytes") for r in sets.values()] if soft else [0] * len(sets)
    evals = [(r.get("timings") or {}).get("evaluate") for r in records]
    return {"set_bytes": _one([b.get("set_bytes") for b in budgets]),
            "label_bytes": _one(labels), "soft": soft,
            "teacher_params": _one([b.get("teacher_params") for b in budgets]) if soft else 0,
            "teacher_bytes": _one([b.get("teacher_bytes") for b in budgets]) if soft else 0,
            "distill_s": distill_seconds(records), "eval_s": _one(evals),
            "device": ", ".join(sorted({str(r.get("device")) for r in records if r.get("device")}))}


def total_bytes(facts: Mapping) -> float | None:
    parts = [facts["set_bytes"], facts["label_bytes"], facts["teacher_bytes"]]
    return None if any(p is None for p in parts) else float(sum(parts))


# ---------------------------------------------------------------------------------------------- text

def size_text(n: float | None) -> str:
    if n is None:
        return DASH
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def _count(n: float | None) -> str:
    if n is None:
        return DASH
    return f"{n / 1e6:.3g} M" if n >= 1e6 else f"{n / 1e3:.3g} k" if n >= 1e3 else f"{n:.0f}"


def _seconds(s: float | None) -> str:
    return DASH if s is None or s != s else f"{s:.1f}"


def budget_rows(records: Iterable[Mapping], metric: str = "last", defaults=None) -> dict[tuple, list[dict]]:
    """(dataset, protocol, version, settings, family) -> one dict per line of its budget table."""
    field = METRICS[metric][0]
    df = variant_summary(records, defaults, extra=budget_facts)
    out: dict[tuple, list[dict]] = {}
    if df.empty:
        return out
    keys = ["dataset", "protocol", "protocol_version", "pvariant"]
    for key, group in df.groupby(keys, dropna=False, sort=True):
        group = column_labels(group)
        lines = []
        for rec in group.itertuples(index=False):
            facts = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in rec._asdict().items()}
            s = stats.Summary(float(getattr(rec, f"{field}_mean")), float(getattr(rec, f"{field}_std")), int(rec.n))
            total = total_bytes(facts)
            lines.append({**facts, "acc": s, "total_bytes": total,
                          "acc_per_mb": None if not total else s.mean / (total / 1e6)})
        lines.sort(key=lambda x: (x["ipc"], arch_order(x["arch"]), method_order(x["label"])))
        soft = all(x["soft"] for x in lines)
        version = None if pd.isna(key[2]) else key[2]
        out[(key[0], key[1], version, key[3], "soft" if soft else "hard")] = lines
    return out


def line_texts(x: Mapping) -> list[str]:
    s: stats.Summary = x["acc"]
    ci = stats.interval(s)
    labels = DASH if x["label_bytes"] is None else size_text(x["label_bytes"]) + ("" if x["soft"] else " (hard)")
    teacher = "none" if not x["soft"] else DASH if x["teacher_params"] is None else \
        f"{_count(x['teacher_params'])} params, {size_text(x['teacher_bytes'])}"
    return [str(x["ipc"]), x["arch"], x["label"], f"{s.mean:.2f} ± {DASH if ci is None else f'{ci:.2f}'} ({s.n})",
            size_text(x["set_bytes"]), labels, teacher, size_text(x["total_bytes"]),
            DASH if x["acc_per_mb"] is None else f"{x['acc_per_mb']:.3g}", _seconds(x["distill_s"]),
            _seconds(x["eval_s"]), x["device"] or DASH]


def _title(key: tuple) -> str:
    dataset, protocol, version, variant, family = key
    v = f" v{version}" if version is not None else ""
    mod = f" · modified: {variant}" if variant else ""
    return f"{dataset} · protocol {protocol}{v} · {FAMILIES[family]}{mod} · budget"


NOTE = ("What the student needs besides its network, and what the cell cost. set = the distilled set as stored "
        "(image files, + its own soft labels if any); labels = stored labels (0 B for hard labels and for soft "
        "labels made on the fly by the teacher); teacher = the network a soft-label protocol ships to label the "
        "images; total = set + labels + teacher; acc / MB = mean accuracy (%) per MB of that total; distill s = "
        "one-off prepare + mean distillation per set, eval s = mean training + testing per model, both in "
        "seconds on the device named; – = not in the records (older code), never estimated.")


def render_budget_markdown(records: Iterable[Mapping], metric: str = "last") -> str:
    parts = []
    for key, lines in budget_rows(records, metric).items():
        body = [f"## {_title(key)}", "", NOTE, ""] + markdown_table(HEADER, [line_texts(x) for x in lines], right=1)
        parts.append("\n".join(body) + "\n")
    return "\n".join(parts)

