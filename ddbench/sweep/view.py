"""What a sweep shows: the dry-run listing, the live view (done / running / failed / remaining, ETA), the cost of
the results (GPU- or CPU-hours per method and phase, from the records' timings) and the failures."""
from __future__ import annotations

import os
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

# ---------------------------------------------------------------------------------------------------------
# Live view
# ---------------------------------------------------------------------------------------------------------


class NullView:
    """No output (library use and tests)."""

    def attach(self, sched) -> None:
        self.sched = sched

    def update(self) -> None:
        pass

    def event(self, outcome, skipped) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def eta_seconds(sched) -> float | None:
    """Remaining cells × mean seconds of the finished ones (per phase) / the parallelism seen so far."""
    total = 0.0
    for kind in ("distill", "evaluate"):
        c = sched.counts(kind)
        remaining = c["pending"] + c["running"]
        if remaining and not sched.seconds[kind]:
            return None
        if remaining:
            total += remaining * sum(sched.seconds[kind]) / len(sched.seconds[kind])
    return total / max(1, sched.peak_running)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    h, rest = divmod(int(seconds), 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class SweepView(NullView):
    """A rich Live table on a terminal; one line per finished cell otherwise (CI logs, DDBENCH_NO_PROGRESS)."""

    def __init__(self, console: Console | None = None, live: bool | None = None):
        self.console = console or Console(stderr=True)
        if live is None:
            live = self.console.is_terminal and not os.environ.get("DDBENCH_NO_PROGRESS")
        self.t0, self._last, self.sched = time.monotonic(), Group(), None
        # get_renderable: Live re-renders every refresh, so elapsed times tick while a cell runs in this process
        self.live = Live(console=self.console, refresh_per_second=2, transient=True,
                         get_renderable=self._safe_render) if live else None

    def _safe_render(self) -> Group:
        try:  # called from Live's refresh thread while the driver updates the scheduler
            if self.sched is not None:
                self._last = self.render()
        except (RuntimeError, KeyError):
            pass
        return self._last

    def render(self) -> Group:
        table = Table(title=f"sweep {self.sched.plan.name}  elapsed {fmt_duration(time.monotonic() - self.t0)}"
                            f"  ETA {fmt_duration(eta_seconds(self.sched))}")
        for col in ("phase", "done", "running", "failed", "skipped", "remaining", "already in store"):
            table.add_column(col, justify="right")
        for kind in ("distill", "evaluate"):
            c = self.sched.counts(kind)
            table.add_row(kind, str(c["done"]), str(c["running"]), str(c["failed"]), str(c["skipped"]),
                          str(c["pending"]), str(c.get("resumed", "")))
        now = time.monotonic()
        running = [f"  {i}  ({fmt_duration(now - self.sched.started.get(i, now))})" for i in self.sched.running()[:8]]
        return Group(table, *running)

    def update(self) -> None:
        if self.live is not None:
            self.live.refresh()

    def event(self, outcome, skipped) -> None:
        if self.live is not None and not outcome.ok:  # printed above the live table, which stays at the bottom
            self.console.print(f"FAILED {outcome.kind} {outcome.id}: {outcome.error}", highlight=False)
        if self.live is None:
            c = self.sched.counts("evaluate")
            what = "ok" if outcome.ok else f"FAILED: {outcome.error}"
            self.console.print(f"[{c['done'] + c['resumed']}/{len(self.sched.plan.evals)} evaluations] "
                               f"{outcome.kind} {outcome.id} {outcome.seconds:.1f}s {what}"
                               + (f" ({len(skipped)} evaluations skipped)" if skipped else ""), highlight=False)
        self.update()

    def __enter__(self):
        if self.live is not None:
            self.live.__enter__()
            self.update()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)


# ---------------------------------------------------------------------------------------------------------
# Dry run
# ---------------------------------------------------------------------------------------------------------


def print_plan(plan, status, console: Console) -> None:
    """Every distillation and evaluation cell with what is already done."""
    needed = status.needed(plan)
    dist = Table(title=f"grid {plan.name}: distillation cells", show_lines=False)
    for col in ("cell", "status", "evaluations done", "gpus (hint)", "key"):
        dist.add_column(col, overflow="fold")
    for d in plan.distills.values():
        evals = plan.evals_of(d.id)
        done = sum(e.id in status.done for e in evals)
        state = ("not needed (all evaluated)" if d.id not in needed else
                 "on disk (reused)" if d.id in status.on_disk else "to distil")
        dist.add_row(d.id, state, f"{done}/{len(evals)}", f"{d.resources['gpus']:g}", d.key)
    evals = Table(title=f"grid {plan.name}: evaluation cells")
    for col in ("cell", "status", "gpus (hint)"):
        evals.add_column(col, overflow="fold")
    for e in plan.evals.values():
        state = "in store" if e.id in status.done else "to run"
        state += " (+ other config kept)" if e.id in status.stale else ""
        evals.add_row(e.id, state, f"{e.resources['gpus']:g}")
    console.print(dist)
    console.print(evals)
    todo = len(plan.evals) - len(status.done)
    console.print(f"{len(plan.distills)} distillation cells ({len(needed)} needed, "
                  f"{len(set(needed) & status.on_disk)} of them on disk); {len(plan.evals)} evaluation cells "
                  f"({len(status.done)} already in the store, {todo} to run)", soft_wrap=True)
    print_stale(status.stale, console)


