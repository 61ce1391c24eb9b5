"""Every input is checked before work: card values against their declared rules (ddbench.schema), `--set`,
`--device` and seed lists; each bad one is one line and exit 2, before anything is distilled or stored."""
import pytest
import yaml

from ddbench import runner
from ddbench.cli import main
from ddbench.errors import ConfigError
from ddbench.method import list_methods, method_card, method_registry, resolve_method_config
from ddbench.protocol import META_KEYS, list_protocols, load_protocol, protocol_card, protocol_class
from ddbench.schema import check_schema, errors


# ---------------------------------------------------------------------------------------------------------
# Every card key has a rule, and every card value passes it (a new key without a rule fails here)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_methods())
def test_every_method_config_key_has_a_rule_that_its_card_values_pass(name):
    card, cls = method_card(name), method_registry().get(name)
    check_schema(cls.schema, name)
    datasets = ["digits", "woof", "imagefolder:/data", *(card.get("datasets") or {})]
    for dataset in datasets:
        _, cfg = resolve_method_config(name, dataset)  # validates: raises on a bad value or a key without a rule
        assert errors(cfg, cls.schema) == [], (name, dataset)
    if card.get("tiny"):
        _, cfg = resolve_method_config(name, "digits", card["tiny"])
        assert errors(cfg, cls.schema) == []


@pytest.mark.parametrize("name", list_protocols())
def test_every_protocol_card_key_has_a_rule_that_its_value_passes(name):
    cls = protocol_class(protocol_card(name)["family"])
    check_schema(cls.schema, name)
    card = load_protocol(name).card
    assert errors({k: v for k, v in card.items() if k not in META_KEYS}, cls.schema) == []


def test_a_key_without_a_rule_is_refused(monkeypatch):
    cls = method_registry().get("dit")
    monkeypatch.setattr(cls, "schema", {k: v for k, v in cls.schema.items() if k != "steps"})
    with pytest.raises(ConfigError, match=r"method dit: steps=50 in the card has no declared rule"):
        resolve_method_config("dit", "digits")


def test_null_passes_where_the_rule_allows_it():
    # minimax's own way to say "use steps": the woof card has epochs 8, the embedded cards null
    assert resolve_method_config("minimax", "woof", {"finetune": {"epochs": None}})[1]["finetune"]["epochs"] is None
    acs = resolve_method_config("acs-minimax", "woof", {"finetune": {"epochs": None}})[1]
    assert acs["finetune"] == {"epochs": None}
    with pytest.raises(ConfigError, match=r"--set finetune.steps=None: expected a whole number ≥ 1 \(method"):
        resolve_method_config("minimax", "woof", {"finetune": {"steps": None}})
    with pytest.raises(ConfigError, match=r"--set finetune.epochz=...: there is no such key; known keys: batch_size"):
        resolve_method_config("acs-minimax", "woof", {"finetune": {"epochz": None}})  # the card's finetune is null


# ---------------------------------------------------------------------------------------------------------
# Through the command line: one line, exit 2, nothing distilled or stored
# ---------------------------------------------------------------------------------------------------------

RUN = ["run", "--dataset", "digits", "--ipc", "1"]
BAD_RUNS = [
    (["--method", "igd", "--set", "k=fast"], "--set k='fast': expected a number ≥ 0 (method igd has 5.0)"),
    (["--method", "acs", "--set", "schedule=5"], "--set schedule=5: expected a list [...] whose every entry is"),
    (["--method", "igd", "--set", "checkpoints=3"], "--set checkpoints=3: expected a list [...]"),
    (["--method", "herding", "--set", "feature_recipe=3"], "--set feature_recipe=3: expected a mapping of"),
    (["--method", "igd", "--set", "grad_chunk=0"], "--set grad_chunk=0: expected a whole number ≥ 1"),
    (["--method", "igd", "--set", "low=46"], "igd low=46, high=45: need 0 ≤ low ≤ high"),  # Method.check_config
    (["--method", "acs", "--set", "schedule=[]"], "ACS schedule [] must be a non-empty list"),
    (["--method", "igd", "--set", "inject=both"], "--set inject='both': expected one of mean, eps"),
    (["--method", "igd", "--set", "surrogate.arch=convnet99"], "--set surrogate.arch='convnet99': expected a network"),
    (["--method", "random", "--protocol", "rded", "--set", "protocol.eval_every=0"],
     "--set protocol.eval_every=0: expected a whole number ≥ 1 (protocol card rded has 10)"),
    (["--method", "random", "--protocol", "rded", "--set", "protocol.temperature=0"],
     "--set protocol.temperature=0: expected a number > 0 (protocol card rded has 20.0)"),
    (["--method", "random", "--set", "protocol.optimizer.weight_decay=-0.1"],
     "--set protocol.optimizer.weight_decay=-0.1: expected a number ≥ 0"),
    (["--method", "random", "--protocol", "idc", "--set", "protocol.cutmix_p=7"],
     "--set protocol.cutmix_p=7: expected a number in 0..1"),
    (["--method", "random", "--set", "protocol.schedule.name=cosinus"],
     "--set protocol.schedule.name='cosinus': expected one of constant, multistep"),
    (["--method", "random", "--set", "protocol.optimizer.name=adam"],
     "--set protocol.optimizer.name='adam': expected one of sgd, adamw"),
    (["--method", "random", "--set", "protocol.dsa_strategy=color_blur"],
     "--set protocol.dsa_strategy='color_blur': expected one or more of color, crop"),
    (["--method", "random", "--set", "protocol.rrc_scale=0.5"], "--set protocol.rrc_scale=0.5: expected a list of 2"),
    (["--method", "random", "--device", "foo"], "--device 'foo' is not a device ddbench can use"),
    (["--method", "random", "--set", "protocol=5"], "--set protocol=5: protocol settings are set one key at a time"),
    (["--method", "random", "--set", "a=1", "--set", "a.b=2"], "--set a.b=2: a was already set to 1"),
]


