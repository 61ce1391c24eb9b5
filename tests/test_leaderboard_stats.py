"""The leaderboards' statistics on constructed records: two-level summaries (sets, then evaluations), intervals
over sets, monotone ranks, Δ intervals, DD-Ranking's scores, protocol families, budget bytes, the equivalence
verdict of the reproduction page, and the HTML page against the markdown (no training)."""
from __future__ import annotations

import math
import random
import statistics
from html.parser import HTMLParser

import pytest
import torch
from scipy import stats as sst

from ddbench import leaderboard as lb
from ddbench.leaderboard import pages, render
from ddbench import stats
from ddbench.records.budget import network_size, set_bytes
from ddbench.distilled import DistilledSet
from ddbench.errors import ConfigError
from ddbench.leaderboard.budget import size_text
from ddbench.leaderboard.repro import render_reproduction_markdown, reproduction_lines, summaries
from ddbench.leaderboard.tables import row_name
from fakes import made_here


def rec(method, acc, seed, *, ipc=10, arch="convnet3", eval_seed=0, protocol="dc", family="hard", chash=None,
        budget=None, extra=None, best=None):
    """A record with what the leaderboard reads; configs are stand-ins named by `family` (no card is consulted:
    the tests pass `defaults=lambda *a: None`)."""
    r = {"method": method, "dataset": "digits", "ipc": ipc, "seed": seed, "protocol": protocol, "arch": arch,
         "eval_seed": eval_seed, "acc_last": acc, "acc_best": acc if best is None else best, "method_version": "1",
         "protocol_version": "1", "protocol_config": {"family": family, "epochs": 5}, "method_config": {},
         "distilled_sha256": f"{method}{ipc}{seed}", "device": "cpu (2 threads)",
         "timings": {"prepare": 1.0, "distill": 2.0, "evaluate": 3.0},
         "extra": {"identity": made_here(method, family), **(extra or {}),
                   **({"budget": budget} if budget is not None else {})}}
    if chash:
        r["config_hash"] = chash
    return r


def no_card(*_):
    return None


KINDS = {"whole": "reference", "dit": "diffusion"}


@pytest.fixture(autouse=True)
def stand_in_cards(monkeypatch):
    """The records here name stand-in versions: every one is current, and the kinds come from KINDS."""
    monkeypatch.setattr(lb.tables, "is_current", lambda *a: True)
    monkeypatch.setattr(lb.tables, "method_kind", lambda name: KINDS.get(name, "selection"))


def runs(method, values, **kw):
    """One distilled set per value (seeds 0, 1, ...), one evaluation each."""
    return [rec(method, v, seed, **kw) for seed, v in enumerate(values)]


def evals(method, values, seed=0, **kw):
    """One distilled set (seed), one evaluation per value."""
    return [rec(method, v, seed, eval_seed=e, **kw) for e, v in enumerate(values)]


def one_table(records, **kw):
    (table,) = lb.build_tables(records, defaults=no_card, **kw)
    return table


def by_label(table):
    return {r.label: r for r in table.rows}


# ---------------------------------------------------------------------- two levels: sets, then evaluations
def test_evaluations_are_averaged_within_a_set_and_sets_are_the_n():
    # set a: evaluations 80, 82 (mean 81); set b: 90 (one evaluation); set c: 85, 85, 85
    s = stats.two_level([("a", 80.0), ("a", 82.0), ("b", 90.0), ("c", 85.0), ("c", 85.0), ("c", 85.0)])
    assert (s.n, s.evaluations) == (3, 6)
    assert s.mean == pytest.approx((81 + 90 + 85) / 3) and s.std == pytest.approx(statistics.stdev([81, 90, 85]))
    assert s.eval_std == pytest.approx(math.sqrt((2.0 + 0.0) / 3))  # pooled within sets: (1·2 + 2·0) / 3 dof
    assert stats.interval(s) == pytest.approx(4.302653 * s.std / math.sqrt(3), rel=1e-6)  # t(2 dof): 3 sets