def print_stale(stale, console: Console) -> None:
    if stale:
        console.print(f"note: {len(stale)} evaluation(s) are also in the store under another config hash (another "
                      "method or protocol config, card version, data or weights); those records are kept as they "
                      "are and this grid's config is recorded beside them (docs/results-schema.md).")


# ---------------------------------------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------------------------------------

PHASES = ("prepare", "distill", "evaluate")


def cost_rows(records) -> list[dict]:
    """Device-hours per (method, device kind) and phase. A distilled set's prepare / distill time is counted once
    however many evaluations share it; an evaluation counts its seconds × its DDP world size (GPUs)."""
    rows: dict[tuple, dict] = {}
    seen_sets = set()
    for r in records:
        unit = "CPU" if str(r.get("device") or "cpu").lower().startswith("cpu") else "GPU"
        row = rows.setdefault((r["method"], unit), {"method": r["method"], "unit": unit, "cells": 0,
                                                    **{p: 0.0 for p in PHASES}})
        timings = r.get("timings") or {}
        world = int((r.get("extra") or {}).get("world_size") or 1)
        row["evaluate"] += float(timings.get("evaluate", 0.0)) * world / 3600
        row["cells"] += 1
        set_key = (r["method"], r["dataset"], r["ipc"], r["seed"], r.get("distilled_sha256"))
        if set_key not in seen_sets:
            seen_sets.add(set_key)
            for phase in ("prepare", "distill"):
                row[phase] += float(timings.get(phase, 0.0)) / 3600
    return sorted(rows.values(), key=lambda row: (row["method"] != "random", row["method"], row["unit"]))


def print_cost(records, console: Console) -> None:
    rows = cost_rows(records)
    if not rows:
        return
    table = Table(title="compute behind these results (device-hours; a set's prepare/distill counted once)")
    for col in ("method", "device", "evaluations", *PHASES, "total"):
        table.add_column(col, justify="left" if col in ("method", "device") else "right")
    totals = {u: {p: 0.0 for p in PHASES} for u in ("GPU", "CPU")}
    for row in rows:
        total = sum(row[p] for p in PHASES)
        for p in PHASES:
            totals[row["unit"]][p] += row[p]
        table.add_row(row["method"], f"{row['unit']}-h", str(row["cells"]), *(f"{row[p]:.3f}" for p in PHASES),
                      f"{total:.3f}")
    for unit, t in totals.items():
        if any(t.values()):
            table.add_row("[bold]all[/bold]", f"{unit}-h", "", *(f"{t[p]:.3f}" for p in PHASES),
                          f"{sum(t.values()):.3f}")
    console.print(table)


def print_failures(result, console: Console) -> None:
    if not result.failed:
        return
    table = Table(title=f"{len(result.failed)} failed cells ({len(result.skipped)} evaluations skipped because "
                       "their distillation failed)")
    for col in ("phase", "cell", "error", "log"):
        table.add_column(col, overflow="fold")
    for o in result.failed:
        table.add_row(o.kind, o.id, o.error or "", o.log or "")
    console.print(table)


def print_price(plan, tables: list[dict], console: Console, cells=None) -> None:
    """The estimated device-hours of the evaluations to run (`cells`; default all of the plan's), grouped into
    tasks as the executor groups them, under each measured throughput table."""
    from .price import price_plan

    if not tables:
        console.print("price: no throughput table in leaderboards/costs/ — estimate unknown (measure one with "
                      "python benchmarks/eval_throughput.py --write-costs leaderboards/costs/<device>.json)")
        return
    table = Table(title=f"grid {plan.name}: estimated device-hours of the evaluations to run (measured throughput "
                        "tables; the eval seeds of a set, protocol and arch train together, as the sweep runs them)")
    for col in ("device", "measured", "distill", "evaluate", "total", "cells priced"):
        table.add_column(col, justify="left" if col in ("device", "measured") else "right")
    for costs in tables:
        price = price_plan(plan, costs, cells)
        known = price["cells"] - len(price["unknown_evals"])
        priced = known or not price["cells"]  # nothing left to run costs nothing
        evaluate = f"{price['evaluate']:.2f}" if priced else "unknown"
        total = f"≥ {price['evaluate']:.2f}" if priced else "unknown"  # distillation is never priced yet
        table.add_row(costs["device"], costs["date"], "unknown", evaluate, total, f"{known}/{price['cells']}")
    console.print(table)
    console.print("unknown: no measured entry (protocol, network) in the table; distillation has no table yet, so "
                  "a total is the evaluations' hours only (≥)", soft_wrap=True)

