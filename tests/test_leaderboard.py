"""Leaderboard tables, plots and image grids on a small results store written here (no training)."""
from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout

import pytest
import torch
from PIL import Image

from ddbench import leaderboard as lb
from ddbench.leaderboard import budget, pages, render
from ddbench import plots
from ddbench.distilled import DistilledSet
from ddbench.errors import ConfigError
from ddbench.method import resolve_method_config
from ddbench.protocol import load_protocol
from ddbench.records.store import ResultStore, derived_config_hash
from fakes import made_here


# ---------------------------------------------------------------------- fixture store
def record(method, ipc, arch, seed, acc, *, eval_seed=0, best=None, protocol="dc", pversion="1", mversion=None,
           prepare=0.0, distill=1.0, method_set=None, protocol_set=None):
    """A record with the fields runner.evaluate_cells writes; configs = the cards' own, or with `--set` values;
    the method version is the card's current one unless given."""
    card, cfg = resolve_method_config(method, "digits", method_set)
    mversion = str(card.get("version", 1)) if mversion is None else mversion
    return {"method": method, "dataset": "digits", "ipc": ipc, "seed": seed, "protocol": protocol, "arch": arch,
            "eval_seed": eval_seed, "acc_last": acc, "acc_best": acc + 1.0 if best is None else best,
            "best_epoch": 18, "method_version": mversion, "protocol_version": pversion,
            "method_config": cfg,
            "protocol_config": load_protocol(protocol, protocol_set).card,
            "distilled_sha256": f"{method}{ipc}{seed}".ljust(64, "0"), "distilled_path": "",
            "code_version": "0.1.0", "device": "cpu (2 cores)", "hardware": {"cpu_count": 2},
            "timings": {"prepare": prepare, "distill": distill, "evaluate": 3.0},
            "peak_mem": {"distill": 100.0, "evaluate": 200.0}, "curve": [[10, acc - 2], [20, acc]],
            "extra": {"identity": made_here(method)}}


RECORDS = [
    # random: IPC 1 (20, 22) -> 21.00 ± 1.41; IPC 10 (80, 82, 84) -> 82.00 ± 2.00
    record("random", 1, "convnet3", 0, 20.0), record("random", 1, "convnet3", 1, 22.0),
    record("random", 10, "convnet3", 0, 80.0), record("random", 10, "convnet3", 1, 82.0),
    record("random", 10, "convnet3", 2, 84.0),
    # herding: IPC 1 (30, 30) -> 30.00 ± 0.00; IPC 10 (81, 83, 85) -> 83.00 ± 2.00; prepare counted once
    record("herding", 1, "convnet3", 0, 30.0, prepare=50.0), record("herding", 1, "convnet3", 1, 30.0),
    record("herding", 10, "convnet3", 0, 81.0, prepare=50.0), record("herding", 10, "convnet3", 1, 83.0),
    record("herding", 10, "convnet3", 2, 85.0),
    # kcenter alone on resnetap10: no random to compare with
    record("kcenter", 10, "convnet3", 0, 85.5), record("kcenter", 10, "resnetap10", 0, 70.0),
    # a second protocol version: its own table, never averaged with v1
    record("random", 1, "convnet3", 5, 40.0, pversion="2"),  # (the store key has no version: another seed)
]

STAMP = ("2026-01-01", "abc1234")
EXPECTED_TABLE = """\
## digits · protocol dc v1 (hard labels) · IPC 10 · convnet3

`smoke scale` `CPU` · hard labels · device: cpu (2 cores)

| rank | method | test accuracy (%) | sets × evaluations | Δ vs random | set | stored labels | teacher | total | distill s | eval s / model |
|---:|---|---|---|---|---|---|---|---|---|---|
| – | kcenter v4 | 85.50 | 1 set × 1 | – | – | hard | none | – | 1.0 | 3.0 |
| 1 | herding v4 | 83.00 ± 4.97 | 3 × 1 | +1.00 ± 4.53 | – | hard | none | – | 51.0 | 3.0 |
| 1 | random v1 | 82.00 ± 4.97 | 3 × 1 | – | – | hard | none | – | 1.0 | 3.0 |

<details><summary>provenance</summary>

- Protocol card dc v1 (hard), resolved-card hash {card_hash}; the card's own settings.
- kcenter v4: method card v4, config hash {kcenter}.
- herding v4: method card v4, config hash {herding}.
- random v1: method card v1, config hash {random}.

</details>
""".format(card_hash=lb.card_hash(load_protocol("dc").card),
           **{m: derived_config_hash(next(r for r in RECORDS if r["method"] == m))[:12]
              for m in ("random", "herding", "kcenter")})


