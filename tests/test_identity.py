"""What identifies a set and a record: weights by content, resolved precision, numerics code, overrides kept.

A cache never answers a different question: another weights file of the same name and size, another dataset,
another precision or another version of the numerics code makes a new set and a new cell; an override run
keeps its "modified" label after its card is bumped.
"""
import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

import ddbench.identity as identity
from ddbench.records.cellhash import cell_config_hash, protocol_identity
from ddbench.config import config_hash
from ddbench.data import get_dataset
from ddbench.data.spec import read_class_list
from ddbench.distilled import MANIFEST
from ddbench.identity import content_sha256, numerics_fingerprint, numerics_of, resolved_precision, set_inputs
from ddbench.leaderboard.tables import variant_summary
from ddbench.method import load_method, list_methods, method_card, method_registry
from ddbench.protocol import list_protocols, load_protocol
from ddbench.runner import RunRequest, run
from ddbench.records.store import ResultStore
from ddbench.sweep.expand import load_grid
from fakes import make_imagenet_tree

QUIET = dict(log=lambda *_: None)


def _req(tmp_path, **kw):
    base = dict(method="random", dataset="digits", ipc=1, protocol="dc", archs=["convnet3"], seeds=[0],
                eval_seeds=[0], protocol_overrides={"epochs": 1}, out=tmp_path / "runs", device="cpu",
                options={"cache_dir": str(tmp_path / "cache")})
    base.update(kw)
    return RunRequest(**base)


# ---------------------------------------------------------------------------------------------- content hashes

def test_a_file_is_hashed_once_and_a_changed_content_of_the_same_size_is_a_new_hash(tmp_path, monkeypatch):
    reads = []
    real = identity._read_sha256
    monkeypatch.setattr(identity, "_read_sha256", lambda p: reads.append(p) or real(p))
    f = tmp_path / "teacher.pt"
    f.write_bytes(b"A" * 1000)
    first = content_sha256(f, tmp_path / "cache")
    assert content_sha256(f, tmp_path / "cache") == first and len(reads) == 1  # unchanged: not read again
    stamp = json.loads((tmp_path / "cache" / identity.HASHES_FILE).read_text())[str(f.resolve())]["stamp"]
    assert stamp == [1000, f.stat().st_mtime_ns]  # remembered by size and modification time
    mtime = f.stat().st_mtime_ns
    f.write_bytes(b"B" * 1000)  # same name, same size, other bytes (a retrained teacher)
    os.utime(f, ns=(mtime + 10**9, mtime + 10**9))
    second = content_sha256(f, tmp_path / "cache")
    assert second != first and len(reads) == 2


def test_a_folder_is_hashed_by_the_content_of_its_files_in_path_order(tmp_path):
    vae = tmp_path / "vae"
    (vae / "sub").mkdir(parents=True)
    (vae / "config.json").write_text("{}")
    (vae / "sub" / "weights.bin").write_bytes(b"\x00" * 64)
    before = content_sha256(vae, tmp_path / "cache")
    (vae / "sub" / "weights.bin").write_bytes(b"\x01" * 64)
    os.utime(vae / "sub" / "weights.bin", ns=(1, 1))
    assert content_sha256(vae, tmp_path / "cache") != before


# ---------------------------------------------------------------------------------------------- numerics

def test_every_method_and_protocol_declares_existing_numerics_modules():
    forbidden = ("ddbench.cli", "ddbench.leaderboard", "ddbench.records.store", "ddbench.sweep", "ddbench.regress",
                 "ddbench.records.report", "ddbench.plots", "ddbench.progress")
    declared = {f"method {n}": method_registry().get(n) for n in list_methods()}
    declared.update({f"protocol {n}": load_protocol(n) for n in list_protocols()})
    for what, obj in declared.items():
        assert obj.numerics, f"{what} declares no numerics modules"
        for module in numerics_of(obj):
            assert identity.module_file(module).is_file(), f"{what}: {module}"
            assert not module.startswith(forbidden), f"{what} lists {module}, which computes no number"


