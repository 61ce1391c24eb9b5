"""Sweeps: a grid file expanded into distillation cells and the evaluation cells that depend on them.

    plan = load_grid("leaderboards/grids/embedded.yaml", out="runs")
    plan.distills    # {id: DistillCell}: one per (method label, dataset, ipc, seed): a set is made once ...
    plan.evals       # {id: EvalCell}: ... and shared by every (protocol, arch, eval seed) that scores it

A grid names the axes (methods, datasets, ipcs, seeds, protocols, archs, eval_seeds), per-axis `overrides`,
`resources` hints and `paths`, or a list of sub-grids under `grids:` that inherit the top level. Every name is
checked here, before any work starts. Expansion lives in expand.py, execution in execute.py, the worker side in cells.py; the
format is documented in docs/sweeps.md.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import canonical_json, check_unique, deep_merge, parse_int_list
from ..errors import ConfigError
from ..registry import suggest
from ..runner import distilled_folder

AXES = ("methods", "datasets", "ipcs", "seeds", "protocols", "archs", "eval_seeds")
GRID_KEYS = AXES + ("name", "description", "paths", "overrides", "resources", "grids")
PATH_ENV = {"imagenet_root": "DDBENCH_IMAGENET_ROOT", "data_root": None, "dit": "DDBENCH_DIT",
            "vae": "DDBENCH_VAE", "teacher": "DDBENCH_TEACHER", "cache_dir": "DDBENCH_CACHE"}
ONLY_KEYS = ("method", "dataset", "ipc", "seed", "protocol", "arch", "eval_seed")
# Resource hints per task (Ray's num_gpus / num_cpus). Selection by sampling needs no accelerator; every other
# method and every protocol asks for one GPU unless the grid says otherwise. Without GPUs, gpus becomes 0.
DEFAULT_RESOURCES = {"distill": {"*": {"gpus": 1, "cpus": 1}, "random": {"gpus": 0}, "first-n": {"gpus": 0}},
                     "evaluate": {"*": {"gpus": 1, "cpus": 1}}}


# ---------------------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DistillCell:
    id: str                   # "<label>/<dataset>/ipc<K>/seed<S>"
    method: str               # registry name of the method
    label: str                # the `method` written to the store (= method unless the grid gives a label)
    dataset: str
    ipc: int
    seed: int
    method_overrides: dict    # over the method card (grid overrides, the entry's config, --set)
    key: str                  # method.distill_key(ipc, seed, inputs) as planned: names the folder of the set
    group: str                # cells that share method.prepare() (same method, dataset and config)
    resources: dict           # {"gpus": float, "cpus": float}

    def folder(self, out: Path) -> Path:
        return distilled_folder(out, self.method, self.dataset, self.ipc, self.seed, self.key)


@dataclass
class EvalCell:
    id: str                   # "<distill id>/<protocol>/<arch>/e<eval seed>"
    distill: str              # id of the DistillCell it scores
    label: str
    dataset: str
    ipc: int
    seed: int
    protocol: str
    arch: str
    eval_seed: int
    protocol_overrides: dict
    resources: dict
    protocol_hash: str = ""   # config_hash of the resolved protocol card
    config_hash: str = ""     # cellhash.cell_config_hash of the cell; "" when its dataset cannot be opened here

    def key(self) -> dict:
        """The results-store key of this cell's record."""
        return dict(method=self.label, dataset=self.dataset, ipc=self.ipc, seed=self.seed, protocol=self.protocol,
                    arch=self.arch, eval_seed=self.eval_seed, config_hash=self.config_hash)


@dataclass
class EvalGroup:
    """The evaluation cells one sweep task trains together: one distilled set, one protocol (with its overrides)
    and one arch, so they differ in eval seed only and `runner.evaluate_cells` trains them as one multi-model
    job, as `ddbench run --eval-seeds` does. Made by `eval_groups`, which the executor and the price share."""

    cells: list[EvalCell]

    @property
    def id(self) -> str:
        """The cell id for a group of one; "<distill id>/<protocol>/<arch>/e0+1+2" for several."""
        first = self.cells[0]
        if len(self.cells) == 1:
            return first.id
        return f"{first.distill}/{first.protocol}/{first.arch}/e{'+'.join(str(c.eval_seed) for c in self.cells)}"

    @property
    def distill(self) -> str:
        return self.cells[0].distill

    @property
    def dataset(self) -> str:
        return self.cells[0].dataset

    @property
    def protocol(self) -> str:
        return self.cells[0].protocol

    @property
    def protocol_overrides(self) -> dict:
        return self.cells[0].protocol_overrides

    @property
    def resources(self) -> dict:
        return self.cells[0].resources


def eval_groups(cells) -> list[EvalGroup]:
    """Evaluation cells grouped into sweep tasks, in order of first appearance (see EvalGroup)."""
    groups: dict[tuple, list[EvalCell]] = {}
    for c in cells:
        key = (c.distill, c.protocol, canonical_json(c.protocol_overrides), c.arch, c.config_hash)
        groups.setdefault(key, []).append(c)
    return [EvalGroup(g) for g in groups.values()]


@dataclass
class Plan:
    name: str
    distills: dict[str, DistillCell] = field(default_factory=dict)
    evals: dict[str, EvalCell] = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # resolved paths handed to every cell

    def evals_of(self, distill_id: str) -> list[EvalCell]:
        return [e for e in self.evals.values() if e.distill == distill_id]


