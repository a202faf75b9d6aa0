"""Long vCenter tasks as a stream of progress reports.

`watch(session, task)` yields a `TaskProgress` whenever the task's state,
progress or description changes (it listens with ``WaitForUpdatesEx`` on a
property collector of its own, so no polling), and ends with a report in state
``success``, or raises `TaskFailed` carrying the task's own error text (the
fault's ``localizedMessage``).  The command line renders the stream with rich
progress bars (`radium.vcenter.cli.progress`); the TUI and Ansible can render
the same stream their own way.

    for report in watch(vc, vm.PowerOnVM_Task()):
        print(report.percent, report.description)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .connection import Session
from .errors import TaskFailed, fault_message, translated

__all__ = ["TaskProgress", "wait", "watch"]

#: Longest single WaitForUpdatesEx; well under the session's request timeout.
MAX_WAIT_SECONDS = 20


@dataclass(frozen=True)
class TaskProgress:
    """One report about a task."""

    task: str  #: the task's managed object id
    description: str  #: what it does, as vCenter names it
    state: str  #: queued | running | success | error
    percent: int | None = None  #: 0-100 when the task reports progress
    error: str | None = None  #: the task's own error text, when it failed
    result: Any = field(default=None, compare=False, repr=False)  #: the task's result, when it succeeded

    @property
    def done(self) -> bool:
        return self.state in ("success", "error")


def _describe(info: Any) -> str:
    desc = getattr(info, "description", None)
    message = getattr(desc, "message", None) if desc is not None else None
    return message or info.descriptionId or info.name or "task"


def _report(task_id: str, info: Any) -> TaskProgress:
    state = str(info.state)
    error = None
    if state == "error" and info.error is not None:
        error = getattr(info.error, "localizedMessage", None) or fault_message(info.error)
    percent = info.progress if info.progress is not None and state == "running" else None
    if state == "success":
        percent = 100
    return TaskProgress(
        task=task_id,
        description=_describe(info),
        state=state,
        percent=percent,
        error=error,
        result=info.result if state == "success" else None,
    )


def watch(session: Session, task: Any) -> Iterator[TaskProgress]:
    """Yield progress reports of `task` until it ends; raise `TaskFailed` if it fails."""
    from pyVmomi import vim, vmodl

    pc_type = vmodl.query.PropertyCollector
    where = session.settings.where
    with translated(where):
        collector = session.content.propertyCollector.CreatePropertyCollector()
    try:
        with translated(where):
            collector.CreateFilter(
                pc_type.FilterSpec(
                    objectSet=[pc_type.ObjectSpec(obj=task)],
                    propSet=[pc_type.PropertySpec(type=vim.Task, pathSet=["info"])],
                ),
                partialUpdates=False,
            )
        version, last = "", None
        while last is None or not last.done:
            with translated(where):
                update = collector.WaitForUpdatesEx(
                    version, pc_type.WaitOptions(maxWaitSeconds=MAX_WAIT_SECONDS)
                )
            if update is None:
                continue  # nothing changed within MAX_WAIT_SECONDS
            version = update.version
            for fs in update.filterSet or []:
                for oc in fs.objectSet or []:
                    for change in oc.changeSet or []:
                        if change.name == "info" and change.val is not None:
                            report = _report(task._moId, change.val)
                            if report != last:
                                last = report
                                yield report
        if last.state == "error":
            raise TaskFailed(
                f"{last.description} failed: {last.error or 'no reason given'}",
                task=last.task,
                error=last.error,
            )
    finally:
        try:
            collector.DestroyPropertyCollector()
        except Exception:  # the session may be gone (Ctrl-C, logout); the collector goes with it
            pass


def wait(session: Session, task: Any, on_progress: Callable[[TaskProgress], None] | None = None) -> Any:
    """Wait for `task`, passing each report to `on_progress`; return the task's result."""
    last = None
    for report in watch(session, task):
        last = report
        if on_progress is not None:
            on_progress(report)
    return last.result if last is not None else None