def test_the_fingerprint_follows_the_source_and_ignores_line_endings(tmp_path, monkeypatch):
    (tmp_path / "numerics_probe.py").write_text("X = 1\nY = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = numerics_fingerprint(("numerics_probe",))
    numerics_fingerprint.cache_clear()
    (tmp_path / "numerics_probe.py").write_bytes(b"X = 1\r\nY = 2\r\n")
    assert numerics_fingerprint(("numerics_probe",)) == first
    numerics_fingerprint.cache_clear()
    (tmp_path / "numerics_probe.py").write_text("X = 1\nY = 3\n")
    assert numerics_fingerprint(("numerics_probe",)) != first
    numerics_fingerprint.cache_clear()
    sys.modules.pop("numerics_probe", None)


# ---------------------------------------------------------------------------------------------- precision

def test_the_resolved_precision_not_the_card_value_is_hashed():
    dc = load_protocol("dc")  # precision: bf16 -> fp32 on the CPU, bf16 on CUDA
    assert protocol_identity(dc, "cpu")["precision"] == "fp32"
    assert protocol_identity(dc, torch.device("cuda"))["precision"] == "bf16"
    spec = get_dataset("digits")
    info = {"method_version": 1, "method_config": {}}
    assert cell_config_hash(info, dc, spec, {}, "cpu") != cell_config_hash(info, dc, spec, {}, torch.device("cuda"))
    dit = load_method("dit", "digits", method_card("dit")["tiny"])  # autocast: auto
    assert resolved_precision(dit.cfg, "cpu") == {"autocast": "fp32"}
    assert resolved_precision(dit.cfg, torch.device("cuda")) == {"autocast": "bf16"}
    cpu, gpu = (set_inputs(dit, spec, d, {}) for d in ("cpu", torch.device("cuda")))
    assert dit.distill_key(2, 0, cpu) != dit.distill_key(2, 0, gpu)  # a CPU-made set is not reused on a GPU
    mgd3 = load_method("mgd3", "digits", method_card("mgd3")["tiny"])  # sampling.autocast null: the base's auto
    assert resolved_precision(mgd3.precision_config("digits"), torch.device("cuda"))["base.autocast"] == "bf16"


# ---------------------------------------------------------------------------------------------- the runner

def test_a_set_is_not_reused_across_dataset_identity_and_a_wrong_manifest_is_distilled_anew(tmp_path, monkeypatch):
    logs = []
    first = run(_req(tmp_path), log=logs.append)
    folder = first[0]["distilled_path"]
    manifest = json.loads((Path(folder) / MANIFEST).read_text())
    assert manifest["provenance"]["identity"]["inputs"]["dataset"]["name"] == "digits"
    assert first[0]["extra"]["identity"]["set"]["precision"] == {}
    assert first[0]["extra"]["identity"]["protocol"]["precision"] == "fp32"  # bf16 card on the CPU
    # another dataset identity under the same name (other normalisation): a new set and a new cell
    import ddbench.runner as runner

    real = runner.get_dataset
    monkeypatch.setattr(runner, "get_dataset", lambda *a, **k: dataclasses.replace(real(*a, **k), mean=(0.4,)))
    logs.clear()
    other = run(_req(tmp_path), log=logs.append)
    assert not any("reusing" in line for line in logs) and any("distilled" in line for line in logs)
    assert other[0]["config_hash"] != first[0]["config_hash"]
    assert other[0]["distilled_path"] != first[0]["distilled_path"]
    monkeypatch.setattr(runner, "get_dataset", real)
    # a set whose manifest holds another identity (an older set in the same folder) is never reused
    path = Path(folder) / MANIFEST
    data = json.loads(path.read_text())
    data["provenance"]["identity"]["inputs"]["precision"] = {"autocast": "bf16"}
    path.write_text(json.dumps(data))
    logs.clear()
    run(_req(tmp_path, eval_seeds=[1]), log=logs.append)
    assert any("differs in inputs.precision" in line and "distilling again" in line for line in logs)


def test_a_record_of_other_numerics_code_does_not_answer(tmp_path, monkeypatch):
    first = run(_req(tmp_path), **QUIET)
    # a sweep plans the same set folder and the same config hash for this cell (docs/sweeps.md)
    grid = dict(name="t", methods=["random"], datasets=["digits"], ipcs=[1], seeds=[0], protocols=["dc"],
                archs=["convnet3"], eval_seeds=[0], overrides={"protocol": {"*": {"epochs": 1}}})
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    plan = load_grid(tmp_path / "grid.yaml", out=tmp_path / "runs", flags={"cache_dir": str(tmp_path / "cache")},
                     device="cpu")
    (cell,) = plan.evals.values()
    assert cell.config_hash == first[0]["config_hash"]
    assert str(plan.distills[cell.distill].folder(tmp_path / "runs")) == first[0]["distilled_path"]
    logs = []
    assert run(_req(tmp_path), log=logs.append)[0]["config_hash"] == first[0]["config_hash"]
    assert any("already recorded" in line for line in logs)
    # the same request after a change of the numerics code (simulated: another fingerprint)
    monkeypatch.setattr(identity, "numerics_fingerprint", lambda modules: "0" * 16)
    logs.clear()
    again = run(_req(tmp_path), log=logs.append)
    assert not any("already recorded" in line or "reusing" in line for line in logs)
    assert again[0]["config_hash"] != first[0]["config_hash"]
    assert again[0]["extra"]["identity"]["protocol"]["numerics"] == "0" * 16
    with ResultStore(tmp_path / "runs" / "results.db") as store:
        assert len(store.query()) == 2  # the old record stays, for the archive


@pytest.fixture(scope="module")
def nette(tmp_path_factory):
    root = make_imagenet_tree(tmp_path_factory.mktemp("imagenet"), read_class_list("nette"), n_train=1, n_val=1)
    return str(root)


def _save_dit(path, seed: int) -> None:
    from ddbench.diffusion.dit import DiT

    torch.manual_seed(seed)
    dit = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=1, num_heads=1, num_classes=1000)
    for p in dit.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    torch.save(dit.state_dict(), path)