# ---------------------------------------------------------------------------------------------------------
# Reading a grid file
# ---------------------------------------------------------------------------------------------------------


def read_grid(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        grid = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read grid file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"grid file {path} is not valid YAML: {e}") from None
    if not isinstance(grid, dict):
        raise ConfigError(f"grid file {path} must be a mapping (methods:, datasets:, ipcs:, ...); see docs/sweeps.md")
    grid.setdefault("name", path.stem)
    return grid


def _check_keys(d: dict, allowed, where: str) -> None:
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{where}: unknown key {k!r}.{suggest(str(k), list(allowed))} "
                              f"Allowed: {', '.join(allowed)} (docs/sweeps.md)")


def sub_grids(grid: dict) -> list[dict]:
    """The grid's sub-grids with the top level inherited: axes replaced, overrides / resources deep-merged."""
    _check_keys(grid, GRID_KEYS, f"grid {grid.get('name')}")
    subs = grid.get("grids") or [{}]
    if not isinstance(subs, list):
        raise ConfigError(f"grid {grid['name']}: `grids:` must be a list of sub-grids")
    out = []
    for i, sub in enumerate(subs):
        if not isinstance(sub, dict):
            raise ConfigError(f"grid {grid['name']}: sub-grid {i} must be a mapping")
        _check_keys(sub, AXES + ("overrides", "resources", "name"), f"grid {grid['name']}, sub-grid {i}")
        merged = {k: sub.get(k, grid.get(k)) for k in AXES}
        for k in ("overrides", "resources"):
            merged[k] = deep_merge(grid.get(k) or {}, sub.get(k) or {})
        merged["where"] = f"grid {grid['name']}" + (f", sub-grid {sub.get('name', i)}" if "grids" in grid else "")
        out.append(merged)
    return out


def _ints(value, what: str, where: str) -> list[int]:
    items = value if isinstance(value, list) else [value]
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ConfigError(f"{where}: {what} must be integers (a list, or a string like '0-2'), got {v!r}")
        try:
            out += parse_int_list(v) if isinstance(v, str) else [v]
        except Exception:
            raise ConfigError(f"{where}: {what} entry {v!r} is not an integer or a range like 0-2, each "
                              "number once") from None
    check_unique(out, f"{where}: {what}")
    return out


@dataclass(frozen=True)
class MethodEntry:
    name: str
    label: str
    config: str  # canonical JSON of the entry's own config (hashable)


def method_entries(value, where: str) -> list[MethodEntry]:
    """`methods:` items: a name, or {name, label (recorded name, default the name), config (overrides)}."""
    if not value:
        raise ConfigError(f"{where}: `methods:` is missing or empty; list at least one method")
    out = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ConfigError(f"{where}: a method entry is a name or {{name:, label:, config:}}, got {item!r}")
        _check_keys(item, ("name", "label", "config"), f"{where}, method {item['name']}")
        if not isinstance(item.get("config") or {}, dict):
            raise ConfigError(f"{where}, method {item['name']}: `config:` must be a mapping of config keys")
        out.append(MethodEntry(item["name"], str(item.get("label") or item["name"]),
                               canonical_json(item.get("config") or {})))
    return out


def axis(sub: dict, name: str, default=None) -> list:
    value = sub.get(name)
    if value is None:
        if default is None:
            raise ConfigError(f"{sub['where']}: `{name}:` is missing; list at least one value")
        return default
    return _ints(value, name, sub["where"]) if name in ("ipcs", "seeds", "eval_seeds") else (
        value if isinstance(value, list) else [value])


def resolve_paths(grid: dict, flags: dict | None = None, out: Path | None = None) -> dict:
    """Paths for every cell: a command-line flag wins over the grid's `paths:`, which wins over the environment.

    cache_dir defaults to <out>/cache so that a cluster's workers share it with the distilled sets."""
    paths = grid.get("paths") or {}
    _check_keys(paths, tuple(PATH_ENV), f"grid {grid.get('name')}: paths")
    opts = {}
    for key, env in PATH_ENV.items():
        value = (flags or {}).get(key) or paths.get(key) or (os.environ.get(env) if env else None)
        if value:
            opts[key] = str(Path(os.path.expandvars(str(value))).expanduser().resolve())
    if "cache_dir" not in opts and out is not None:
        opts["cache_dir"] = str(Path(out).resolve() / "cache")
    return opts


def parse_only(items: list[str] | None) -> dict[str, set[str]]:
    """--only method=random,dit --only ipc=10 -> {"method": {"random", "dit"}, "ipc": {"10"}}."""
    only: dict[str, set[str]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        if not sep or key not in ONLY_KEYS:
            raise ConfigError(f"--only {item!r}: expected KEY=V1,V2 with KEY one of {', '.join(ONLY_KEYS)}"
                              f"{'.' + suggest(key, list(ONLY_KEYS)) if key else ''}")
        only.setdefault(key, set()).update(v.strip() for v in values.split(",") if v.strip())
    return only


def keep(only: dict, key: str, *values) -> bool:
    """Whether any of `values` passes the --only filter for `key` (no filter: everything passes)."""
    return key not in only or any(str(v) in only[key] for v in values)