def test_the_interval_counts_sets_not_evaluations():
    many_evals = one_table(evals("random", [80.0, 81.0, 82.0, 83.0, 84.0, 85.0]))
    (row,) = many_evals.rows
    assert (row.summary.n, row.summary.evaluations, row.ci, row.rank) == (1, 6, None, None)
    assert many_evals.texts(row)[:5] == ["–", "random v1", "82.50", "1 set × 6 (sd 1.87)", "–"]
    sets = one_table(runs("random", [80.0, 82.0, 84.0]))
    assert sets.texts(sets.rows[0])[:4] == ["1", "random v1", "82.00 ± 4.97", "3 × 1"]


def test_a_one_set_cell_is_never_ranked_nor_used_for_gain():
    records = evals("herding", [99.0, 99.5, 99.0]) + runs("random", [80.0, 81.0, 82.0]) + \
        runs("kcenter", [85.0, 86.0, 87.0])
    rows = by_label(one_table(records))
    assert (rows["herding v1"].rank, rows["herding v1"].gain) == (None, None)  # best mean, but one set
    assert (rows["kcenter v1"].rank, rows["random v1"].rank) == (1, 2)
    assert rows["kcenter v1"].gain.value == pytest.approx(5.0)
    # random with one set: no Δ for anyone
    rows = by_label(one_table(evals("random", [80.0, 81.0]) + runs("kcenter", [85.0, 86.0, 87.0])))
    assert rows["kcenter v1"].gain is None and rows["kcenter v1"].rank == 1


def test_ci_is_student_t_over_the_sets():
    s = stats.Summary(82.0, 2.0, 3)
    # t(0.975, 2 dof) = 4.302653 (tables); half-width = t · s / √n
    assert stats.interval(s) == pytest.approx(4.302653 * 2.0 / math.sqrt(3), rel=1e-6)
    assert stats.interval(stats.Summary(50.0, 1.0, 30)) == pytest.approx(2.045230 / math.sqrt(30), rel=1e-6)
    assert stats.interval(stats.Summary(50.0, 0.0, 1)) is None  # one set: no interval


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


# ---------------------------------------------------------------------- ranks
def test_ranks_follow_the_means_on_the_issue_example():
    """best 90 ± 0.1, precise 89.5 ± 0.1, noisy 85 ± 10, 3 sets each: the sequential Welch grouping gave 1, 3, 1."""
    cells = {"best": stats.Summary(90.0, 0.1, 3), "precise": stats.Summary(89.5, 0.1, 3),
             "noisy": stats.Summary(85.0, 10.0, 3)}
    assert stats.rank_row(cells) == {"best": 1, "precise": 2, "noisy": 2}
    assert stats.welch_p(cells["best"], cells["precise"]) < stats.ALPHA       # precise is below best
    assert stats.welch_p(cells["precise"], cells["noisy"]) >= stats.ALPHA     # noisy is not below precise


def test_equal_means_never_rank_apart():
    cells = {"a": stats.Summary(88.61, 0.2, 3), "b": stats.Summary(90.0, 0.1, 3), "c": stats.Summary(88.61, 3.0, 5),
             "d": stats.Summary(88.61, 0.0, 3), "e": stats.Summary(88.61, 0.0, 4), "few": stats.Summary(99.0, 0.0, 2)}
    ranks = stats.rank_row(cells)
    assert ranks["a"] == ranks["c"] == ranks["d"] == ranks["e"] == 2 and ranks["b"] == 1 and ranks["few"] is None


