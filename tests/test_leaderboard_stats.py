"""The leaderboards' statistics on constructed records: CIs, the tie rule, Δ intervals, protocol families,
budget bytes, reproduction verdicts, and the HTML page against the markdown (no training)."""
from __future__ import annotations

import math
import statistics
from html.parser import HTMLParser

import pytest
import torch
from scipy import stats as sst

from ddbench import leaderboard as lb
from ddbench.leaderboard import render
from ddbench import stats
from ddbench.budget import network_size, set_bytes
from ddbench.distilled import DistilledSet
from ddbench.errors import ConfigError
from ddbench.leaderboard.budget import budget_rows, render_budget_markdown
from ddbench.leaderboard.repro import render_reproduction_markdown, reproduction_lines, summaries


def rec(method, acc, seed, *, ipc=10, arch="convnet3", eval_seed=0, protocol="dc", family="hard", chash=None,
        budget=None, extra=None, best=None):
    """A record with what the leaderboard reads; configs are stand-ins named by `family` (no card is consulted:
    the tests pass `defaults=lambda *a: None`)."""
    r = {"method": method, "dataset": "digits", "ipc": ipc, "seed": seed, "protocol": protocol, "arch": arch,
         "eval_seed": eval_seed, "acc_last": acc, "acc_best": acc if best is None else best, "method_version": "1",
         "protocol_version": "1", "protocol_config": {"family": family, "epochs": 5}, "method_config": {},
         "distilled_sha256": f"{method}{ipc}{seed}", "device": "cpu (2 threads)",
         "timings": {"prepare": 1.0, "distill": 2.0, "evaluate": 3.0},
         "extra": {**(extra or {}), **({"budget": budget} if budget is not None else {})}}
    if chash:
        r["config_hash"] = chash
    return r


def no_card(*_):
    return None


def runs(method, values, **kw):
    return [rec(method, v, seed, **kw) for seed, v in enumerate(values)]


# ---------------------------------------------------------------------- confidence intervals
def test_ci_is_student_t_over_the_runs():
    s = stats.Summary(82.0, 2.0, 3)
    # t(0.975, 2 dof) = 4.302653 (tables); half-width = t · s / √n
    assert stats.interval(s) == pytest.approx(4.302653 * 2.0 / math.sqrt(3), rel=1e-6)
    assert stats.interval(stats.Summary(50.0, 1.0, 30)) == pytest.approx(2.045230 / math.sqrt(30), rel=1e-6)
    assert stats.interval(stats.Summary(50.0, 0.0, 1)) is None  # one run: no interval
    (table,) = lb.build_tables(runs("random", [80.0, 82.0, 84.0]), defaults=no_card)
    assert table.rows[0].cells["random"].text() == "82.00 ± 4.97 (3) #1"


def test_gain_interval_is_welch():
    a, b = [70.0, 74.0, 75.0, 71.0], [60.0, 61.0, 62.0]
    d = stats.gain(stats.Summary(statistics.fmean(a), statistics.stdev(a), 4), stats.Summary(61.0, 1.0, 3))
    ref = sst.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d.value == pytest.approx(11.5)
    assert (d.value - d.half_width, d.value + d.half_width) == pytest.approx((ref.low, ref.high), rel=1e-9)
    assert stats.gain(stats.Summary(1.0, 0.0, 1), stats.Summary(0.0, 1.0, 3)).half_width is None


