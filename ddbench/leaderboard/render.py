"""Leaderboard tables (`ddbench.leaderboard.Table`) as a markdown page, a sortable HTML page, or long-form CSV.

A page reads itself: a generated header (title, date, commit, the command, the devices), one glossary, the
current tables (one per setting, methods as rows, the scale badge above each), each table's provenance in a
collapsible <details> block, and the superseded card versions in an archive section at the end (with
`all_versions`; otherwise a line says how many there are). Markdown and HTML print the same texts cell for
cell; the HTML page sorts a table by any column when its header is clicked. Layout: docs/leaderboards.md.
"""
from __future__ import annotations

import html
import io
import math
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .. import stats
from .tables import BASELINE, DASH, METRICS, Table, dataset_name

FAMILIES = {"hard": "hard labels", "soft": "soft labels"}
PAGE_TITLE = "ddbench leaderboard"


# ---------------------------------------------------------------------------------------------- page text

def generated_line(command: str, devices: list[str], stamp: tuple[str, str] | None = None) -> list[str]:
    """The header under the title: date (UTC), the ddbench commit, the command, the devices of the records."""
    date, commit = stamp or (datetime.now(timezone.utc).strftime("%Y-%m-%d"), checkout_commit())
    return [f"Generated {date} from ddbench commit {commit} by `{command}`, from the results store (never edited "
            "by hand).", f"Devices: {', '.join(devices) or DASH}."]


def checkout_commit() -> str:
    """`git describe --always --dirty` of the ddbench checkout, else "unknown"."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def glossary(metric: str) -> list[str]:
    """The page's one legend: what every column and mark means."""
    level = f"{stats.LEVEL:.0%}"
    return [
        f"**test accuracy (%)**: {METRICS[metric][1]}; the mean over distilled sets of each set's mean over its "
        f"evaluations. **±** is always the half-width of its {level} confidence interval over sets (Student t, "
        "sets − 1 dof); a single set has no ±.",
        "**sets × evaluations**: distilled sets (distillation seeds) × evaluations per set (evaluation seeds). The "
        "distilled set is the unit of evidence: a cell of one set (\"1 set × k\", with the sd of its k evaluations) "
        f"is shown but never ranked nor used for Δ or the scores; ranks need ≥ {stats.MIN_RANKED} sets, Δ ≥ "
        f"{stats.MIN_GAIN} on both sides.",
        f"**rank**: rows sorted by mean; a row shares the rank of the row above unless it is significantly below "
        f"it (Welch's t-test over sets, one-sided, p < {stats.ALPHA}), and then takes its position. Ranks never "
        "go against the means and equal means always tie.",
        f"**Δ vs random**: the row's mean minus `{BASELINE}`'s (seeded uniform sampling, same protocol, network and "
        f"IPC), ± its {level} Welch interval.",
        "**whole**: the `whole` reference, trained on the whole training split under the same protocol (its own "
        "epoch count, in its label); IPC does not apply, so it appears in every IPC table. **% of whole**: the "
        "row's mean as a share of it.",
        "**HLR / IOR / LRS**: DD-Ranking's hard-label recovery (whole − set, hard labels; lower is better), "
        "improvement over random (set − random; higher is better) and label-robust score (%, higher is better), "
        "on the cell means; docs/leaderboards.md says how records map to DD-Ranking's inputs.",
        "**set / stored labels / teacher / total**: bytes the student needs besides its network (hard labels "
        "cost nothing to store; a soft-label protocol ships its teacher). **distill s**: one-off preparation + "
        "mean distillation per set; **eval s / model**: training + testing per model; device seconds on the "
        "table's device. – = not recorded, never estimated.",
        "**(paper)** rows: the number the paper prints (its metric: best test epoch for the hard-label "
        "protocols), not measured here; never ranked nor used for Δ. Sources in each table's provenance.",
        "**Badges**: `smoke scale` marks numbers that are not the paper-scale experiment, and says why: the "
        "protocol card modified (settings in the provenance), ddbench's own small generator trained on the "
        "embedded data in place of the papers' DiT, or a CPU run. ⚑ nonstandard subset: a dataset copy that is "
        "not the standard one (`--allow-nonstandard-subset`).",
    ]


