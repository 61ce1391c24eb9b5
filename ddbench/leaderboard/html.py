"""The leaderboard as one offline HTML page: a shell that takes plain data (no `Table`, no records).

A page is a header, a glossary, a contents list, a filter and a list of `Section`s (one table each), plus
optional raw HTML blocks and figures. Everything is inline (CSS, a few dozen lines of script): the file opens
from disk, fetches nothing, and prints the same texts as the markdown.

    page("ddbench leaderboard", {"command": "ddbench leaderboard …", "date": "2026-12-07"},
         {"Δ vs random": "the method's mean minus random's"},
         [Section(id="digits-dc-ipc10-convnet3", title="digits · dc · IPC 10 · convnet3", dataset="digits",
                  ipc=10, labels="hard", head=["method", "accuracy"], rows=[["random", "80.1 ± 0.4"]],
                  sort_values=[["random", 80.1]], links={"random": [("card", "../methods/random.yaml")]})],
         figures=[Figure("accuracy against IPC, digits · dc", "figures/accuracy-vs-ipc-digits-dc-v1.png")])

What the page does for a reader, and why:
- Filter by dataset, IPC and label type (selects at the top): shows or hides whole sections, and the rows of
  a section whose rows span several IPCs or datasets (`row_ipcs`, `row_datasets`). An empty facet ("" or
  None) matches every choice, so tables that have no IPC or label type (distilled-set metrics) stay visible.
- Sorting: every column header is a <button> (mouse, Enter, Space); the header cell carries `aria-sort` and an
  arrow; numbers sort by `sort_values` (the means, not the printed text), empty cells last either way.
- Long text columns (a paper source) wrap, left-aligned, within 28rem; numbers and short words never wrap.
- Wide tables scroll inside their own box (the page itself never scrolls sideways, at 1280 px or on a
  phone), with the header row and the first column sticky inside that box.
- `links`: a row label (first column) or a column label -> [(text, url)]: the label links to the first URL
  (a method's card), the others follow it as small links (its paper).
- Provenance (card hashes, overrides) sits behind a <details> toggle per section, not in its heading.
- Figures (PNG files beside the page) are shown at the end, filtered like the tables; a section links to
  its own (`Section.figures`).
Cell texts are escaped; "\\0…\\1" inside a cell text marks bold (rank-1 cells). Layout: docs/leaderboards.md.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field

from ..errors import ConfigError

Links = dict[str, list[tuple[str, str]]]   # label -> [(link text, url)]; the label itself links to the first


@dataclass
class Section:
    """One table of the page, with the facets the filter reads."""
    id: str                                   # anchor, stable across runs ("digits-dc-ipc10-convnet3")
    title: str                                # plain words
    head: list[str]
    rows: list[list[str]]
    sort_values: list[list[float | str | None]] | None = None   # per cell; None: sort by the text
    dataset: str = ""                         # filter facets; "" / None: shown under every choice
    ipc: int | None = None
    labels: str = ""                          # label type: "hard" | "soft"
    badges: list[str] = field(default_factory=list)            # e.g. ["smoke scale: CPU", "card modified"]
    links: Links = field(default_factory=dict)
    details_html: str = ""                    # provenance, behind a <details> toggle (trusted HTML)
    notes: list[str] = field(default_factory=list)             # short lines under the table (plain text)
    part: str = "Results"                     # the contents list groups sections by part, in order of appearance
    row_ipcs: list[int | None] = field(default_factory=list)   # per row, when one table spans several IPCs
    row_datasets: list[str] = field(default_factory=list)      # per row, when one table spans several datasets
    figures: list["Figure"] = field(default_factory=list)      # this table's figures (linked under it)


@dataclass
class Figure:
    caption: str
    src: str                                  # a path relative to the page (a PNG beside it)
    dataset: str = ""                         # filter facets, as for a Section
    labels: str = ""
    short: str = ""                           # link text under its table ("accuracy vs IPC"); "": the caption

    @property
    def id(self) -> str:
        return "figure-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", self.src.rsplit("/", 1)[-1].rsplit(".", 1)[0])


# ---------------------------------------------------------------------------------------------- style, script

STYLE = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fff}
main{padding:0 1rem 3rem}dl.facts,details,p,.notes,nav.contents{max-width:110rem}
h1{font-size:1.5rem;margin:1rem 0 .3rem}h2{font-size:1.25rem;margin:2rem 0 .4rem;border-bottom:1px solid #ddd}
h3{font-size:1.05rem;margin:1.6rem 0 .3rem;overflow-wrap:anywhere}
p,li,dd,dt,summary,figcaption{overflow-wrap:anywhere}
a{color:#0b57d0}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.1rem 1rem;margin:.4rem 0;font-size:.9rem}
dl.facts dt{font-weight:600;color:#444}dl.facts dd{margin:0}
dl.glossary dt{font-weight:600;margin-top:.4rem}dl.glossary dd{margin:0 0 0 1rem}
details{margin:.4rem 0}details>summary{cursor:pointer;color:#333}
.filter{position:sticky;top:0;z-index:5;background:#f6f8fa;border-bottom:1px solid #ddd;padding:.5rem 1rem;
  display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;align-items:center}
.filter label{font-size:.9rem;white-space:nowrap}.filter select{font:inherit;margin-left:.3rem}
.filter output{font-size:.85rem;color:#555}
nav.contents{columns:22rem;font-size:.9rem}nav.contents ul{margin:.2rem 0 .6rem;padding-left:1.2rem}
nav.contents li{break-inside:avoid}
.badge{display:inline-block;font-size:.75rem;padding:.05rem .45rem;margin:0 .3rem .2rem 0;border-radius:.7rem;
  background:#fff4ce;border:1px solid #e0c060;color:#5c4400}
.scroll{overflow:auto;max-width:100%;max-height:80vh;border:1px solid #ccc;margin:.3rem 0}
table{border-collapse:separate;border-spacing:0;font-size:.9rem;font-variant-numeric:tabular-nums}
td,th{padding:.2rem .5rem;border-right:1px solid #e3e3e3;border-bottom:1px solid #e3e3e3;text-align:right;
  white-space:nowrap;background:#fff}
thead th{position:sticky;top:0;z-index:2;background:#eef1f4;vertical-align:bottom;white-space:normal;
  min-width:4rem}
tbody th{font-weight:600}
td.text{text-align:left;white-space:normal;min-width:14rem;max-width:28rem}
tr>:first-child{position:sticky;left:0;z-index:1;text-align:left;border-right:2px solid #bbb}
thead th:first-child{z-index:3}
tbody tr:nth-child(even)>*{background:#fafbfc}
th button{font:inherit;font-weight:600;background:none;border:0;padding:0;cursor:pointer;text-align:inherit;
  color:inherit}
th button::after{content:" \\2195";color:#999}
th[aria-sort=ascending] button::after{content:" \\25B2";color:#000}
th[aria-sort=descending] button::after{content:" \\25BC";color:#000}
th button:focus-visible{outline:2px solid #0b57d0;outline-offset:2px}
.links{font-weight:400;font-size:.75rem}thead .links{display:block}tbody .links{margin-left:.4rem}
.notes{font-size:.85rem;color:#333;margin:.2rem 0;padding-left:1.2rem}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.9rem}
[hidden]{display:none!important}
section,h2,figure{scroll-margin-top:4rem}
@media (max-width:700px){body{font-size:14px}main{padding:0 .5rem 2rem}dl.facts{grid-template-columns:1fr}
  dl.facts dd{margin-bottom:.3rem}td,th{padding:.15rem .35rem}}
"""

