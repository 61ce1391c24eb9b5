"""Expanding a grid into cells: names checked, configs resolved, distillation cells de-duplicated.

Override precedence for a method entry (name N, label L): `*` < N < L < the entry's `config:` < `--set` (same
order inside `--set`); for a protocol P: `*` < P < `--set`. A typo in any name fails here, with suggestions.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from ..config import canonical_json, config_hash, deep_merge
from ..errors import ConfigError, DDBenchError
from ..registry import suggest
from .grid import (DEFAULT_RESOURCES, DistillCell, EvalCell, MethodEntry, Plan, axis, keep, method_entries,
                   read_grid, resolve_paths, sub_grids)

# ---------------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------------


def check_methods(entries: list[MethodEntry], grid: str) -> None:
    """Every method must be registered when the sweep runs; name all the missing ones at once."""
    from ..method import list_methods

    known = list_methods()
    missing = sorted({e.name for e in entries if e.name not in known})
    if missing:
        hints = "".join(suggest(m, known) for m in missing)
        raise ConfigError(f"grid {grid} names method(s) not registered in this installation: {', '.join(missing)}."
                          f"{hints} Registered: {', '.join(known)} (`ddbench list methods`). Run the others with "
                          f"--only method=..., or update ddbench.")
    taken = {}
    for e in entries:  # a label is what the store records: it must name one (method, config) only
        if e.label != e.name and e.label in known:
            raise ConfigError(f"grid {grid}: label {e.label!r} of a {e.name} entry is the name of another "
                              "method; choose a label that is not a method name (e.g. acs-g2)")
        if taken.setdefault(e.label, (e.name, e.config)) != (e.name, e.config):
            raise ConfigError(f"grid {grid}: two method entries are recorded as {e.label!r} with different "
                              "methods or configs; give each a distinct `label:`")


def check_named_keys(section: dict, known: set[str], where: str) -> None:
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping of names ('*' for all) to settings, got {section!r}")
    for name, value in section.items():
        if name != "*" and name not in known:
            raise ConfigError(f"{where}: {name!r} is not a method, label or protocol of this grid."
                              f"{suggest(name, sorted(known))} Use '*' for all of them.")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}.{name}: expected a mapping of keys to values, got {value!r}")


def check_arch(arch: str, where: str) -> None:
    from ..nets.build import ARCHS, TIMM_PREFIX

    if not isinstance(arch, str) or not (arch.startswith(TIMM_PREFIX) or arch in ARCHS):
        raise ConfigError(f"{where}: unknown arch {arch!r}.{suggest(str(arch), ARCHS.names())} Known archs: "
                          f"{', '.join(ARCHS.names())}, or timm:<name>")


def dataset_kind(name: str, options: dict) -> str:
    """The dataset's kind (embedded | imagenet | imagefolder); unknown names fail with suggestions. When the
    data are missing here the kind is still known from the name, and the distillation cell will fail instead."""
    from ..data import DATASETS, get_dataset
    from ..data.spec import read_class_list

    DATASETS.get("imagefolder" if name.startswith("imagefolder:") else name)
    try:
        return get_dataset(name, imagenet_root=options.get("imagenet_root"), data_root=options.get("data_root")).kind
    except DDBenchError:
        if name.startswith("imagefolder:"):
            return "imagefolder"
        try:
            read_class_list(name)  # ImageNet subsets have a checked-in class list
            return "imagenet"
        except (DDBenchError, OSError):
            return "embedded"


# ---------------------------------------------------------------------------------------------------------
# Resources and overrides
# ---------------------------------------------------------------------------------------------------------


def resources_for(phase: str, names: list[str], grid_res: dict, where: str) -> dict:
    """{"gpus", "cpus"} for a task: code defaults (`*`, then name) < the grid's (`*`, then each name)."""
    res = deep_merge(DEFAULT_RESOURCES[phase]["*"], DEFAULT_RESOURCES[phase].get(names[0], {}))
    section = grid_res.get(phase) or {}
    for key in ["*"] + names:
        res = deep_merge(res, section.get(key) or {})
    for k, v in res.items():
        if k not in ("gpus", "cpus") or isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"{where}: resources.{phase} {k}={v!r}: expected gpus (≥ 0) and cpus (> 0) numbers")
    if res["gpus"] > 1 and res["gpus"] != int(res["gpus"]):
        raise ConfigError(f"{where}: resources.{phase} gpus={res['gpus']}: more than one GPU must be a whole number")
    if res["cpus"] <= 0:
        raise ConfigError(f"{where}: resources.{phase} cpus must be positive")
    return {"gpus": float(res["gpus"]), "cpus": float(res["cpus"])}


def merged(section: dict, keys: list[str]) -> dict:
    out: dict = {}
    for key in keys:
        out = deep_merge(out, section.get(key) or {})
    return out


