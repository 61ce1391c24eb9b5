"""Leaderboard tables (`ddbench.leaderboard.Table`) as markdown, a sortable HTML page, or long-form CSV.

Markdown and HTML print the same texts cell for cell (the HTML page is tested against the markdown); the
page itself (filter, contents, sticky headers, keyboard sorting) is `leaderboard.html`, fed by the adapters in
`leaderboard.pages`. Layout: docs/leaderboards.md.
"""
from __future__ import annotations

import hashlib
import html
import io
import math

import pandas as pd

from .. import stats
from .html import Section, page, slug, unique_ids
from .links import links_for
from .tables import BASELINE, DASH, METRICS, Row, Table, method_order

FAMILIES = {"hard": "hard labels", "soft": "soft labels"}


# ---------------------------------------------------------------------------------------------- headers

def title(t: Table) -> str:
    version = f" v{t.protocol_version}" if t.protocol_version is not None else ""
    family = f" · {FAMILIES.get(t.family, t.family)}" if t.family else ""
    variant = f" · modified: {t.variant}" if t.variant else ""
    return f"{t.dataset} · protocol {t.protocol}{version}{family}{variant}"


def _hash(h: str | None) -> str:
    return DASH if not h else h[:12]


def _with_version(label: str, version) -> str:
    """"mgd3 v3" once: a column label names its version already when a table holds two versions of a card."""
    if version is None:
        return f"{label} (no version)"
    return label if f" v{version}" in f"{label} " else f"{label} v{version}"


def notes(t: Table) -> list[str]:
    field_name, meaning = METRICS[t.metric]
    level = f"{stats.LEVEL:.0%}"
    versions = sorted(t.versions.items(), key=lambda kv: method_order(kv[0]))
    cards = ", ".join(f"{_with_version(label, v)} @{_hash(t.config_hashes.get(label))}" for label, v in versions)
    out = [f"Metric: {field_name} = {meaning}.",
           f"Cells: mean ± half-width of its {level} confidence interval (Student t, n − 1 dof) (n = runs = "
           "distillation seeds × evaluation seeds), then the rank in the row: #k; cells not significantly worse "
           f"than the best of the rest share its rank (Welch's t-test, one-sided, p ≥ {stats.ALPHA}); "
           f"n<{stats.MIN_RANKED} = too few runs to rank; bold = rank 1.",
           f"Δ vs random: the best non-random method's mean minus {BASELINE}'s, ± its {level} Welch interval; same "
           "protocol, network and IPC."]
    if t.versions:
        overrides = f"overrides: {t.variant}" if t.variant else "no overrides"
        out.append(f"Protocol card: {t.protocol} v{t.protocol_version} ({t.family or 'family not recorded'}), "
                   f"card hash {', '.join(t.card_hashes) or DASH}; {overrides}.")
    if t.family == "soft":
        out.append("Teacher: " + ("; ".join(_teacher(x) for x in t.teachers) or "not recorded") + ".")
    hashes = [h for h in t.config_hashes.values()]
    old = ("; @rec-… = a hash derived on import from the card versions and configs of records of older code "
           "(made without one): they group by card versions as before" if any(h and h.startswith("rec-")
                                                                                for h in hashes) else "") + \
          ("; @– = records without a config hash (grouped by card versions)" if any(h is None for h in hashes) else "")
    out.append(f"Method cards @ config hash: {cards}{old}." if cards else "Method cards: nothing measured yet.")
    if t.sources:
        out.append("(reported): numbers printed in the papers (mean ± the paper's std), not measured here (their "
                   "metric: best test epoch for the hard-label protocols); never ranked nor used for Δ. Sources: "
                   + "; ".join(f"{m}: {s}" for m, s in sorted(t.sources.items())) + ".")
    return out


def _teacher(t: dict) -> str:
    acc = DASH if t.get("val_acc") is None else f"{float(t['val_acc']):.2f} %"
    return f"arch {t.get('arch') or DASH}, source {t.get('source') or DASH}, real-validation accuracy {acc}"


def header(t: Table) -> list[str]:
    return ["IPC", "arch"] + [f"{lb} (reported)" if kind == "reported" else lb for lb, kind in t.columns] + \
        ["Δ vs random"]


def gain_text(row: Row, baseline: str | None) -> str:
    gain = row.gain(baseline)
    if gain is None:
        return DASH
    diff, label = gain
    hw = DASH if diff.half_width is None else f"{diff.half_width:.2f}"
    return f"{diff.value:+.2f} ± {hw} ({label})"


def row_texts(t: Table, row: Row, bold) -> list[str]:
    best = row.best_labels()
    out = [str(row.ipc), row.arch]
    for label, kind in t.columns:
        cell = (row.reported if kind == "reported" else row.cells).get(label)
        text = DASH if cell is None else cell.text()
        out.append(bold(text) if kind == "measured" and label in best else text)
    out.append(gain_text(row, t.baseline_label))
    return out


