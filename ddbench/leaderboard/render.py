"""Leaderboard tables (`ddbench.leaderboard.Table`) as a markdown page, a sortable HTML page, or long-form CSV.

A page reads itself: a generated header (title, date, commit, the command, the devices), one glossary, the
current tables (one per setting, methods as rows, the scale badge above each), each table's provenance in a
collapsible <details> block, and the superseded card versions in an archive section at the end (with
`all_versions`; otherwise a line says how many there are). Markdown and HTML print the same texts cell for
cell; the HTML page itself (filter, contents, sticky headers, keyboard sorting) is `leaderboard.html`, fed by
`table_sections` here and the adapters in `leaderboard.pages`. Layout: docs/leaderboards.md.
"""
from __future__ import annotations

import hashlib
import html
import io
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import pandas as pd

from .. import stats
from .html import Section, slug, unique_ids
from .links import links_for
from .tables import BASELINE, CODE_NOT_RECORDED, DASH, METRICS, OTHER_CODE, Table, dataset_name

FAMILIES = {"hard": "hard labels", "soft": "soft labels"}
PAGE_TITLE = "ddbench leaderboard"


# ---------------------------------------------------------------------------------------------- page text

def generated_line(command: str, devices: list[str], stamp: tuple[str, str] | None = None) -> list[str]:
    """The header under the title: date (UTC), the ddbench commit, the command, the devices of the records."""
    date, commit = stamp or (datetime.now(timezone.utc).strftime("%Y-%m-%d"), checkout_commit())
    return [f"Generated {date} from ddbench commit {commit} by `{command}`, from the results store (never edited "
            "by hand).", f"Devices: {', '.join(devices) or DASH}."]


def checkout_commit() -> str:
    """The ddbench checkout's short commit, + "-dirty" when code differs from it; the published files under
    `leaderboards/` do not count (regenerating them rewrites them before the page is written). "unknown"
    outside a git checkout."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)leaderboards").strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


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
        "improvement over random (set − random; higher is better) and label-robust score (higher is better), "
        "on the cell means in %, exactly as the `ddranking` package computes them: LRS = (e^α − e^−1) / (e − "
        "e^−1), α = (IOR − HLR) / 2 in points, so it is ≈ −0.157 once HLR exceeds IOR by a few points; "
        "docs/leaderboards.md says how records map to DD-Ranking's inputs.",
        "**set / stored labels / teacher / total**: bytes the student needs besides its network (hard labels "
        "cost nothing to store; a soft-label protocol ships its teacher). **distill s**: one-off preparation + "
        "mean distillation per set; **eval s / model**: training + testing per model; device seconds on the "
        "table's device. – = not recorded, never estimated.",
        "**(paper)** rows: the number the paper prints (its metric: best test epoch for the hard-label "
        "protocols), not measured here; never ranked nor used for Δ. Sources in each table's provenance.",
        "**Badges**: `smoke scale` marks numbers that are not the paper-scale experiment, and says why: the "
        "protocol card modified (settings in the provenance), ddbench's own small generator trained on the "
        "embedded data in place of the papers' DiT, or a CPU run. ⚑ nonstandard subset: a dataset copy that is "
        "not the standard one (`--allow-nonstandard-subset`). ⚠ other code: a row made by numerics code "
        "(ddbench.identity) other than the code that generated this page, so rerunning it here may give another "
        "number; ⚠ code not recorded: made before records kept their code's fingerprint.",
    ]


def caption(t: Table) -> str:
    """The line above a table: its badges, label type and device."""
    badges = " ".join(f"`{b}`" for b in t.badges) or "paper scale"
    state = "" if t.current else "superseded card versions" + (f" (settings: {t.variant})" if t.variant else "") + " · "
    return f"{state}{badges} · {FAMILIES.get(t.family, 'labels not recorded')} · device: " \
           f"{', '.join(t.devices) or DASH}"


def devices_of(tables: list[Table]) -> list[str]:
    return sorted({d for t in tables for d in t.devices})


def compute_line(tables: list[Table]) -> str:
    """The device time behind the page's rows, per device, from the records' own timings (`budget.spent_seconds`;
    a row shown in several tables, like the whole split, counted once)."""
    total: dict[str, list[float]] = {}
    rows = {id(r): r for t in tables for r in t.rows if r.budget}
    for r in rows.values():
        for device, s in (r.budget.get("spent") or {}).items():
            acc = total.setdefault(device, [0.0, 0.0])
            acc[0], acc[1] = acc[0] + s["distill"], acc[1] + s["evaluate"]
    if not total:
        return "not recorded"
    parts = [f"{duration(d + e)} on {device} (distillation {duration(d)}, evaluation {duration(e)})"
             for device, (d, e) in sorted(total.items())]
    return "; ".join(parts) + ", as the records timed it (generators and teachers trained beforehand are not in it)"


def duration(seconds: float) -> str:
    """"42 s", "17 min", "3.4 h"."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


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


def markdown_section(t: Table, level: str = "##", figures: Mapping[str, list] | None = None) -> str:
    """One table: title, caption, the table, its figures (`figures`: table id -> [html.Figure]), provenance."""
    lines = [f"{level} {t.title()}", "", caption(t), ""]
    lines += markdown_table(t.columns(), [t.texts(r) for r in t.rows])
    found = (figures or {}).get(table_id(t), [])
    if found:
        lines += ["", "Figures: " + " · ".join(f"[{f.short or f.caption}]({f.src})" for f in found)]
    lines += ["", "<details><summary>provenance</summary>", ""] + [f"- {x}" for x in t.details()] + \
             ["", "</details>", ""]
    return "\n".join(lines)