SCRIPT = """
(() => {
const all = s => [...document.querySelectorAll(s)];
function key(td, numeric) {
  const v = td.dataset.v ?? td.textContent;
  if (v === "") return null;
  return numeric ? parseFloat(v) : v;
}
function sortBy(th) {
  const table = th.closest("table"), body = table.tBodies[0], i = th.cellIndex;
  const numeric = th.dataset.type === "number";
  const first = numeric ? "descending" : "ascending";
  const now = th.getAttribute("aria-sort");
  const dir = now === first ? (first === "descending" ? "ascending" : "descending") : first;
  for (const other of table.tHead.rows[0].cells) other.removeAttribute("aria-sort");
  th.setAttribute("aria-sort", dir);
  const rows = [...body.rows].sort((a, b) => {
    const x = key(a.cells[i], numeric), y = key(b.cells[i], numeric);
    if (x === null || y === null) return (x === null) - (y === null);   // empty cells last, either way
    const c = numeric ? x - y : String(x).localeCompare(String(y), undefined, {numeric: true});
    return dir === "ascending" ? c : -c;
  });
  for (const r of rows) body.appendChild(r);
}
for (const b of all("table.sortable th button")) b.addEventListener("click", () => sortBy(b.closest("th")));
const selects = all(".filter select");
function matches(facet, choice) { return choice === "" || facet === undefined || facet === "" || facet === choice; }
function applyFilter() {
  const want = Object.fromEntries(selects.map(s => [s.name, s.value]));
  let shown = 0, total = 0;
  for (const sec of all("[data-section]")) {
    const d = sec.dataset;
    let ok = matches(d.dataset, want.dataset) && matches(d.labels, want.labels) && matches(d.ipc, want.ipc);
    const rows = [...sec.querySelectorAll("tbody tr[data-ipc], tbody tr[data-dataset]")];
    for (const tr of rows)
      tr.hidden = !(matches(tr.dataset.ipc, want.ipc) && matches(tr.dataset.dataset, want.dataset));
    if (rows.length && rows.every(tr => tr.hidden)) ok = false;
    sec.hidden = !ok;
    if (sec.tagName === "SECTION") { total += 1; shown += ok; }
    const entry = document.querySelector(`nav.contents li[data-for="${sec.id}"]`);
    if (entry) entry.hidden = !ok;
  }
  const out = document.querySelector(".filter output");
  if (out) out.value = `showing ${shown} of ${total} tables`;
}
for (const s of selects) s.addEventListener("change", applyFilter);
applyFilter();
})();
"""