@pytest.fixture
def nothing_runs(monkeypatch):
    """Distilling (prepare + distill) fails the test if it is ever reached."""
    def boom(*_, **__):
        raise AssertionError("reached distillation")

    monkeypatch.setattr(runner, "distilled_set", boom)


def _run(argv, tmp_path):
    return main(RUN + argv + ["--out", str(tmp_path / "runs")])


@pytest.mark.parametrize("argv,message", BAD_RUNS, ids=[m.split(":")[0] for _, m in BAD_RUNS])
def test_bad_values_are_one_line_before_any_distillation(argv, message, tmp_path, capsys, nothing_runs):
    assert _run(argv + ([] if "--device" in argv else ["--device", "cpu"]), tmp_path) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("ddbench: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # no distilled folder, no results store


def test_bad_values_of_method_and_protocol_come_together_one_line_each(tmp_path, capsys, nothing_runs):
    argv = ["--method", "igd", "--set", "k=fast", "--set", "grad_chunk=0", "--set", "protocol.epochs=0",
            "--device", "cpu"]
    assert _run(argv, tmp_path) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "ddbench: error: --set protocol.epochs=0: expected a whole number ≥ 1, or null " \
                       "(protocol card dc has 300)"
    assert lines[1].startswith("--set k='fast'") and lines[2].startswith("--set grad_chunk=0") and len(lines) == 3


@pytest.mark.parametrize("flag", ["--eval-seeds", "--seeds"])
def test_a_seed_given_twice_is_refused(flag, tmp_path, capsys, nothing_runs):
    with pytest.raises(SystemExit) as e:  # argparse: a usage error, exit 2
        _run(["--method", "random", flag, "0,1,0", "--device", "cpu"], tmp_path)
    assert e.value.code == 2
    assert f"argument {flag}: '0,1,0' names 0 more than once" in capsys.readouterr().err
    req = runner.RunRequest("random", "digits", 1, eval_seeds=[0, 0], out=tmp_path / "runs", device="cpu")
    with pytest.raises(ConfigError, match="--eval-seeds names 0 more than once"):
        runner.run(req, log=lambda *_: None)
    assert not (tmp_path / "runs").exists()


def test_a_cuda_index_beyond_the_visible_devices_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"--device cuda:7: this machine has 1 visible CUDA device\(s\), cuda:0"):
        runner.resolve_device("cuda:7")
    assert runner.resolve_device("cuda:0") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        runner.resolve_device("cuda")
    with pytest.raises(ConfigError, match="use auto, cpu, cuda or cuda:N"):
        runner.resolve_device("meta")


def test_finetune_epochs_null_passes_validation(tmp_path, capsys, nothing_runs):
    with pytest.raises(AssertionError, match="reached distillation"):  # validation passed: the next step is distilling
        _run(["--method", "minimax", "--set", "finetune.epochs=null", "--device", "cpu"], tmp_path)


def test_evaluate_and_sweep_validate_the_same_way(tmp_path, capsys):
    code = main(["evaluate", str(tmp_path / "no-set"), "--dataset", "digits", "--protocol", "rded",
                 "--set", "protocol.temperature=0", "--out", str(tmp_path / "runs"), "--device", "cpu"])
    assert code == 2 and "--set protocol.temperature=0: expected a number > 0" in capsys.readouterr().err
    grid = dict(name="t", methods=[{"name": "igd", "config": {"k": "fast"}}], datasets=["digits"], ipcs=[1],
                seeds=[0], protocols=["dc"], eval_seeds=[0, 0])
    for bad, says in ((dict(eval_seeds=[0]), "k='fast'"), (dict(methods=["random"]), "eval_seeds names 0")):
        path = tmp_path / "grid.yaml"
        path.write_text(yaml.safe_dump({**grid, **bad}))
        assert main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--local", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err
    path.write_text(yaml.safe_dump({**grid, "methods": ["random"], "eval_seeds": [0]}))
    assert main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--local", "--device", "gpu0"]) == 2
    assert "--device 'gpu0' is not a device ddbench can use" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "results.db").exists()


def test_the_teacher_command_checks_its_recipe_before_reading_data(tmp_path, capsys):
    code = main(["teacher", "train", "--dataset", "digits", "--arch", "convnet3_bn", "--set", "epochs=0",
                 "--set", "augment=x", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines() == ["ddbench: error: --set epochs=0: expected a whole number ≥ 1",
                                              "--set augment='x': expected one of none, flip, rrc_flip"]
    assert not (tmp_path / "cache").exists()