@pytest.fixture()
def store_dir(tmp_path):
    with ResultStore(tmp_path / "results.db") as store:
        for r in RECORDS:
            assert store.add(r)
    return tmp_path


def stored(store_dir, **filters):
    with ResultStore(store_dir / "results.db") as store:
        return store.query(**filters)


# ---------------------------------------------------------------------- tables
def page(tables, **kw):
    return render.render_markdown(tables, stamp=STAMP, **kw)


def test_markdown_matches_the_pinned_layout(store_dir):
    text = page(lb.build_tables(stored(store_dir)))
    assert text.startswith("# ddbench leaderboard\n\nGenerated 2026-01-01 from ddbench commit abc1234 by "
                           "`ddbench leaderboard`")
    assert "Devices: cpu (2 cores).  \nCompute behind these rows: 2 min on cpu (2 cores) (distillation 2 min, " \
           "evaluation 36 s), as the records timed it (generators and teachers trained beforehand are not in it)." \
           "  \nProtocol cards: every current table uses its card's own settings." in text
    assert text.count("## Glossary") == 1
    assert EXPECTED_TABLE in text
    # one table per (dataset, protocol, IPC, network), titled without settings or hashes
    titles = [ln for ln in text.splitlines() if ln.startswith("## digits")]
    assert titles == ["## digits · protocol dc v1 (hard labels) · IPC 1 · convnet3",
                      "## digits · protocol dc v1 (hard labels) · IPC 10 · convnet3",
                      "## digits · protocol dc v1 (hard labels) · IPC 10 · resnetap10"]
    # dc v2 is not the current card: left out, and said so
    assert "1 table(s) of superseded card versions are not shown: `--all-versions` adds them." in text
    archived = page(lb.build_tables(stored(store_dir)), all_versions=True)
    assert "## Archive: superseded card versions" in archived
    assert "### digits · protocol dc v2 (hard labels) · IPC 1 · convnet3" in archived


def test_best_metric_is_labelled_and_uses_acc_best(store_dir):
    text = page(lb.build_tables(stored(store_dir, protocol="dc"), metric="best"))
    assert "best test accuracy (%) over the evaluation points" in text and "paper-compatible" in text
    assert "| – | herding v4 | 31.00 ± 0.00 | 2 × 1 | +9.00 ± 12.71 |" in text


def test_reported_numbers_are_rows_never_ranked(store_dir):
    reported = {("digits", "dc"): {
        "herding": {"source": "Paper A, table 1", "cells": {(10, "convnet3"): (90.0, 1.0), (50, "convnet3"): (95.5, 0.25)}},
        "first-n": {"source": "Paper B", "cells": {(1, "convnet3"): (25.0, 0.5)}}}}
    tables = lb.build_tables(stored(store_dir, protocol_version="1"), reported=reported)
    (t10,) = [t for t in tables if (t.ipc, t.arch) == (10, "convnet3")]
    paper = t10.rows[0]  # 90.0 sorts first, but is neither ranked nor used for Δ
    assert (paper.label, paper.kind, paper.rank, paper.gain) == ("herding (paper)", "reported", None, None)
    assert t10.texts(paper)[:5] == ["–", "herding (paper)", "90.0", "paper", "–"]
    assert [r.rank for r in t10.rows] == [None, None, 1, 1]
    assert "herding (paper): Paper A, table 1; the paper's std 1.0." in t10.details()
    (t50,) = [t for t in tables if t.ipc == 50]  # a table only the paper has
    assert [r.label for r in t50.rows] == ["herding (paper)"]


def test_numbers_made_with_overrides_are_never_shown_as_the_cards(store_dir):
    recs = stored(store_dir, protocol_version="1") + [
        record("herding", 1, "convnet3", 3, 99.0, method_set={"feature_recipe": {"epochs": 5}}),
        record("random", 1, "convnet3", 3, 11.0, protocol_set={"epochs": 5})]
    tables = [t for t in lb.build_tables(recs) if (t.ipc, t.arch) == (1, "convnet3")]
    assert [t.variant for t in tables] == ["", "epochs=5"]
    assert [r.label for r in tables[0].rows] == ["herding v4 [epochs=5]", "herding v4", "random v1"]
    assert tables[1].badges == ["smoke scale", "card modified", "CPU"]
    assert render.changes_line(tables) == "Protocol settings changed from the cards (badge `card modified`): dc: epochs=5."
    assert [r.mean for r in tables[1].rows] == [11.0]  # not averaged into the card's 21.00
    assert "settings changed from the card: epochs=5" in tables[1].details()[0]
    assert lb.config_diff({"a": {"b": 1}, "c": "x", "name": "n"}, {"a": {"b": 2}, "d": [1], "name": "m"}) == \
        'a.b=1, c=x, d=unset'
    # a key the card leaves null and the run sets to a mapping: its leaves, not "unset"
    assert lb.config_diff({"t": {"recipe": {"epochs": 3}}}, {"t": {"recipe": None}}) == "t.recipe.epochs=3"


