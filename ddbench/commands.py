"""The commands beyond run/evaluate/list/export/import; importing a module registers its commands."""
from __future__ import annotations

import argparse
import importlib

from .cli import add_data_options, command, options_of
from .config import parse_overrides

# Each module registers its own commands with the @command decorator when imported.
COMMAND_MODULES = ["ddbench.commands_report", "ddbench.commands_sweep", "ddbench.commands_generator",
                   "ddbench.commands_inspect"]


@command("teacher", "train (or load) the classifier used as teacher and feature extractor")
def cmd_teacher(p: argparse.ArgumentParser):
    p.add_argument("action", choices=["train"])
    p.add_argument("--dataset", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override, e.g. epochs=30")
    add_data_options(p)

    def handler(args):
        from .data import get_dataset, load_split
        from .method import default_cache_dir
        from .runner import resolve_device
        from .teacher import teacher_for
        from pathlib import Path

        opts = options_of(args)
        spec = get_dataset(args.dataset, imagenet_root=opts.get("imagenet_root"), data_root=opts.get("data_root"))
        cache = Path(opts.get("cache_dir") or default_cache_dir())
        train = load_split(spec, "train", cache_dir=cache / "data")
        teacher_for(spec, args.arch, resolve_device(args.device), cache, train, cfg=parse_overrides(args.set) or None)
        print(f"teacher {args.arch} for {spec.name} is trained and cached under {cache}")
    return handler


for _module in COMMAND_MODULES:
    importlib.import_module(_module)
