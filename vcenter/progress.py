"""What a long operation reports while it runs: a stream of progress events, for any face to render.

An operation (deploy, remove, register-vm, ...) takes ``progress: Progress | None``,
a function it calls with each event, in order, from the thread it runs in:

    Step(text)                        what it does now, in one line
    TaskProgress(task, ...)           a vCenter task's state and percent (`radium.vcenter.tasks.watch`)
    Transfer(description, done, total) bytes of an upload so far (the first has done=0, the last done=total)

The caller renders the stream its own way: `radium-admin` as lines and bars on
standard error (`radium.vcenter.cli.progress`), the console by posting each
event to its UI thread, Ansible as the steps of its result.  An operation never
prints, and an event is never the only place a fact is told: what matters is
in the operation's result or its error too.

    steps = []
    deploy(session, request, progress=steps.append)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Progress", "ProgressEvent", "Step", "TaskProgress", "Transfer", "silent"]


@dataclass(frozen=True)
class Step:
    """A line: what the operation does now."""

    text: str


@dataclass(frozen=True)
class TaskProgress:
    """One report about a vCenter task."""

    task: str  #: the task's managed object id
    description: str  #: what it does, as vCenter names it
    state: str  #: queued | running | success | error
    percent: int | None = None  #: 0-100 when the task reports progress
    error: str | None = None  #: the task's own error text, when it failed
    result: Any = field(default=None, compare=False, repr=False)  #: the task's result, when it succeeded

    @property
    def done(self) -> bool:
        return self.state in ("success", "error")


@dataclass(frozen=True)
class Transfer:
    """Bytes of a transfer so far: `done` of `total` (a first report with 0, a last with `total`)."""

    description: str
    done: int
    total: int

    @property
    def finished(self) -> bool:
        return self.done >= self.total


ProgressEvent = Step | TaskProgress | Transfer
#: Where an operation sends its progress events.
Progress = Callable[[ProgressEvent], None]


def silent(event: ProgressEvent) -> None:
    """The progress sink of a caller that shows nothing."""