def test_ranks_are_monotone_in_the_mean_on_random_rows():
    rng = random.Random(0)
    for _ in range(300):
        cells = {}
        for i in range(rng.randint(2, 9)):
            mean = rng.choice([rng.uniform(50, 95), 80.0, 80.0])  # repeated means too
            cells[f"m{i}"] = stats.Summary(round(mean, 2), rng.choice([0.0, rng.uniform(0, 8)]), rng.randint(1, 6))
        ranks = stats.rank_row(cells)
        ranked = [k for k, r in ranks.items() if r is not None]
        assert all((ranks[k] is None) == (cells[k].n < stats.MIN_RANKED) for k in cells)
        for a in ranked:
            for b in ranked:
                if cells[a].mean > cells[b].mean:
                    assert ranks[a] <= ranks[b], (cells, ranks)
                if cells[a].mean == cells[b].mean:
                    assert ranks[a] == ranks[b], (cells, ranks)
        assert sorted(ranks[k] for k in ranked)[:1] in ([], [1])


# ---------------------------------------------------------------------- protocol lock
def test_hard_and_soft_never_share_a_table_or_a_ranking():
    records = runs("random", [80.0, 81.0, 82.0]) + runs("random", [85.0, 86.0, 87.0], protocol="rded", family="soft")
    tables = lb.build_tables(records, defaults=no_card)
    assert [(t.protocol, t.family, t.label_type) for t in tables] == [("dc", "hard", "hard"), ("rded", "soft", "soft")]
    with pytest.raises(ConfigError, match="refusing to rank cells of protocol families hard, soft"):
        stats.rank_row({"a": stats.Summary(1, 1, 3, "hard"), "b": stats.Summary(1, 1, 3, "soft")})
    # one card version whose records disagree on the family: refused, not mixed
    mixed = runs("random", [80.0, 81.0, 82.0]) + runs("herding", [85.0, 86.0, 87.0], family="soft")
    with pytest.raises(ConfigError, match="hard, soft under one card version"):
        lb.build_tables(mixed, defaults=no_card)


def test_config_hashes_split_rows_and_old_records_form_their_own_group():
    records = runs("herding", [80.0, 81.0, 82.0], chash="aaaa1111bbbb2222") + \
        runs("herding", [60.0, 61.0, 62.0]) + [rec("herding", 70.0, 9, chash="cccc3333dddd4444")]
    rows = by_label(one_table(records))
    assert set(rows) == {"herding v1 @aaaa11", "herding v1 @cccc33", "herding v1 @–"}
    assert (rows["herding v1 @–"].mean, rows["herding v1 @–"].summary.n) == (61.0, 3)  # never averaged with hashed runs
    assert rows["herding v1 @aaaa11"].config_hash == "aaaa1111bbbb2222"


def test_soft_table_details_name_teacher_card_hash_and_overrides():
    teacher = {"arch": "resnet18_tv", "source": "torchvision", "val_acc": 69.76, "sha256": "f" * 64}
    records = runs("random", [40.0, 41.0, 42.0], protocol="rded", family="soft", extra={"teacher": teacher})
    (table,) = lb.build_tables(records, defaults=lambda kind, *a: {"family": "soft", "epochs": 300}
                               if kind == "protocol" else None)
    text = render.render_markdown([table])
    assert "## digits · protocol rded v1 (soft labels) · IPC 10 · convnet3" in text  # settings not in the heading
    assert "`smoke scale` `card modified` `CPU` · soft labels · device: cpu (2 threads)" in text
    assert f"resolved-card hash {lb.card_hash({'family': 'soft', 'epochs': 5})}; settings changed from the card: " \
           "epochs=5." in text
    assert "Teacher: arch resnet18_tv, source torchvision, real-validation accuracy 69.76 %." in text
    assert text.index("<details><summary>provenance</summary>") < text.index("Teacher:")


def test_badges_say_the_scale_and_a_paper_scale_table_gets_none():
    gpu = [dict(r, device="cuda (NVIDIA H100)") for r in runs("herding", [80.0, 81.0, 82.0])]
    assert one_table(gpu).badges == []
    assert one_table(runs("herding", [80.0, 81.0, 82.0])).badges == ["smoke scale", "CPU"]
    flagged = one_table(runs("herding", [80.0, 81.0, 82.0], extra={"nonstandard_subset": "fastai imagewoof2"}))
    assert flagged.badges[-1] == "nonstandard subset"
    assert flagged.texts(flagged.rows[0])[1] == "herding v1 ⚑ nonstandard subset"
    assert "nonstandard data: fastai imagewoof2" in flagged.details()[-1]


