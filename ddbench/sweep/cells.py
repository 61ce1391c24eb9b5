"""The worker side of a sweep: distil one cell or evaluate one group of cells, in-process or inside a Ray task.

`run_task(task) -> Outcome` never raises for a cell's own failure (a missing checkpoint, an IPC larger than a
class, CUDA out of memory): the error comes back as one line, the traceback goes to the cell's log file
`<out>/logs/<cell>.<phase>.log`. The work itself is the runner's (`distilled_set`, `evaluate_cells`), so a sweep
cell and `ddbench run` produce the same sets, folders and records. An evaluation task is an `EvalGroup` (the
eval seeds of one set, protocol and arch), trained as `ddbench run --eval-seeds` trains them: K networks per job.
Workers never write the results store: the records travel back to the driver, which alone adds them; a task
that fails part-way still returns the records of its jobs that finished.
"""
from __future__ import annotations

import re
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..errors import DDBenchError
from .grid import DistillCell, EvalGroup


@dataclass
class Task:
    kind: str                         # "distill" | "evaluate"
    cell: DistillCell | EvalGroup     # an EvalCell given here is a group of one
    out: str                          # absolute run directory, shared by every worker
    options: dict                     # paths: imagenet_root, data_root, dit, vae, teacher, cache_dir
    device: str = "auto"              # auto = cuda when this worker sees a GPU, else cpu
    distilled: dict | None = None     # evaluate only: the value of the distillation's Outcome
    world_size: int = 1               # evaluate only: > 1 = torch DDP over that many local GPUs (ddbench.engine.ddp)
    resources: dict | None = None     # {"gpus", "cpus"} this task reserves (Ray num_gpus / num_cpus)

    @property
    def id(self) -> str:
        return self.cell.id


@dataclass
class Outcome:
    id: str
    kind: str
    ok: bool
    value: dict | None = None         # distill: path, sha256, phases, method_version, method_config;
                                      # evaluate: {"records": [...]} (on failure: those of the finished jobs)
    error: str | None = None          # one line for people; the traceback is in `log`
    seconds: float = 0.0
    log: str | None = None


class RecordSink:
    """Stands in for the ResultStore in runner.evaluate_cells: keeps the records (with `extra` merged into their
    extra field) instead of writing them."""

    def __init__(self, extra: dict | None = None):
        self.records: list[dict] = []
        self.extra = dict(extra or {})

    def add(self, record: dict, *, replace: bool = False) -> bool:
        record["extra"] = {**(record.get("extra") or {}), **self.extra}
        self.records.append(record)
        return True


