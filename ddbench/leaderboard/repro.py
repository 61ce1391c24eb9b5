"""Reproduction status (`ddbench leaderboard --reproduction`): every number a method card reports, next to
what was measured here under the same dataset, protocol card, IPC and network.

Only cells measured with the cards' own settings count (a `--set` override is a different experiment), in the
papers' metric by default (best test epoch). Each line: reported mean ± std, measured mean ± std (n), Δ =
measured − reported, z = Δ / sqrt(std_measured² + std_reported²) and a verdict (`ddbench.stats.reproduction`):
reproduced (|z| ≤ 1), within 2σ, gap, not run. A summary line per method counts its verdicts.
Definitions: docs/leaderboards.md.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

import pandas as pd

from .. import stats
from .tables import (DASH, METRICS, REPORTED_META, arch_order, load_reported, method_order, printed,
                     variant_summary)
from .render import markdown_table


@dataclass
class Line:
    dataset: str
    protocol: str
    ipc: int
    arch: str
    method: str
    reported: tuple[float, float | None]
    measured: stats.Summary | None
    version: str | None                 # the measured method card version (None: not run)
    config_hash: str | None
    result: stats.Reproduction


def reported_pairs() -> set[tuple[str, str]]:
    """Every (dataset, protocol) that some method card reports numbers for."""
    from ..method import list_methods, method_card

    pairs = set()
    for name in list_methods():
        for dataset, entry in (method_card(name).get("reported") or {}).items():
            pairs |= {(dataset, k) for k, v in (entry or {}).items() if k not in REPORTED_META and isinstance(v, Mapping)}
    return pairs


def reproduction_lines(records: Iterable[Mapping], metric: str = "best", reported: Mapping | None = None,
                       defaults=None) -> list[Line]:
    """One line per (reported cell × measured group); a reported cell nobody measured gets one "not run" line.
    `reported`: as `load_reported` returns (default: every card's numbers); `defaults`: as in `build_tables`."""
    if metric not in METRICS:
        from ..errors import ConfigError

        raise ConfigError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    field = METRICS[metric][0]
    reported = load_reported(reported_pairs()) if reported is None else reported
    df = variant_summary(records, defaults)
    measured: dict[tuple, list] = {}
    if not df.empty:
        own = df[(df["pvariant"] == "") & (df["mvariant"] == "")]  # the papers ran the cards' own settings
        for rec in own.itertuples(index=False):
            key = (rec.dataset, rec.protocol, int(rec.ipc), rec.arch, rec.method)
            measured.setdefault(key, []).append(
                (stats.Summary(float(getattr(rec, f"{field}_mean")), float(getattr(rec, f"{field}_std")), int(rec.n)),
                 None if pd.isna(rec.method_version) else rec.method_version,
                 None if rec.config_hash is None or pd.isna(rec.config_hash) else rec.config_hash))
    lines = []
    for (dataset, protocol), methods in reported.items():
        for method, entry in methods.items():
            for (ipc, arch), (mean, std) in entry["cells"].items():
                found = measured.get((dataset, protocol, ipc, arch, method)) or [(None, None, None)]
                for summary, version, chash in found:
                    lines.append(Line(dataset, protocol, ipc, arch, method, (mean, std), summary, version, chash,
                                      stats.reproduction(summary, mean, std)))
    return sorted(lines, key=lambda x: (x.dataset, x.protocol, method_order(x.method), x.ipc, arch_order(x.arch)))


def summaries(lines: list[Line]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for x in lines:
        out.setdefault(x.method, Counter())[x.result.verdict] += 1
    return dict(sorted(out.items(), key=lambda kv: method_order(kv[0])))


def summary_text(method: str, counts: Counter) -> str:
    shown = ", ".join(f"{counts[v]} {v}" for v in stats.VERDICTS if counts[v] or v != "no spread")
    return f"{method}: {shown} (of {sum(counts.values())} reported cells)"


HEADER = ["dataset", "protocol", "IPC", "arch", "method", "reported", "measured", "Δ", "z", "verdict"]


def _texts(x: Line) -> list[str]:
    mean, std = x.reported
    rep = printed(mean) + ("" if std is None else f" ± {printed(std)}")
    if x.measured is None:
        got = DASH
    else:
        tag = f" v{x.version}" if x.version is not None else ""
        got = f"{x.measured.mean:.2f} ± {x.measured.std:.2f} ({x.measured.n}){tag}"
    r = x.result
    return [x.dataset, x.protocol, str(x.ipc), x.arch, x.method, rep, got,
            DASH if r.delta is None else f"{r.delta:+.2f}", DASH if r.z is None else f"{r.z:+.2f}", r.verdict]


def _notes(metric: str) -> list[str]:
    field, meaning = METRICS[metric]
    return [f"Measured: {field} = {meaning}; mean ± sample std (n = distillation seeds × evaluation seeds), only "
            "cells run with the cards' own settings (no --set overrides).",
            "Reported: the method card's `reported:` numbers, mean ± the paper's std (none when the paper prints "
            "none; then z uses the measured std alone).",
            "z = Δ / sqrt(std_measured² + std_reported²), Δ = measured − reported. Verdicts: reproduced |z| ≤ 1; "
            "within 2σ 1 < |z| ≤ 2; gap |z| > 2; not run = nothing measured here; no spread = both stds are 0."]


def render_reproduction_markdown(lines: list[Line], metric: str, command: str) -> str:
    out = [f"<!-- generated by `{command}` from the results store; do not edit by hand -->", "",
           "## Reproduction status", ""] + [f"{n}  " for n in _notes(metric)] + ["", "### Summary per method", ""]
    out += [f"- {summary_text(m, c)}" for m, c in summaries(lines).items()] + ["", "### Cells", ""]
    out += markdown_table(HEADER, [_texts(x) for x in lines], right=0)
    return "\n".join(out) + "\n"


def render_reproduction_html(lines: list[Line], metric: str, command: str) -> str:
    """The reproduction page (`leaderboard.html.page`): the summary per method, then one table of cells whose
    sticky first column is the method, linked to its card and paper."""
    from .html import Section, page
    from .links import links_for

    order = [4, 0, 1, 2, 3] + list(range(5, len(HEADER)))   # method first: the sticky column names the row
    sort = [[x.dataset, x.protocol, x.ipc, x.arch, x.method, x.reported[0],
             None if x.measured is None else x.measured.mean, x.result.delta, x.result.z, x.result.verdict]
            for x in lines]
    cells = Section(id="cells", title="Cells: reported vs measured", head=[HEADER[i] for i in order],
                    rows=[[_texts(x)[i] for i in order] for x in lines], sort_values=[[v[i] for i in order]
                                                                                     for v in sort],
                    links=links_for({x.method for x in lines}), part="Reproduction status",
                    row_ipcs=[x.ipc for x in lines], row_datasets=[x.dataset for x in lines])
    counts = summaries(lines)
    summary = Section(id="summary", title="Summary per method", head=["method", *stats.VERDICTS, "reported cells"],
                      rows=[[m] + [str(c[v]) for v in stats.VERDICTS] + [str(sum(c.values()))]
                            for m, c in counts.items()],
                      sort_values=[[m] + [c[v] for v in stats.VERDICTS] + [sum(c.values())] for m, c in counts.items()],
                      links=links_for(counts), part="Reproduction status")
    glossary = dict(zip(("measured", "reported", "z and verdicts"), _notes(metric)))
    return page("ddbench reproduction status", {"generated by": command}, glossary, [summary, cells],
                comment=f"generated by {command} from the results store; do not edit by hand")
