"""`radium-admin`'s rendering of an operation's progress events (`radium.vcenter.progress`) on standard error.

A `Step` is a line ("• importing ..."), a vCenter task a bar that fills with its
percent, a transfer a byte bar with speed and time left.  Standard output stays
for the result (text or `--json`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

if TYPE_CHECKING:
    from radium.vcenter import ProgressEvent

__all__ = ["ProgressView"]


class ProgressView:
    """Draws the events it is called with; `close()` ends a bar left open (the operation failed)."""

    def __init__(self, console: Console | None = None) -> None:
        # Off a terminal (logs, pipes) lines are not wrapped at 80 columns.
        self.console = console or Console(
            stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200
        )
        self._bars: Progress | None = None
        self._kind = ""  # what the open bars show: "task" or "transfer"
        self._ids: dict[str, TaskID] = {}

    def __call__(self, event: ProgressEvent) -> None:
        from radium import vcenter

        if isinstance(event, vcenter.Step):
            self.close()
            self.console.print(f"• {event.text}", markup=False)
        elif isinstance(event, vcenter.TaskProgress):
            bars = self._open("task")
            if event.task not in self._ids:
                self._ids[event.task] = bars.add_task(event.description, total=100)
            bars.update(
                self._ids[event.task],
                description=event.description,
                completed=event.percent if event.percent is not None else 0,
            )
            if event.done:
                self.close()
        elif isinstance(event, vcenter.Transfer):
            bars = self._open("transfer")
            if event.description not in self._ids:
                self._ids[event.description] = bars.add_task(event.description, total=event.total or None)
            bars.update(self._ids[event.description], completed=event.done)
            if event.finished:
                self.close()

    def _open(self, kind: str) -> Progress:
        if self._bars is not None and self._kind == kind:
            return self._bars
        self.close()
        columns: list[ProgressColumn] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
        if kind == "task":
            columns += [TaskProgressColumn(), TimeElapsedColumn()]
        else:
            columns += [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
        self._bars = Progress(*columns, console=self.console, transient=False)
        self._bars.start()
        self._kind = kind
        return self._bars

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
            self._ids.clear()
