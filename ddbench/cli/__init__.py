"""The command line, one module per command group; `main` parses and dispatches (ddbench/cli/entry.py)."""


def main(argv: list[str] | None = None) -> int:
    from .entry import main as run_main  # imported on call: the command modules import ddbench.cli.options

    return run_main(argv)