# ---------------------------------------------------------------------------------------------- pieces

esc = html.escape
ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]*$")


def _cell_html(text: str) -> str:
    return esc(text).replace("\0", "<strong>").replace("\1", "</strong>")


def _sort_value(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)


def _label_html(text: str, links: Links) -> str:
    """A label with its links: the label itself links to the first URL, the rest follow as small links."""
    found = links.get(text.replace("\0", "").replace("\1", ""))
    if not found:
        return _cell_html(text)
    (_, url), rest = found[0], found[1:]
    return f"<a href=\"{esc(url)}\">{_cell_html(text)}</a>" + _small_links(rest)


def _small_links(found: list[tuple[str, str]]) -> str:
    if not found:
        return ""
    return "<span class=\"links\">" + " · ".join(f"<a href=\"{esc(u)}\">{esc(t)}</a>" for t, u in found) + "</span>"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _column_types(section: Section) -> list[str]:
    """"number" where every non-empty sort value of a column is a number (first click: largest first)."""
    values = section.sort_values or section.rows
    out = []
    for j in range(len(section.head)):
        col = [row[j] for row in values if j < len(row) and _sort_value(row[j]) != ""]
        out.append("number" if col and all(_is_number(v) for v in col) else "text")
    return out


TEXT_CELL = ' class="text"'   # long words (a paper source): left-aligned, wrapped within a width
LONG_TEXT = 40                # characters: a text column with a longer cell wraps


