"""End to end: dataset → method → distilled set → protocol → records, with resume and bad input."""
import json
import sqlite3
import subprocess
import sys

import pytest

from ddbench.cli import main
from ddbench.runner import RunRequest, run
from ddbench.store import ResultStore

FAST = {"epochs": 3}


def _req(tmp_path, **kw):
    base = dict(method="random", dataset="digits", ipc=2, protocol="dc", archs=["convnet3"], seeds=[0],
                eval_seeds=[0, 1], protocol_overrides=dict(FAST), out=tmp_path / "runs", device="cpu")
    base.update(kw)
    return RunRequest(**base)


def test_run_records_every_cell_with_provenance_and_resumes(tmp_path):
    records = run(_req(tmp_path), log=lambda *_: None)
    assert len(records) == 2
    rec = records[0]
    for field in ("acc_last", "acc_best", "distilled_sha256", "code_version", "device", "timings", "peak_mem",
                  "method_config", "protocol_config", "protocol_version", "method_version"):
        assert field in rec, field
    assert {"distill", "evaluate"} <= set(rec["timings"])
    assert 0.0 <= rec["acc_last"] <= 100.0
    # second run: nothing new is distilled or evaluated, the same records come back
    logs = []
    again = run(_req(tmp_path), log=logs.append)
    assert any("already recorded" in line for line in logs)
    assert sorted(r["acc_last"] for r in again) == sorted(r["acc_last"] for r in records)
    with ResultStore(tmp_path / "runs" / "results.db") as store:
        assert len(store.query()) == 2


def test_same_seed_same_hash_and_a_new_eval_seed_reuses_the_set(tmp_path):
    first = run(_req(tmp_path, eval_seeds=[0]), log=lambda *_: None)
    logs = []
    more = run(_req(tmp_path, eval_seeds=[0, 1]), log=logs.append)
    assert any("reusing distilled set" in line for line in logs)
    assert {r["distilled_sha256"] for r in more} == {first[0]["distilled_sha256"]}
    other = run(_req(tmp_path, seeds=[1], eval_seeds=[0]), log=lambda *_: None)
    assert other[0]["distilled_sha256"] != first[0]["distilled_sha256"]


def test_killed_run_resumes_without_redoing_finished_cells(tmp_path):
    """A run killed after its first evaluation keeps that record; the rerun evaluates only the rest."""
    out = tmp_path / "runs"
    script = f"""
import os, ddbench.runner as r
from pathlib import Path
real = r.evaluate_cells
def one_then_die(dset, spec, protocol, keys, store, *a, **k):
    real(dset, spec, protocol, keys[:1], store, *a, **k)
    os._exit(9)
r.evaluate_cells = one_then_die
r.run(r.RunRequest('random', 'digits', 2, 'dc', ['convnet3'], [0], [0, 1, 2], {{}}, {FAST!r}, Path({str(out)!r}), 'cpu'),
      log=lambda *_: None)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    with ResultStore(out / "results.db") as store:
        assert [r["eval_seed"] for r in store.query()] == [0]
    logs = []
    records = run(_req(tmp_path, eval_seeds=[0, 1, 2]), log=logs.append)
    assert any("reusing distilled set" in line for line in logs)
    assert sum("eval-seed" in line for line in logs) == 2  # only seeds 1 and 2 were evaluated
    assert sorted(r["eval_seed"] for r in records) == [0, 1, 2]


# ---------------------------------------------------------------------- bad input through the CLI
BAD = [
    (["run", "--method", "rnadom", "--dataset", "digits", "--ipc", "1"], "Did you mean random"),
    (["run", "--method", "random", "--dataset", "digit", "--ipc", "1"], "Did you mean digits"),
    (["run", "--method", "random", "--dataset", "digits", "--ipc", "0"], "positive"),
    (["run", "--method", "random", "--dataset", "digits", "--ipc", "100000"], "smallest class"),
    (["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--protocol", "dcc"], "Did you mean dc"),
    (["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--arch", "convnett3",
      "--set", "protocol.epochs=1"], "Did you mean convnet3"),
    (["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--set", "protocol.epoch=1"], "Did you mean epochs"),
    (["run", "--method", "random", "--dataset", "nette", "--ipc", "1", "--imagenet-root", "/nonexistent"], "/nonexistent"),
    (["run", "--method", "random", "--dataset", "mnist", "--ipc", "1"], "DDBENCH_MNIST_ROOT"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_clear_line_and_nonzero_exit(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DDBENCH_IMAGENET_ROOT", raising=False)
    monkeypatch.delenv("DDBENCH_MNIST_ROOT", raising=False)
    code = main(argv + ["--out", str(tmp_path / "runs"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.startswith("ddbench: error:") and "Traceback" not in err


def test_unwritable_out_and_newer_store_schema(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--set", "protocol.epochs=1", "--device", "cpu"]
    assert main(argv + ["--out", str(blocker / "runs")]) == 2
    assert "--out" in capsys.readouterr().err
    out = tmp_path / "runs"
    out.mkdir()
    with sqlite3.connect(out / "results.db") as con:
        con.execute("PRAGMA user_version = 999")
    assert main(argv + ["--out", str(out)]) == 2
    assert "upgrade" in capsys.readouterr().err


def test_cli_run_prints_a_summary_table(tmp_path, capsys):
    code = main(["run", "--method", "random", "--dataset", "digits", "--ipc", "2", "--eval-seeds", "0,1",
                 "--set", "protocol.epochs=2", "--out", str(tmp_path / "runs"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "random" in out and "digits" in out and "(n=2)" in out