def test_variant_labels_have_one_format():
    assert lb.row_label("dit", "2", "sampler=ddim") == "dit v2 [sampler=ddim]"
    assert lb.row_label("acs", "4", "g=0.01, sampling.sampler=ddim") == "acs v4 [g=0.01, sampler=ddim]"
    assert lb.row_label("x", "1", "a.k=1, b.k=2") == "x v1 [a.k=1, b.k=2]"  # a shared leaf keeps its full key


def test_an_older_method_version_goes_to_the_archive_with_the_references(store_dir):
    recs = stored(store_dir, protocol_version="1") + [record("herding", 1, "convnet3", 0, 35.0, mversion="1")]
    tables = [t for t in lb.build_tables(recs) if (t.ipc, t.arch) == (1, "convnet3")]
    assert [(t.current, [r.label for r in t.rows]) for t in tables] == \
        [(True, ["herding v4", "random v1"]), (False, ["herding v1", "random v1"])]
    assert tables[1].rows[0].gain is None  # one set: never used for Δ


def test_records_of_different_config_hashes_are_never_one_row():
    """Same method, card and settings, but another config hash (e.g. other data or weights): two rows."""
    recs = [dict(record("random", 1, "convnet3", 0, 20.0), config_hash="a" * 16),
            dict(record("random", 1, "convnet3", 1, 22.0), config_hash="a" * 16),
            dict(record("random", 1, "convnet3", 0, 60.0), config_hash="b" * 16)]
    (table,) = lb.build_tables(recs)
    assert [(r.label, r.mean, r.summary.n) for r in table.rows] == [("random v1 @bbbbbb", 60.0, 1),
                                                                    ("random v1 @aaaaaa", 21.0, 2)]


def test_html_escapes_and_carries_sort_values(store_dir):
    text = pages.render_html(lb.build_tables(stored(store_dir, protocol_version="1")), stamp=STAMP)
    assert "<td data-v=\"83.0\">83.00 ± 4.97</td>" in text
    assert "row&#x27;s mean" in text and text.count("<table ") == 3 and text.count("<details>") == 3
    assert "<dt>rank</dt><dd>rows sorted by mean" in text and "**" not in text
    assert '<span class="badge">smoke scale: CPU</span>' in text and "<li>device: cpu (2 cores)</li>" in text


def test_csv_is_long_form_with_gain(store_dir):
    rows = render.render_csv(lb.build_tables(stored(store_dir, protocol_version="1"))).splitlines()
    assert rows[0].startswith("dataset,protocol,protocol_version,family,metric,ipc,arch,method,method_version,kind")
    # herding 83 ± 2 over 3 sets vs random 82 ± 2: t(2)·2/√3 = 4.968; Welch se √(4/3 + 4/3), 4 dof: 2.776·1.633 = 4.534
    (herding,) = [r for r in rows if ",10,convnet3,herding," in r]
    assert ",method,herding v4,True,rec-" in herding and ",83.0,2.0,3,3,4.96827542" in herding
    assert ",1,1.0,4.5339158" in herding
    assert len(rows) == 1 + 6


def test_reported_numbers_come_from_the_method_cards():
    reported = lb.load_reported([("woof", "idc")])[("woof", "idc")]
    assert reported["first-n"]["cells"][(10, "convnet6")] == (24.3, 1.1)
    assert "Minimax" in reported["herding"]["source"]
    # a dataset nobody ran yet still gets the papers' tables, shown as ImageWoof
    tables = lb.build_tables([], reported=lb.load_reported([("woof", "idc")]))
    t = next(t for t in tables if (t.ipc, t.arch) == (10, "convnet6"))
    assert t.title().startswith("ImageWoof · protocol idc") and all(r.kind == "reported" for r in t.rows)
    assert "24.3" in page([t])


def test_leaderboard_command_prints_the_tables(store_dir):
    from ddbench.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["leaderboard", "--out", str(store_dir), "--dataset", "digits"]) == 0
    assert EXPECTED_TABLE in out.getvalue()
    assert main(["leaderboard", "--out", str(store_dir / "nowhere")]) == 2  # a readable error, no traceback
    assert main(["leaderboard", "--out", str(store_dir), "--margin", "1"]) == 2  # --margin needs --reproduction