def table_html(section: Section) -> str:
    """One sortable <table> in its own scroll box; header cells are buttons."""
    types = _column_types(section)
    wrap = [t == "text" and any(len(r[j]) > LONG_TEXT for r in section.rows if j < len(r))
            for j, t in enumerate(types)]
    head = "".join(f"<th scope=\"col\" data-type=\"{t}\"><button type=\"button\" title=\"sort by this column\">"
                   f"{esc(h)}</button>{_head_links(h, section.links)}</th>" for h, t in zip(section.head, types))
    body = []
    for i, texts in enumerate(section.rows):
        values = section.sort_values[i] if section.sort_values else texts
        ipc = section.row_ipcs[i] if i < len(section.row_ipcs) else None
        dataset = section.row_datasets[i] if i < len(section.row_datasets) else ""
        attr = ("" if ipc is None else f" data-ipc=\"{esc(str(ipc))}\"") + \
            (f" data-dataset=\"{esc(dataset)}\"" if dataset else "")
        cells = []
        for j, (text, v) in enumerate(zip(texts, values)):
            data = f"data-v=\"{esc(_sort_value(v))}\""
            cells.append(f"<th scope=\"row\" {data}>{_label_html(text, section.links)}</th>" if j == 0
                         else f"<td {data}{TEXT_CELL if wrap[j] else ''}>{_cell_html(text)}</td>")
        body.append(f"<tr{attr}>" + "".join(cells) + "</tr>")
    return (f"<div class=\"scroll\" tabindex=\"0\" role=\"region\" aria-label=\"{esc(section.title)}\">"
            f"<table class=\"sortable\"><thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body)
            + "\n</tbody></table></div>")


def _head_links(label: str, links: Links) -> str:
    return _small_links(links.get(label) or [])


def _facets(dataset: str, ipc, labels: str) -> str:
    return (f" data-dataset=\"{esc(dataset or '')}\" data-ipc=\"{'' if ipc is None else esc(str(ipc))}\""
            f" data-labels=\"{esc(labels or '')}\"")


def section_html(s: Section) -> str:
    badges = "".join(f"<span class=\"badge\">{esc(b)}</span>" for b in s.badges)
    parts = [f"<section id=\"{esc(s.id)}\" data-section{_facets(s.dataset, s.ipc, s.labels)}>",
             f"<h3>{esc(s.title)}</h3>"]
    if badges:
        parts.append(f"<div>{badges}</div>")
    parts.append(table_html(s))
    if s.notes:
        parts.append("<ul class=\"notes\">" + "".join(f"<li>{esc(n)}</li>" for n in s.notes) + "</ul>")
    if s.figures:
        links = " · ".join(f"<a href=\"#{esc(f.id)}\">{esc(f.short or f.caption)}</a>" for f in s.figures)
        parts.append(f"<p class=\"notes\">figures: {links}</p>")
    if s.details_html:
        parts.append(f"<details><summary>provenance: cards, hashes, settings</summary>{s.details_html}</details>")
    return "\n".join(parts + ["</section>"])


def _filter_html(sections: list[Section]) -> str:
    def options(name: str, label: str, values: list[str]) -> str:
        opts = "".join(f"<option value=\"{esc(v)}\">{esc(v)}</option>" for v in values)
        return f"<label>{label}<select name=\"{name}\"><option value=\"\">all</option>{opts}</select></label>"

    datasets = sorted({d for s in sections for d in [s.dataset, *s.row_datasets] if d})
    ipcs = sorted({int(i) for s in sections for i in ([s.ipc] + list(s.row_ipcs)) if i is not None})
    labels = sorted({s.labels for s in sections if s.labels})
    return ("<form class=\"filter\" aria-label=\"filter the tables\" onsubmit=\"return false\">"
            + options("dataset", "dataset", datasets) + options("ipc", "IPC", [str(i) for i in ipcs])
            + options("labels", "labels", labels) + "<output aria-live=\"polite\"></output></form>")


def _contents_html(sections: list[Section], figures: list[Figure]) -> str:
    parts: dict[str, list[str]] = {}
    for s in sections:
        parts.setdefault(s.part, []).append(f"<li data-for=\"{esc(s.id)}\"><a href=\"#{esc(s.id)}\">"
                                            f"{esc(s.title)}</a></li>")
    out = ["<h2 id=\"contents\">Contents</h2><nav class=\"contents\" aria-label=\"contents\">"]
    for name, items in parts.items():
        out.append(f"<div><strong><a href=\"#{_part_id(name)}\">{esc(name)}</a></strong><ul>{''.join(items)}</ul>"
                   "</div>")
    if figures:
        out.append("<div><strong><a href=\"#figures\">Figures</a></strong></div>")
    return "\n".join(out + ["</nav>"])


