"""Progress of the long phases: a rich bar per phase on a terminal, one line per finished phase otherwise.

Off a terminal (CI logs, pipes) or with DDBENCH_NO_PROGRESS set, a bar would be noise or nothing at all; a
line such as `dc convnet3 ×3: 300/300 in 41.2s` per phase still says where the time went.
"""
from __future__ import annotations

import contextlib
import os
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class PhaseLines:
    """The `track` / `console` of a rich Progress that prints one line when each tracked phase ends."""

    def __init__(self, console: Console):
        self.console = console
        self._tasks: dict[int, list] = {}  # task id -> [description, total, done, start]

    def track(self, sequence, description: str = "working", total: int | None = None, **_):
        start, done = time.perf_counter(), 0
        for item in sequence:
            yield item
            done += 1
        self._line(description, done, total if total is not None else done, start)

    # the task interface of rich's Progress, for loops that advance by hand (add_task, advance)
    def add_task(self, description: str, total: float | None = None, **_) -> int:
        self._tasks[len(self._tasks)] = [description, total, 0, time.perf_counter()]
        return len(self._tasks) - 1

    def advance(self, task: int, advance: float = 1) -> None:
        entry = self._tasks[task]
        entry[2] += advance
        if entry[1] is not None and entry[2] >= entry[1]:  # finished: its one line
            self._line(entry[0], entry[2], entry[1], entry[3])

    def _line(self, description: str, done, total, start: float) -> None:
        self.console.print(f"{description}: {done:g}/{total:g} in {time.perf_counter() - start:.1f}s", highlight=False)


@contextlib.contextmanager
def progress_bar():
    """A rich Progress on a terminal, else PhaseLines; `progress.track(it, description=..., total=...)` and
    `progress.console.print(...)` work on both."""
    console = Console(stderr=True)
    if not console.is_terminal or os.environ.get("DDBENCH_NO_PROGRESS"):
        yield PhaseLines(console)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        yield progress
