"""Regression checks: re-run the cells of a baseline file and flag every mean that moved beyond its tolerance.

A baseline (JSON, format `ddbench-baseline/1`, described in docs/regression.md) lists cells — method, dataset,
IPC, protocol, arch, distillation seeds, evaluation seeds, method/protocol overrides — each with the expected
mean / std / n of a metric, or `expected: null` (record only, no check). The rule, per cell:

    tolerance = max(floor, K · sqrt(σ_b² / n_b + σ_new² / n_new))      (K = tolerance.sigma, default 3)
    fail when |mean_new − mean_b| > tolerance

i.e. K two-sample standard errors of the difference of the means, with a floor (default 0.5 points) so a
deterministic cell (σ = 0 on CPU) does not fail on the last bit. A changed method/protocol card version or a
changed number of runs also fails ("stale"): such a number may move by design, and the baseline must be
re-made with `--update`.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from .config import leaves
from .errors import ConfigError
from .records.store import summary

FORMAT = "ddbench-baseline/1"
DEFAULT_TOLERANCE = {"sigma": 3.0, "floor": 0.5}
CELL_FIELDS = {"method": str, "dataset": str, "ipc": int, "protocol": str, "arch": str, "seeds": list,
               "eval_seeds": list}
OPTIONAL_FIELDS = {"method_overrides": dict, "protocol_overrides": dict, "expected": (dict, type(None)),
                   "tolerance": dict, "note": str}
METRIC_FIELDS = ("acc_last", "acc_best")


# ---------------------------------------------------------------------------------------------- the rule

@dataclass
class Verdict:
    status: str            # "ok" | "drop" | "rise" | "record" | "stale"
    failed: bool
    delta: float | None    # mean_new − mean_b
    tolerance: float | None
    message: str


def tolerance(std_b: float, n_b: int, std_new: float, n_new: int, sigma: float, floor: float) -> float:
    """max(floor, sigma · sqrt(std_b²/n_b + std_new²/n_new)): sigma standard errors of a difference of means."""
    return max(floor, sigma * math.sqrt(std_b ** 2 / max(n_b, 1) + std_new ** 2 / max(n_new, 1)))


def compare(expected: Mapping | None, fresh: Mapping, sigma: float, floor: float) -> Verdict:
    """Judge one cell. `expected` / `fresh` hold mean, std, n (and method_version, protocol_version)."""
    if expected is None:
        return Verdict("record", False, None, None, "no expected numbers in the baseline: recorded only, not "
                       "checked; produce them with `ddbench regress --update` on the baseline's machine")
    for what in ("method_version", "protocol_version"):
        old, new = _text(expected.get(what)), _text(fresh.get(what))
        if old is not None and old != new:
            return Verdict("stale", True, None, None, f"{what.split('_')[0]} card version {old} -> {new}: numbers "
                           "may move by design; review the change, then re-make the baseline with --update")
    if int(expected["n"]) != int(fresh["n"]):
        return Verdict("stale", True, None, None, f"n changed ({expected['n']} -> {fresh['n']}): the cell's seeds "
                       "no longer match the baseline's; re-make it with --update")
    tol = tolerance(float(expected["std"]), int(expected["n"]), float(fresh["std"]), int(fresh["n"]), sigma, floor)
    delta = float(fresh["mean"]) - float(expected["mean"])
    if abs(delta) <= tol:
        return Verdict("ok", False, delta, tol, "within tolerance")
    direction = "drop" if delta < 0 else "rise"
    return Verdict(direction, True, delta, tol, f"mean moved by {delta:+.2f} points, beyond ±{tol:.2f}; "
                   + ("a regression" if delta < 0 else "an unexplained gain: check the change, then --update"))


def _text(v: Any) -> str | None:
    return None if v is None else str(v)


# ---------------------------------------------------------------------------------------------- baseline files

def load_baseline(path: str | os.PathLike) -> dict:
    """Read and validate a baseline file; every problem is a ConfigError naming the file and the cell."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read baseline {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"baseline {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a ddbench baseline: expected a JSON object with \"format\": \"{FORMAT}\"")
    if data.get("metric", "acc_last") not in METRIC_FIELDS:
        raise ConfigError(f"{path}: metric {data.get('metric')!r}; expected one of {', '.join(METRIC_FIELDS)}")
    data["tolerance"] = {**DEFAULT_TOLERANCE, **(data.get("tolerance") or {})}
    cells = data.get("cells")
    if not isinstance(cells, list) or not cells:
        raise ConfigError(f"{path}: \"cells\" must be a non-empty list of cells (see docs/regression.md)")
    seen: dict[tuple, int] = {}
    for i, cell in enumerate(cells):
        _check_cell(path, i, cell)
        for key in cell_keys(cell):
            if key in seen:
                raise ConfigError(f"{path}: cells {seen[key]} and {i} both evaluate {key}; one results store "
                                  "holds one number per key: merge them or split the file")
            seen[key] = i
    return data


