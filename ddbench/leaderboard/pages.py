"""The whole leaderboard page (`ddbench leaderboard --format html`): the result tables (`render.table_sections`)
and the distilled-set metric tables as `html.Section`s, the figures attached to their tables, the generated
header and the one glossary of `render`. The page shell (`html`) knows nothing of records or statistics; a new
table layout only needs a `*_sections` function here (or in `render`). Method links: `links`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from .html import Figure, Section, page, slug, unique_ids
from .links import links_for
from .render import PAGE_TITLE, figure_key, glossary_terms, page_header, shown_tables, table_sections
from .sets import SHOWN, set_metric_rows
from .tables import DASH, Table, dataset_name


def set_metric_sections(records: Iterable[Mapping]) -> list[Section]:
    """The tables of `sets.render_set_metrics` (one per dataset and feature space, a row per IPC and method
    card version), cell for cell."""
    out = []
    for (dataset, space), rows in set_metric_rows(records).items():
        texts = [[r["label"], str(r["ipc"]), str(r["sets"])] + [DASH if r[k] is None else f"{r[k]:.3f}"
                                                                for k, _ in SHOWN] for r in rows]
        values = [[r["label"], r["ipc"], r["sets"]] + [r[k] for k, _ in SHOWN] for r in rows]
        out.append(Section(id=slug(dataset, space, "set-metrics"),
                           title=f"{dataset_name(dataset)} · distilled-set metrics ({space} features)",
                           head=["method", "IPC", "sets"] + [h for _, h in SHOWN], rows=texts, sort_values=values,
                           dataset=dataset_name(dataset), links=links_for(r["label"] for r in rows),
                           part="Distilled-set metrics", row_ipcs=[r["ipc"] for r in rows]))
    return unique_ids(out)


SET_METRICS_TERM = ("distilled-set metrics", "diversity ↑, coverage ↓ and MMD² ↓ of the row's distilled sets (the "
                    "mean over its sets), distances in units of the class's median real pairwise distance "
                    "(docs/metrics.md).")


# ---------------------------------------------------------------------------------------------- figures

def figures_for(paths: Iterable[str | Path], output: str | Path | None, datasets: Iterable[str]) -> list[Figure]:
    """Figures linked relative to the page at `output`; each filtered with the dataset its file name names."""
    base = Path(output).resolve().parent if output else Path.cwd()
    known = sorted(set(datasets), key=len, reverse=True)
    out = []
    for p in sorted(Path(x) for x in paths):
        dataset = next((d for d in known if f"-{d}-" in f"-{p.stem}-"), "")
        out.append(Figure(p.stem.replace("-", " "), os.path.relpath(p.resolve(), base).replace(os.sep, "/"),
                          dataset_name(dataset) if dataset else ""))
    return out


def attach_figures(pairs: list[tuple[Table, Section]], figures: list[Figure]) -> list[Figure]:
    """A figure whose file name ends in a table's `render.figure_key` (`ddbench plot` names them so) belongs to
    every IPC × network table of that protocol setting: captioned with the setting, linked under each table."""
    out = []
    for f in figures:
        stem = f.src.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        owners = [(t, s) for t, s in pairs if stem.endswith("-" + figure_key(t))]
        if owners:
            t, s = owners[0]
            what = stem[: -len(figure_key(t)) - 1].replace("-", " ").replace(" ipc", " IPC")
            setting = " · ".join(t.title().split(" · ")[:2])
            settings = f" · settings changed from the card: {t.variant}" if t.variant else ""
            states = {o.current for o, _ in owners}
            old = " · superseded card versions (archive)" if states == {False} else \
                " · current and superseded card versions" if len(states) == 2 else ""
            f = Figure(f"{what}: {setting}{settings}{old}", f.src, s.dataset, s.labels, what)
            for _, s in owners:
                s.figures.append(f)
        out.append(f)
    return out


# ---------------------------------------------------------------------------------------------- the page

def leaderboard_page(tables: list[Table], records: list[Mapping], command: str, set_metrics: bool = False,
                     figures: list[Figure] = (), all_versions: bool = False,
                     stamp: tuple[str, str] | None = None) -> str:
    """Header, glossary, the result tables (current, then the archive with `all_versions`), the set-metric
    tables, the figures."""
    shown = shown_tables(tables, all_versions)
    sections = table_sections(shown, all_versions=True)
    figures = attach_figures(list(zip(shown, sections)), list(figures))
    glossary = glossary_terms(tables[0].metric if tables else "last")
    if set_metrics:
        sections += set_metric_sections(records)
        glossary[SET_METRICS_TERM[0]] = SET_METRICS_TERM[1]
    return page(PAGE_TITLE, page_header(tables, command, stamp, shown), glossary, unique_ids(sections),
                figures=figures, comment=f"generated by {command} from the results store; do not edit by hand")


def render_html(tables: list[Table], command: str = "ddbench leaderboard", all_versions: bool = False,
                stamp: tuple[str, str] | None = None) -> str:
    """The tables alone as one offline page (`leaderboard.html.page`); `leaderboard_page` adds set metrics
    and figures."""
    return leaderboard_page(tables, [], command, all_versions=all_versions, stamp=stamp)