def test_leaderboard_reads_jsonl_exports(store_dir, tmp_path):
    from ddbench.cli import main

    with ResultStore(store_dir / "results.db") as store:
        store.export_jsonl(tmp_path / "a.jsonl", protocol_version="1")
        store.export_jsonl(tmp_path / "b.jsonl", protocol_version="2")
    out = tmp_path / "board.md"
    assert main(["leaderboard", "--jsonl", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"),
                 "--output", str(out)]) == 0
    text = out.read_text()
    assert EXPECTED_TABLE in text
    assert f"`ddbench leaderboard --jsonl {tmp_path / 'a.jsonl'} {tmp_path / 'b.jsonl'}`" in text


def test_no_matching_results_is_a_readable_error(store_dir):
    assert lb.build_tables(stored(store_dir, dataset="fashion")) == []
    with pytest.raises(ConfigError, match="--metric"):
        lb.build_tables(RECORDS, metric="top5")


# ---------------------------------------------------------------------- plots and grids
def test_one_figure_per_dataset_and_protocol_with_the_documented_pixel_size(store_dir, tmp_path):
    recs = stored(store_dir)  # dc v1: panels convnet3, resnetap10; dc v2: convnet3 -> two figures
    for kind in ("ipc", "time"):
        written = plots.PLOTS[kind](recs, tmp_path / f"{kind}.png")
        assert [p.name for p, _ in written] == [f"{kind}-digits-dc-v1.png", f"{kind}-digits-dc-v2.png"]
        for (path, size), panels in zip(written, (2, 1)):
            # panels × 500 px + 240 px legend column, 400 px + 80 px title strip + 50 px footnote
            assert size == (panels * 500 + 240, 530)
            with Image.open(path) as im:
                assert im.size == size


def test_every_column_has_its_own_colour_and_marker_and_random_is_the_grey_reference():
    labels = ["random", "herding", "kcenter", "mgd3 v2", "mgd3 v3", "dit", "dit [sampler=ddim]", "acs [g=0.01]",
              "igd", "igd [gamma=0]", "minimax", "cudd", "sre2l", "acs-minimax [g=0.01]"]
    styles = plots.variant_styles(labels)
    assert styles["random"] == (plots.REFERENCE, "s") and set(styles) == set(labels)
    assert len(set(styles.values())) == len(labels)                       # no two columns look alike
    assert all(c in plots.OKABE_ITO for lb, (c, _) in styles.items() if lb != "random")
    assert plots.variant_styles(reversed(labels)) == styles              # by label, not by arrival order


def _colours_in(path) -> set[tuple[int, int, int]]:
    with Image.open(path) as im:
        return {c for _, c in im.convert("RGB").getcolors(1 << 20)}


@pytest.mark.parametrize("kind", ["ipc", "time"])
def test_figures_draw_each_column_in_its_colour_and_state_the_interval(tmp_path, kind):
    """Three columns at one IPC (a dot-and-whisker panel) and at two IPCs: every column's colour is in the PNG."""
    recs = [dict(record(m, ipc, "convnet3", seed, acc + seed + ipc, eval_seed=e), distilled_sha256=f"{m}{ipc}{seed}")
            for m, acc in (("random", 50.0), ("herding", 60.0), ("kcenter", 55.0)) for ipc in (1, 10)
            for seed in range(3) for e in range(2)]
    for name, part in (("one-ipc", [r for r in recs if r["ipc"] == 10]), ("two-ipcs", recs)):
        ((path, _),) = plots.PLOTS[kind](part, tmp_path / f"{name}.png")
        found = _colours_in(path)
        for label, (colour, _) in plots.variant_styles(["random", "herding", "kcenter"]).items():
            rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
            assert rgb in found, f"{label}'s colour {colour} is not drawn in {path.name}"
        assert plots.OKABE_ITO[2] not in {f"#{r:02X}{g:02X}{b:02X}" for r, g, b in found}  # a fourth column: none


def test_two_level_statistics_count_sets():
    """Evaluations of a set are averaged first; n = sets; one set: the std of its evaluations, flagged by n."""
    two_sets = [{"distilled_sha256": "a", "acc_last": 80.0}, {"distilled_sha256": "a", "acc_last": 82.0},
                {"distilled_sha256": "b", "acc_last": 90.0}, {"distilled_sha256": "b", "acc_last": 90.0}]
    got = plots.set_level(two_sets, "acc_last")
    # set means 81 and 90: mean 85.5, sd 6.364, t(0.975, 1) = 12.706 -> 12.706 · 6.364 / √2
    assert (got["mean"], got["n_sets"], got["n_evals"]) == (85.5, 2, 4)
    assert got["half"] == pytest.approx(12.7062047 * 6.3639610 / math.sqrt(2), rel=1e-6)
    one = plots.set_level(two_sets[:2], "acc_last")
    assert (one["mean"], one["n_sets"]) == (81.0, 1) and one["half"] == pytest.approx(math.sqrt(2.0))


