"""Running a Plan: dependency order, resume from the store, in-process or on Ray.

The driver (this module) is the only writer of the results store. Evaluations already in the store are not
scheduled; a distillation runs only when one of its evaluations is missing; a failed distillation marks its
evaluations skipped and the other cells go on. The missing evaluations of a set become tasks by `eval_groups`
(one per protocol and arch: its eval seeds trained together), the function `sweep --dry-run` prices with. Cells of one method, dataset and config share `method.prepare`
(fine-tuning, teacher training): the first of them runs alone and the rest start once it has finished, so an
expensive preparation is done once and then read from the cache (a set already on disk skips this wait).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..distilled import MANIFEST
from ..errors import ConfigError
from .grid import EvalCell, EvalGroup, Plan, eval_groups
from .cells import Outcome, Task, run_task

STATES = ("pending", "running", "done", "failed", "skipped")


@dataclass
class Status:
    """What the store and the disk already hold for a plan."""

    done: set[str]              # evaluation ids whose record is in the store
    on_disk: set[str]           # distillation ids whose set is saved under <out>/distilled
    stale: set[str] = field(default_factory=set)  # also in the store under another config hash (kept as it is)

    def needed(self, plan: Plan) -> dict[str, list[EvalCell]]:
        """distillation id -> its evaluations still to run (only distillations with at least one)."""
        out: dict[str, list[EvalCell]] = {}
        for e in plan.evals.values():
            if e.id not in self.done:
                out.setdefault(e.distill, []).append(e)
        return {d: out[d] for d in plan.distills if d in out}


def plan_status(plan: Plan, store, out: Path, rerun: bool = False) -> Status:
    """Done evaluations (a record under the cell's config hash), those the store also holds under another
    config hash (stale: kept as they are; this config is evaluated anew, as a cell of its own), and sets on
    disk. With `rerun`, nothing is done: every evaluation runs and replaces its record."""
    done, stale = set(), set()
    for e in plan.evals.values():
        key = e.key()
        others = store.query(**{k: v for k, v in key.items() if k != "config_hash"})
        if any(r["config_hash"] != e.config_hash for r in others):
            stale.add(e.id)
        if e.config_hash and not rerun and any(r["config_hash"] == e.config_hash for r in others):
            done.add(e.id)
    on_disk = {d.id for d in plan.distills.values() if (d.folder(out) / MANIFEST).exists()}
    return Status(done, on_disk, stale)


# ---------------------------------------------------------------------------------------------------------
# Scheduler: which task may start, what a finished one unlocks
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Scheduler:
    plan: Plan
    status: Status
    out: Path
    device: str = "auto"
    gpus: bool = True               # False: every task asks for 0 GPUs (a CPU machine or cluster)
    max_gpus_per_node: int = 0      # the largest whole-GPU request one task can get (DDP world size)
    state: dict = field(default_factory=dict)          # distillation / evaluation cell id -> one of STATES
    started: dict = field(default_factory=dict)        # cell id -> time.monotonic() at start
    seconds: dict = field(default_factory=lambda: {"distill": [], "evaluate": []})
    peak_running: int = 0

    def __post_init__(self):
        self.waiting = self.status.needed(self.plan)   # distill id -> evaluations waiting for its set
        self.distill_queue = deque(self.plan.distills[d] for d in self.waiting)
        self.eval_queue: deque[EvalGroup] = deque()
        self.tasks: dict[str, Task] = {}               # running task id -> task
        self.groups: list[list[str]] = []              # cell ids of every evaluation task handed out, in order
        self.distilled: dict[str, dict] = {}
        self.leaders: dict[str, str] = {}              # prepare group -> the distillation that prepares it
        self.prepared: set[str] = set()                # groups whose leader has finished
        for d in self.waiting:
            self.state[d] = "pending"
            for e in self.waiting[d]:
                self.state[e.id] = "pending"

    # ---- counts for the view
    def counts(self, kind: str) -> dict[str, int]:
        ids = self.plan.distills if kind == "distill" else self.plan.evals
        out = {s: 0 for s in STATES}
        for i in ids:
            if i in self.state:
                out[self.state[i]] += 1
        if kind == "evaluate":
            out["resumed"] = len(self.status.done)
        return out

    def running(self) -> list[str]:
        return [i for i, s in self.state.items() if s == "running"]

    def finished(self) -> bool:
        return not any(s in ("pending", "running") for s in self.state.values())

    # ---- handing out work
    def next_task(self) -> Task | None:
        """Evaluations first (finish started sets), then a distillation that does not wait on its group."""
        if self.eval_queue:
            group = self.eval_queue.popleft()
            self.groups.append([c.id for c in group.cells])
            return self._task("evaluate", group, self.distilled[group.distill])
        for cell in list(self.distill_queue):
            on_disk = cell.id in self.status.on_disk  # a saved set is loaded: no prepare, no wait
            if on_disk or cell.group in self.prepared or cell.group not in self.leaders:
                self.distill_queue.remove(cell)
                if not on_disk:
                    self.leaders.setdefault(cell.group, cell.id)  # the first one prepares for the whole group
                return self._task("distill", cell, None)
        return None

    def _task(self, kind: str, cell, distilled: dict | None) -> Task:
        gpus = cell.resources["gpus"] if self.gpus else 0.0
        world = min(int(gpus), self.max_gpus_per_node) if kind == "evaluate" else 1
        return Task(kind, cell, str(self.out), self.plan.options, self.device, distilled, max(world, 1),
                    {"gpus": gpus, "cpus": cell.resources["cpus"]})

    def start(self, task: Task) -> None:
        self.tasks[task.id] = task
        for i in cell_ids(task):
            self.started[i] = time.monotonic()
            self.state[i] = "running"
        self.peak_running = max(self.peak_running, len(self.tasks))

    def finish(self, outcome: Outcome) -> list[EvalCell]:
        """Record an outcome; returns the evaluations it skipped (those of a failed distillation)."""
        task = self.tasks.pop(outcome.id, None)
        if outcome.kind == "evaluate":  # a cell whose record came back is done, even when a later job failed
            cells = task.cell.cells if task is not None else []
            recorded = {r["eval_seed"] for r in (outcome.value or {}).get("records", [])}
            for c in cells:
                self.state[c.id] = "done" if outcome.ok or c.eval_seed in recorded else "failed"
            self.seconds["evaluate"] += [outcome.seconds / max(1, len(cells))] * len(cells)
            return []
        self.state[outcome.id] = "done" if outcome.ok else "failed"
        self.seconds[outcome.kind].append(outcome.seconds)
        group = self.plan.distills[outcome.id].group
        if self.leaders.get(group) == outcome.id:
            self.prepared.add(group)
        evals = self.waiting.pop(outcome.id, [])
        if outcome.ok:
            self.distilled[outcome.id] = outcome.value
            self.eval_queue.extend(eval_groups(evals))
            return []
        for e in evals:
            self.state[e.id] = "skipped"
        return evals


def cell_ids(task: Task) -> list[str]:
    """The plan cells a task runs: its distillation, or every evaluation of its group."""
    return [c.id for c in task.cell.cells] if isinstance(task.cell, EvalGroup) else [task.id]


# ---------------------------------------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------------------------------------


def run_local(sched: Scheduler, handle, view) -> None:
    """One cell at a time in this process (no Ray)."""
    while (task := sched.next_task()) is not None:
        sched.start(task)
        view.update()
        handle(run_task(task))


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("Ray is not installed: pip install 'ddbench[ray]' (or ray>=2.9), or run the sweep "
                          "in this process with --local") from None
    return ray


def ray_gpus(ray) -> tuple[float, int]:
    """(GPUs in the cluster, most GPUs on one live node)."""
    per_node = [n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("Alive")]
    return float(ray.cluster_resources().get("GPU", 0)), int(max(per_node, default=0))


def run_ray(sched: Scheduler, handle, view, address: str | None, max_parallel: int | None) -> None:
    """Each cell a Ray task with its resources; results come back here, in the order they finish."""
    ray = import_ray()
    owned = not ray.is_initialized()
    if owned:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    total, per_node = ray_gpus(ray)
    sched.gpus, sched.max_gpus_per_node = sched.gpus and total > 0, per_node
    remote = ray.remote(run_task)
    inflight: dict = {}
    try:
        while not sched.finished():
            while max_parallel is None or len(inflight) < max_parallel:
                task = sched.next_task()
                if task is None:
                    break
                sched.start(task)
                if task.resources["gpus"] > per_node:  # would wait forever: no node can hold it
                    handle(Outcome(task.id, task.kind, False, error=f"needs {task.resources['gpus']:g} GPUs on one "
                                   f"node but the largest Ray node has {per_node}; lower its resources gpus"))
                    continue
                opts = {"num_cpus": task.resources["cpus"], "num_gpus": task.resources["gpus"], "max_retries": 1,
                        "name": f"{task.kind}:{task.id}"}
                inflight[remote.options(**opts).remote(task)] = task
            if not inflight:
                break
            view.update()
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                task = inflight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a worker crash (OOM kill, segfault) fails this cell only
                    first = (str(e).strip().splitlines() or [""])[-1]
                    outcome = Outcome(task.id, task.kind, False, error=f"Ray task failed: {type(e).__name__}: {first}")
                handle(outcome)
    finally:
        for ref in inflight:
            ray.cancel(ref, force=True)
        if owned:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    failed: list[Outcome]
    skipped: list[EvalCell]
    records: list[dict]          # every record of the plan now in the store (this run's and earlier ones)
    added: int                   # records this run added
    stale: set[str]              # evaluation ids kept from another config (plan_status)
    groups: list[list[str]] = field(default_factory=list)  # the evaluation tasks run (cell ids), in order


def execute(plan: Plan, out: Path, *, local: bool, ray_address: str | None = None, max_parallel: int | None = None,
            device: str = "auto", view=None, store_path: Path | None = None, rerun: bool = False) -> SweepResult:
    """Run every missing cell of `plan` (every cell with `rerun`); the store (default <out>/results.db) is
    written here only."""
    import torch

    from ..records.store import ResultStore
    from .view import NullView

    out = Path(out).resolve()
    view = view or NullView()
    failed, skipped, added = [], [], 0
    with ResultStore(store_path or out / "results.db") as store:
        status = plan_status(plan, store, out, rerun)
        sched = Scheduler(plan, status, out, device,
                          gpus=device != "cpu" and (not local or torch.cuda.is_available()),
                          max_gpus_per_node=torch.cuda.device_count())

        def handle(outcome: Outcome) -> None:
            nonlocal added
            newly_skipped = sched.finish(outcome)
            if outcome.kind == "evaluate":  # each record of the task (a failed task: those of its finished jobs)
                for record in (outcome.value or {}).get("records", []):
                    added += bool(store.add(record, replace=rerun))
            if not outcome.ok:
                failed.append(outcome)
            skipped.extend(newly_skipped)
            view.event(outcome, newly_skipped)

        view.attach(sched)
        with view:
            if local:
                run_local(sched, handle, view)
            else:
                run_ray(sched, handle, view, ray_address, max_parallel)
        records = [r for e in plan.evals.values() for r in store.query(**e.key())]
        records += [r for e in plan.evals.values() if not e.config_hash  # hash known to the worker only
                    for r in store.query(**{k: v for k, v in e.key().items() if k != "config_hash"})]
    return SweepResult(failed, skipped, records, added, status.stale, sched.groups)
