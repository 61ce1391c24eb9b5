"""The HTML leaderboard page (`ddbench.leaderboard.html`): its markup, and its behaviour in a real headless
Chromium (filter, keyboard sorting, no page overflow at 1280 px and on a phone). No training."""
from __future__ import annotations

import html
import re

import pytest

from browser import Browser, chromium_path
from fakes import made_here
from ddbench import leaderboard as lb
from ddbench.errors import ConfigError
from ddbench.leaderboard.html import Figure, Section, page
from ddbench.leaderboard.links import method_links
from ddbench.leaderboard.pages import leaderboard_page


def rec(method, acc, seed, *, dataset="digits", ipc=10, protocol="dc", family="hard"):
    return {"method": method, "dataset": dataset, "ipc": ipc, "seed": seed, "protocol": protocol, "arch": "convnet3",
            "eval_seed": 0, "acc_last": acc, "acc_best": acc, "method_version": "1", "protocol_version": "1",
            "protocol_config": {"family": family, "epochs": 5}, "method_config": {},
            "distilled_sha256": f"{method}{dataset}{ipc}{seed}", "device": "cpu (2 threads)",
            "timings": {"prepare": 1.0, "distill": 2.0, "evaluate": 3.0},
            "extra": {"identity": made_here(method, family)}}


def records():
    """digits (hard labels, IPC 1 and 10 in one table) and fashion (soft labels, IPC 10): two tables."""
    out = []
    for m, base in (("random", 60.0), ("herding", 70.0), ("kcenter", 65.0), ("mgd3", 68.0)):
        for ipc in (1, 10):
            out += [rec(m, base + ipc + s, s, ipc=ipc) for s in range(3)]
        out += [rec(m, base - 5 + s, s, dataset="fashion", protocol="rded", family="soft") for s in range(3)]
    return out


def wide_section() -> Section:
    """16 method columns: wider than 1280 px, so it must scroll inside its own box."""
    head = ["method"] + [f"a rather long column name {i}" for i in range(16)]
    rows = [[f"m{r}"] + [f"{50 + r + i / 10:.2f} ± 1.00 (3 sets)" for i in range(16)] for r in range(4)]
    values = [[f"m{r}"] + [50 + r + i / 10 for i in range(16)] for r in range(4)]
    return Section(id="wide", title="a wide table", head=head, rows=rows, sort_values=values, dataset="digits",
                   ipc=10, labels="hard", badges=["smoke scale: CPU"], notes=["a note"], part="Wide")


def build_page(tmp_path):
    tables = lb.build_tables(records(), defaults=lambda *a: None, current=lambda *a: True)
    text = leaderboard_page(tables, records(), "ddbench leaderboard --test")
    path = tmp_path / "page.html"
    path.write_text(text)
    wide = tmp_path / "wide.html"
    wide.write_text(page("wide", {}, {}, [wide_section()]))
    return path, wide


# ---------------------------------------------------------------------- markup
def test_page_escapes_links_and_fetches_nothing():
    s = Section(id="t1", title="<b>x</b>", head=["method", "acc"], rows=[["mgd3", "\0" + "90.00 <1>" + "\1"]],
                sort_values=[["mgd3", 90.0]], links={"mgd3": list(method_links("mgd3"))},
                details_html="<p>card @abc</p>", notes=["n < 3"])
    text = page("t", {"command": "ddbench x"}, {"Δ": "a & b"}, [s], figures=[Figure("fig", "figures/a.png")])
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "<strong>90.00 &lt;1&gt;</strong>" in text and "n &lt; 3" in text
    assert '<a href="../docs/mgd3.md">mgd3</a>' in text and 'href="https://arxiv.org/abs/2505.18963"' in text
    assert "<details><summary>provenance" in text and '<img src="figures/a.png"' in text
    # one offline file: no external script, stylesheet, font or image
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"(https?:)?//", text) and "@import" not in text
    assert text.count('<button type="button"') == 2 and 'data-type="number"' in text


def test_long_text_columns_wrap_and_short_ones_do_not():
    """A paper source is words: its cells wrap (class "text"); a dataset name or a number never does."""
    source = "Chan-Santiago et al., MGD3, ICML 2025, table 1 ('DiT', hard-label, ResNetAP-10)"
    s = Section(id="c", title="c", head=["method", "dataset", "source", "reported"],
                rows=[["dit", "ImageIDC", source, "54.1"]], sort_values=[["dit", "ImageIDC", source, 54.1]])
    text = page("t", {}, {}, [s])
    assert f'<td data-v="{html.escape(source)}" class="text">' in text
    assert '<td data-v="ImageIDC">ImageIDC</td>' in text and '<td data-v="54.1">54.1</td>' in text


def test_page_refuses_duplicate_ids_and_ragged_rows():
    s = Section(id="a", title="a", head=["x", "y"], rows=[["1", "2"]])
    with pytest.raises(ConfigError, match="used twice"):
        page("t", {}, {}, [s, s])
    with pytest.raises(ConfigError, match="one cell per header"):
        page("t", {}, {}, [Section(id="b", title="b", head=["x"], rows=[["1", "2"]])])


