"""Rendering a stream of task progress reports (`radium.vcenter.tasks`) as rich progress bars."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from radium.vcenter.tasks import TaskProgress

__all__ = ["Reporter", "render"]


def render(stream: Iterable[TaskProgress], console: Console | None = None) -> TaskProgress | None:
    """Draw one bar per vCenter task on standard error (stdout stays for the result); return the last report.

    A failing task raises `TaskFailed` out of the stream; the bar shows where it stopped.
    """
    console = console or Console(stderr=True, highlight=False)
    last = None
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bars:
        ids: dict[str, TaskID] = {}
        for report in stream:
            if report.task not in ids:
                ids[report.task] = bars.add_task(report.description, total=100)
            bars.update(
                ids[report.task],
                description=report.description,
                completed=report.percent if report.percent is not None else 0,
            )
            last = report
    return last


class Reporter:
    """A deploy's progress on standard error: step lines, task bars, and a byte bar for uploads.

    (`radium.vcenter.deploy.Reporter` is the silent interface this draws.)
    """

    def __init__(self, console: Console | None = None) -> None:
        # Off a terminal (logs, pipes) lines are not wrapped at 80 columns.
        self.console = console or Console(
            stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200
        )

    def step(self, text: str) -> None:
        self.console.print(f"• {text}", markup=False)

    def task(self, stream: Iterable[TaskProgress]) -> None:
        render(stream, self.console)

    @contextlib.contextmanager
    def transfer(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        ) as bars:
            task = bars.add_task(description, total=total or None)
            yield lambda n: bars.advance(task, n)