def test_figures_count_units_as_the_tables_do():
    """A deterministic method (three seeds, one set): its evaluations are the units, in the figure as in the
    table (`tables.cell_summary`), not one hollow 1-set point."""
    same_set = [{"seed": s, "distilled_sha256": "a", "acc_last": v} for s, v in ((0, 80.0), (1, 82.0), (2, 84.0))]
    got = plots.set_level(same_set, "acc_last")
    table = lb.cell_summary(same_set, "acc_last")
    assert table.deterministic and (got["mean"], got["n_sets"]) == (table.mean, table.n) == (82.0, 3)
    assert got["half"] == pytest.approx(4.3026527 * 2.0 / math.sqrt(3), rel=1e-6)
    assert plots.distill_seconds is budget.distill_seconds  # one definition of a cell's distillation time


def test_a_repeated_run_counts_once():
    """One set under one evaluation seed is one question however many records ask it: a deterministic method's
    three seeds each evaluated with seeds 0 and 1 are two evaluations (not six), and a rerun of one set's
    evaluation does not make that set weigh double."""
    det = [{"seed": s, "distilled_sha256": "a", "eval_seed": e, "acc_last": 80.0 + e} for s in (0, 1, 2)
           for e in (0, 1)]
    got = lb.cell_summary(det, "acc_last")
    assert got.deterministic and (got.n, got.mean) == (2, 80.5) and got.shape == "1 set (deterministic) × 2"
    two_sets = [{"seed": 0, "distilled_sha256": "a", "eval_seed": 0, "acc_last": 80.0},
                {"seed": 0, "distilled_sha256": "a", "eval_seed": 0, "acc_last": 80.0},   # a rerun
                {"seed": 1, "distilled_sha256": "b", "eval_seed": 0, "acc_last": 90.0}]
    got = lb.cell_summary(two_sets, "acc_last")
    assert (got.n, got.evaluations, got.mean) == (2, 2, 85.0) and not got.deterministic


def test_figure_names_and_titles_fit():
    assert plots.figure_path("out/a.png", ("fashion", "rded", "1", "")).name == "a-fashion-rded-v1.png"
    long_name = plots.figure_path("a.png", ("digits", "dc", "1", "epochs=100, eval_points=1")).name
    assert long_name.startswith("a-digits-dc-v1-") and len(long_name) == len("a-digits-dc-v1-") + 6 + 4
    title = plots._suptitle(("fashion", "rded", "1", ", ".join(f"key{i}=value{i}" for i in range(40))),
                            "soft labels", "accuracy vs IPC", 1)
    lines = title.split("\n")
    assert len(lines) <= 3 and all(len(x) <= plots.TITLE_CHARS for x in lines) and lines[-1].endswith("…")


def test_distill_seconds_counts_prepare_once():
    recs = [record("herding", 10, "convnet3", 0, 81.0, prepare=50.0, distill=2.0),
            record("herding", 10, "convnet3", 0, 82.0, eval_seed=1, prepare=50.0, distill=2.0),
            record("herding", 10, "convnet3", 1, 83.0, prepare=0.0, distill=4.0)]
    assert plots.distill_seconds(recs) == pytest.approx(50.0 + 3.0)


def test_grid_has_one_row_per_class(tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (15, 1, 8, 8), generator=gen, dtype=torch.uint8)
    dset = DistilledSet(images, torch.arange(15) % 3, ("zero", "one", "a class name far too long for the label column"),
                        {"method": "random", "seed": 0})
    dset.save(tmp_path / "set")
    size = plots.save_grid(tmp_path / "set", tmp_path / "grid.png", max_per_class=4)
    # 8 px images -> 64 px cells; width = label column + 4 cells, height = title + 3 rows (4 px gaps)
    expected = (plots.GRID_LABEL_W + 4 * 68 + 4, plots.GRID_TITLE_H + 3 * 68 + 4)
    assert size == expected == (436, 236)
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size == expected
        # the first image of class "one" (index 1) lands, enlarged 8x, in row 1, column 0
        x0, y0 = plots.GRID_LABEL_W, plots.GRID_TITLE_H + 68
        assert im.getpixel((x0 + 3, y0 + 3)) == (int(images[1, 0, 0, 0]),) * 3
        assert im.getpixel((x0 + 8 * 7 + 3, y0 + 8 * 5 + 3)) == (int(images[1, 0, 5, 7]),) * 3


