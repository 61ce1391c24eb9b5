"""The `ddbench` command line: argument parsing and printing only; the work lives in the modules it calls.

Imports run one way: entry -> the command modules (run, report, sweep, generator, inspect) -> options.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import DDBenchError
from . import run, report, sweep, generator, inspect  # noqa: F401,I001  (importing registers the commands, in help order)
from .options import COMMANDS


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="ddbench", description="Dataset-distillation benchmark and leaderboard harness")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers = {}
    for name, (help, fn) in COMMANDS.items():
        handlers[name] = fn(sub.add_parser(name, help=help, description=help))
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
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
