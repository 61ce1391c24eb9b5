"""The `ddbench` command line: argument parsing and printing only; the work lives in the modules it calls."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import parse_overrides
from .errors import DDBenchError

COMMANDS = {}  # name -> (add_arguments, handler)


def command(name: str, help: str):
    def wrap(fn):
        COMMANDS[name] = (help, fn)
        return fn
    return wrap


# ---------------------------------------------------------------------- shared options
def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--imagenet-root", default=os.environ.get("DDBENCH_IMAGENET_ROOT"),
                   help="ImageNet root with train/<wnid>/ and val/<wnid>/ (env DDBENCH_IMAGENET_ROOT)")
    p.add_argument("--data-root", default=None, help="folder of an IDX dataset (fashion, mnist)")
    p.add_argument("--cache-dir", default=None, help="cache for decoded data, teachers, generators (env DDBENCH_CACHE)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dit", default=os.environ.get("DDBENCH_DIT"), help="DiT checkpoint (.pt) or diffusers folder (env DDBENCH_DIT)")
    p.add_argument("--vae", default=os.environ.get("DDBENCH_VAE"), help="AutoencoderKL folder, e.g. sd-vae-ft-mse (env DDBENCH_VAE)")
    p.add_argument("--teacher", default=os.environ.get("DDBENCH_TEACHER"), help="torchvision-format teacher weights (env DDBENCH_TEACHER)")


def options_of(args) -> dict:
    keys = ("imagenet_root", "data_root", "cache_dir", "dit", "vae", "teacher", "set_metrics")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None)}


def int_list(text: str) -> list[int]:
    """'0,1,2' or '0-4' -> ints."""
    out = []
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers like 0,1,2 or 0-4") from None
    return out


def split_overrides(items: list[str]) -> tuple[dict, dict]:
    """--set protocol.epochs=5 goes to the protocol card; anything else to the method config."""
    over = parse_overrides(items or [])
    return {k: v for k, v in over.items() if k != "protocol"}, over.get("protocol", {})


# ---------------------------------------------------------------------- commands
@command("run", "distill (cached) + evaluate + record")
def cmd_run(p: argparse.ArgumentParser):
    p.add_argument("--method", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--ipc", type=int, required=True)
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
    add_data_options(p)
    add_model_options(p)

    def handler(args):
        from .progress import progress_bar
        from .report import print_summary
        from .runner import RunRequest, run

        m_over, p_over = split_overrides(args.set)
        req = RunRequest(args.method, args.dataset, args.ipc, args.protocol, args.arch, args.seeds, args.eval_seeds,
                         m_over, p_over, Path(args.out), args.device, options_of(args))
        with progress_bar() as progress:
            records = run(req, progress, log=progress.console.print)
        print_summary(records)
    return handler


@command("evaluate", "score an existing folder of distilled images (ddbench's or any ImageFolder)")
def cmd_evaluate(p: argparse.ArgumentParser):
    p.add_argument("path")
    p.add_argument("--dataset", required=True)
    p.add_argument("--name", default=None, help="method name to record (default: external:<folder name>)")
    p.add_argument("--protocol", default=None)
    p.add_argument("--arch", nargs="+", default=None)
    p.add_argument("--eval-seeds", type=int_list, default=[0])
    p.add_argument("--set", action="append", default=[], metavar="protocol.KEY=VALUE")
    p.add_argument("--out", default="runs")
    add_data_options(p)

    def handler(args):
        from .runner import evaluate_folder
        from .progress import progress_bar
        from .report import print_summary

        _, p_over = split_overrides(args.set)
        with progress_bar() as progress:
            records = evaluate_folder(Path(args.path), args.dataset, args.name, args.protocol, args.arch,
                                      args.eval_seeds, p_over, Path(args.out), args.device, options_of(args),
                                      log=progress.console.print)
        print_summary(records)
    return handler


@command("list", "list methods, datasets, protocols or archs")
def cmd_list(p: argparse.ArgumentParser):
    p.add_argument("what", choices=["methods", "datasets", "protocols", "archs"])

    def handler(args):
        from .report import print_listing

        print_listing(args.what)
    return handler


@command("export", "write the results store as JSONL")
def cmd_export(p: argparse.ArgumentParser):
    p.add_argument("file")
    p.add_argument("--out", default="runs", help="run directory holding results.db")

    def handler(args):
        from .store import ResultStore

        with ResultStore(Path(args.out) / "results.db") as store:
            n = store.export_jsonl(args.file)
        print(f"exported {n} records to {args.file}")
    return handler


@command("import", "merge JSONL records into the results store (no duplicates)")
def cmd_import(p: argparse.ArgumentParser):
    p.add_argument("file")
    p.add_argument("--out", default="runs")
    p.add_argument("--replace", action="store_true", help="replace records whose key exists with different content")

    def handler(args):
        from .store import ResultStore

        with ResultStore(Path(args.out) / "results.db") as store:
            result = store.import_jsonl(args.file, replace=args.replace)
        print(f"imported: {result}")
    return handler


# ---------------------------------------------------------------------- entry point
def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="ddbench", description="Dataset-distillation benchmark and leaderboard harness")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers = {}
    for name, (help, fn) in COMMANDS.items():
        handlers[name] = fn(sub.add_parser(name, help=help, description=help))
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    from . import commands  # noqa: F401  (registers the remaining commands)

    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        code = handlers[args.command](args)
    except DDBenchError as e:
        print(f"ddbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddbench: interrupted; finished work is kept and will be reused", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
