"""`ddbench sweep --dry-run` price: device-hours of a grid's evaluations from a measured throughput table."""
import json

import pytest

from ddbench.errors import ConfigError
from ddbench.sweep.grid import EvalCell, Plan
from ddbench.sweep.price import load_costs, price_plan

TABLE = {"device": "test device", "date": "2026-01-01", "command": "python benchmarks/eval_throughput.py",
         "entries": [{"protocol": "dc", "arch": "convnet3", "ipc": 10, "models_at_once": 1, "samples_s": 100.0,
                      "test_samples_s": 360.0},
                     {"protocol": "dc", "arch": "convnet3", "ipc": 10, "models_at_once": 4, "samples_s": 400.0,
                      "test_samples_s": 1440.0}]}


def cell(i: int, arch: str = "convnet3", eval_seed: int = 0) -> EvalCell:
    return EvalCell(f"random/digits/ipc10/seed{i}/dc/{arch}/e{eval_seed}", f"random/digits/ipc10/seed{i}", "random",
                    "digits", 10, i, "dc", arch, eval_seed, {}, {"gpus": 1})


def plan_of(cells) -> Plan:
    return Plan("t", evals={c.id: c for c in cells})


def test_a_lone_cell_costs_its_epochs_and_test_passes():
    # dc on digits at IPC 10: 300 epochs × 100 images at 100/s = 300 s; 10 test passes × 360 images at 360/s = 10 s
    price = price_plan(plan_of([cell(0)]), TABLE)
    assert price["evaluate"] == pytest.approx(310 / 3600)
    assert price["unknown_evals"] == [] and price["distill"] is None


def test_cells_of_one_group_use_the_multi_model_throughput_and_unmeasured_ones_are_unknown():
    cells = [cell(i) for i in range(4)] + [cell(0, arch="convnet4")]
    price = price_plan(plan_of(cells), TABLE)
    assert price["evaluate"] == pytest.approx(4 * (30000 / 400 + 10 * 360 / 1440) / 3600)  # K = 4 entry
    assert price["unknown_evals"] == [cells[-1].id]


def test_load_costs_names_a_missing_table_and_a_malformed_one(tmp_path):
    with pytest.raises(ConfigError, match="no cost table"):
        load_costs(str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"device": "x"}))
    with pytest.raises(ConfigError, match="has no 'date'"):
        load_costs(str(bad))
