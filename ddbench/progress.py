"""Progress bars (rich) that stay silent when output is not a terminal or in CI logs."""
from __future__ import annotations

import contextlib
import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar():
    """A rich Progress; `progress.track(it, description=..., total=...)` and `progress.console.print(...)`."""
    console = Console(stderr=True)
    quiet = not console.is_terminal or os.environ.get("DDBENCH_NO_PROGRESS")
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=bool(quiet), transient=True) as progress:
        yield progress
