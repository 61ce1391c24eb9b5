"""Sweeps: grid expansion, dependency order, resume after a kill, failures, Ray, cost accounting, shipped grids."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ddbench.cli import main
from ddbench.errors import ConfigError
from ddbench.records.store import ResultStore
from ddbench.sweep.expand import load_grid
from ddbench.sweep.grid import method_entries, read_grid, sub_grids
from ddbench.sweep.cells import Outcome, Task, run_task
from ddbench.sweep.execute import Scheduler, Status, execute, plan_status
from ddbench.sweep.view import cost_rows

REPO = Path(__file__).resolve().parent.parent
FAST = {"epochs": 1, "resolution": 8}  # ConvNet-3 on 8×8 digits: about a second per evaluation


def write_grid(tmp_path, **grid) -> Path:
    base = dict(name="t", methods=["random"], datasets=["digits"], ipcs=[1], seeds=[0], protocols=["dc"],
                eval_seeds=[0], overrides={"protocol": {"*": dict(FAST)}})
    base.update(grid)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def sweep(*argv) -> int:
    return main(["sweep", *map(str, argv), "--device", "cpu"])


# ---------------------------------------------------------------------------------------------------------
# Expansion and scheduling (no training)
# ---------------------------------------------------------------------------------------------------------


def test_two_protocols_share_one_distillation_cell(tmp_path):
    grid = write_grid(tmp_path, protocols=["dc", "dc_dsa"], eval_seeds=[0, 1],
                      grids=[{"ipcs": [1]}, {"ipcs": [1, 2], "protocols": ["dc"]}])  # sub-grids overlap at ipc 1
    plan = load_grid(grid, out=tmp_path)
    assert sorted(plan.distills) == ["random/digits/ipc1/seed0", "random/digits/ipc2/seed0"]
    assert len(plan.evals_of("random/digits/ipc1/seed0")) == 4  # 2 protocols × 2 eval seeds, one set
    assert {e.protocol_overrides["epochs"] for e in plan.evals.values()} == {1}
    assert {e.arch for e in plan.evals.values()} == {"convnet3"}  # the cards' default network


def test_dependencies_prepare_groups_and_skips_on_failure(tmp_path):
    plan = load_grid(write_grid(tmp_path, ipcs=[1, 2], eval_seeds=[0, 1]), out=tmp_path)
    sched = Scheduler(plan, Status(done={"random/digits/ipc2/seed0/dc/convnet3/e1"}, on_disk=set()), tmp_path)
    leader = sched.next_task()
    assert leader.kind == "distill" and leader.id == "random/digits/ipc1/seed0"
    sched.start(leader)
    assert sched.next_task() is None  # ipc2 waits: it shares method.prepare with the running leader
    sched.finish(Outcome(leader.id, "distill", True, {"path": "x"}, seconds=1.0))
    first = sched.next_task()  # the leader's evaluations come before the next distillation, as one task
    assert first.kind == "evaluate" and first.distilled == {"path": "x"}
    assert [c.eval_seed for c in first.cell.cells] == [0, 1] and first.id == "random/digits/ipc1/seed0/dc/convnet3/e0+1"
    second = sched.next_task()
    assert second.id == "random/digits/ipc2/seed0"
    sched.start(second)
    skipped = sched.finish(Outcome(second.id, "distill", False, error="boom"))
    assert [e.id for e in skipped] == ["random/digits/ipc2/seed0/dc/convnet3/e0"]  # e1 was already in the store
    assert sched.counts("evaluate")["skipped"] == 1 and sched.next_task() is None
    # a set already on disk is loaded, not prepared: it starts at once, and finishing it releases nobody
    sched = Scheduler(plan, Status(done=set(), on_disk={"random/digits/ipc2/seed0"}), tmp_path)
    leader, saved = sched.next_task(), sched.next_task()
    assert (leader.id, saved.id) == ("random/digits/ipc1/seed0", "random/digits/ipc2/seed0")


BAD_GRIDS = [
    (dict(methods=["randm"]), "Did you mean random"),
    (dict(methods=["random", "not-a-method"]), "not registered in this installation: not-a-method"),
    (dict(protocols=["dcc"]), "Did you mean dc"),
    (dict(archs=["convnet33"]), "Did you mean convnet3"),
    (dict(datasets=["digit"]), "Did you mean digits"),
    (dict(overrides={"method": {"randon": {}}}), "Did you mean random"),
    (dict(overrides={"protocol": {"dc": {"epoch": 3}}}), "Did you mean epochs"),
    (dict(resources={"evaluate": {"dc": {"gpus": 1.5}}}), "whole number"),
    (dict(methods=[{"name": "random", "label": "herding"}]), "not a method name"),
    (dict(grids=[{"ipcs": [1]}, {"ipcs": [1], "overrides": {"protocol": {"dc": {"epochs": 2}}}}]), "appears twice"),
    (dict(seed=[0]), "Did you mean seeds"),
]


@pytest.mark.parametrize("grid,message", BAD_GRIDS, ids=[m for _, m in BAD_GRIDS])
def test_bad_grids_fail_before_any_work_with_one_clear_line(grid, message, tmp_path, capsys):
    assert sweep(write_grid(tmp_path, **grid), "--out", tmp_path / "runs", "--local") == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("ddbench: error:") and "Traceback" not in err
    assert not (tmp_path / "runs" / "results.db").exists()


def test_cost_counts_a_shared_set_once_and_multiplies_ddp_evaluations():
    base = dict(method="m", dataset="d", ipc=1, seed=0, distilled_sha256="s", device="NVIDIA H100")
    records = [dict(base, eval_seed=e, timings={"prepare": 3600, "distill": 7200, "evaluate": 1800},
                    extra={"world_size": w}) for e, w in ((0, 1), (1, 4))]
    records.append(dict(base, method="random", eval_seed=0, device="cpu (2 threads)", timings={"evaluate": 360}))
    rows = {r["method"]: r for r in cost_rows(records)}
    assert rows["m"]["unit"] == "GPU" and rows["m"]["prepare"] == 1.0 and rows["m"]["distill"] == 2.0
    assert rows["m"]["evaluate"] == pytest.approx(0.5 + 2.0) and rows["m"]["cells"] == 2
    assert rows["random"]["unit"] == "CPU" and rows["random"]["evaluate"] == pytest.approx(0.1)


def test_shipped_grids_expand(tmp_path):
    from ddbench.method import list_methods

    for name, datasets in (("embedded", {"digits", "fashion"}), ("imagenet", {"woof", "nette", "idc", "imagenet100",
                                                                                "imagenet1k"})):
        path = REPO / "leaderboards" / "grids" / f"{name}.yaml"
        grid = read_grid(path)
        names = {e.name for sub in sub_grids(grid) for e in method_entries(sub["methods"], name)}
        missing = names - set(list_methods())
        if missing:  # methods still being added: the error names exactly them
            with pytest.raises(ConfigError, match=", ".join(sorted(missing))):
                load_grid(path, out=tmp_path)
        plan = load_grid(path, out=tmp_path, only={"method": names - missing})
        assert {d.dataset for d in plan.distills.values()} == datasets
        assert {d.ipc for d in plan.distills.values()} == ({1, 10, 50} if name == "embedded" else {10, 20, 50})
        if name == "embedded":  # evaluation seeds by IPC (3 / 2 / 1); fashion IPC 10 also under rded (1 seed),
            seeds = {1: 3, 10: 2, 50: 1}  # except for the coreset selections herding / kcenter
            rded = {"random", "dit", "minimax", "mgd3", "acs", "acs-minimax", "sre2l", "cudd"}
            igd = {"dit", "minimax", "mgd3", "igd", "igd-minimax"}  # three evaluation models at IPC 1 and 10

            def expected(c):
                dc_seeds = 3 if c.label in igd and c.ipc in (1, 10) else seeds[c.ipc]
                return dc_seeds + (c.dataset == "fashion" and c.ipc == 10 and c.label in rded)
            assert all(len(plan.evals_of(d)) == expected(c) for d, c in plan.distills.items())
            assert {e.arch for e in plan.evals.values()} == {"convnet3", "convnet3_bn"}
        else:  # three networks (convnet6, resnetap10, resnet18) for idc, one for imagenet1k's rded
            assert all(len(plan.evals_of(d)) == (1 if "imagenet1k" in d else 3) for d in plan.distills)
    assert {e.arch for e in plan.evals.values() if e.dataset == "imagenet1k"} == {"resnet18_tv"}


# ---------------------------------------------------------------------------------------------------------
# Running cells
# ---------------------------------------------------------------------------------------------------------


def test_failed_cell_is_reported_and_the_others_run(tmp_path, capsys):
    out = tmp_path / "runs"
    grid = write_grid(tmp_path, ipcs=[100000, 1])  # the first distillation fails: IPC larger than any class
    assert sweep(grid, "--out", out, "--local") == 2
    captured = capsys.readouterr()
    assert "1 cell(s) failed" in captured.err and "smallest class" in captured.out
    with ResultStore(out / "results.db") as store:
        (record,) = store.query()
    assert (record["ipc"], record["method"], record["protocol"]) == (1, "random", "dc")
    plan = load_grid(grid, out=out)
    # the sweep's folder rule is the runner's: the record points at the set the runner saved
    assert record["distilled_path"] == str(plan.distills["random/digits/ipc1/seed0"].folder(out.resolve()))
    assert "smallest class" in (out / "logs" / "random_digits_ipc100000_seed0.distill.log").read_text()


KILL_AFTER_FIRST_RECORD = """
import os, signal, sys
from ddbench.cli import main
from ddbench.records.store import ResultStore
real_add = ResultStore.add
def add_then_die(self, record, **kw):
    real_add(self, record, **kw)
    os.kill(os.getpid(), signal.SIGKILL)  # killed midway: one record written, the rest of the sweep not