# ---------------------------------------------------------------------- references: whole split, DD-Ranking
def whole(values, ipc=0, **kw):
    return [dict(r, method="whole", extra=dict(r["extra"], identity=made_here("whole")))
            for r in evals("w", values, ipc=ipc, **kw)]


def test_the_whole_split_is_in_every_ipc_table_with_shares_and_scores():
    records = whole([95.0, 97.0]) + runs("random", [60.0, 62.0, 64.0], ipc=1) + \
        runs("herding", [70.0, 72.0, 74.0], ipc=1) + runs("random", [80.0, 82.0, 84.0]) + evals("dit", [90.0, 91.0])
    tables = lb.build_tables(records, defaults=no_card)
    assert [t.ipc for t in tables] == [1, 10]
    ipc1, ipc10 = (by_label(t) for t in tables)
    assert ipc1["whole v1"] is ipc10["whole v1"] and ipc1["whole v1"].rank is None  # a reference: never ranked
    assert ipc1["herding v1"].share == pytest.approx(100 * 72.0 / 96.0)
    d = ipc1["herding v1"].ddr
    assert (d.hlr, d.ior) == (pytest.approx(96.0 - 72.0), pytest.approx(72.0 - 62.0))
    assert ipc10["dit v1"].ddr is None and ipc10["dit v1"].share == pytest.approx(100 * 90.5 / 96.0)  # one set
    assert tables[0].columns()[5:9] == ["HLR", "IOR", "LRS", "% of whole"]
    assert tables[1].badges == ["smoke scale", "self-trained generator", "CPU"]


def ddranking_reference(full_hard, syn_hard, syn, rand, lam=0.5):
    """Transcribed from ddranking 0.2.0 (PyPI), ddranking/metrics/hard_label.py LabelRobustScoreHard
    .compute_metrics (and soft_label.py LabelRobustScoreSoft.compute_metrics, which differs only in passing the
    soft-label accuracies of the set and of random as `syn` and `rand`), one evaluation run:
        hlr = 1.00 * (full_data_hard_label_acc - syn_data_hard_label_acc)
        ior = 1.00 * (syn_data_hard_label_acc - random_data_hard_label_acc)
        alpha = lrs_lambda * ior - (1 - lrs_lambda) * hlr
        lrs = (np.exp(alpha) - np.exp(-1)) / (np.exp(1) - np.exp(-1))
    The package's accuracies are in % (`validate` returns top-1 × 100, ddranking/utils/meter.py `accuracy`)."""
    import numpy as np

    hlr = 1.00 * (full_hard - syn_hard)
    ior = 1.00 * (syn - rand)
    alpha = lam * ior - (1 - lam) * hlr
    lrs = (np.exp(alpha) - np.exp(-1)) / (np.exp(1) - np.exp(-1))
    return hlr, ior, lrs


@pytest.mark.parametrize("full, syn_hard, syn, rand", [(93.5, 70.1, 70.1, 65.0), (56.5, 21.0, 40.2, 12.5),
                                                       (90.0, 95.0, 97.0, 20.0), (50.0, 10.0, 10.0, 30.0),
                                                       (56.5, 55.0, 56.0, 54.0)])
def test_ddranking_parity(full, syn_hard, syn, rand):
    """The package's inputs, in %: the same HLR, IOR and LRS, to the last digit."""
    got = stats.ddranking_scores(full, syn_hard, syn, rand)
    hlr, ior, lrs = ddranking_reference(full, syn_hard, syn, rand)
    assert (got.hlr, got.ior, got.lrs) == (pytest.approx(hlr), pytest.approx(ior), pytest.approx(float(lrs)))
    assert stats.ddranking_scores(None, syn_hard, syn, rand) == stats.DDRankingScores(None, pytest.approx(ior), None)


