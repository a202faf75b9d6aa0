"""Rendering a stream of task progress reports (`radium.vcenter.tasks`) as rich progress bars."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from radium.vcenter.tasks import TaskProgress

__all__ = ["render"]


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