# ---------------------------------------------------------------------- in a browser
needs_chromium = pytest.mark.skipif(chromium_path() is None,
                                    reason="chromium is not installed (Debian: apt-get install chromium)")

@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (starting one takes seconds); each test sets its viewport."""
    with Browser(width=1280) as b:
        yield b


VISIBLE = "[...document.querySelectorAll('section[data-section]')].filter(s => !s.hidden).map(s => s.id)"
CONTENTS = "[...document.querySelectorAll('nav.contents li')].filter(li => !li.hidden).map(li => li.dataset.for)"


def choose(b: Browser, name: str, value: str) -> None:
    b.eval(f"(() => {{ const s = document.querySelector('.filter select[name={name}]'); s.value = '{value}';"
           " s.dispatchEvent(new Event('change')); })()")


@needs_chromium
def test_filter_hides_sections_rows_and_contents(tmp_path, browser):
    path, _ = build_page(tmp_path)
    b = browser
    b.resize(1280)
    b.open(path)
    everything = b.eval(VISIBLE)
    assert len(everything) == 3 and b.eval("document.querySelector('.filter output').value") == \
        "showing 3 of 3 tables"
    choose(b, "dataset", "fashion")
    assert [x for x in b.eval(VISIBLE)] == [x for x in everything if x.startswith("fashion")] != []
    assert b.eval(CONTENTS) == b.eval(VISIBLE)
    choose(b, "dataset", "")
    choose(b, "labels", "hard")
    assert b.eval(VISIBLE) == [x for x in everything if x.startswith("digits")] and len(everything) - 1 == 2
    choose(b, "ipc", "1")  # one table per IPC: only digits' IPC-1 table stays, with every method row
    assert b.eval(VISIBLE) == ["digits-dc-v1-ipc1-convnet3"]
    rows = b.eval("[...document.querySelectorAll('section:not([hidden]) tbody tr')].filter(r => !r.hidden)"
                  ".map(r => r.cells[0].firstChild.textContent)")  # the label, not its small links
    assert sorted(rows) == ["herding v1", "kcenter v1", "mgd3 v1", "random v1"]
    choose(b, "labels", "soft")  # fashion has no IPC-1 table: nothing left
    assert b.eval(VISIBLE) == [] and b.eval("document.querySelector('.filter output').value") == \
        "showing 0 of 3 tables"


@needs_chromium
def test_filter_hides_rows_of_a_table_that_spans_datasets(tmp_path, browser):
    """As the reproduction page's one table of cells: its rows carry their own dataset and IPC."""
    s = Section(id="cells", title="cells", head=["method", "dataset", "IPC"],
                rows=[["a", "digits", "1"], ["b", "fashion", "1"], ["c", "fashion", "10"]],
                row_ipcs=[1, 1, 10], row_datasets=["digits", "fashion", "fashion"])
    path = tmp_path / "cells.html"
    path.write_text(page("cells", {}, {}, [s]))
    shown = "[...document.querySelectorAll('#cells tbody tr')].filter(r => !r.hidden).map(r => r.cells[0].textContent)"
    b = browser
    b.resize(1280)
    b.open(path)
    choose(b, "dataset", "fashion")
    assert b.eval(shown) == ["b", "c"]
    choose(b, "ipc", "1")
    assert b.eval(shown) == ["b"]
    choose(b, "dataset", "digits")
    choose(b, "ipc", "10")
    assert b.eval(shown) == [] and b.eval("document.getElementById('cells').hidden") is True


@needs_chromium
def test_keyboard_sorting_orders_rows_and_sets_aria_sort(tmp_path, browser):
    _, wide = build_page(tmp_path)
    column = "[...document.querySelectorAll('#wide tbody tr')].map(r => r.cells[3].dataset.v)"
    b = browser
    b.resize(1280)
    b.open(wide)
    before = b.eval(column)
    b.eval("document.querySelectorAll('#wide thead th button')[3].focus()")
    b.key("Enter")  # numbers: largest first
    assert b.eval("document.querySelectorAll('#wide thead th')[3].getAttribute('aria-sort')") == "descending"
    assert b.eval(column) == sorted(before, key=float, reverse=True) != before
    b.key(" ")      # again, with Space: smallest first
    assert b.eval("document.querySelectorAll('#wide thead th')[3].getAttribute('aria-sort')") == "ascending"
    assert b.eval(column) == sorted(before, key=float)
    assert b.eval("[...document.querySelectorAll('#wide thead th[aria-sort]')].length") == 1
    b.eval("document.querySelectorAll('#wide thead th button')[0].focus()")
    b.key("Enter")  # text: a to z
    assert b.eval("[...document.querySelectorAll('#wide tbody th')].map(c => c.textContent)") == \
        ["m0", "m1", "m2", "m3"]
    assert b.eval("document.querySelectorAll('#wide thead th')[3].hasAttribute('aria-sort')") is False