def method_overrides(entry: MethodEntry, overrides: dict, sets: dict) -> dict:
    keys = ["*", entry.name] + ([entry.label] if entry.label != entry.name else [])
    cfg = deep_merge(merged(overrides.get("method") or {}, keys), json.loads(entry.config))
    return deep_merge(cfg, merged(sets.get("method") or {}, keys))


def protocol_overrides(name: str, overrides: dict, sets: dict) -> dict:
    keys = ["*", name]
    return deep_merge(merged(overrides.get("protocol") or {}, keys), merged(sets.get("protocol") or {}, keys))


# ---------------------------------------------------------------------------------------------------------
# Expansion
# ---------------------------------------------------------------------------------------------------------


def expand(grid: dict, sets: dict, only: dict, options: dict | None = None, device: str = "auto") -> Plan:
    """All cells of `grid` that pass `only`; distillation cells shared by every evaluation of the same set.
    `device` (the sweep's --device) is where the precision of the set keys and config hashes is resolved."""
    from ..method import list_methods
    from ..protocol import list_protocols

    options = options or {}
    subs = sub_grids(grid)
    _check_keys_of(sets, ("method", "protocol"), "--set (expected method.<name>.KEY=V or protocol.<name>.KEY=V)")
    entries = [e for sub in subs for e in method_entries(sub.get("methods"), sub["where"])]
    check_methods([e for e in entries if keep(only, "method", e.name, e.label)], grid["name"])
    known = set(list_methods()) | {e.label for e in entries} | set(list_protocols())
    for sub in subs:
        for section in ("overrides", "resources"):
            _check_keys_of(sub[section], ("method", "protocol") if section == "overrides" else ("distill", "evaluate"),
                           f"{sub['where']}: {section}")
            for part, named in sub[section].items():
                check_named_keys(named or {}, known, f"{sub['where']}: {section}.{part}")
    for part, named in sets.items():
        check_named_keys(named, known, f"--set {part} (expected {part}.<name or '*'>.KEY=VALUE)")
    plan, cache = Plan(grid["name"]), {"device": plan_device(device)}
    for sub in subs:
        expand_sub(plan, sub, sets, only, options, cache)
    return plan


def _check_keys_of(d: dict, allowed: tuple, where: str) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping")
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{where}: unknown section {k!r}.{suggest(str(k), list(allowed))} "
                              f"Expected: {', '.join(allowed)}")


def expand_sub(plan: Plan, sub: dict, sets: dict, only: dict, options: dict, cache: dict) -> None:
    from ..method import load_method

    where = sub["where"]
    datasets = [d for d in axis(sub, "datasets") if keep(only, "dataset", d)]
    ipcs = [k for k in axis(sub, "ipcs") if keep(only, "ipc", k)]
    seeds = [s for s in axis(sub, "seeds", [0]) if keep(only, "seed", s)]
    for k in ipcs:
        if k <= 0:
            raise ConfigError(f"{where}: ipcs must be positive images-per-class counts, got {k}")
    for entry in method_entries(sub.get("methods"), where):
        if not keep(only, "method", entry.name, entry.label):
            continue
        m_over = method_overrides(entry, sub["overrides"], sets)
        res = resources_for("distill", [entry.name] + ([entry.label] if entry.label != entry.name else []),
                            sub["resources"], where)
        for dataset in datasets:
            if ("kind", dataset) not in cache:
                cache[("kind", dataset)] = dataset_kind(dataset, options)
            kind = cache[("kind", dataset)]
            try:
                method = load_method(entry.name, dataset, m_over)
            except DDBenchError as e:
                raise ConfigError(f"{where}: method {entry.label} on {dataset}: {e}") from None
            group = f"{entry.name}|{dataset}|{config_hash(method.cfg)}"
            inputs = plan_inputs(method, dataset, options, cache)
            info = {"method_version": method.version, "method_config": method.cfg,
                    "method_kind": method.card.get("kind", ""), "set_inputs": inputs}
            for ipc in ipcs:
                for seed in seeds:
                    cell = DistillCell(f"{entry.label}/{dataset}/ipc{ipc}/seed{seed}", entry.name, entry.label,
                                       dataset, ipc, seed, m_over, method.distill_key(ipc, seed, inputs or {}),
                                       group, res)
                    cell = add_distill(plan, cell, where)
                    add_evals(plan, cell, sub, kind, sets, only, cache, info, options)


def add_distill(plan: Plan, cell: DistillCell, where: str) -> DistillCell:
    old = plan.distills.setdefault(cell.id, cell)
    if old.key != cell.key:
        raise ConfigError(f"{where}: {cell.id} appears twice with different method configs; give one of the "
                          "entries its own `label:` so that both are recorded")
    return old


