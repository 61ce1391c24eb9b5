"""`ddbench sweep GRID.yaml`: expand a grid into cells and run the missing ones (Ray, or in-process)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .options import command
from ..errors import DDBenchError


@command("sweep", "run a grid of methods × datasets × IPCs × seeds × protocols × archs (resumable, Ray or --local)")
def cmd_sweep(p: argparse.ArgumentParser):
    p.add_argument("grid", help="grid file (YAML), e.g. leaderboards/grids/embedded.yaml; format: docs/sweeps.md")
    p.add_argument("--out", default="runs", help="run directory: results.db, distilled/, logs/ (shared by all "
                                                  "Ray workers on a cluster)")
    p.add_argument("--dry-run", action="store_true", help="print the cells and what is already done; run nothing")
    p.add_argument("--local", action="store_true", help="run the cells one by one in this process, without Ray")
    p.add_argument("--ray-address", default=None, help="Ray cluster to use (default: start a local Ray instance)")
    p.add_argument("--max-parallel", type=int, default=None, help="most cells running at once on Ray "
                                                                  "(default: as many as the resources allow)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override on top of the grid: protocol.<name|*>.KEY=V or method.<name|label|*>.KEY=V "
                        "(quote the '*')")
    p.add_argument("--only", action="append", default=[], metavar="KEY=V1,V2",
                   help="run a subset: method, dataset, ipc, seed, protocol, arch or eval_seed")
    p.add_argument("--store", default=None, help="results store written by the driver (default <out>/results.db); "
                                                 "for a shared --out whose filesystem refuses SQLite WAL")
    p.add_argument("--rerun", action="store_true", help="evaluate every cell anew, replacing records of the same "
                   "config (distilled sets on disk are still reused)")
    p.add_argument("--device", default="auto", help="auto (cuda where a cell got a GPU), cpu, cuda")
    p.add_argument("--costs", action="append", default=None, metavar="DEVICE|FILE",
                   help="--dry-run price from this throughput table (leaderboards/costs/<DEVICE>.json or a path); "
                        "default: every table there")
    for flag, what in (("--imagenet-root", "ImageNet root"), ("--data-root", "IDX dataset folder"),
                       ("--cache-dir", "cache (default <out>/cache)"), ("--dit", "DiT checkpoint"),
                       ("--vae", "VAE folder"), ("--teacher", "teacher weights")):
        p.add_argument(flag, default=None, help=f"{what}; wins over the grid's paths:, which win over the environment")

    def handler(args):
        from rich.console import Console

        from ..config import parse_overrides
        from ..records.report import print_summary
        from ..runner import parse_device
        from ..records.store import ResultStore
        from ..sweep.expand import load_grid
        from ..sweep.grid import PATH_ENV, parse_only
        from ..sweep.execute import execute, plan_status
        from ..sweep.price import cost_tables
        from ..sweep.view import SweepView, print_cost, print_failures, print_plan, print_price, print_stale

        if args.max_parallel is not None and args.max_parallel < 1:
            raise DDBenchError(f"--max-parallel must be at least 1, got {args.max_parallel}")
        parse_device(args.device)  # the form only: on Ray the workers, not this driver, hold the GPUs
        out = Path(args.out).resolve()
        store_path = Path(args.store).resolve() if args.store else out / "results.db"
        flags = {k: getattr(args, k) for k in PATH_ENV if getattr(args, k, None)}
        plan = load_grid(args.grid, out=out, sets=parse_overrides(args.set), only=parse_only(args.only), flags=flags,
                         device=args.device)
        console = Console()
        if args.dry_run:
            with ResultStore(store_path) as store:
                status = plan_status(plan, store, out, args.rerun)
            print_plan(plan, status, console)
            todo = [e for e in plan.evals.values() if e.id not in status.done]  # what execute() would run
            print_price(plan, cost_tables(args.costs), console, todo)
            return
        result = execute(plan, out, local=args.local, ray_address=args.ray_address, max_parallel=args.max_parallel,
                         device=args.device, view=SweepView(), store_path=store_path, rerun=args.rerun)
        print_summary(result.records, console)
        print_cost(result.records, console)
        print_failures(result, console)
        print_stale(result.stale, console)
        console.print(f"{result.added} new records in {store_path}; {len(result.records)} of "
                      f"{len(plan.evals)} evaluation cells of grid {plan.name} are recorded")
        if result.failed:
            raise DDBenchError(f"{len(result.failed)} cell(s) failed (table above; logs under {out / 'logs'}); "
                               "fix the cause and run the same command again: finished cells are kept")
    return handler