def test_another_dit_file_of_the_same_name_and_size_distils_and_evaluates_anew(allow_nonstandard_subset, tmp_path, nette):
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4,
                  layers_per_block=1, sample_size=16).save_pretrained(tmp_path / "vae")
    dit = tmp_path / "DiT-XL-2-256x256.pt"
    _save_dit(dit, 0)
    options = {"cache_dir": str(tmp_path / "cache"), "imagenet_root": nette, "dit": str(dit),
               "vae": str(tmp_path / "vae")}
    req = dict(method="dit", dataset="nette", protocol="idc", archs=["convnet3"], method_overrides={"steps": 2},
               protocol_overrides={"epochs": 1, "batch_size": 10}, options=options)
    a = run(_req(tmp_path, **req), **QUIET)
    size = dit.stat().st_size
    _save_dit(dit, 1)  # retrained: same name, same size, other weights
    assert dit.stat().st_size == size
    logs = []
    b = run(_req(tmp_path, **req), log=logs.append)
    assert not any("already recorded" in line or "reusing" in line for line in logs)
    assert b[0]["config_hash"] != a[0]["config_hash"] and b[0]["distilled_sha256"] != a[0]["distilled_sha256"]
    weights = b[0]["extra"]["identity"]["set"]["weights"]
    assert weights["dit"] == {"name": dit.name, "sha256": content_sha256(dit, tmp_path / "cache")}


# ---------------------------------------------------------------------------------------------- leaderboard

def test_an_override_run_keeps_its_modified_label_after_a_card_bump(tmp_path):
    smoke = run(_req(tmp_path), **QUIET)[0]  # dc with epochs=1
    card = load_protocol("dc").card  # a record of the card's own settings, as a run without --set makes it
    own = {**smoke, "eval_seed": 1, "protocol_config": card,
           "extra": {**smoke["extra"], "overrides": {"method": {}, "protocol": {}}}}
    assert smoke["extra"]["overrides"] == {"method": {}, "protocol": {"epochs": 1}}
    assert smoke["extra"]["card_config_hash"]["protocol"] == config_hash(load_protocol("dc").card)

    def labels(records):
        df = variant_summary(records)
        return sorted(df["pvariant"])

    assert labels([smoke, own]) == ["", "epochs=1"]  # the current card: the diff against it
    older = [{**r, "protocol_version": "0"} for r in (smoke, own)]  # the card has been bumped since
    assert labels(older) == ["", "epochs=1"]
    legacy = [{**r, "protocol_version": "0", "extra": {}} for r in (smoke, own)]  # records without the fields
    assert labels(legacy) == [""]  # the earlier behaviour: no reference, so the smoke run joins the card's own
