"""The budget beside each leaderboard row: what the student needs besides its network, and what the cell cost.

Per row (`budget_facts`, from the row's records, each distilled set counted once by its sha256): the distilled
set as stored (`extra.budget.set_bytes`), the stored labels (none for hard labels and for soft labels made on the
fly; the stored soft labels of `fkd`, `extra.soft_label_bytes`), the teacher a soft-label protocol ships
(`extra.budget.teacher_params/bytes`), their total, and the device seconds of distillation (the one-off prepare
+ the mean distillation per set) and of evaluation (per trained model). A field the records lack (records of
older code) is shown as "–", never estimated. Sizes in B / KB / MB / GB, never in scientific notation.
Definitions: docs/leaderboards.md.
"""
from __future__ import annotations

import statistics
from typing import Mapping

DASH = "–"


def _one(values: list):
    """The common value of a field over a cell's sets (their mean); None when any set lacks it."""
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(values)


def distill_seconds(records: list[Mapping]) -> float | None:
    """The one-off `prepare` (counted once: the largest over seeds, since it is cached after the first) + the
    mean `distill` time per distilled set. None when no record has timings."""
    per_seed = _first_per_seed(records)
    distill = [t["distill"] for t in (r.get("timings") or {} for r in per_seed) if "distill" in t]
    if not distill:
        return None
    return _prepare(per_seed) + sum(distill) / len(distill)


def _first_per_seed(records: list[Mapping]) -> list[Mapping]:
    """One record per distillation seed (the first): a set is distilled once, however often it is evaluated."""
    per_seed: dict = {}
    for r in records:
        per_seed.setdefault(r.get("seed"), r)
    return list(per_seed.values())


def _prepare(per_seed: list[Mapping]) -> float:
    """The one-off `prepare`, counted once: the largest over seeds, since it is cached after the first."""
    return max(((r.get("timings") or {}).get("prepare") or 0.0 for r in per_seed), default=0.0)


def budget_facts(records: list[Mapping]) -> dict:
    """Budget fields of one row, from its records (each distilled set counted once, by sha256)."""
    sets: dict = {}
    for r in records:
        sets.setdefault(r.get("distilled_sha256") or id(r), r)
    budgets = [((r.get("extra") or {}).get("budget") or {}) for r in sets.values()]
    soft = {(r.get("protocol_config") or {}).get("family") for r in records} == {"soft"}
    labels = [(r.get("extra") or {}).get("soft_label_bytes") for r in sets.values()] if soft else [0] * len(sets)
    evals = [(r.get("timings") or {}).get("evaluate") for r in records]
    return {"set_bytes": _one([b.get("set_bytes") for b in budgets]),
            "label_bytes": _one(labels), "soft": soft,
            "teacher_params": _one([b.get("teacher_params") for b in budgets]) if soft else 0,
            "teacher_bytes": _one([b.get("teacher_bytes") for b in budgets]) if soft else 0,
            "distill_s": distill_seconds(records), "eval_s": _one(evals), "spent": spent_seconds(records)}


def spent_seconds(records: list[Mapping]) -> dict[str, dict[str, float]]:
    """Device seconds the records cost, per device: {device: {"distill": s, "evaluate": s}}. Distillation: the
    one-off `prepare` once and each set's `distill` once (per distillation seed); evaluation: every record's
    `evaluate`. A record without timings adds nothing (the page says the total counts recorded time only)."""
    def device(r: Mapping) -> dict[str, float]:
        return out.setdefault(str(r.get("device") or DASH), {"distill": 0.0, "evaluate": 0.0})

    out: dict[str, dict[str, float]] = {}
    for r in records:
        device(r)["evaluate"] += float((r.get("timings") or {}).get("evaluate") or 0.0)
    per_seed = _first_per_seed(records)
    for r in per_seed:
        device(r)["distill"] += float((r.get("timings") or {}).get("distill") or 0.0)
    if per_seed:  # on the device of the first set, where the one-off preparation ran
        device(per_seed[0])["distill"] += float(_prepare(per_seed))
    return out


def total_bytes(facts: Mapping) -> float | None:
    parts = [facts.get("set_bytes"), facts.get("label_bytes"), facts.get("teacher_bytes")]
    return None if not facts or any(p is None for p in parts) else float(sum(parts))


def size_text(n: float | None) -> str:
    """"75.4 KB", "1.20 MB", "412 B": three significant digits at most, never scientific notation."""
    if n is None:
        return DASH
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return _three(n / scale) + f" {unit}"
    return f"{n:.0f} B"


def _three(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def count_text(n: float | None) -> str:
    if n is None:
        return DASH
    return _three(n / 1e6) + " M" if n >= 1e6 else _three(n / 1e3) + " k" if n >= 1e3 else f"{n:.0f}"


def teacher_text(facts: Mapping) -> str:
    """"none" for hard labels; "1.23 M params, 4.93 MB" for a soft-label protocol's teacher."""
    if not facts:
        return DASH
    if not facts.get("soft"):
        return "none"
    if facts.get("teacher_params") is None:
        return DASH
    return f"{count_text(facts['teacher_params'])} params, {size_text(facts['teacher_bytes'])}"


def seconds_text(s: float | None) -> str:
    return DASH if s is None or s != s else f"{s:.1f}"
