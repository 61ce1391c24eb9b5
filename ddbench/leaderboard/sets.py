"""The distilled-set metrics of a leaderboard (`ddbench leaderboard --set-metrics`): one table per (dataset,
feature space), one row per (IPC, method card version and settings), one number per column: diversity,
coverage, MMD² and the number of sets they average.

The metrics belong to a distilled set, not to an evaluation (docs/metrics.md): every record of one set
carries the same `extra.set_metrics`, so each set counts once (by its sha256) and a cell is the mean over the
row's distilled sets. Sets measured in different feature spaces never share a table; two card versions or
configs of one method never share a row.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping

from .cards import card_config
from .tables import cells_of, dataset_name, method_order, row_label

SHOWN = (("diversity", "diversity ↑"), ("coverage", "coverage ↓"), ("mmd2", "MMD² ↓"))


def set_metric_rows(records: Iterable[Mapping], defaults=None) -> dict[tuple[str, str], list[dict]]:
    """(dataset, feature space) -> rows {ipc, label, sets, <metric>: mean over the row's sets or None}."""
    out: dict[tuple[str, str], dict[tuple, dict]] = {}
    for cell in cells_of(records, defaults or card_config):
        label = row_label(cell["method"], cell["method_version"], cell["mvariant"])
        for r in cell["records"]:
            m = (r.get("extra") or {}).get("set_metrics")
            if not m:
                continue
            row = out.setdefault((cell["dataset"], str(m.get("space"))), {}).setdefault(
                (cell["ipc"], method_order(cell["method"]), label), {"ipc": cell["ipc"], "label": label, "sets": {}})
            row["sets"].setdefault(r.get("distilled_sha256") or r.get("seed"), m)
    tables = {}
    for key, rows in sorted(out.items()):
        lines = []
        for _, row in sorted(rows.items()):
            sets = list(row.pop("sets").values())
            row.update(sets=len(sets), **{k: _mean([s.get(k) for s in sets]) for k, _ in SHOWN})
            lines.append(row)
        tables[key] = lines
    return tables


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(values) if values else None


def render_set_metrics(records: Iterable[Mapping], defaults=None) -> str:
    """Markdown: a table per (dataset, feature space); empty when no record carries set metrics."""
    parts = []
    for (dataset, space), rows in set_metric_rows(records, defaults).items():
        head = ["IPC", "method", "sets"] + [h for _, h in SHOWN]
        lines = [f"## {dataset_name(dataset)} · distilled-set metrics ({space} features)", "",
                 "Each number: the mean over the row's distilled sets; distances in units of the class's median "
                 "real pairwise distance (docs/metrics.md).", "",
                 "| " + " | ".join(head) + " |", "|---:|---|---:|" + "---:|" * len(SHOWN)]
        for row in rows:
            values = ["–" if row[k] is None else f"{row[k]:.3f}" for k, _ in SHOWN]
            lines.append(f"| {row['ipc']} | {row['label']} | {row['sets']} | " + " | ".join(values) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)
