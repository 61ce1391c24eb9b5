"""End to end: dataset → method → distilled set → protocol → records, with resume and bad input."""
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ddbench.cli import main
from ddbench.runner import RunRequest, run
from ddbench.records.store import ResultStore

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
    # the budget of the set as stored: its image files (2 per class), bookkeeping excluded; no teacher (hard labels)
    pngs = sorted(Path(rec["distilled_path"]).rglob("*.png"))
    assert len(pngs) == 20 and rec["extra"]["budget"] == {"set_bytes": sum(p.stat().st_size for p in pngs)}
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


def test_a_set_cached_at_another_resolution_is_distilled_again(tmp_path):
    """A run folder from before digits moved to 16 px holds 32-px sets under the same key: never reused."""
    from ddbench.distilled import DistilledSet
    from ddbench.data.images import resize_tensor

    first = run(_req(tmp_path, eval_seeds=[0]), log=lambda *_: None)
    folder = Path(first[0]["distilled_path"])
    old = DistilledSet.load(folder)
    DistilledSet(resize_tensor(old.images, 32), old.labels, old.classes, old.provenance).save(folder)
    logs = []
    again = run(_req(tmp_path, eval_seeds=[1]), log=logs.append)
    assert any("(its images are 32 px, digits is 16 px now); distilling again" in line for line in logs)
    assert again[0]["distilled_sha256"] == first[0]["distilled_sha256"]  # the 16-px set, made anew


def test_a_changed_set_value_is_evaluated_anew_and_the_old_record_stays(tmp_path, capsys):
    one = run(_req(tmp_path, eval_seeds=[0], protocol_overrides={"epochs": 1}), log=lambda *_: None)
    logs = []
    three = run(_req(tmp_path, eval_seeds=[0], protocol_overrides={"epochs": 3}), log=logs.append)
    assert not any("already recorded" in line for line in logs) and any("eval-seed 0" in line for line in logs)
    assert one[0]["config_hash"] != three[0]["config_hash"] and three[0]["protocol_config"]["epochs"] == 3
    with ResultStore(tmp_path / "runs" / "results.db") as store:
        rows = {r["config_hash"]: r for r in store.query()}
    assert len(rows) == 2 and rows[one[0]["config_hash"]]["acc_last"] == one[0]["acc_last"]  # the old one stays
    logs = []
    again = run(_req(tmp_path, eval_seeds=[0], protocol_overrides={"epochs": 3}), log=logs.append)
    assert any("already recorded" in line for line in logs) and again[0]["config_hash"] == three[0]["config_hash"]
    # --rerun: evaluated again, replacing the record of that config only
    argv = ["run", "--method", "random", "--dataset", "digits", "--ipc", "2", "--protocol", "dc", "--set",
            "protocol.epochs=3", "--out", str(tmp_path / "runs"), "--device", "cpu"]
    assert main(argv + ["--rerun"]) == 0
    logged = capsys.readouterr().err  # the run's log lines go to stderr, the summary table to stdout
    assert "already recorded" not in logged and "eval-seed 0: last" in logged
    with ResultStore(tmp_path / "runs" / "results.db") as store:
        after = {r["config_hash"]: r for r in store.query()}
    assert set(after) == set(rows) and after[one[0]["config_hash"]] == rows[one[0]["config_hash"]]
    assert after[three[0]["config_hash"]]["created_at"] >= rows[three[0]["config_hash"]]["created_at"]


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
    # values checked after the overrides are applied: type, range, known keys
    (["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--set", "protocol.epochs=abc"],
     "--set protocol.epochs='abc': expected a whole number ≥ 1, or null (protocol card dc has 300)"),
    (["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--set", "protocol.epochs=0"],
     "--set protocol.epochs=0: expected a whole number ≥ 1"),
    (["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--set", "protocol.epochs=-3"],
     "--set protocol.epochs=-3: expected a whole number ≥ 1"),
    (["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--set", "protocol.optimizer.lr=-1"],
     "--set protocol.optimizer.lr=-1: expected a number ≥ 0"),
    (["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--set", "protocol.channels_last=maybe"],
     "--set protocol.channels_last='maybe': expected true or false"),
    (["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--set", "protocol.precision=fp16"],
     "--set protocol.precision='fp16': expected one of bf16, fp32"),
    (["run", "--method", "herding", "--dataset", "digits", "--ipc", "1", "--set", "feature_recipe.epochs=2.5"],
     "--set feature_recipe.epochs=2.5: expected a whole number ≥ 1"),
    (["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--set", "nosuch.key=1"],
     "Protocol settings are set with --set protocol.KEY=VALUE; dc has: arch, augment, batch_size"),
    (["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--arch", "timm:resnet_nosuch"],
     "timm has no model 'resnet_nosuch'"),
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


def test_a_code_running_or_non_tensor_teacher_is_one_line_before_anything_runs(tmp_path, capsys):
    import builtins

    import torch

    class Payload:
        def __reduce__(self):
            return builtins.exec, (f"open({str(tmp_path / 'RAN')!r}, 'w')",)

    torch.save(Payload(), tmp_path / "evil.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    for name, says in (("evil.pt", "holds Python objects"), ("list.pt", "not a state dict")):
        code = main(["run", "--method", "random", "--dataset", "digits", "--ipc", "1", "--protocol", "rded",
                     "--teacher", str(tmp_path / name), "--out", str(tmp_path / "runs"), "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 2 and says in err and str(tmp_path / name) in err
        assert err.count("\n") == 1 and "weights_only" not in err
    assert not (tmp_path / "RAN").exists() and not (tmp_path / "runs" / "distilled").exists()


def test_a_corrupt_test_file_fails_before_distilling_and_leaves_no_set(tmp_path, capsys):
    import shutil

    src = Path("/usr/share/datasets/fashion-mnist")
    if not src.is_dir():
        pytest.skip("Fashion-MNIST is not installed (dataset-fashion-mnist)")
    data = tmp_path / "fashion"
    shutil.copytree(src, data)
    test_images = next(p for p in data.iterdir() if p.name.startswith("t10k-images"))
    test_images.write_bytes(b"\x00\x00\x08\x03garbage")  # wrong magic byte order and truncated
    code = main(["run", "--method", "random", "--dataset", "fashion", "--ipc", "1", "--data-root", str(data),
                 "--set", "protocol.epochs=1", "--out", str(tmp_path / "runs"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and test_images.name in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "distilled").exists()


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


def test_evaluate_names_a_set_from_its_manifest(tmp_path, capsys):
    """`ddbench evaluate` of a ddbench set, without --name, files it as <method>-v<card version>-seed<seed> (its
    manifest's provenance); a plain ImageFolder copy of the same images, without a manifest, as external:<folder>."""
    made = run(_req(tmp_path, seeds=[3], eval_seeds=[0]), log=lambda *_: None)[0]
    folder = Path(made["distilled_path"])
    common = ["--dataset", "digits", "--protocol", "dc", "--arch", "convnet3", "--set", "protocol.epochs=1",
              "--device", "cpu", "--out", str(tmp_path / "scored")]
    assert main(["evaluate", str(folder)] + common) == 0
    plain = tmp_path / "plain-copy"
    for png in folder.rglob("*.png"):
        (plain / png.parent.name).mkdir(parents=True, exist_ok=True)
        (plain / png.parent.name / png.name).write_bytes(png.read_bytes())
    assert main(["evaluate", str(plain)] + common) == 0
    with ResultStore(tmp_path / "scored" / "results.db") as store:
        names = {r["method"] for r in store.query()}
    assert names == {f"random-v{made['method_version']}-seed3", "external:plain-copy"}