def _check_cell(path: Path, i: int, cell: Any) -> None:
    where = f"{path}: cell {i}"
    if not isinstance(cell, dict):
        raise ConfigError(f"{where} must be a JSON object")
    unknown = set(cell) - set(CELL_FIELDS) - set(OPTIONAL_FIELDS)
    if unknown:
        raise ConfigError(f"{where} has unknown field(s) {sorted(unknown)}; allowed: "
                          f"{', '.join(list(CELL_FIELDS) + list(OPTIONAL_FIELDS))}")
    for name, kind in {**CELL_FIELDS, **OPTIONAL_FIELDS}.items():
        if name not in cell:
            if name in CELL_FIELDS:
                raise ConfigError(f"{where} lacks {name!r} (required: {', '.join(CELL_FIELDS)})")
            continue
        if not isinstance(cell[name], kind) or isinstance(cell[name], bool):
            raise ConfigError(f"{where}: {name} = {cell[name]!r} has the wrong type")
    for name in ("seeds", "eval_seeds"):
        if not cell[name] or not all(isinstance(s, int) and not isinstance(s, bool) for s in cell[name]):
            raise ConfigError(f"{where}: {name} must be a non-empty list of integers, got {cell[name]!r}")
    exp = cell.get("expected")
    if exp is not None and not all(isinstance(exp.get(k), (int, float)) for k in ("mean", "std", "n")):
        raise ConfigError(f"{where}: expected must be null or hold numbers mean, std and n, got {exp!r}")


def cell_keys(cell: Mapping) -> list[tuple]:
    """The results-store keys a cell produces: one per (seed, eval seed)."""
    return [(cell["method"], cell["dataset"], cell["ipc"], s, cell["protocol"], cell["arch"], e)
            for s in cell["seeds"] for e in cell["eval_seeds"]]


def cell_name(cell: Mapping) -> str:
    over = {**{k: v for k, v in leaves(cell.get("method_overrides") or {})},
            **{f"protocol.{k}": v for k, v in leaves(cell.get("protocol_overrides") or {})}}
    extra = " " + " ".join(f"{k}={v}" for k, v in over.items()) if over else ""
    return f"{cell['method']} {cell['dataset']} ipc{cell['ipc']} {cell['protocol']}/{cell['arch']}{extra}"



_NUMBER_LIST = re.compile(r"\[\s*(-?[0-9.eE+-]+(?:,\s*-?[0-9.eE+-]+)*)\s*\]")