def test_lrs_is_printed_without_e_notation():
    from ddbench.leaderboard.tables import lrs_text

    assert lrs_text(stats.ddranking_scores(50.0, 10.0, 10.0, 30.0).lrs) == "-0.157"  # HLR ≫ IOR: saturated
    assert lrs_text(12345.6) == "1.23 × 10^4" and lrs_text(None) == "–"


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


def test_budget_beside_each_row_counts_the_teacher_in_soft_tables():
    hard = runs("herding", [80.0, 80.0, 80.0], budget={"set_bytes": 2_000_000})
    soft = runs("random", [60.0, 60.0, 60.0], protocol="rded", family="soft",
                budget={"set_bytes": 1_000_000, "teacher_params": 250_000, "teacher_bytes": 1_000_000},
                extra={"soft_label_bytes": 2_000_000})
    old = runs("kcenter", [70.0, 70.0, 70.0])  # older records: no budget fields
    hard_t, soft_t = lb.build_tables(hard + soft + old, defaults=no_card)
    rows = by_label(hard_t)
    assert hard_t.texts(rows["herding v1"])[-6:] == ["2.00 MB", "hard", "none", "2.00 MB", "3.0", "3.0"]
    assert hard_t.texts(rows["kcenter v1"])[-6:-2] == ["–", "hard", "none", "–"]
    assert soft_t.texts(soft_t.rows[0])[-6:] == ["1.00 MB", "2.00 MB", "250 k params, 1.00 MB", "4.00 MB", "3.0",
                                                 "3.0"]
    assert [size_text(x) for x in (412, 999_499, 999_999, 12_345_678, 2.5e9)] == \
        ["412 B", "999 KB", "1000 KB", "12.3 MB", "2.50 GB"]  # never scientific notation


# ---------------------------------------------------------------------- reproduction
def test_equivalence_verdicts():
    # 3 sets, sd 1: half-width t(2)·1/√3 = 2.484
    assert stats.reproduction(stats.Summary(80.0, 0.2, 3), 80.3, margin=1.0).verdict == "reproduced"  # ±0.50 inside
    r = stats.reproduction(stats.Summary(80.0, 1.0, 3), 80.0, margin=1.0)
    assert (r.verdict, r.low, r.high) == ("inconclusive", pytest.approx(-2.4841, abs=1e-3), pytest.approx(2.4841, abs=1e-3))
    assert stats.reproduction(stats.Summary(80.0, 1.0, 3), 80.0, margin=3.0).verdict == "reproduced"
    assert stats.reproduction(stats.Summary(80.0, 1.0, 3), 84.0, margin=1.0).verdict == "gap"    # [-6.5, -1.5]
    assert stats.reproduction(stats.Summary(80.0, 1.0, 3), 82.0, margin=1.0).verdict == "inconclusive"
    # a larger spread can only widen the interval: never an easier "reproduced"
    assert stats.reproduction(stats.Summary(80.0, 5.0, 3), 80.0, margin=1.0).verdict == "inconclusive"
    assert stats.reproduction(stats.Summary(80.0, 0.0, 2), 80.0).verdict == "too few sets"
    assert stats.reproduction(stats.Summary(80.0, 0.0, 1), 80.0).verdict == "too few sets"
    assert stats.reproduction(None, 80.0).verdict == "not run"
    with pytest.raises(ConfigError, match="margin"):
        stats.reproduction(stats.Summary(80.0, 1.0, 3), 80.0, margin=0.0)