def _sort_values(t: Table, row: Row) -> list[float | str]:
    """What a click on each column sorts by: IPC, arch name, each cell's mean, Δ."""
    out: list[float | str] = [row.ipc, row.arch]
    for label, kind in t.columns:
        cell = (row.reported if kind == "reported" else row.cells).get(label)
        out.append(math.nan if cell is None else cell.mean)
    gain = row.gain(t.baseline_label)
    out.append(math.nan if gain is None else gain[0].value)
    return out


# ---------------------------------------------------------------------------------------------- markdown

def markdown_table(head: list[str], rows: list[list[str]], right: int = 1) -> list[str]:
    """GitHub markdown lines; the first `right` columns right-aligned."""
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---:"] * right + ["---"] * (len(head) - right)) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def render_markdown(tables: list[Table], command: str = "ddbench leaderboard") -> str:
    parts = [f"<!-- generated by `{command}` from the results store; do not edit by hand -->\n"]
    for t in tables:
        n = notes(t)
        lines = [f"## {title(t)}", ""] + [f"{x}  " for x in n[:-1]] + [n[-1], ""]
        lines += markdown_table(header(t), [row_texts(t, row, lambda s: f"**{s}**") for row in t.rows])
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- html

GLOSSARY_LINES = 3   # notes(): metric, cells, Δ vs random (the same for every table) go to the page's glossary


def table_sections(tables: list[Table]) -> list[Section]:
    """One page section per table: the sticky first column is "IPC · network", the method columns link to
    their cards and papers, the rest of `notes` is the provenance behind a toggle. The anchor is the suffix
    `ddbench plot` gives the table's figures."""
    out = []
    for t in tables:
        rows = [row_texts(t, row, lambda s: f"\0{s}\1") for row in t.rows]
        values = [_sort_values(t, row) for row in t.rows]
        details = "".join(f"<p>{html.escape(x)}</p>" for x in notes(t)[GLOSSARY_LINES:])
        variant = hashlib.sha256(t.variant.encode()).hexdigest()[:6] if t.variant else ""
        out.append(Section(
            id=slug(t.dataset, t.protocol, f"v{t.protocol_version}" if t.protocol_version else "", variant),
            title=title(t), head=["IPC · network"] + header(t)[2:], rows=[[f"{r[0]} · {r[1]}"] + r[2:] for r in rows],
            sort_values=[[v[0]] + v[2:] for v in values], dataset=t.dataset, labels=t.family or "",
            badges=["card modified"] if t.variant else [],
            links=links_for(lb for lb, kind in t.columns if kind == "measured"), details_html=details,
            row_ipcs=[row.ipc for row in t.rows]))
    return unique_ids(out)


def table_glossary(tables: list[Table]) -> dict[str, str]:
    """The lines every table shares (metric, cells, Δ), once per page."""
    return dict(zip(("metric", "cells", "Δ vs random"), notes(tables[0])[:GLOSSARY_LINES])) if tables else {}


def render_html(tables: list[Table], command: str = "ddbench leaderboard") -> str:
    """The tables as one offline page (`leaderboard.html.page`); `leaderboard.pages` adds budget, set metrics
    and figures."""
    return page("ddbench leaderboard", {"generated by": command}, table_glossary(tables), table_sections(tables),
                comment=f"generated by {command} from the results store; do not edit by hand")


# ---------------------------------------------------------------------------------------------- csv

CSV_COLUMNS = ["dataset", "protocol", "protocol_version", "family", "metric", "ipc", "arch", "method",
               "method_version", "config_hash", "source", "mean", "std", "n", "ci95", "rank", "gain_vs_random",
               "gain_ci95", "best_in_row"]


def render_csv(tables: list[Table]) -> str:
    """Long form, one line per (table, row, column): for analysis, not for reading."""
    lines = []
    for t in tables:
        base_label = t.baseline_label
        for row in t.rows:
            base = row.cells.get(base_label) if base_label else None
            for label, kind in t.columns:
                cell = (row.reported if kind == "reported" else row.cells).get(label)
                if cell is None:
                    continue
                measured = kind == "measured"
                g = stats.gain(cell.summary, base.summary) if measured and base else None
                lines.append({"dataset": t.dataset, "protocol": t.protocol, "protocol_version": t.protocol_version,
                              "family": t.family, "metric": METRICS[t.metric][0], "ipc": row.ipc, "arch": row.arch,
                              "method": label, "method_version": t.versions.get(label) if measured else None,
                              "config_hash": t.config_hashes.get(label) if measured else None,
                              "source": kind, "mean": cell.mean, "std": cell.std, "n": cell.n, "ci95": cell.ci,
                              "rank": cell.rank, "gain_vs_random": g.value if g else None,
                              "gain_ci95": g.half_width if g else None,
                              "best_in_row": measured and label in row.best_labels()})
    buf = io.StringIO()
    pd.DataFrame(lines, columns=CSV_COLUMNS).astype({"n": "Int64", "rank": "Int64"}) \
        .to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


RENDERERS = {"md": render_markdown, "html": render_html, "csv": lambda tables, command=None: render_csv(tables)}