def protocol_for(name: str, p_over: dict, cache: dict):
    from ..protocol import load_protocol

    key = ("protocol", name, canonical_json(p_over))
    if key not in cache:
        cache[key] = load_protocol(name, p_over)
    return cache[key]


def default_arch(protocol, dataset: str, kind: str) -> str | None:
    from ..runner import default_arch as runner_default

    try:
        return runner_default(protocol, SimpleNamespace(kind=kind, name=dataset))
    except ConfigError:
        return None


def plan_device(name: str):
    """The device a sweep's cells run on, as the driver sees it: auto = CUDA when this machine has a GPU. (A
    cluster whose driver has no GPU plans CPU precision for `auto`: its GPU workers then record another hash
    and the next run evaluates those cells again; pass --device cuda there.)"""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu or cuda") from None


def plan_inputs(method, dataset: str, options: dict, cache: dict) -> dict | None:
    """ddbench.identity.set_inputs of a method's sets on `dataset`, as the worker will compute them; None when
    the dataset cannot be opened here."""
    from ..identity import set_inputs

    spec = plan_spec(dataset, options, cache)
    if spec is None:
        return None
    key = ("inputs", method.name, dataset, config_hash(method.cfg))
    if key not in cache:
        cache[key] = set_inputs(method, spec, cache["device"], options, options.get("cache_dir"))
    return cache[key]


def cell_hash(info: dict, protocol, dataset: str, options: dict, cache: dict) -> str:
    """cellhash.cell_config_hash of a cell, as its worker will compute it; "" when the dataset cannot be opened
    here (its distillation then fails with the reason, and nothing in the store answers it)."""
    from ..records.cellhash import cell_config_hash

    spec = plan_spec(dataset, options, cache)
    return "" if spec is None else cell_config_hash(info, protocol, spec, options, cache["device"])


def plan_spec(dataset: str, options: dict, cache: dict):
    """The dataset spec (cached per expansion); None when it cannot be opened here."""
    from ..data import get_dataset

    if ("spec", dataset) not in cache:
        try:
            cache[("spec", dataset)] = get_dataset(dataset, imagenet_root=options.get("imagenet_root"),
                                                   data_root=options.get("data_root"))
        except DDBenchError:
            cache[("spec", dataset)] = None
    return cache[("spec", dataset)]


def add_evals(plan: Plan, dcell: DistillCell, sub: dict, kind: str, sets: dict, only: dict, cache: dict,
              info: dict, options: dict) -> None:
    from ..runner import default_protocol, reference_settings

    where = sub["where"]
    protocols = sub.get("protocols") or [default_protocol(SimpleNamespace(kind=kind))]
    archs_axis = sub.get("archs")
    for pname in protocols if isinstance(protocols, list) else [protocols]:
        if not keep(only, "protocol", pname):
            continue
        # a reference method's own protocol settings lie under the grid's, as under --set in `ddbench run`
        p_over = deep_merge(reference_settings(dcell.method, pname), protocol_overrides(pname, sub["overrides"], sets))
        try:
            protocol = protocol_for(pname, p_over, cache)
        except DDBenchError as e:
            raise ConfigError(f"{where}: protocol {pname}: {e}") from None
        archs = archs_axis.get(pname) if isinstance(archs_axis, dict) else archs_axis
        if not isinstance(archs, list):
            archs = [archs] if archs else [default_arch(protocol, dcell.dataset, kind)]
        res = resources_for("evaluate", [pname], sub["resources"], where)
        chash = cell_hash(info, protocol, dcell.dataset, options, cache)
        for arch in archs:
            check_arch(arch, f"{where}: protocol {pname}")
            if not keep(only, "arch", arch):
                continue
            for e in axis(sub, "eval_seeds", [0]):
                if not keep(only, "eval_seed", e):
                    continue
                cell = EvalCell(f"{dcell.id}/{pname}/{arch}/e{e}", dcell.id, dcell.label, dcell.dataset, dcell.ipc,
                                dcell.seed, pname, arch, e, p_over, res, config_hash(protocol.card), chash)
                old = plan.evals.setdefault(cell.id, cell)
                if canonical_json(old.protocol_overrides) != canonical_json(p_over):
                    raise ConfigError(f"{where}: {cell.id} appears twice with different protocol overrides; "
                                      "a store key holds one number, so make the sub-grids disjoint")
    if not plan.evals_of(dcell.id):  # every evaluation filtered away: nothing needs this set
        plan.distills.pop(dcell.id, None)


def load_grid(path, *, out: Path = Path("runs"), sets: dict | None = None, only: dict | None = None,
              flags: dict | None = None, device: str = "auto") -> Plan:
    """Read and expand a grid file into a Plan (every name and override checked; nothing runs)."""
    grid = read_grid(path)
    options = resolve_paths(grid, flags, out)
    plan = expand(grid, sets or {}, only or {}, options, device)
    plan.options = options
    return plan