def test_reproduction_page_uses_the_paper_metric_sets_and_only_the_cards_settings():
    reported = {("digits", "dc"): {
        "herding": {"source": "Paper A, table 2", "cells": {(10, "convnet3"): (80.5, 4.0), (50, "convnet3"): (95.0, 1.0)}},
        "kcenter": {"source": "B", "cells": {(10, "convnet3"): (70.0, 0.5)}}}}
    records = [rec("herding", 0.0, s, best=b) for s, b in enumerate([79.9, 80.0, 80.1])]  # acc_best 80 ± 0.25
    modified = [rec("kcenter", 70.0, s) for s in range(3)]
    for r in modified:
        r["protocol_config"] = {"family": "hard", "epochs": 1}  # another setting than the card's: not a reproduction
    card = {"family": "hard", "epochs": 5}
    lines = reproduction_lines(records + modified, "best", reported, defaults=lambda kind, *a: card
                               if kind == "protocol" else {})
    got = {(x.method, x.ipc): x.result.verdict for x in lines}
    assert got == {("herding", 10): "reproduced", ("herding", 50): "not run", ("kcenter", 10): "not run"}
    assert {m: dict(c) for m, c in summaries(lines).items()} == {"herding": {"reproduced": 1, "not run": 1},
                                                                  "kcenter": {"not run": 1}}
    text = render_reproduction_markdown(lines, "best", "ddbench leaderboard --reproduction")
    assert "**1 of 3 paper numbers measured here; not run: digits.**" in text
    assert "- herding: 1 reproduced, 1 not run (of 2 reported cells)" in text
    assert "| digits | dc | 10 | convnet3 | herding | Paper A, table 2 | 80.5 (sd 4.0) | 80.00 ± 0.25 v1 | 3 × 1 " \
           "| -0.50 | [-0.75, -0.25] | reproduced |" in text
    assert "Methods without paper numbers: random," in text and "whole" in text.split("Methods without")[1]


def test_reproduction_headline_and_imageidc():
    from ddbench.leaderboard.repro import Line, headline, _texts

    line = Line("idc", "idc", 10, "resnetap10", "herding", "IDC, table 3", (60.0, None), None, None, None,
                stats.reproduction(None, 60.0))
    assert headline([line, line]) == "0 of 2 paper numbers measured here: all need ImageNet."
    assert _texts(line)[:2] == ["ImageIDC", "idc"]


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
    page = pages.render_html(tables)
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == [] and page.startswith("<!DOCTYPE html>") and page.count("<table ") == 3
    md_rows = [[c.strip() for c in line[2:-2].split(" | ")] for line in render.render_markdown(tables).splitlines()
               if line.startswith("| ") and not line.startswith("| rank")]
    assert checker.cells == [c for row in md_rows for c in [row[0]] + row[2:]]  # the method: the row's header
    assert '<th scope="row" data-v="random v1"><a href="../methods/random.yaml">random v1</a></th>' in page
    assert 'data-v="90.5"' in page and '<button type="button"' in page  # sortable by the means


def test_reproduction_pairs_are_protocols_not_source_notes():
    """A card's `reported.<dataset>` also holds `protocol_source` / `protocol_values`: never read as protocols."""
    from ddbench.leaderboard.repro import reported_pairs
    from ddbench.leaderboard.tables import REPORTED_META, load_reported

    pairs = reported_pairs()
    assert pairs and not {p for _, p in pairs} & set(REPORTED_META)
    assert load_reported(pairs | {("woof", "protocol_values")})  # every card's numbers load; a note is skipped


def test_a_method_whose_seeds_give_one_set_is_deterministic_and_its_evaluations_count():
    same = [dict(r, distilled_sha256="one", eval_seed=r["seed"])  # seeds 0-2, one set, an evaluation seed each
            for r in runs("herding", [80.0, 81.0, 82.0])]
    rows = by_label(one_table(same + runs("random", [70.0, 71.0, 72.0])))
    s = rows["herding v1"].summary
    assert (s.deterministic, s.n, s.evaluations, s.shape) == (True, 3, 3, "1 set (deterministic) × 3")
    assert rows["herding v1"].rank == 1 and rows["herding v1"].gain.value == pytest.approx(10.0)
    # one seed evaluated three times: nothing says the method is deterministic; one set, unranked
    rows = by_label(one_table(evals("herding", [80.0, 81.0, 82.0]) + runs("random", [70.0, 71.0, 72.0])))
    assert (rows["herding v1"].summary.deterministic, rows["herding v1"].rank) == (False, None)


