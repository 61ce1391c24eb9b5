"""The commands that make and store results: run, evaluate, list, export, import, teacher, features (importing registers
them)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .options import (add_data_options, add_model_options, add_models_at_once, command, int_list, options_of,
                      split_overrides)
from ..config import parse_overrides
from ..errors import ConfigError


@command("teacher", "train (or load) the classifier used as teacher and feature extractor")
def cmd_teacher(p: argparse.ArgumentParser):
    p.add_argument("action", choices=["train"])
    p.add_argument("--dataset", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override, e.g. epochs=30")
    add_data_options(p)

    def handler(args):
        from ..data import get_dataset, load_split
        from ..method import default_cache_dir
        from ..runner import resolve_device
        from ..schema import validate
        from ..teachers.classifier import RECIPE_RULES, teacher_for

        recipe = parse_overrides(args.set)
        validate(recipe, RECIPE_RULES, where="the teacher recipe", overridden=recipe)  # before any data is read
        device = resolve_device(args.device)
        opts = options_of(args)
        spec = get_dataset(args.dataset, imagenet_root=opts.get("imagenet_root"), data_root=opts.get("data_root"))
        cache = Path(opts.get("cache_dir") or default_cache_dir())
        train = load_split(spec, "train", cache_dir=cache / "data")
        teacher_for(spec, args.arch, device, cache, train, cfg=recipe or None)
        print(f"teacher {args.arch} for {spec.name} is trained and cached under {cache}")
    return handler


@command("features", "train the dataset's feature network (herding, k-center, set metrics, generator judge)")
def cmd_features(p: argparse.ArgumentParser):
    p.add_argument("action", choices=["train"])
    p.add_argument("--dataset", required=True)
    p.add_argument("--ship", action="store_true",
                   help="copy it into the package (ddbench/data/weights/) and record its sha256 in SHA256SUMS")
    add_data_options(p)

    def handler(args):
        from ..data import get_dataset, load_split
        from ..features import dataset_recipe, feature_card, ship
        from ..method import default_cache_dir
        from ..progress import progress_bar
        from ..runner import resolve_device
        from ..teachers.classifier import teacher_for

        opts = options_of(args)
        spec = get_dataset(args.dataset, imagenet_root=opts.get("imagenet_root"), data_root=opts.get("data_root"))
        cache = Path(opts.get("cache_dir") or default_cache_dir())
        train = load_split(spec, "train", cache_dir=cache / "data")
        arch, recipe = feature_card()["arch"], dataset_recipe(spec.name)
        with progress_bar() as progress:  # trained from the card's recipe even when weights ship: --ship remakes them
            teacher_for(spec, arch, resolve_device(args.device), cache, train, cfg=recipe, progress=progress)
        print(f"feature network {arch} {recipe} for {spec.name} is trained and cached under {cache}")
        if args.ship:
            print(f"shipped as {ship(spec, cache)} (sha256 in SHA256SUMS beside it)")
    return handler


@command("run", "distill (cached) + evaluate + record")
def cmd_run(p: argparse.ArgumentParser):
    p.add_argument("--method", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--ipc", type=int, default=None,
                   help="images per class (required; a reference method such as `whole` ignores it: ipc = all)")
    p.add_argument("--protocol", default=None, help="protocol card (default: dc for embedded data, idc for ImageNet)")
    p.add_argument("--arch", nargs="+", default=None, help="evaluation networks (default: the protocol card's)")
    p.add_argument("--seeds", type=int_list, default=[0], help="distillation seeds, e.g. 0,1,2")
    p.add_argument("--eval-seeds", type=int_list, default=[0], help="evaluation seeds per distilled set")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method config key, or protocol.KEY for the protocol card")
    p.add_argument("--out", default="runs", help="run directory (results.db and distilled sets)")
    p.add_argument("--set-metrics", default=None, choices=["auto", "convnet3", "resnetap10", "pixels", "off"],
                   help="feature space of the set metrics recorded with every distilled set (docs/metrics.md); "
                        "default: DDBENCH_SET_METRICS, else auto")
    p.add_argument("--rerun", action="store_true",
                   help="evaluate anew even when the store holds these cells under the same config (replaces them)")
    add_data_options(p)
    add_models_at_once(p)
    add_model_options(p)

    def handler(args):
        from ..progress import progress_bar
        from ..records.report import print_summary
        from ..runner import RunRequest, run

        m_over, p_over = split_overrides(args.set)
        req = RunRequest(args.method, args.dataset, _ipc_of(args.method, args.ipc), args.protocol, args.arch, args.seeds, args.eval_seeds,
                         m_over, p_over, Path(args.out), args.device, options_of(args), rerun=args.rerun)
        with progress_bar() as progress:
            records = run(req, progress, log=progress.console.print)
        print_summary(records)
    return handler


def _ipc_of(method: str, ipc: int | None) -> int:
    """--ipc as given; a reference method (the whole split) needs none and records ipc = 0."""
    from ..method import method_card
    from ..runner import REFERENCE

    if ipc is not None:
        return ipc
    if method_card(method).get("kind") == REFERENCE:
        return 0
    raise ConfigError(f"--ipc is required for method {method}: the number of images per class, e.g. --ipc 10")


@command("evaluate", "score an existing folder of distilled images (ddbench's or any ImageFolder)")
def cmd_evaluate(p: argparse.ArgumentParser):
    p.add_argument("path")
    p.add_argument("--dataset", required=True)
    p.add_argument("--name", default=None,
                   help="method name to record (default: from the set's manifest, e.g. mgd3-v3-seed0; a folder "
                        "without one: external:<folder name>)")
    p.add_argument("--protocol", default=None)
    p.add_argument("--arch", nargs="+", default=None)
    p.add_argument("--eval-seeds", type=int_list, default=[0])
    p.add_argument("--set", action="append", default=[], metavar="protocol.KEY=VALUE")
    p.add_argument("--out", default="runs")
    p.add_argument("--rerun", action="store_true",
                   help="evaluate anew even when the store holds these cells under the same config (replaces them)")
    add_models_at_once(p)
    add_data_options(p)

    def handler(args):
        from ..runner import evaluate_folder
        from ..progress import progress_bar
        from ..records.report import print_summary

        m_over, p_over = split_overrides(args.set)
        if m_over:
            from ..errors import ConfigError

            raise ConfigError(f"--set {next(iter(m_over))}=...: evaluate scores a finished set, so only protocol "
                              "settings apply: --set protocol.KEY=VALUE")
        with progress_bar() as progress:
            records = evaluate_folder(Path(args.path), args.dataset, args.name, args.protocol, args.arch,
                                      args.eval_seeds, p_over, Path(args.out), args.device, options_of(args),
                                      log=progress.console.print, rerun=args.rerun)
        print_summary(records)
    return handler


@command("list", "list methods, datasets, protocols or archs")
def cmd_list(p: argparse.ArgumentParser):
    p.add_argument("what", choices=["methods", "datasets", "protocols", "archs"])

    def handler(args):
        from ..records.report import print_listing

        print_listing(args.what)
    return handler


@command("export", "write the results store as JSONL")
def cmd_export(p: argparse.ArgumentParser):
    p.add_argument("file")
    p.add_argument("--out", action="append", help="run directory holding results.db (default runs); repeat it "
                                                  "to write the records of several run directories to one file")
    p.add_argument("--min-sets", type=int, default=None, metavar="N",
                   help="publish only cells with at least N distilled sets (a deterministic method: N distinct "
                        "evaluations of its set; the whole split: N evaluations); the cells left out are listed")
    p.add_argument("--min-reference", type=int, default=None, metavar="M",
                   help="with --min-sets: the whole-split reference needs M evaluations instead of N (it is "
                        "never ranked; its table shows how many it rests on)")

    def handler(args):
        from ..records.store import ResultStore, write_jsonl

        for flag, value in (("--min-sets", args.min_sets), ("--min-reference", args.min_reference)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} {value}: expected a count of at least 1, e.g. {flag} 3")
        if args.min_reference is not None and args.min_sets is None:
            raise ConfigError("--min-reference applies with --min-sets: add --min-sets N (e.g. --min-sets 3 "
                              "--min-reference 1)")
        outs = args.out or ["runs"]
        for out in outs:
            if not (Path(out) / "results.db").is_file():
                raise ConfigError(f"--out {out}: no results.db there; give a run directory that a run or sweep wrote")
        records = []
        for out in outs:
            with ResultStore(Path(out) / "results.db") as store:
                records += store.portable_records()
        if args.min_sets is not None:
            from ..leaderboard.tables import complete_cells

            records, left = complete_cells(records, args.min_sets, min_reference=args.min_reference)
            for line in left:
                print(f"left out (too few): {line}")
        n = write_jsonl(args.file, records)
        print(f"exported {n} records to {args.file}")
    return handler


@command("import", "merge JSONL records into the results store (no duplicates)")
def cmd_import(p: argparse.ArgumentParser):
    p.add_argument("file")
    p.add_argument("--out", default="runs")
    p.add_argument("--replace", action="store_true", help="replace records whose key exists with different content")

    def handler(args):
        from ..records.store import ResultStore

        with ResultStore(Path(args.out) / "results.db") as store:
            result = store.import_jsonl(args.file, replace=args.replace)
        print(f"imported: {result}")
    return handler