def test_welch_p_matches_scipy_on_raw_runs():
    a, b = [90.0, 91.0, 92.0], [85.0, 89.0, 93.0, 91.0]
    sa = stats.Summary(91.0, 1.0, 3)
    sb = stats.Summary(statistics.fmean(b), statistics.stdev(b), 4)
    assert stats.welch_p(sa, sb) == pytest.approx(sst.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
    assert stats.welch_p(stats.Summary(2.0, 0.0, 3), stats.Summary(1.0, 0.0, 3)) == 0.0  # exact difference


# ---------------------------------------------------------------------- tie rule
def test_tie_rule_on_constructed_rows():
    cells = {"best": stats.Summary(90.0, 1.0, 3),      # highest mean
             "noisy": stats.Summary(88.0, 4.0, 3),     # far below in mean, but too noisy to be worse: ties
             "close": stats.Summary(89.0, 1.0, 5),     # not significantly worse (p ≈ 0.12): ties
             "worse": stats.Summary(80.0, 1.0, 3),     # clearly worse: the next group
             "worse2": stats.Summary(79.5, 1.0, 3),    # not worse than `worse`: shares its rank
             "last": stats.Summary(60.0, 0.5, 4),
             "few": stats.Summary(99.0, 0.0, 2)}       # n < 3: marked, never ranked, never the best
    assert stats.rank_row(cells) == {"best": 1, "noisy": 1, "close": 1, "worse": 4, "worse2": 4, "last": 6,
                                     "few": None}
    # the rule is read against the Welch p-values
    assert stats.welch_p(cells["best"], cells["close"]) >= stats.ALPHA
    assert stats.welch_p(cells["best"], cells["worse"]) < stats.ALPHA


def test_ranks_in_the_table_and_n_below_3_marked():
    records = runs("random", [80.0, 81.0, 82.0]) + runs("herding", [90.0, 90.5, 91.0]) + \
        runs("kcenter", [89.0, 91.0, 90.0]) + runs("mgd3", [99.0, 99.0])
    (table,) = lb.build_tables(records, defaults=no_card)
    row = table.rows[0]
    assert {k: c.rank for k, c in row.cells.items()} == {"random": 3, "herding": 1, "kcenter": 1, "mgd3": None}
    assert row.best_labels() == {"herding", "kcenter"}
    texts = render.row_texts(table, row, lambda s: f"**{s}**")
    assert texts[2:6] == ["81.00 ± 2.48 (3) #3", "**90.50 ± 1.24 (3) #1**", "**90.00 ± 2.48 (3) #1**",
                          "99.00 ± 0.00 (2) n<3"]
    # Δ: best mean (mgd3, n = 2) − random, Welch interval over 2 + 3 runs
    assert texts[-1].startswith("+18.00 ± ") and texts[-1].endswith(" (mgd3)")


# ---------------------------------------------------------------------- protocol lock
def test_hard_and_soft_never_share_a_table_or_a_ranking():
    records = runs("random", [80.0, 81.0, 82.0]) + runs("random", [85.0, 86.0, 87.0], protocol="rded", family="soft")
    tables = lb.build_tables(records, defaults=no_card)
    assert [(t.protocol, t.family) for t in tables] == [("dc", "hard"), ("rded", "soft")]
    with pytest.raises(ConfigError, match="refusing to rank cells of protocol families hard, soft"):
        stats.rank_row({"a": stats.Summary(1, 1, 3, "hard"), "b": stats.Summary(1, 1, 3, "soft")})
    # one card version whose records disagree on the family: refused, not mixed
    mixed = runs("random", [80.0, 81.0, 82.0]) + runs("herding", [85.0, 86.0, 87.0], family="soft")
    with pytest.raises(ConfigError, match="hard, soft under one card version"):
        lb.build_tables(mixed, defaults=no_card)


def test_config_hashes_split_columns_and_old_records_form_their_own_group():
    records = runs("herding", [80.0, 81.0, 82.0], chash="aaaa1111bbbb2222") + \
        runs("herding", [60.0, 61.0, 62.0]) + [rec("herding", 70.0, 9, chash="cccc3333dddd4444")]
    (table,) = lb.build_tables(records, defaults=no_card)
    assert [c for c, _ in table.columns] == ["herding @aaaa1111bbbb", "herding @cccc3333dddd", "herding @–"]
    cells = table.rows[0].cells
    assert (cells["herding @–"].mean, cells["herding @–"].n) == (61.0, 3)  # never averaged with hashed runs
    assert table.config_hashes["herding @aaaa1111bbbb"] == "aaaa1111bbbb2222"
    assert "@– = records without a config hash (grouped by card versions)" in render.notes(table)[-1]


def test_soft_table_header_names_teacher_card_hash_and_overrides():
    teacher = {"arch": "resnet18_tv", "source": "torchvision", "val_acc": 69.76, "sha256": "f" * 64}
    records = runs("random", [40.0, 41.0, 42.0], protocol="rded", family="soft", extra={"teacher": teacher})
    (table,) = lb.build_tables(records, defaults=lambda kind, *a: {"family": "soft", "epochs": 300}
                               if kind == "protocol" else None)
    text = render.render_markdown([table])
    assert "## digits · protocol rded v1 · soft labels · modified: epochs=5" in text
    assert f"card hash {lb.card_hash({'family': 'soft', 'epochs': 5})}; overrides: epochs=5." in text
    assert "Teacher: arch resnet18_tv, source torchvision, real-validation accuracy 69.76 %." in text


# ---------------------------------------------------------------------- budget
def test_budget_bytes_of_a_known_set(tmp_path):
    images = torch.randint(0, 256, (6, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    DistilledSet(images, torch.tensor([0, 0, 1, 1, 2, 2]), ("a", "b", "c")).save(tmp_path / "set")
    pngs = sorted((tmp_path / "set").rglob("*.png"))
    assert len(pngs) == 6
    (tmp_path / "set" / "set_metrics.json").write_text("{}")  # bookkeeping beside the set: not counted
    assert set_bytes(tmp_path / "set") == sum(p.stat().st_size for p in pngs)
    assert set_bytes(tmp_path / "missing") is None
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    # 4·3 + 3 weights/bias + 3 + 3 affine = 21 params; state dict adds running mean/var (3 + 3 fp32) + 1 int64
    assert network_size(net) == {"params": 21, "bytes": (21 + 6) * 4 + 8}


def test_budget_table_totals_and_accuracy_per_mb():
    hard = runs("herding", [80.0, 80.0, 80.0], budget={"set_bytes": 2_000_000})
    soft = runs("random", [60.0, 60.0, 60.0], protocol="rded", family="soft",
                budget={"set_bytes": 1_000_000, "teacher_params": 250_000, "teacher_bytes": 1_000_000},
                extra={"soft_label_bytes": 2_000_000})
    old = runs("kcenter", [70.0, 70.0, 70.0])  # older records: no budget fields
    tables = budget_rows(hard + soft + old)
    (h_key, hard_lines), (s_key, soft_lines) = tables.items()
    by = {x["label"]: x for x in hard_lines}
    assert by["herding"]["total_bytes"] == 2_000_000 and by["herding"]["acc_per_mb"] == pytest.approx(40.0)
    assert by["kcenter"]["total_bytes"] is None and by["kcenter"]["acc_per_mb"] is None
    assert soft_lines[0]["total_bytes"] == 4_000_000 and soft_lines[0]["acc_per_mb"] == pytest.approx(15.0)
    text = render_budget_markdown(hard + soft + old)
    assert "| 10 | convnet3 | herding | 80.00 ± 0.00 (3) | 2 MB | 0 B (hard) | none | 2 MB | 40 | 3.0 | 3.0 |" in text
    assert "| 10 | convnet3 | kcenter | 70.00 ± 0.00 (3) | – | 0 B (hard) | none | – | – |" in text
    assert "| 10 | convnet3 | random | 60.00 ± 0.00 (3) | 1 MB | 2 MB | 250 k params, 1 MB | 4 MB | 15 |" in text


# ---------------------------------------------------------------------- reproduction
def test_z_and_verdicts():
    r = stats.reproduction(stats.Summary(80.0, 3.0, 3), 84.0, 4.0)
    assert (r.delta, r.z, r.verdict) == (-4.0, pytest.approx(-0.8), "reproduced")
    assert stats.reproduction(stats.Summary(80.0, 3.0, 3), 87.5, 4.0).verdict == "within 2σ"   # z = −1.5
    assert stats.reproduction(stats.Summary(80.0, 3.0, 3), 91.0, 4.0).verdict == "gap"          # z = −2.2
    assert stats.reproduction(stats.Summary(80.0, 1.0, 3), 81.5, None).z == pytest.approx(-1.5)  # no paper std
    assert stats.reproduction(None, 80.0, 1.0).verdict == "not run"
    assert stats.reproduction(stats.Summary(80.0, 0.0, 1), 81.0, None).verdict == "no spread"


def test_reproduction_report_uses_the_paper_metric_and_only_the_cards_settings():
    reported = {("digits", "dc"): {
        "herding": {"source": "A", "cells": {(10, "convnet3"): (84.0, 4.0), (50, "convnet3"): (95.0, 1.0)}},
        "kcenter": {"source": "B", "cells": {(10, "convnet3"): (70.0, 0.5)}}}}
    records = [rec("herding", 0.0, s, best=b) for s, b in enumerate([77.0, 80.0, 83.0])]  # acc_best 80 ± 3
    modified = [rec("kcenter", 70.0, s) for s in range(3)]
    for r in modified:
        r["protocol_config"] = {"family": "hard", "epochs": 1}  # another setting than the card's: not a reproduction
    card = {"family": "hard", "epochs": 5}
    lines = reproduction_lines(records + modified, "best", reported, defaults=lambda kind, *a: card
                               if kind == "protocol" else {})
    got = {(x.method, x.ipc): (x.result.verdict, x.result.z) for x in lines}
    assert got == {("herding", 10): ("reproduced", pytest.approx(-0.8)), ("herding", 50): ("not run", None),
                   ("kcenter", 10): ("not run", None)}
    assert {m: dict(c) for m, c in summaries(lines).items()} == {"herding": {"reproduced": 1, "not run": 1},
                                                                  "kcenter": {"not run": 1}}
    text = render_reproduction_markdown(lines, "best", "ddbench leaderboard --reproduction")
    assert "- herding: 1 reproduced, 0 within 2σ, 0 gap, 1 not run (of 2 reported cells)" in text
    assert "| digits | dc | 10 | convnet3 | herding | 84.0 ± 4.0 | 80.00 ± 3.00 (3) v1 | -4.00 | -0.80 | reproduced |" \
        in text


# ---------------------------------------------------------------------- html
class _Checker(HTMLParser):
    """Fails on a closing tag that does not match the open one; collects the text of every <td>."""
    VOID = {"meta", "br", "img", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.cells, self._td = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "td":
            self._td = []

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        if tag == "td":
            self.cells.append("".join(self._td))
            self._td = None

    def handle_data(self, data):
        if self._td is not None:
            self._td.append(data)


def test_html_page_is_well_formed_and_its_numbers_equal_the_markdowns():
    records = runs("random", [80.0, 81.0, 82.0]) + runs("herding", [90.0, 90.5, 91.0]) + \
        runs("kcenter", [89.0, 91.0, 90.0], ipc=1) + runs("random", [85.0, 86.0, 87.0], protocol="rded", family="soft")
    tables = lb.build_tables(records, defaults=no_card)
    page = render.render_html(tables)
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == [] and page.startswith("<!DOCTYPE html>") and page.count("<table ") == 2
    md_rows = [[c.strip().strip("*") for c in line.strip("|").split(" | ")]
               for line in render.render_markdown(tables).splitlines() if line.startswith("| ") and
               not line.startswith("| IPC")]
    assert checker.cells == [c for row in md_rows for c in row[2:]]  # IPC and network: the row's header cell
    assert '<th scope="row" data-v="10">10 · convnet3</th>' in page
    assert 'data-v="90.5"' in page and '<button type="button"' in page  # sortable by the cell means


def test_reproduction_pairs_are_protocols_not_source_notes():
    """A card's `reported.<dataset>` also holds `protocol_source` / `protocol_values`: never read as protocols."""
    from ddbench.leaderboard.repro import reported_pairs
    from ddbench.leaderboard.tables import REPORTED_META, load_reported

    pairs = reported_pairs()
    assert pairs and not {p for _, p in pairs} & set(REPORTED_META)
    assert load_reported(pairs | {("woof", "protocol_values")})  # every card's numbers load; a note is skipped
