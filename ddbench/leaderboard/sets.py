"""The distilled-set metrics of a leaderboard (`ddbench leaderboard --set-metrics`): one table per dataset,
rows IPC, a column per method, each cell `diversity / coverage / MMD²` of the method's sets.

The metrics belong to a distilled set, not to an evaluation (docs/metrics.md): every record of one set
carries the same `extra.set_metrics`, so each set counts once (by its sha256) and a cell is the mean over the
method's distillation seeds. Sets measured in different feature spaces never share a table.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import pandas as pd

from .tables import method_order

SHOWN = (("diversity", "↑"), ("coverage", "↓"), ("mmd2", "↓"))


def set_metrics_frame(records: Iterable[Mapping]) -> pd.DataFrame:
    """One row per distilled set that carries metrics: dataset, space, ipc, method, the metric values."""
    rows, seen = [], set()
    for r in records:
        m = (r.get("extra") or {}).get("set_metrics")
        key = (r.get("distilled_sha256"), r["method"])
        if not m or key in seen:
            continue
        seen.add(key)
        rows.append({"dataset": r["dataset"], "space": m.get("space"), "ipc": r["ipc"], "method": r["method"],
                     **{k: m.get(k) for k, _ in SHOWN}})
    return pd.DataFrame(rows, columns=["dataset", "space", "ipc", "method", *(k for k, _ in SHOWN)])


def _cell(values: pd.DataFrame) -> str:
    def one(v) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
    return " / ".join(one(values[k].mean(skipna=True)) if values[k].notna().any() else "–" for k, _ in SHOWN)


def render_set_metrics(records: Iterable[Mapping]) -> str:
    """Markdown: a table per (dataset, feature space); empty when no record carries set metrics."""
    df = set_metrics_frame(records)
    if df.empty:
        return ""
    legend = " / ".join(f"{k} {d}" for k, d in SHOWN)
    parts = []
    for (dataset, space), group in df.groupby(["dataset", "space"], sort=True):
        methods = sorted(group["method"].unique(), key=method_order)
        lines = [f"## {dataset} · distilled-set metrics ({space} features)", "",
                 f"Cells: {legend} of the method's sets (mean over distillation seeds), distances in units of the "
                 "class's median real pairwise distance (docs/metrics.md).", "",
                 "| IPC | " + " | ".join(methods) + " |", "|---:|" + "---|" * len(methods)]
        for ipc, at_ipc in group.groupby("ipc", sort=True):
            cells = [_cell(at_ipc[at_ipc["method"] == m]) if (at_ipc["method"] == m).any() else "" for m in methods]
            lines.append(f"| {ipc} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)