OVERFLOW = """(() => {
  const page = document.documentElement.scrollWidth - window.innerWidth;
  const boxes = [...document.querySelectorAll('.scroll')].map(d => [d.getBoundingClientRect().right,
                                                                   d.scrollWidth > d.clientWidth]);
  return [page, boxes, window.innerWidth];
})()"""


@needs_chromium
@pytest.mark.parametrize("width", [1280, 390])
def test_no_table_overflows_the_page(tmp_path, browser, width):
    path, wide = build_page(tmp_path)
    b = browser
    b.resize(width, mobile=width < 700)
    for p in (path, wide):
        b.open(p)
        page_overflow, boxes, inner = b.eval(OVERFLOW)
        assert page_overflow <= 0, f"{p.name} scrolls sideways by {page_overflow} px at {width} px"
        assert boxes and all(right <= inner for right, _ in boxes)
    assert boxes[0][1] is True  # the wide table scrolls inside its own box


def test_figures_attach_to_their_own_tables_when_the_archive_sorts_first():
    """digits (superseded) sorts before fashion (current) among the tables, but the page shows the current ones
    first: each figure must still land under its own tables."""
    from ddbench.leaderboard.render import figure_key

    tables = lb.build_tables(records(), defaults=lambda *a: None,
                             current=lambda kind, name, version: kind == "method")
    for t in tables:
        t.current = t.dataset == "fashion"
    figs = [Figure("f", f"figures/accuracy-vs-ipc-{figure_key(t)}.png") for t in tables if t.ipc == 10]
    text = leaderboard_page(tables, records(), "ddbench leaderboard", figures=figs, all_versions=True)
    for t in tables:
        sec = text[text.index(f'<section id="{t.dataset}-'):]
        sec = sec[:sec.index("</section>")]
        assert f"#figure-accuracy-vs-ipc-{figure_key(t)}" in sec
        assert t.dataset == "fashion" or "fashion" not in sec


# ---------------------------------------------------------------------- the command
def test_leaderboard_command_links_figures_under_their_tables(tmp_path, capsys):
    """`ddbench plot` names a figure by its protocol setting, the prefix of its tables' anchors; `--figures`
    links it under every IPC × network table of that setting (html) and captions it with the setting (md); the
    set-metric tables are a part of the same page."""
    import json

    from ddbench.cli import main

    recs = records()
    for r in recs:
        r["extra"] = {"set_metrics": {"space": "pixels", "diversity": 0.5, "coverage": 0.7, "mmd2": 0.01}}
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in recs))
    figs = tmp_path / "figures"
    assert main(["plot", "--jsonl", str(jsonl), "--kind", "ipc", "--output", str(figs / "accuracy-vs-ipc.png")]) == 0
    pngs = sorted(str(p) for p in figs.glob("*.png"))
    names = [p.rsplit("/", 1)[1] for p in pngs]  # accuracy-vs-ipc-<the table's anchor>.png
    assert len(names) == 2 and names[0].startswith("accuracy-vs-ipc-digits-dc-v1") and \
        names[1].startswith("accuracy-vs-ipc-fashion-rded")
    key = names[0][len("accuracy-vs-ipc-"):-len(".png")]
    out = tmp_path / "lb.html"
    # the records' method configs predate the current cards: their tables are in the archive part
    assert main(["leaderboard", "--jsonl", str(jsonl), "--set-metrics", "--all-versions", "--format", "html",
                 "--figures", *pngs, "--output", str(out)]) == 0
    text = out.read_text()
    for ipc in (1, 10):  # both digits tables link the digits figure, never the fashion one
        digits = text[text.index(f'<section id="{key}-ipc{ipc}-convnet3-archive"'):]
        digits = digits[:digits.index("</section>")]
        assert f'<a href="#figure-accuracy-vs-ipc-{key}">accuracy vs IPC</a>' in digits and "fashion" not in digits
    assert f'<figure id="figure-accuracy-vs-ipc-{key}"' in text and f'<img src="figures/{names[0]}"' in text
    assert f"--figures {figs}/*.png" in text
    assert '<h2 id="part-distilled-set-metrics">' in text and "part-budget" not in text
    md = tmp_path / "lb.md"
    assert main(["leaderboard", "--jsonl", str(jsonl), "--all-versions", "--figures", *pngs, "--output", str(md)]) == 0
    lines = [x for x in md.read_text().splitlines() if x.endswith(f"](figures/{names[0]})")]
    assert lines[:2] == [f"Figures: [accuracy vs IPC](figures/{names[0]})"] * 2  # under both digits tables
    (line,) = [x for x in lines if x.startswith("- [")]                             # and in the list at the end
    assert line.startswith("- [accuracy vs IPC: digits · protocol dc v1 (hard labels) · settings changed from the "
                           "card: ") and line.count("epochs=5") == 1 and "superseded card versions (archive)" in line
    capsys.readouterr()
    assert main(["leaderboard", "--jsonl", str(jsonl), "--figures", str(figs / "none.png")]) == 2
    assert "--figures: no file" in capsys.readouterr().err