def render_markdown(tables: list[Table], command: str = "ddbench leaderboard", all_versions: bool = False,
                    stamp: tuple[str, str] | None = None, figures: Mapping[str, list] | None = None) -> str:
    current = [t for t in tables if t.current]
    old = [t for t in tables if not t.current]
    metric = tables[0].metric if tables else "last"
    header = generated_line(command, devices_of(tables), stamp) + \
        [f"Compute behind these rows: {compute_line(shown_tables(tables, all_versions))}.", changes_line(tables)]
    parts = [f"# {PAGE_TITLE}", "", *[f"{x}  " for x in header[:-1]], header[-1], "",
             "## Glossary", "", *[f"- {x}" for x in glossary(metric)], ""]
    parts += [markdown_section(t, figures=figures) for t in current]
    if old and all_versions:
        parts += ["## Archive: superseded card versions", "",
                  "Rows and tables made by older method or protocol card versions (or by the same version before "
                  "the card gained a setting); kept for the record, never compared with the current ones.", ""]
        parts += [markdown_section(t, "###", figures) for t in old]
    elif old:
        parts += [f"{len(old)} table(s) of superseded card versions are not shown: `--all-versions` adds them.", ""]
    return "\n".join(parts).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------- html

def figure_key(t: Table) -> str:
    """The suffix `ddbench.plots` gives the figures of a table's protocol setting (`plots.figure_path`):
    dataset, protocol, version, the settings' short hash. Every IPC × network table of that setting links them."""
    variant = hashlib.sha256(t.variant.encode()).hexdigest()[:6] if t.variant else ""
    version = f"v{t.protocol_version}" if t.protocol_version is not None else ""
    return slug(t.dataset, t.protocol, version, variant)


def table_id(t: Table) -> str:
    """The anchor of a table: its figure key, IPC, network (+ "archive" for superseded card versions)."""
    return slug(figure_key(t), f"ipc{t.ipc}", t.arch, "" if t.current else "archive")


def shown_tables(tables: list[Table], all_versions: bool) -> list[Table]:
    """The tables a page shows, in its order: the current ones, then (with `all_versions`) the superseded."""
    return [t for t in tables if t.current] + [t for t in tables if not t.current and all_versions]


def table_sections(tables: list[Table], all_versions: bool = False) -> list[Section]:
    """One page section per table: methods as rows (the sticky first column after the rank is the method, linked
    to its card and paper), the caption's badges, the provenance behind a toggle; superseded card versions in
    the "Archive" part (with `all_versions`)."""
    out = []
    for t in shown_tables(tables, all_versions):
        head = t.columns()
        order = [1, 0] + list(range(2, len(head)))   # method first: the sticky column names the row
        rows = [[t.texts(r)[i] for i in order] for r in t.rows]
        values = [[t.sort_values(r)[i] for i in order] for r in t.rows]
        details = "".join(f"<p>{html.escape(x)}</p>" for x in t.details())
        out.append(Section(
            id=table_id(t), title=section_title(t), head=[head[i] for i in order], rows=rows, sort_values=values,
            dataset=dataset_name(t.dataset), ipc=t.ipc, labels=t.label_type,
            badges=page_badges(t),
            links=links_for(r[0] for r in rows), details_html=details,
            notes=[f"device: {', '.join(t.devices) or DASH}"],
            part="Results" if t.current else "Archive: superseded card versions"))
    return unique_ids(out)


def section_title(t: Table) -> str:
    """The table's title; a superseded table also names its settings (two archive tables of one setting
    differ only there)."""
    return t.title() if t.current or not t.variant else f"{t.title()} · settings: {t.variant}"


def page_badges(t: Table) -> list[str]:
    """The table's badges as the page shows them: "smoke scale: card modified / CPU" in one badge."""
    flags = ("nonstandard subset", OTHER_CODE, CODE_NOT_RECORDED)
    scale = [b for b in t.badges if b != "smoke scale" and b not in flags]
    out = [("smoke scale: " + " / ".join(scale)) if scale else "smoke scale"] if "smoke scale" in t.badges else []
    out += ["⚑ nonstandard subset"] if "nonstandard subset" in t.badges else []
    out += [f"⚠ {b}" for b in (OTHER_CODE, CODE_NOT_RECORDED) if b in t.badges]
    return out + ([] if t.current else ["superseded card versions"])


def glossary_terms(metric: str) -> dict[str, str]:
    """`glossary` as the page's term -> meaning pairs (the bold term of each line, markdown marks dropped)."""
    out = {}
    for line in glossary(metric):
        term, _, meaning = line.partition("**:")
        out[term.strip("*").replace("**", "").replace("`", "")] = meaning.strip().replace("**", "").replace("`", "")
    return out


def page_header(tables: list[Table], command: str, stamp: tuple[str, str] | None = None,
                shown: list[Table] | None = None) -> dict[str, str]:
    """The facts under the page title: date, commit, command, devices, the compute behind the `shown` tables
    (default: every table), the card changes (stated once)."""
    date, commit = stamp or (datetime.now(timezone.utc).strftime("%Y-%m-%d"), checkout_commit())
    old = sum(not t.current for t in tables)
    return {"generated": f"{date} from ddbench commit {commit}, from the results store (never edited by hand)",
            "command": command, "devices": ", ".join(devices_of(tables)) or DASH,
            "compute": compute_line(tables if shown is None else shown),
            "protocol cards": changes_line(tables).replace("`", ""),
            **({"archive": f"{old} table(s) of superseded card versions"} if old else {})}


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


RENDERERS = {"md": render_markdown,  # html: leaderboard.pages.render_html (the page needs the set metrics)
             "csv": lambda tables, command=None, all_versions=True, stamp=None: render_csv(tables, all_versions)}
