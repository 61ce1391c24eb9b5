"""Regression checks: the tolerance rule, baseline files, and the command with a stand-in runner (no training)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ddbench import regress
from ddbench.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def stats(mean, std, n, mv="1", pv="1"):
    return {"mean": mean, "std": std, "n": n, "method_version": mv, "protocol_version": pv}


# ---------------------------------------------------------------------- the rule
def test_tolerance_is_a_two_sample_standard_error_with_a_floor():
    assert regress.tolerance(1.0, 4, 1.0, 4, sigma=3, floor=0.5) == pytest.approx(3 * math.sqrt(0.5))
    assert regress.tolerance(2.0, 4, 0.0, 1, sigma=2, floor=0.5) == pytest.approx(2.0)
    assert regress.tolerance(0.0, 6, 0.0, 6, sigma=3, floor=0.5) == 0.5  # deterministic cell: the floor


def test_planted_regression_fails():
    v = regress.compare(stats(80.0, 1.0, 6), stats(77.0, 1.0, 6), sigma=3, floor=0.5)
    assert (v.status, v.failed) == ("drop", True)
    assert v.delta == pytest.approx(-3.0) and v.tolerance == pytest.approx(3 * math.sqrt(2 / 6))
    assert "regression" in v.message


def test_noise_inside_the_tolerance_passes():
    v = regress.compare(stats(80.0, 1.0, 6), stats(78.5, 1.2, 6), sigma=3, floor=0.5)  # tolerance 1.91
    assert (v.status, v.failed) == ("ok", False) and v.delta == pytest.approx(-1.5)


def test_zero_std_uses_the_floor_both_ways():
    assert regress.compare(stats(90.0, 0.0, 3), stats(90.4, 0.0, 3), 3, 0.5).status == "ok"
    v = regress.compare(stats(90.0, 0.0, 3), stats(90.6, 0.0, 3), 3, 0.5)
    assert (v.status, v.failed) == ("rise", True)  # an unexplained gain also needs a look and --update


def test_null_baseline_records_only_with_a_message():
    v = regress.compare(None, stats(50.0, 2.0, 4), sigma=3, floor=0.5)
    assert (v.status, v.failed, v.delta) == ("record", False, None)
    assert "--update" in v.message and "not checked" in v.message


def test_changed_card_version_or_n_is_stale():
    v = regress.compare(stats(80.0, 1.0, 6), stats(80.0, 1.0, 6, pv="2"), 3, 0.5)
    assert (v.status, v.failed) == ("stale", True) and "protocol card version 1 -> 2" in v.message
    assert regress.compare(stats(80.0, 1.0, 6), stats(80.0, 1.0, 4), 3, 0.5).status == "stale"


# ---------------------------------------------------------------------- baseline files
def cell(method="random", expected=None, **kw):
    return {"method": method, "dataset": "digits", "ipc": 10, "protocol": "dc", "arch": "convnet3", "seeds": [0, 1],
            "eval_seeds": [0, 1], "method_overrides": {}, "protocol_overrides": {"epochs": 20}, "expected": expected,
            **kw}


def write(tmp_path, cells, **top):
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"format": regress.FORMAT, "metric": "acc_last", "cells": cells, **top}))
    return path


def test_load_baseline_fills_defaults_and_refuses_bad_files(tmp_path):
    data = regress.load_baseline(write(tmp_path, [cell()]))
    assert data["tolerance"] == {"sigma": 3.0, "floor": 0.5}
    for bad, match in (([], "non-empty"), ([{**cell(), "ipc": "10"}], "ipc"), ([{**cell(), "seed": 1}], "unknown"),
                       ([cell(), cell()], "both evaluate"), ([cell(expected={"mean": 1})], "expected")):
        with pytest.raises(ConfigError, match=match):
            regress.load_baseline(write(tmp_path, bad))
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a ddbench baseline"):
        regress.load_baseline(tmp_path / "other.json")


@pytest.mark.parametrize("name", ["cpu.json", "gpu.json"])
def test_shipped_baselines_are_valid(name):
    data = regress.load_baseline(ROOT / "leaderboards" / "baselines" / name)
    expected = [c["expected"] for c in data["cells"]]
    if name == "cpu.json":  # produced for real by --update: every cell is checked
        assert all(e is not None and e["n"] == len(e["values"]) for e in expected)
    else:  # numbers only from the GPU runner: record-only until then
        assert data["device"] == "cuda" and "--update" in data["note"]


# ---------------------------------------------------------------------- the command, with a stand-in runner
def fake_runner(means: dict):
    """runner.run stand-in: acc_last = means[method] + 0.5·eval_seed − 0.25 (std 0.58 over 2×2 runs)."""
    def run(req, progress=None, log=print):
        epochs = req.protocol_overrides.get("epochs", 300)
        return [{"method": req.method, "dataset": req.dataset, "ipc": req.ipc, "seed": s, "protocol": req.protocol,
                 "arch": req.archs[0], "eval_seed": e, "acc_last": means[req.method] + 0.5 * e - 0.25,
                 "acc_best": means[req.method] + 1, "method_version": "1", "protocol_version": "1",
                 "method_config": {}, "protocol_config": {"epochs": epochs}, "device": "cpu (2 cores)",
                 "code_version": "test"} for s in req.seeds for e in req.eval_seeds]
    return run


def regress_cli(argv):
    from ddbench.cli import main

    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_regress_command_update_then_pass_then_fail(tmp_path, monkeypatch, capsys):
    import ddbench.runner

    path = write(tmp_path, [cell("random"), cell("herding")])
    monkeypatch.setattr(ddbench.runner, "run", fake_runner({"random": 80.0, "herding": 85.0}))
    args = ["regress", "--baseline", str(path), "--out", str(tmp_path / "run")]
    assert regress_cli(args) == 0 and "recorded only" in capsys.readouterr().out  # null: record, no check
    assert regress_cli(args + ["--update"]) == 0
    written = regress.load_baseline(path)
    assert written["cells"][1]["expected"]["mean"] == 85.0 and written["cells"][1]["expected"]["n"] == 4
    assert written["produced"]["device"] == "cpu (2 cores)"
    assert regress_cli(args) == 0                                     # same numbers: pass
    monkeypatch.setattr(ddbench.runner, "run", fake_runner({"random": 80.0, "herding": 83.0}))
    capsys.readouterr()
    assert regress_cli(args) == 1                                     # herding lost 2 points: fail
    out = capsys.readouterr().out
    assert "DROP" in out and "1 of 2 cell(s) moved" in out
    report = json.loads((tmp_path / "run" / "regress-report.json").read_text())
    assert [r["verdict"]["status"] for r in report] == ["ok", "drop"]
    assert regress_cli(args + ["--tolerance-sigma", "20"]) == 0       # a looser K lets it through


def test_results_made_with_other_settings_are_refused(tmp_path, monkeypatch):
    import ddbench.runner

    stale = fake_runner({"random": 80.0})
    monkeypatch.setattr(ddbench.runner, "run",
                        lambda req, progress=None, log=print: stale(type(req)(**{**vars(req), "protocol_overrides": {}})))
    baseline = regress.load_baseline(write(tmp_path, [cell("random")]))
    with pytest.raises(ConfigError, match="epochs = 300, the baseline wants 20"):
        regress.run_baseline(baseline, tmp_path / "run", log=lambda *a: None)


@pytest.mark.slow
def test_cpu_baseline_passes_for_real(tmp_path):
    """The shipped CPU baseline, re-run through the real runner (a few minutes on 2 cores)."""
    baseline = regress.load_baseline(ROOT / "leaderboards" / "baselines" / "cpu.json")
    results = regress.run_baseline(baseline, tmp_path / "run", device="cpu", log=lambda *a: None)
    assert [r.verdict.status for r in results] == ["ok"] * len(baseline["cells"]), \
        [(regress.cell_name(r.cell), r.verdict.message) for r in results]