ResultStore.add = add_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_killed_sweep_resumes_and_records_every_cell_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the dry-run tables unwrapped
    out = tmp_path / "runs"
    grid = write_grid(tmp_path, seeds=[0, 1], eval_seeds=[0, 1])  # 2 sets, 4 evaluations
    argv = ["sweep", str(grid), "--out", str(out), "--local", "--device", "cpu"]
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_RECORD, *argv], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    with ResultStore(out / "results.db") as store:
        (first,) = store.query()
    assert sweep(grid, "--out", out, "--dry-run") == 0
    listing = " ".join(capsys.readouterr().out.split())
    assert "1 already in the store, 3 to run" in listing and "on disk (reused)" in listing
    result = execute(load_grid(grid, out=out), out, local=True, device="cpu")
    assert result.added == 3 and not result.failed
    with ResultStore(out / "results.db") as store:
        records = store.query()
    keys = [(r["seed"], r["eval_seed"]) for r in records]
    assert sorted(keys) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # every cell exactly once
    again = next(r for r in records if (r["seed"], r["eval_seed"]) == (first["seed"], first["eval_seed"]))
    assert again["created_at"] == first["created_at"]  # the killed run's record was kept, not redone
    assert len({r["distilled_sha256"] for r in records if r["seed"] == 0}) == 1  # the saved set was reused
    assert execute(load_grid(grid, out=out), out, local=True, device="cpu").added == 0
    # another protocol config: a cell of its own, to run; the stored numbers are kept and reported beside it
    changed = load_grid(grid, out=out, sets={"protocol": {"dc": {"epochs": 2}}})
    with ResultStore(out / "results.db") as store:
        status = plan_status(changed, store, out.resolve())
        assert not plan_status(load_grid(grid, out=out), store, out.resolve()).stale
        assert not plan_status(load_grid(grid, out=out), store, out.resolve(), rerun=True).done
    assert status.stale == set(changed.evals) and not status.done
    assert execute(changed, out, local=True, device="cpu").added == 4
    with ResultStore(out / "results.db") as store:
        assert len(store) == 8 and len({r["config_hash"] for r in store.query()}) == 2