def test_plot_and_grid_commands(store_dir, tmp_path):
    from ddbench.cli import main

    assert main(["plot", "--out", str(store_dir), "--protocol", "dc", "--kind", "time", "--metric", "best",
                 "--output", str(tmp_path / "t.png")]) == 0
    with Image.open(tmp_path / "t-digits-dc-v1.png") as im:  # dc v1: convnet3, resnetap10 -> 2 panels
        assert im.size == (2 * 500 + 240, 530)
    images = torch.zeros(4, 3, 100, 100, dtype=torch.uint8)
    DistilledSet(images, torch.tensor([0, 0, 1, 1]), ("a", "b")).save(tmp_path / "set")
    assert main(["grid", str(tmp_path / "set"), "--max-per-class", "5"]) == 0
    with Image.open(tmp_path / "set-grid.png") as im:  # 100 px images stay 100 px; 2 columns (2 per class)
        assert im.size == (plots.GRID_LABEL_W + 2 * 104 + 4, plots.GRID_TITLE_H + 2 * 104 + 4)
    assert main(["grid", str(tmp_path / "missing")]) == 2


def test_set_metrics_table_counts_each_set_once_and_averages_over_seeds():
    from ddbench.leaderboard.sets import render_set_metrics

    def rec(method, seed, eval_seed, sha, div, cov, mmd, version="1"):
        return {"method": method, "dataset": "digits", "ipc": 10, "seed": seed, "eval_seed": eval_seed,
                "protocol": "dc", "arch": "convnet3", "method_version": version, "protocol_version": "1",
                "distilled_sha256": sha, "extra": {"set_metrics": {"space": "pixels", "diversity": div,
                                                                   "coverage": cov, "mmd2": mmd}}}

    records = [rec("random", 0, 0, "a", 0.5, 1.0, 0.01), rec("random", 0, 1, "a", 0.5, 1.0, 0.01),  # one set
               rec("random", 1, 0, "b", 0.7, 0.8, 0.03), rec("herding", 0, 0, "c", None, 0.6, -0.01),
               rec("herding", 0, 0, "e", 0.1, 0.2, 0.3, version="2"),  # another card version: its own row
               {"method": "kcenter", "dataset": "digits", "ipc": 10, "seed": 0, "eval_seed": 0, "protocol": "dc",
                "arch": "convnet3", "distilled_sha256": "d", "extra": None}]  # no metrics: no row
    text = render_set_metrics(records, defaults=lambda *a: None)
    assert "## digits · distilled-set metrics (pixels features)" in text
    assert "| IPC | method | sets | diversity ↑ | coverage ↓ | MMD² ↓ |" in text
    assert "| 10 | random v1 | 2 | 0.600 | 0.900 | 0.020 |" in text
    assert "| 10 | herding v1 | 1 | – | 0.600 | -0.010 |" in text
    assert "| 10 | herding v2 | 1 | 0.100 | 0.200 | 0.300 |" in text
    assert "kcenter" not in text
    assert render_set_metrics(records[-1:], defaults=lambda *a: None) == ""


# ---------------------------------------------------------------------- the whole-split reference, end to end
def test_whole_split_reference_runs_end_to_end_and_publishes_without_absolute_paths(tmp_path):
    from ddbench.cli import main
    from ddbench.runner import reference_settings

    assert reference_settings("whole", "dc") == {"epochs": 30}  # the card's stated value (methods/whole.yaml)
    assert reference_settings("random", "dc") == {}
    tiny = ["--set", "protocol.epochs=1", "--set", "protocol.eval_points=1", "--out", str(tmp_path)]
    assert main(["run", "--method", "random", "--dataset", "digits"] + tiny) == 2  # --ipc required: a clear error
    assert main(["run", "--method", "whole", "--dataset", "digits"] + tiny) == 0  # no --ipc: it does not apply
    assert main(["run", "--method", "whole", "--dataset", "digits", "--ipc", "10"] + tiny) == 0  # ignored: same cell
    assert main(["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--seeds", "0,1,2"] + tiny) == 0
    with ResultStore(tmp_path / "results.db") as store:
        (whole,) = store.query(method="whole")
        assert (whole["ipc"], whole["protocol_config"]["epochs"]) == (0, 1)  # --set over the card's 30
        assert whole["extra"]["budget"]["set_bytes"] > 0
        store.export_jsonl(tmp_path / "published.jsonl")
    published = [json.loads(line) for line in (tmp_path / "published.jsonl").read_text().splitlines()]
    assert len(published) == 4
    for r in published:  # relative to the run directory, never a machine-specific absolute path
        assert r["distilled_path"].startswith(f"distilled/{r['method']}/digits/"), r["distilled_path"]
    whole_set = tmp_path / next(r["distilled_path"] for r in published if r["method"] == "whole")
    assert len(list(whole_set.rglob("*.png"))) > 1000  # the whole digits training split, not an IPC's worth
    (table,) = lb.build_tables(published)
    rows = {r.method: r for r in table.rows}
    assert rows["whole"].kind == "reference" and rows["whole"].label == "whole v1 [epochs=1, eval_points=1]"
    assert rows["random"].summary.n == 3 and rows["random"].share == pytest.approx(
        100 * rows["random"].mean / rows["whole"].mean)
    assert "% of whole" in table.columns() and "HLR" in table.columns()


