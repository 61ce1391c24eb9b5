"""End to end through the command line: every registered method (its card's `tiny:` settings) under every
protocol family it can be scored under, on the embedded digits, each producing a stored record.

The unit tests check the pieces; this matrix checks that they meet: `ddbench run` parses the flags, distils, scores
under a hard-label (`dc`) and a soft-label (`rded`) protocol, computes the budget and writes the record. A soft-label
run that trains its student and then fails in the bookkeeping (as `budget.record_budget` once did) fails here.
The per-epoch relabel protocol (`fkd`) is run for the methods whose papers score with it (SRe2L, CUDD) and for
`random`, the baseline of every table. The gates stay as a user meets them (no nonstandard-subset allowance).
"""
from __future__ import annotations

import json

import pytest

from ddbench.cli import main
from ddbench.config import leaves
from ddbench.method import list_methods, method_card
from ddbench.records.store import ResultStore

# Short protocols: one epoch of the student; a 5-epoch teacher (trained once per test session: one epoch leaves
# it below the card's 3x-chance floor on 16-px digits); the cards are otherwise the real ones.
PROTOCOL_SETTINGS = {
    "dc": ["protocol.epochs=1", "protocol.eval_points=1"],
    "rded": ["protocol.epochs=1", "protocol.teacher.recipe.epochs=5"],
    "fkd": ["protocol.epochs=1", "protocol.teacher.recipe.epochs=5"],
}
FKD_METHODS = ("random", "sre2l", "cudd")


def tiny_settings(name: str) -> list[str]:
    """The card's `tiny:` section as `--set key=value` flags (values written as YAML, as a user would type them)."""
    card = method_card(name)
    assert "tiny" in card, f"card of {name} needs a `tiny:` section so the end-to-end matrix stays fast"
    return [f"{key}={json.dumps(value)}" for key, value in leaves(card["tiny"] or {})]


def cells() -> list[tuple[str, str]]:
    out = [(m, p) for m in list_methods() for p in ("dc", "rded")]
    return out + [(m, "fkd") for m in FKD_METHODS]


@pytest.fixture(autouse=True)
def _gates_as_shipped(monkeypatch):
    monkeypatch.delenv("DDBENCH_ALLOW_NONSTANDARD_SUBSET", raising=False)


@pytest.mark.parametrize("method,protocol", cells(), ids=lambda x: x)
def test_every_method_under_every_protocol_family_stores_a_record(method, protocol, tmp_path, capsys):
    reference = method_card(method).get("kind") == "reference"  # the whole split: IPC does not apply (ipc = 0)
    argv = ["run", "--method", method, "--dataset", "digits", "--protocol", protocol, "--out", str(tmp_path),
            "--device", "cpu", "--set-metrics", "off"] + ([] if reference else ["--ipc", "1"])
    for setting in tiny_settings(method) + PROTOCOL_SETTINGS[protocol]:
        argv += ["--set", setting]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, f"ddbench {' '.join(argv)} exited {code}: {err.strip()[-400:]}"
    with ResultStore(tmp_path / "results.db") as store:
        records = store.query(method=method, protocol=protocol)
    assert len(records) == 1, f"{method} under {protocol}: {len(records)} records stored"
    record = records[0]
    assert record["dataset"] == "digits" and record["ipc"] == (0 if reference else 1)
    assert 0.0 <= record["acc_last"] <= 100.0
    budget = (record.get("extra") or {}).get("budget") or {}
    assert budget.get("set_bytes"), f"{method} under {protocol}: no set size in the record's budget"
    if protocol != "dc":  # a soft-label record counts the teacher that must ship with the set
        assert budget.get("teacher_bytes", 0) > 0 and budget.get("teacher_params", 0) > 0