def log_path(out: str | Path, cell_id: str, kind: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", cell_id)
    return Path(out) / "logs" / f"{safe}.{kind}.log"


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------


def run_task(task: Task) -> Outcome:
    """Run one task; a failure of the cell itself is returned, not raised (KeyboardInterrupt still stops)."""
    path = log_path(task.out, task.id, task.kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(path, "a", encoding="utf-8") as f:
        def log(*parts):
            f.write(f"{time.strftime('%H:%M:%S')} {' '.join(str(p) for p in parts)}\n")
            f.flush()

        log(f"{task.kind} {task.id} on {socket.gethostname()} (device {task.device}, world {task.world_size})")
        sink = RecordSink({"world_size": task.world_size})
        try:
            value = distill_cell(task, log) if task.kind == "distill" else evaluate_task(task, log, sink)
        except Exception as e:  # noqa: BLE001 - every failure of one cell is reported, the sweep goes on
            f.write(traceback.format_exc())
            msg = str(e) if isinstance(e, DDBenchError) else f"{type(e).__name__}: {e}"
            return Outcome(task.id, task.kind, False, {"records": sink.records} if sink.records else None,
                           error=" ".join(msg.split()), seconds=time.perf_counter() - start, log=str(path))
        log(f"done in {time.perf_counter() - start:.1f}s")
    return Outcome(task.id, task.kind, True, value, seconds=time.perf_counter() - start, log=str(path))


# ---------------------------------------------------------------------------------------------------------
# Distil one cell
# ---------------------------------------------------------------------------------------------------------


def _spec_and_cache(cell, options: dict):
    from ..data import get_dataset
    from ..method import default_cache_dir

    spec = get_dataset(cell.dataset, imagenet_root=options.get("imagenet_root"), data_root=options.get("data_root"))
    return spec, Path(options.get("cache_dir") or default_cache_dir())


def distill_cell(task: Task, log) -> dict:
    """Load the cached set of the cell or produce it (runner.distilled_set); returns what evaluations need."""
    from ..data import load_split
    from ..method import Context, load_method
    from ..identity import set_inputs
    from ..runner import RunRequest, distilled_set, check_ipc, device_name, resolve_device

    cell, out = task.cell, Path(task.out)
    spec, cache_dir = _spec_and_cache(cell, task.options)
    method = load_method(cell.method, spec.name, cell.method_overrides)
    check_ipc(spec, cell.ipc, method.card.get("kind", ""))
    device = resolve_device(task.device)
    split = {}

    def train():
        if "train" not in split:
            split["train"] = load_split(spec, "train", cache_dir=cache_dir / "data")
        return split["train"]

    ctx = Context(spec, device, cache_dir, train, None, task.options)
    req = RunRequest(cell.method, cell.dataset, cell.ipc, seeds=[cell.seed], method_overrides=cell.method_overrides,
                     out=out, device=task.device, options=task.options)
    dset, phases = distilled_set(method, ctx, req, spec, cell.seed, out, {}, log)
    return {"path": str(dset.provenance["path"]), "sha256": dset.provenance.get("sha256") or dset.sha256(),
            "phases": phases, "method_version": method.version, "method_config": method.cfg,
            "method_kind": method.card.get("kind", ""), "images": len(dset),
            "device": device_name(device), "method": method.name, "method_overrides": cell.method_overrides,
            "set_inputs": set_inputs(method, spec, device, task.options, cache_dir)}


# ---------------------------------------------------------------------------------------------------------
# Evaluate one group of cells
# ---------------------------------------------------------------------------------------------------------


def evaluate_task(task: Task, log, sink: RecordSink) -> dict:
    """The group's evaluations; with world_size > 1, under torch DDP on that many local GPUs (rank 0's records)."""
    if task.world_size > 1:
        from ..engine.ddp import spawn

        log(f"spawning {task.world_size} DDP ranks")
        return spawn(_evaluate_rank, task.world_size, task)
    return evaluate_group(task, log, sink)


def _evaluate_rank(task: Task) -> dict:
    path = log_path(task.out, task.id, "evaluate")
    with open(path.with_suffix(f".rank{_rank()}.log"), "a", encoding="utf-8") as f:
        return evaluate_group(task, lambda *p: f.write(" ".join(map(str, p)) + "\n"),
                             RecordSink({"world_size": task.world_size}))


def _rank() -> int:
    from ..engine.ddp import rank

    return rank()


def evaluate_group(task: Task, log, sink: RecordSink) -> dict:
    """Score the distilled set of the group's distillation with its protocol, every eval seed of the group;
    returns {"records": [...]} (kept in `sink` as each job ends, not stored)."""
    from ..data import load_split
    from ..distilled import DistilledSet
    from ..protocol import load_protocol
    from ..records.cellhash import cell_config_hash
    from ..runner import evaluate_cells, record_provenance, resolve_device

    group = task.cell if isinstance(task.cell, EvalGroup) else EvalGroup([task.cell])
    dist = task.distilled
    spec, cache_dir = _spec_and_cache(group, task.options)
    protocol = load_protocol(group.protocol, group.protocol_overrides)
    device = resolve_device(task.device)
    dset = DistilledSet.load(dist["path"])
    dset.provenance["path"] = dist["path"]
    test = load_split(spec, "test", cache_dir=cache_dir / "data")
    info = {"method_version": dist["method_version"], "method_config": dist["method_config"]}
    # the hash as this worker sees the cell (its data, its weights files, its device): the record says what was
    # evaluated; the set's inputs are those its distillation saw
    full = {**info, "method_kind": dist.get("method_kind", ""), "set_inputs": dist.get("set_inputs")}
    chash = cell_config_hash(full, protocol, spec, task.options, device)
    keys = [{**c.key(), "config_hash": chash} for c in group.cells]
    provenance = record_provenance(dist.get("method", group.cells[0].label), spec.name, protocol,
                                   dist.get("method_overrides"), group.protocol_overrides, dist.get("set_inputs"),
                                   device)
    evaluate_cells(dset, spec, protocol, keys, sink, test, device, info, dist["phases"], log, provenance=provenance)
    return {"records": sink.records}  # empty on a DDP rank other than 0 (ddp.spawn returns rank 0's value)