def test_export_drops_paths_outside_the_run_directory(tmp_path):
    from ddbench.records.store import portable_path

    assert portable_path(str(tmp_path / "run" / "distilled" / "a"), tmp_path / "run") == "distilled/a"
    assert portable_path("/elsewhere/set", tmp_path / "run") is None
    assert portable_path("distilled/a", tmp_path / "run") == "distilled/a"
    assert portable_path("", tmp_path) == ""


def test_republishing_grids_make_three_sets_per_cell_and_the_whole_split_rows(tmp_path):
    from pathlib import Path

    from ddbench.sweep.expand import load_grid

    grids = Path(__file__).resolve().parent.parent / "leaderboards" / "grids"
    plan = load_grid(grids / "embedded-sets.yaml", out=tmp_path / "a")
    cells: dict = {}
    for d, c in plan.distills.items():
        for protocol in ("dc", "rded"):
            evals = [e.eval_seed for e in plan.evals_of(d) if e.protocol == protocol]
            if evals:
                cells.setdefault((c.label, c.dataset, c.ipc, protocol), []).append((c.seed, evals))
    assert {m for m, _, _, _ in cells} == {"random", "dit", "minimax", "mgd3", "acs", "acs-minimax", "igd",
                                           "igd-minimax", "herding", "kcenter", "whole", "sre2l", "cudd"}
    assert {m for m, ds, ipc, p in cells if p == "rded"} == {"random", "sre2l", "cudd", "dit", "minimax", "mgd3",
                                                             "acs", "acs-minimax"}
    assert {(ds, ipc) for m, ds, ipc, p in cells if p == "rded" or m in ("sre2l", "cudd")} == {("fashion", 10)}
    cells = {k[:3] + ((k[3],) if k[3] == "rded" else ()): v for k, v in cells.items()}
    assert {(k[0], k[1]) for k in cells if k[0] == "whole"} == {("whole", "digits"), ("whole", "fashion")}
    for (method, dataset, ipc, *_), runs in cells.items():
        if method == "whole":  # one split: three evaluations of it
            assert [sorted(e) for _, e in runs] == [[0, 1, 2]]
        elif method in ("herding", "kcenter"):  # deterministic: three seeds show it, each its own evaluation seed
            assert sorted((s, tuple(e)) for s, e in runs) == [(0, (0,)), (1, (1,)), (2, (2,))] and ipc in (1, 10)
        else:
            assert sorted(s for s, _ in runs) == [0, 1, 2] and {len(e) for _, e in runs} == {1}, (method, runs)
    dc300 = load_grid(grids / "fashion-dc300.yaml", out=tmp_path / "b")
    models: dict = {}
    for d, c in dc300.distills.items():
        models.setdefault((c.label, c.ipc), []).extend((c.seed, e.eval_seed) for e in dc300.evals_of(d))
    for (method, _), runs in models.items():  # ten distinct runs per cell; the deterministic ones over 2 seeds
        if method == "random":
            assert len({s for s, _ in runs}) == len(runs) >= 10
        elif method != "whole":
            assert len(set(runs)) == len({e for _, e in runs}) == len(runs) >= 10 and len({s for s, _ in runs}) >= 2
    assert {k for k in models if k[0] != "whole"} == {(m, i) for m in ("random", "herding", "kcenter") for i in (1, 10)}