def caption(t: Table) -> str:
    """The line above a table: its badges, label type and device."""
    badges = " ".join(f"`{b}`" for b in t.badges) or "paper scale"
    state = "" if t.current else "superseded card versions" + (f" (settings: {t.variant})" if t.variant else "") + " · "
    return f"{state}{badges} · {FAMILIES.get(t.family, 'labels not recorded')} · device: " \
           f"{', '.join(t.devices) or DASH}"


def devices_of(tables: list[Table]) -> list[str]:
    return sorted({d for t in tables for d in t.devices})


def changes_line(tables: list[Table]) -> str:
    """The protocol settings the current tables changed from their cards, stated once for the page."""
    changes = sorted({(t.protocol, t.variant) for t in tables if t.current and t.variant})
    if not changes:
        return "Protocol cards: every current table uses its card's own settings."
    return "Protocol settings changed from the cards (badge `card modified`): " + \
        "; ".join(f"{p}: {v}" for p, v in changes) + "."


# ---------------------------------------------------------------------------------------------- markdown

def markdown_table(head: list[str], rows: list[list[str]], right: int = 1) -> list[str]:
    """GitHub markdown lines; the first `right` columns right-aligned."""
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---:"] * right + ["---"] * (len(head) - right)) + "|"]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]


def markdown_section(t: Table, level: str = "##") -> str:
    lines = [f"{level} {t.title()}", "", caption(t), ""]
    lines += markdown_table(t.columns(), [t.texts(r) for r in t.rows])
    lines += ["", "<details><summary>provenance</summary>", ""] + [f"- {x}" for x in t.details()] + \
             ["", "</details>", ""]
    return "\n".join(lines)


def render_markdown(tables: list[Table], command: str = "ddbench leaderboard", all_versions: bool = False,
                    stamp: tuple[str, str] | None = None) -> str:
    current = [t for t in tables if t.current]
    old = [t for t in tables if not t.current]
    metric = tables[0].metric if tables else "last"
    header = generated_line(command, devices_of(tables), stamp) + [changes_line(tables)]
    parts = [f"# {PAGE_TITLE}", "", *[f"{x}  " for x in header[:-1]], header[-1], "",
             "## Glossary", "", *[f"- {x}" for x in glossary(metric)], ""]
    parts += [markdown_section(t) for t in current]
    if old and all_versions:
        parts += ["## Archive: superseded card versions", "",
                  "Rows and tables made by older method or protocol card versions (or by the same version before "
                  "the card gained a setting); kept for the record, never compared with the current ones.", ""]
        parts += [markdown_section(t, "###") for t in old]
    elif old:
        parts += [f"{len(old)} table(s) of superseded card versions are not shown: `--all-versions` adds them.", ""]
    return "\n".join(parts).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------- html

SORT_SCRIPT = """
for (const th of document.querySelectorAll("table.sortable th")) {
  th.title = "sort by this column";
  th.addEventListener("click", () => {
    const body = th.closest("table").tBodies[0], i = th.cellIndex;
    const dir = th.dataset.dir = th.dataset.dir === "desc" ? "asc" : "desc";
    const key = tr => { const v = tr.cells[i].dataset.v; const x = parseFloat(v); return isNaN(x) ? v : x; };
    const rows = [...body.rows].sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === "" || y === "") return (x === "") - (y === "");   // empty cells last, either way
      const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return dir === "asc" ? c : -c;
    });
    for (const r of rows) body.appendChild(r);
  });
}
"""
STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}"
         "th{background:#f3f3f3;cursor:pointer;white-space:normal;max-width:12em;vertical-align:bottom}"
         "p,li{margin:.2em 0;max-width:70em;font-size:90%}")


def html_table(head: list[str], rows: list[list[str]], sort_values: list[list] | None = None) -> str:
    """One sortable <table>; texts are escaped, "\\0…\\1" marks bold; `sort_values` give each td's data-v."""
    esc = html.escape
    out = ["<table class=\"sortable\">", "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead>",
           "<tbody>"]
    for i, texts in enumerate(rows):
        values = sort_values[i] if sort_values else texts
        cells = []
        for text, v in zip(texts, values):
            v = "" if isinstance(v, float) and math.isnan(v) else v
            body = esc(text).replace("\0", "<strong>").replace("\1", "</strong>")
            cells.append(f"<td data-v=\"{esc(str(v))}\">{body}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out + ["</tbody>", "</table>"])


def html_page(sections: list[str], command: str, page_title: str = PAGE_TITLE) -> str:
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(page_title)}</title><style>{STYLE}</style></head>\n<body>\n"
            f"<!-- generated by {html.escape(command)} from the results store; do not edit by hand -->\n"
            + "\n".join(sections) + f"\n<script>{SORT_SCRIPT}</script>\n</body></html>\n")