def _part_id(name: str) -> str:
    return "part-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _figures_html(figures: list[Figure]) -> str:
    out = ["<h2 id=\"figures\">Figures</h2>"]
    for f in figures:
        out.append(f"<figure id=\"{esc(f.id)}\" data-section{_facets(f.dataset, None, f.labels)}>"
                   f"<a href=\"{esc(f.src)}\">"
                   f"<img src=\"{esc(f.src)}\" alt=\"{esc(f.caption)}\" loading=\"lazy\"></a>"
                   f"<figcaption>{esc(f.caption)} (<a href=\"{esc(f.src)}\">{esc(f.src)}</a>)</figcaption></figure>")
    return "\n".join(out)


def slug(*parts) -> str:
    """An anchor from plain words: "digits", "dc", "v1" -> "digits-dc-v1" (empty parts left out)."""
    text = "-".join(str(p) for p in parts if p not in (None, ""))
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-") or "section"


def unique_ids(sections: list[Section]) -> list[Section]:
    """Anchors stay unique when two tables slug alike (suffix -2, -3, … in order)."""
    seen: dict[str, int] = {}
    for s in sections:
        n = seen[s.id] = seen.get(s.id, 0) + 1
        if n > 1:
            s.id = f"{s.id}-{n}"
    return sections


def _check(sections: list[Section]) -> None:
    seen: set[str] = set()
    for s in sections:
        if not ID.match(s.id) or s.id in seen:
            raise ConfigError(f"page section id {s.id!r} is {'used twice' if s.id in seen else 'not an anchor'}: "
                              "give each section a unique id of letters, digits, '-', '_', '.' or ':'")
        seen.add(s.id)
        widths = {len(r) for r in s.rows} | ({len(r) for r in s.sort_values} if s.sort_values else set())
        if widths - {len(s.head)}:
            raise ConfigError(f"page section {s.id!r}: rows of {sorted(widths)} cells under {len(s.head)} "
                              "headers; give every row (and its sort values) one cell per header")


# ---------------------------------------------------------------------------------------------- the page

def page(title: str, header: dict[str, str], glossary: dict[str, str], sections: list[Section],
         extra_html: list[str] = (), figures: list[Figure] = (), comment: str = "") -> str:
    """One offline HTML file: `header` facts (command, date, commit, devices) under the title, the `glossary`
    once behind a toggle, a filter and contents list, the sections grouped by `part`, then `extra_html`
    blocks (trusted HTML) and the `figures`. `comment` goes into an HTML comment at the top."""
    _check(sections)
    facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in header.items())
    body = [f"<h1>{esc(title)}</h1>"]
    if facts:
        body.append(f"<dl class=\"facts\">{facts}</dl>")
    if glossary:
        terms = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in glossary.items())
        body.append(f"<details class=\"glossary\"><summary>How to read the tables (glossary)</summary>"
                    f"<dl class=\"glossary\">{terms}</dl></details>")
    if len(sections) > 1 or figures:
        body.append(_contents_html(sections, list(figures)))
    part = None
    for s in sections:
        if s.part != part:
            part = s.part
            body.append(f"<h2 id=\"{_part_id(part)}\">{esc(part)}</h2>")
        body.append(section_html(s))
    body += list(extra_html)
    if figures:
        body.append(_figures_html(list(figures)))
    note = f"<!-- {esc(comment).replace('--', '- -')} -->\n" if comment else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n{note}"
            + (_filter_html(sections) if sections else "") + "\n<main>\n" + "\n".join(body)
            + f"\n</main>\n<script>{SCRIPT}</script>\n</body></html>\n")