def test_a_multi_gpu_cell_runs_on_spawned_ranks_with_the_numbers_of_one_process(tmp_path):
    """gpus: N cells are evaluated by N ranks (ddbench.engine.ddp.spawn; gloo here); rank 0's record comes back."""
    out = tmp_path / "runs"
    plan = load_grid(write_grid(tmp_path), out=out)
    (dcell,), (ecell,) = plan.distills.values(), plan.evals.values()
    dist = run_task(Task("distill", dcell, str(out), plan.options, "cpu"))
    one = run_task(Task("evaluate", ecell, str(out), plan.options, "cpu", dist.value))
    two = run_task(Task("evaluate", ecell, str(out), plan.options, "cpu", dist.value, world_size=2))
    assert dist.ok and one.ok and two.ok, two.error
    (one,), (two,) = one.value["records"], two.value["records"]
    assert (one["extra"]["world_size"], two["extra"]["world_size"]) == (1, 2)
    # same global batches and seeds: at most an argmax flip or two on 445 test images from summation order
    assert two["acc_last"] == pytest.approx(one["acc_last"], abs=0.5)
    assert two["distilled_sha256"] == one["distilled_sha256"]


def test_ray_runs_a_tiny_grid_on_a_local_instance(tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'ddbench[ray]'); the sweep's Ray backend "
                                      "is untested here")
    out = tmp_path / "runs"
    grid = write_grid(tmp_path, ipcs=[100000, 1], overrides={})
    code = sweep(grid, "--out", out, "--max-parallel", "2", "--set", "protocol.*.epochs=1",
                 "--set", "protocol.*.resolution=8")
    captured = capsys.readouterr()
    assert code == 2 and "1 cell(s) failed" in captured.err and "smallest class" in captured.out
    with ResultStore(out / "results.db") as store:
        (record,) = store.query()
    assert (record["ipc"], record["protocol_config"]["epochs"], record["device"][:3]) == (1, 1, "cpu")
    assert "CPU-h" in captured.out  # the cost table