def test_soft_label_scores_read_the_hard_label_run_of_the_same_method():
    hard = whole([90.0, 92.0]) + runs("random", [60.0, 62.0]) + runs("dit", [70.0, 72.0])
    soft = runs("random", [75.0, 77.0], protocol="rded", family="soft") + \
        runs("dit", [80.0, 82.0], protocol="rded", family="soft") + \
        runs("herding", [85.0, 85.5], protocol="rded", family="soft")  # no hard-label run: HLR and LRS stay empty
    hard_t, soft_t = lb.build_tables(hard + soft, defaults=no_card)
    rows = by_label(soft_t)
    d = rows["dit v1"].ddr
    assert (d.hlr, d.ior) == (pytest.approx(91.0 - 71.0), pytest.approx(81.0 - 76.0))  # HLR: hard labels; IOR: soft
    assert d.lrs == pytest.approx(stats.ddranking_scores(91.0, 71.0, 81.0, 76.0).lrs)
    assert (rows["herding v1"].ddr.hlr, rows["herding v1"].ddr.lrs) == (None, None)
    assert rows["herding v1"].ddr.ior == pytest.approx(85.25 - 76.0)
    assert "HLR" in soft_t.columns() and "% of whole" not in soft_t.columns()  # no soft-label whole run here


def test_rows_made_by_other_numerics_code_are_flagged():
    """A row whose records carry another numerics fingerprint (or none: made before identity was recorded)
    is flagged on its row, in its table's badges and in its provenance; rows made by this code are not."""
    other = [dict(r, extra=dict(r["extra"], identity={"set": {"numerics": "0" * 16},
                                                      "protocol": r["extra"]["identity"]["protocol"]}))
             for r in runs("herding", [80.0, 81.0, 82.0])]
    bare = [dict(r, extra={}) for r in runs("kcenter", [75.0, 76.0, 77.0])]
    table = one_table(other + bare + runs("random", [70.0, 71.0, 72.0]))
    rows = by_label(table)
    assert (rows["herding v1"].code, rows["kcenter v1"].code, rows["random v1"].code) == \
        ("other code", "code not recorded", None)
    assert row_name(rows["herding v1"]) == "herding v1 ⚠ other code"
    assert {"other code", "code not recorded"} <= set(table.badges)
    assert any("herding v1" in line and "other than this checkout" in line for line in table.details())
    clean = one_table(runs("herding", [80.0, 81.0, 82.0]) + runs("random", [70.0, 71.0, 72.0]))
    assert not {"other code", "code not recorded"} & set(clean.badges)


def test_the_header_states_the_compute_behind_the_rows_once():
    """Device time from the records' own timings: each set's distillation and the one-off preparation once,
    every evaluation; the whole split, shown in every IPC table, counted once."""
    from ddbench.leaderboard.render import compute_line, duration

    records = whole([95.0, 97.0]) + runs("random", [60.0, 62.0, 64.0], ipc=1) + runs("random", [80.0, 82.0, 84.0])
    tables = lb.build_tables(records, defaults=no_card)
    assert len(tables) == 2
    # distillation: whole 1 + 2, random 1 + 3 × 2 per IPC = 17 s; evaluation: 2 × 3 + 2 × 3 × 3 = 24 s
    assert compute_line(tables).startswith("41 s on cpu (2 threads) (distillation 17 s, evaluation 24 s)")
    assert compute_line([]) == "not recorded"
    assert (duration(59), duration(600), duration(5400)) == ("59 s", "10 min", "1.5 h")
