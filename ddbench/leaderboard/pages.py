"""The whole leaderboard page (`ddbench leaderboard --format html`): the result tables (`render.table_sections`)
+ budget and distilled-set metric tables as `html.Section`s, the figures attached to their tables, a header
from the records, one glossary. The page shell (`html`) knows nothing of records or statistics; a new table
layout only needs a `*_sections` function here (or in `render`). Method links: `links`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Mapping

from .budget import HEADER, NOTE, _title, budget_rows, line_texts
from .html import Figure, Section, page, slug, unique_ids
from .links import links_for
from .render import table_glossary, table_sections
from .sets import SHOWN, _cell, set_metrics_frame
from .tables import Table, method_order


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6] if text else ""


def budget_sections(records: Iterable[Mapping], metric: str) -> list[Section]:
    out = []
    for key, lines in budget_rows(records, metric).items():
        dataset, protocol, version, variant, family = key
        sort = [[x["ipc"], x["arch"], x["label"], x["acc"].mean, x["set_bytes"], x["label_bytes"],
                 x["teacher_bytes"], x["total_bytes"], x["acc_per_mb"], x["distill_s"], x["eval_s"], x["device"]]
                for x in lines]
        texts = [line_texts(x) for x in lines]
        # sticky first column: the method, then IPC and network
        order = [2, 0, 1] + list(range(3, len(HEADER)))
        out.append(Section(
            id=slug(dataset, protocol, f"v{version}" if version else "", _short_hash(variant), "budget"),
            title=_title(key), head=[HEADER[i] for i in order], rows=[[r[i] for i in order] for r in texts],
            sort_values=[[v[i] for i in order] for v in sort], dataset=dataset, labels=family,
            badges=["card modified"] if variant else [], links=links_for(x["label"] for x in lines),
            part="Budget", row_ipcs=[x["ipc"] for x in lines]))
    return unique_ids(out)


def budget_glossary() -> dict[str, str]:
    return {"budget": NOTE}


def set_metric_sections(records: Iterable[Mapping]) -> list[Section]:
    """The distilled-set metric tables of `sets.render_set_metrics`: rows IPC, a column per method."""
    df = set_metrics_frame(records)
    out = []
    for (dataset, space), group in ([] if df.empty else df.groupby(["dataset", "space"], sort=True)):
        methods = sorted(group["method"].unique(), key=method_order)
        rows, ipcs = [], []
        for ipc, at_ipc in group.groupby("ipc", sort=True):
            rows.append([str(ipc)] + [_cell(at_ipc[at_ipc["method"] == m]) if (at_ipc["method"] == m).any() else ""
                                      for m in methods])
            ipcs.append(int(ipc))
        values = [[ipcs[i]] + [_first_number(c) for c in r[1:]] for i, r in enumerate(rows)]
        out.append(Section(id=slug(dataset, space, "set-metrics"),
                           title=f"{dataset} · distilled-set metrics ({space} features)", head=["IPC"] + methods,
                           rows=rows, sort_values=values, dataset=dataset, links=links_for(methods),
                           part="Distilled-set metrics", row_ipcs=ipcs))
    return unique_ids(out)


def set_metrics_glossary() -> dict[str, str]:
    legend = " / ".join(f"{k} {d}" for k, d in SHOWN)
    return {"distilled-set metrics": f"{legend} of the method's sets (mean over distillation seeds; sorting uses "
                                     "the first), distances in units of the class's median real pairwise distance "
                                     "(docs/metrics.md)."}


def _first_number(text: str) -> float | None:
    try:
        return float(text.split(" / ")[0])
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------- pages

def figures_for(paths: Iterable[str | Path], output: str | Path | None, datasets: Iterable[str]) -> list[Figure]:
    """Figures linked relative to the page at `output`; each filtered with the dataset its file name names."""
    import os

    base = Path(output).resolve().parent if output else Path.cwd()
    known = sorted(set(datasets), key=len, reverse=True)
    out = []
    for p in sorted(Path(x) for x in paths):
        stem = p.stem
        dataset = next((d for d in known if f"-{d}-" in f"-{stem}-"), "")
        out.append(Figure(stem.replace("-", " "), os.path.relpath(p.resolve(), base).replace(os.sep, "/"),
                          dataset))
    return out


def attach_figures(sections: list[Section], figures: list[Figure]) -> list[Figure]:
    """A figure whose file name ends in a section's anchor (`ddbench plot` names them so) is that table's:
    captioned with the table's title, filtered with its facets and linked under it."""
    out = []
    for f in figures:
        stem = f.src.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        owner = next((s for s in sections if s.part == "Results" and stem.endswith("-" + s.id)), None)
        if owner is not None:
            what = stem[: -len(owner.id) - 1].replace("-", " ").replace(" ipc", " IPC")
            f = Figure(f"{what}: {owner.title}", f.src, owner.dataset, owner.labels, what)
            owner.figures.append(f)
        out.append(f)
    return out


def header_facts(records: list[Mapping], command: str) -> dict[str, str]:
    """The page header: the command that made it, the records' code versions and devices."""
    devices = sorted({str(r.get("device") or (r.get("hardware") or {}).get("device") or "not recorded")
                      for r in records})
    by_time = sorted(records, key=lambda r: str(r.get("created_at") or ""))
    codes = list(dict.fromkeys(str(r.get("code_version") or "not recorded") for r in by_time))
    code = ", ".join(codes) if len(codes) <= 3 else f"{len(codes)} versions, from {codes[0]} to {codes[-1]}"
    return {"generated by": command, "records": str(len(records)), "code": code, "devices": "; ".join(devices)}


def leaderboard_page(tables: list[Table], records: list[Mapping], command: str, budget: bool = False,
                     set_metrics: bool = False, metric: str = "last", figures: list[Figure] = ()) -> str:
    sections = table_sections(tables)
    glossary = table_glossary(tables)
    if budget:
        sections += budget_sections(records, metric)
        glossary |= budget_glossary()
    if set_metrics:
        sections += set_metric_sections(records)
        glossary |= set_metrics_glossary()
    figures = attach_figures(sections, list(figures))
    return page("ddbench leaderboard", header_facts(records, command) if records else {"generated by": command},
                glossary, sections, figures=figures,
                comment=f"generated by {command} from the results store; do not edit by hand")