def test_a_task_that_fails_part_way_keeps_the_records_of_its_finished_jobs(tmp_path, monkeypatch):
    """Eval seeds 0 and 1 are one task; on CPU it runs them as two jobs of one network. The second job fails:
    the first job's record is stored, only seed 1 is reported failed, and the next run evaluates seed 1 only."""
    from ddbench.protocols.hard import HardLabelProtocol

    out = tmp_path / "runs"
    grid = write_grid(tmp_path, eval_seeds=[0, 1])
    real = HardLabelProtocol.evaluate_many

    def fail_on_seed_1(self, dset, spec, test, arch, seeds, device, progress=None):
        if 1 in seeds:
            raise RuntimeError("seed 1 breaks")
        return real(self, dset, spec, test, arch, seeds, device, progress)

    monkeypatch.setattr(HardLabelProtocol, "evaluate_many", fail_on_seed_1)
    result = execute(load_grid(grid, out=out), out, local=True, device="cpu")
    assert result.added == 1 and [o.error for o in result.failed] == ["RuntimeError: seed 1 breaks"]
    assert result.groups == [["random/digits/ipc1/seed0/dc/convnet3/e0", "random/digits/ipc1/seed0/dc/convnet3/e1"]]
    with ResultStore(out / "results.db") as store:
        assert [r["eval_seed"] for r in store.query()] == [0]
    monkeypatch.setattr(HardLabelProtocol, "evaluate_many", real)
    again = execute(load_grid(grid, out=out), out, local=True, device="cpu")
    assert again.added == 1 and again.groups == [["random/digits/ipc1/seed0/dc/convnet3/e1"]]



def test_a_reference_methods_own_protocol_settings_apply_in_a_sweep_as_in_a_run(tmp_path):
    """methods/whole.yaml trains 30 `dc` epochs over the whole split: a grid that says nothing about epochs plans
    them, as `ddbench run --method whole` loads them; the grid's own protocol settings still win."""
    from ddbench.runner import reference_settings

    assert reference_settings("whole", "dc") == {"epochs": 30}
    plan = load_grid(write_grid(tmp_path, methods=["whole"], overrides={}), out=tmp_path)
    assert {c.protocol_overrides["epochs"] for c in plan.evals.values()} == {30}
    plan = load_grid(write_grid(tmp_path, methods=["whole"], overrides={"protocol": {"dc": {"epochs": 2}}}),
                     out=tmp_path)
    assert {c.protocol_overrides["epochs"] for c in plan.evals.values()} == {2}