def html_sections(tables: list[Table], all_versions: bool = False) -> list[str]:
    esc = html.escape
    out = []
    for t in tables:
        if not t.current and not all_versions:
            continue
        out += [f"<h2>{esc(t.title())}</h2>", f"<p>{_html_marks(esc(caption(t)))}</p>",
                html_table(t.columns(), [t.texts(r) for r in t.rows], [t.sort_values(r) for r in t.rows]),
                "<details><summary>provenance</summary><ul>" + "".join(f"<li>{esc(x)}</li>" for x in t.details())
                + "</ul></details>"]
    return out


def render_html(tables: list[Table], command: str = "ddbench leaderboard", all_versions: bool = False,
                stamp: tuple[str, str] | None = None) -> str:
    esc = html.escape
    metric = tables[0].metric if tables else "last"
    lines = generated_line(command, devices_of(tables), stamp) + [changes_line(tables)]
    head = [f"<h1>{PAGE_TITLE}</h1>"] + [f"<p>{_html_marks(esc(x))}</p>" for x in lines]
    head += ["<h2>Glossary</h2>", "<ul>" + "".join(f"<li>{_html_marks(esc(x))}</li>" for x in glossary(metric))
             + "</ul>"]
    return html_page(head + html_sections(tables, all_versions), command)


def _html_marks(text: str) -> str:
    """The glossary's markdown marks (**bold**, `code`) as HTML tags, in already escaped text."""
    parts = text.split("**")
    text = "".join(p if i % 2 == 0 else f"<strong>{p}</strong>" for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(p if i % 2 == 0 else f"<code>{p}</code>" for i, p in enumerate(parts))


# ---------------------------------------------------------------------------------------------- csv

CSV_COLUMNS = ["dataset", "protocol", "protocol_version", "family", "metric", "ipc", "arch", "method",
               "method_version", "kind", "label", "current", "config_hash", "mean", "std_over_sets", "sets",
               "evaluations", "ci95", "rank", "gain_vs_random", "gain_ci95", "share_of_whole", "hlr", "ior", "lrs",
               "set_bytes", "label_bytes", "teacher_bytes", "distill_s", "eval_s"]


def render_csv(tables: list[Table], all_versions: bool = True) -> str:
    """Long form, one line per (table, row): for analysis, not for reading (every version by default)."""
    lines = []
    for t in tables:
        if not (t.current or all_versions):
            continue
        for r in t.rows:
            s, g, d, b = r.summary, r.gain, r.ddr, r.budget
            lines.append({"dataset": dataset_name(t.dataset), "protocol": t.protocol,
                          "protocol_version": t.protocol_version, "family": t.family,
                          "metric": METRICS[t.metric][0], "ipc": t.ipc, "arch": t.arch, "method": r.method,
                          "method_version": r.version, "kind": r.kind, "label": r.label,
                          "current": t.current and r.current, "config_hash": r.config_hash, "mean": r.mean,
                          "std_over_sets": s.std if s else None, "sets": s.n if s else None,
                          "evaluations": s.evaluations if s else None, "ci95": r.ci, "rank": r.rank,
                          "gain_vs_random": g.value if g else None, "gain_ci95": g.half_width if g else None,
                          "share_of_whole": r.share, "hlr": d.hlr if d else None, "ior": d.ior if d else None,
                          "lrs": d.lrs if d else None, "set_bytes": b.get("set_bytes"),
                          "label_bytes": b.get("label_bytes"), "teacher_bytes": b.get("teacher_bytes"),
                          "distill_s": b.get("distill_s"), "eval_s": b.get("eval_s")})
    buf = io.StringIO()
    pd.DataFrame(lines, columns=CSV_COLUMNS).astype({"sets": "Int64", "evaluations": "Int64", "rank": "Int64"}) \
        .to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


RENDERERS = {"md": render_markdown, "html": render_html,
             "csv": lambda tables, command=None, all_versions=True, stamp=None: render_csv(tables, all_versions)}