def test_an_export_reimports_into_its_own_store_without_conflicts(tmp_path):
    run_dir = tmp_path / "run"
    inside = dict(record("random", 1, "convnet3", 0, 20.0), distilled_path=str(run_dir / "distilled" / "random" / "a"))
    outside = dict(record("random", 1, "convnet3", 1, 22.0), distilled_path="/elsewhere/b")
    with ResultStore(run_dir / "results.db") as store:
        store.add(inside), store.add(outside)
        store.export_jsonl(tmp_path / "out.jsonl")
        paths = [json.loads(x)["distilled_path"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert set(paths) == {None, "distilled/random/a"}
        result = store.import_jsonl(tmp_path / "out.jsonl")  # a location is not a result: nothing conflicts
        assert (result.added, result.skipped, result.conflicts) == (0, 2, [])


def test_export_merges_run_directories_and_publishes_only_complete_cells(tmp_path, capsys):
    """`ddbench export --out A --out B --min-sets 3`: the records of both stores in one file, minus the cells
    with fewer than three sets, each named on stdout; a missing store or a count below 1 is a one-line error."""
    from ddbench.cli import main

    for i, part in enumerate((RECORDS[::2], RECORDS[1::2])):
        with ResultStore(tmp_path / f"run{i}" / "results.db") as store:
            for r in part:
                store.add(r)
    out = tmp_path / "published.jsonl"
    assert main(["export", str(out), "--out", str(tmp_path / "run0"), "--out", str(tmp_path / "run1")]) == 0
    assert len(out.read_text().splitlines()) == len(RECORDS)
    assert main(["export", str(out), "--out", str(tmp_path / "run0"), "--out", str(tmp_path / "run1"),
                 "--min-sets", "3"]) == 0
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    cells = {(r["method"], r["ipc"], r["arch"], r["protocol_version"]) for r in kept}
    assert ("random", 10, "convnet3", "1") in cells and ("random", 1, "convnet3", "1") not in cells
    for cell in cells:  # every published cell has three sets or more
        assert len({r["distilled_sha256"] for r in kept if (r["method"], r["ipc"], r["arch"],
                                                              r["protocol_version"]) == cell}) >= 3, cell
    printed = capsys.readouterr().out
    assert "left out (too few): random digits IPC 1 dc convnet3: 2 set(s)" in printed
    assert main(["export", str(out), "--out", str(tmp_path / "nowhere")]) == 2
    assert main(["export", str(out), "--out", str(tmp_path / "run0"), "--min-sets", "0"]) == 2
    assert main(["export", str(out), "--out", str(tmp_path / "run0"), "--min-reference", "1"]) == 2
    assert main(["export", str(out), "--out", str(tmp_path / "run0"), "--min-sets", "3", "--min-reference", "0"]) == 2


def test_complete_cells_counts_the_units_the_tables_count():
    same = [dict(record("herding", 10, "convnet3", s, 80.0 + s, eval_seed=s), distilled_sha256="h" * 64)
            for s in (0, 1, 2)]  # deterministic: three seeds, one set, three distinct evaluations
    whole = [dict(record("whole", 0, "convnet3", 0, 99.0, eval_seed=e)) for e in (0, 1, 2)]
    two = [record("random", 10, "convnet3", s, 80.0) for s in (0, 1)]
    kept, left = lb.tables.complete_cells(same + whole + two, 3)
    assert {r["method"] for r in kept} == {"herding", "whole"}
    assert left == ["random digits IPC 10 dc convnet3: 2 set(s)"]
    assert lb.tables.complete_cells(same + whole + two, 4)[0] == []
    # the reference is never ranked: --min-reference 1 publishes one evaluation of it beside 3-set cells
    kept, left = lb.tables.complete_cells(same + whole[:1] + two, 3, min_reference=1)
    assert {r["method"] for r in kept} == {"herding", "whole"}
    kept, left = lb.tables.complete_cells(same + whole[:1] + two, 3)
    assert {r["method"] for r in kept} == {"herding"} and "whole digits IPC 0 dc convnet3: 1 evaluation(s)" in left


def test_the_whole_split_is_a_line_in_its_datasets_figures_not_a_figure_of_its_own(tmp_path, monkeypatch):
    """The whole split runs its own protocol settings (30 epochs): it joins the figures of its dataset and
    protocol card as a dotted line (vertical on a one-IPC dot-and-whisker panel), never a lone figure."""
    drawn = []
    monkeypatch.setattr(plots, "_whole_lines", lambda ax, ref, vertical: drawn.append((list(ref["mean"]), vertical)))
    random_runs = [record("random", ipc, "convnet3", s, 60.0 + ipc + s) for ipc in (1, 10) for s in (0, 1, 2)]
    whole = [record("whole", 0, "convnet3", 0, 99.0 + e / 10, eval_seed=e, protocol_set={"epochs": 30})
             for e in (0, 1, 2)]
    written = plots.plot_ipc(random_runs + whole, tmp_path / "a.png")
    assert len(written) == 1 and drawn == [([pytest.approx(99.1)], False)]
    drawn.clear()
    (path, _), = plots.plot_ipc([r for r in random_runs if r["ipc"] == 10] + whole, tmp_path / "b.png")
    assert drawn == [([pytest.approx(99.1)], True)]  # one IPC: a dot-and-whisker panel, accuracy on x
    assert len(plots.plot_time(random_runs + whole, tmp_path / "c.png")) == 1