def write_baseline(path: str | os.PathLike, data: Mapping) -> None:
    """Write atomically (temporary file + rename), 2-space indented, keys in the file's order."""
    path = Path(path)
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(re.split(r",\s*", m.group(1))) + "]", text)  # [0, 1] on one line
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(f"cannot write baseline {path}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------------- fresh numbers

def fresh_stats(records: list[Mapping], metric: str) -> dict:
    """mean / std / n of `metric` over a cell's records, plus the card versions and producer of those records."""
    groups = summary(records)
    if len(groups) != 1:
        raise ConfigError(f"a baseline cell produced {len(groups)} result groups (mixed card versions?) where one "
                          "was expected; re-run in a fresh --out")
    g, first = groups[0], records[0]
    values = sorted(round(float(r[metric]), 4) for r in records)
    return {"mean": round(g[f"{metric}_mean"], 4), "std": round(g[f"{metric}_std"], 4), "n": g["n"],
            "values": values, "method_version": g["method_version"], "protocol_version": g["protocol_version"],
            "device": first.get("device"), "code_version": first.get("code_version")}


def check_overrides(records: list[Mapping], cell: Mapping) -> None:
    """Refuse records made with other settings than the cell's (a reused --out holding older results)."""
    for field, over in (("method_config", cell.get("method_overrides")), ("protocol_config",
                                                                          cell.get("protocol_overrides"))):
        for path, want in leaves(over or {}):
            for r in records:
                node: Any = r.get(field) or {}
                for part in path.split("."):
                    node = node.get(part) if isinstance(node, Mapping) else None
                if node != want:
                    raise ConfigError(f"the results store holds {cell_name(cell)} made with {field.split('_')[0]} "
                                      f"{path} = {node!r}, the baseline wants {want!r}: use a fresh --out")


@dataclass
class CellResult:
    cell: dict
    fresh: dict
    verdict: Verdict


def run_baseline(baseline: Mapping, out: Path, device: str = "auto", options: Mapping | None = None,
                 sigma: float | None = None, progress=None, log: Callable = print) -> list[CellResult]:
    """Re-run every cell through ddbench.runner.run (results kept in `out`) and judge it.

    `sigma` (the CLI's --tolerance-sigma) overrides the file's and the cells' tolerance.sigma.
    """
    from .runner import RunRequest, resolve_device, run

    if baseline.get("device") == "cuda" and device == "auto" and resolve_device("auto").type != "cuda":
        raise ConfigError("this baseline is meant for a CUDA runner (\"device\": \"cuda\"; its protocols take hours "
                          "on a CPU) and no CUDA device is visible: run it on the GPU runner, or pass --device cpu "
                          "to run it here anyway")
    options = {"cache_dir": str(out / "cache"), **(options or {})}  # own cache: prepared artefacts are re-made
    tol = baseline["tolerance"]
    metric = baseline.get("metric", "acc_last")
    results = []
    for i, cell in enumerate(baseline["cells"]):
        log(f"cell #{i}: {cell_name(cell)}")
        req = RunRequest(cell["method"], cell["dataset"], cell["ipc"], cell["protocol"], [cell["arch"]],
                         list(cell["seeds"]), list(cell["eval_seeds"]), dict(cell.get("method_overrides") or {}),
                         dict(cell.get("protocol_overrides") or {}), out, device, dict(options))
        records = run(req, progress, log)
        check_overrides(records, cell)
        fresh = fresh_stats(records, metric)
        cell_tol = {**tol, **(cell.get("tolerance") or {}), **({} if sigma is None else {"sigma": sigma})}
        verdict = compare(cell.get("expected"), fresh, float(cell_tol["sigma"]), float(cell_tol["floor"]))
        results.append(CellResult(cell, fresh, verdict))
    return results


def updated_baseline(baseline: Mapping, results: list[CellResult], command: str) -> dict:
    """The baseline with every cell's `expected` replaced by its fresh numbers, and who produced them."""
    new = {k: v for k, v in baseline.items() if k != "cells"}
    first = results[0].fresh if results else {}
    new["produced"] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
                       "device": first.get("device"), "code_version": first.get("code_version")}
    new["cells"] = []
    for r in results:
        expected = {k: r.fresh[k] for k in ("mean", "std", "n", "values", "method_version", "protocol_version")}
        new["cells"].append({**r.cell, "expected": expected})
    return new


def report_json(results: list[CellResult]) -> list[dict]:
    return [{"cell": cell_name(r.cell), "expected": r.cell.get("expected"), "fresh": r.fresh,
             "verdict": asdict(r.verdict)} for r in results]


# ---------------------------------------------------------------------------------------------- printing

STYLE = {"ok": "green", "record": "yellow", "stale": "magenta", "drop": "bold red", "rise": "bold red"}


def render(results: list[CellResult], metric: str, console=None, explain: bool = True) -> None:
    """A rich table (expected vs fresh mean ± std (n), Δ, tolerance, status), then (`explain`) why each non-ok
    cell is flagged."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"ddbench regress ({metric}, %)")
    for col in ("#", "cell", "expected", "now", "Δ", "tolerance", "status"):
        table.add_column(col, overflow="fold")
    for i, r in enumerate(results):
        exp, v = r.cell.get("expected"), r.verdict
        table.add_row(str(i), cell_name(r.cell), "–" if exp is None else _stat(exp), _stat(r.fresh),
                      "–" if v.delta is None else f"{v.delta:+.2f}", "–" if v.tolerance is None else f"±{v.tolerance:.2f}",
                      f"[{STYLE[v.status]}]{v.status.upper()}[/]")
    console.print(table)
    for i, r in enumerate(results):
        if explain and r.verdict.status != "ok":
            console.print(f"[{STYLE[r.verdict.status]}]#{i} {r.verdict.status.upper()}[/]: {r.verdict.message}")
    devices = {r.fresh.get("device") for r in results}
    console.print(f"fresh numbers from: {', '.join(sorted(map(str, devices)))}")


def _stat(s: Mapping) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f} ({s['n']})"
