"""The price of a grid before it runs: device-hours of its evaluation cells from a measured throughput table.

A table `leaderboards/costs/<device>.json` is written by `benchmarks/eval_throughput.py --write-costs` on that
device; it says what was measured, where, when and with which command:

    {"device": "NVIDIA H200", "date": "2026-12-04", "command": "python benchmarks/eval_throughput.py ...",
     "entries": [{"protocol": "dc", "arch": "convnet3", "size": 32, "ipc": 10, "models_at_once": 8,
                  "samples_s": 41000.0, "test_samples_s": 900000.0}, ...]}

An evaluation cell trains epochs × (IPC · classes) samples (the protocol card's plan) and tests its network
at the card's evaluation points. The cells are grouped into tasks by `grid.eval_groups`, the function the
executor schedules with (the eval seeds of one set, protocol and arch), and each task trains K of its networks
at once by the runner's rule (`train_many.models_at_once`: on a CPU table K = 1; on a GPU all of the group, at
most MAX_AT_ONCE — free memory, unknown before the run, can lower it, and the runner then halves K). A cell is
priced at the throughput of the largest measured K not above its job's K. A cell without a matching entry (and
every distillation: no table measures them yet) is shown as unknown, never guessed.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from ..engine.train import eval_points
from ..engine.train_many import MAX_AT_ONCE, models_at_once
from .grid import eval_groups

COSTS_DIR = Path(__file__).resolve().parent.parent.parent / "leaderboards" / "costs"
IMAGENET_VAL_PER_CLASS = 50  # ILSVRC-2012 val: the test split of every ImageNet subset
EMBEDDED_TEST_IMAGES = {"digits": 360, "fashion": 10000, "mnist": 10000}


def load_costs(name_or_path: str) -> dict:
    """A cost table by device name (leaderboards/costs/<name>.json) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = COSTS_DIR / f"{name_or_path}.json"
    if not path.exists():
        known = sorted(p.stem for p in COSTS_DIR.glob("*.json")) if COSTS_DIR.is_dir() else []
        raise ConfigError(f"no cost table {path}; known tables: {', '.join(known) or 'none'} (write one with "
                          f"python benchmarks/eval_throughput.py --write-costs leaderboards/costs/<device>.json)")
    table = json.loads(path.read_text())
    for key in ("device", "date", "command", "entries"):
        if key not in table:
            raise ConfigError(f"cost table {path} has no {key!r}; tables are written by benchmarks/eval_throughput.py")
    return table


def cost_tables(names: list[str] | None) -> list[dict]:
    """The tables named (device names or paths), or every table in leaderboards/costs/."""
    if names:
        return [load_costs(n) for n in names]
    return [load_costs(str(p)) for p in sorted(COSTS_DIR.glob("*.json"))] if COSTS_DIR.is_dir() else []


def _cell_work(cell, cache: dict) -> dict | None:
    """Training samples, test images and test passes of one evaluation cell (None when the plan is unknown)."""
    from ..data.datasets import describe_dataset
    from ..protocol import load_protocol

    key = (cell.dataset, cell.protocol, cell.ipc, json.dumps(cell.protocol_overrides, sort_keys=True, default=str))
    if key not in cache:
        try:
            classes = int(describe_dataset(cell.dataset)[1])
        except (ValueError, ConfigError):
            cache[key] = None  # an image folder: its class count is in its files
            return None
        protocol = load_protocol(cell.protocol, cell.protocol_overrides)
        n = cell.ipc * classes
        c = protocol.card
        if protocol.family == "hard":
            plan = protocol.plan(n, classes)
            epochs, passes = plan["epochs"], len(eval_points(plan["epochs"], plan["eval_every"]))
        elif protocol.family == "soft":
            from ..protocols.soft import soft_eval_epochs

            epochs = int(c["epochs"])
            passes = len(soft_eval_epochs(epochs, c["eval_every"], c["eval_offset"], c["eval_after"]))
        else:
            cache[key] = None
            return None
        tests = EMBEDDED_TEST_IMAGES.get(cell.dataset, classes * IMAGENET_VAL_PER_CLASS)
        cache[key] = {"samples": int(epochs) * n, "tests": tests, "passes": passes}
    return cache[key]


def _entry(table: dict, protocol: str, arch: str, ipc: int, group: int) -> dict | None:
    """The measured entry for (protocol, arch): the largest K ≤ group, then the IPC nearest to `ipc`."""
    rows = [e for e in table["entries"] if e.get("protocol") == protocol and e.get("arch") == arch
            and e.get("samples_s") and int(e.get("models_at_once", 1)) <= group]
    if not rows:
        return None
    return max(rows, key=lambda e: (int(e.get("models_at_once", 1)), -abs(int(e.get("ipc", ipc)) - ipc)))


def job_models(n_cells: int, table: dict) -> int:
    """K of a task of n_cells on the table's device, by the runner's rule (train_many.models_at_once). On a GPU
    the rule reads the free memory, which only the run itself can: priced as if the group fits (MAX_AT_ONCE)."""
    if str(table["device"]).lower().startswith("cpu"):
        return models_at_once(None, "cpu", n_cells)
    return max(1, min(n_cells, MAX_AT_ONCE))


def price_plan(plan, table: dict, cells=None) -> dict:
    """{"evaluate": hours, "distill": None, "unknown_evals": [cell ids], "cells": n, "groups": [{"cells": [ids],
    "models_at_once": K}]}: device-hours of the evaluation cells (default: all of the plan's; `cells`: those to
    run) as the executor groups them (grid.eval_groups), at the table's throughputs (distillation: unknown)."""
    cells = list(plan.evals.values()) if cells is None else list(cells)
    cache, hours, unknown, groups = {}, 0.0, [], []
    for group in eval_groups(cells):
        k = job_models(len(group.cells), table)
        groups.append({"cells": [c.id for c in group.cells], "models_at_once": k})
        for cell in group.cells:
            work = _cell_work(cell, cache)
            entry = _entry(table, cell.protocol, cell.arch, cell.ipc, k)
            if work is None or entry is None:
                unknown.append(cell.id)
                continue
            seconds = work["samples"] / float(entry["samples_s"])
            if work["tests"] and entry.get("test_samples_s"):
                seconds += work["passes"] * work["tests"] / float(entry["test_samples_s"])
            hours += seconds / 3600
    return {"evaluate": hours, "distill": None, "unknown_evals": unknown, "cells": len(cells), "groups": groups}
