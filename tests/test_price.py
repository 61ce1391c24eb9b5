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


def test_the_eval_seeds_of_one_set_are_one_job_and_other_sets_are_not():
    """Eval seeds of one set, protocol and arch are one task (trained together, K = 4 entry); cells of other sets
    (distillation seeds 1-3) cannot share a job, whatever their protocol and arch: each is priced at K = 1."""
    together = [cell(0, eval_seed=e) for e in range(4)]
    apart = [cell(i) for i in (1, 2, 3)]
    unmeasured = cell(0, arch="convnet4")
    price = price_plan(plan_of(together + apart + [unmeasured]), TABLE)
    lone, four = 30000 / 100 + 10 * 360 / 360, 30000 / 400 + 10 * 360 / 1440  # seconds per cell at K = 1, K = 4
    assert price["evaluate"] == pytest.approx((4 * four + 3 * lone) / 3600)
    assert price["groups"] == [{"cells": [c.id for c in together], "models_at_once": 4}] + [
        {"cells": [c.id], "models_at_once": 1} for c in apart] + [{"cells": [unmeasured.id], "models_at_once": 1}]
    assert price["unknown_evals"] == [unmeasured.id]


def test_a_cpu_table_prices_the_cpu_rule_of_one_network_at_a_time():
    cpu = dict(TABLE, device="cpu (1 threads)")
    price = price_plan(plan_of([cell(0, eval_seed=e) for e in range(4)]), cpu)
    assert price["groups"][0]["models_at_once"] == 1
    assert price["evaluate"] == pytest.approx(4 * 310 / 3600)


def test_the_dry_run_price_groups_are_the_groups_the_sweep_runs(tmp_path):
    """Two sets × two protocols × two eval seeds: the sweep runs one task per (set, protocol), both seeds in it,
    exactly the groups the price was computed on."""
    import yaml

    from ddbench.sweep.execute import execute
    from ddbench.sweep.expand import load_grid

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(dict(name="t", methods=["random"], datasets=["digits"], ipcs=[1], seeds=[0, 1],
                                        protocols=["dc", "dc_dsa"], eval_seeds=[0, 1],
                                        overrides={"protocol": {"*": {"epochs": 1, "resolution": 8}}})))
    out = tmp_path / "runs"
    plan = load_grid(grid, out=out)
    planned = [g["cells"] for g in price_plan(plan, TABLE)["groups"]]
    assert len(planned) == 4 and all(len(g) == 2 for g in planned)
    result = execute(plan, out, local=True, device="cpu")
    assert not result.failed and result.added == 8
    assert sorted(result.groups) == sorted(planned)
    assert {r["extra"]["world_size"] for r in result.records} == {1}


def test_load_costs_names_a_missing_table_and_a_malformed_one(tmp_path):
    with pytest.raises(ConfigError, match="no cost table"):
        load_costs(str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"device": "x"}))
    with pytest.raises(ConfigError, match="has no 'date'"):
        load_costs(str(bad))
