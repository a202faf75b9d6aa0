"""Long vCenter tasks as a stream of progress reports.

`watch(session, task)` yields a `TaskProgress` whenever the task's state,
progress or description changes (it listens with ``WaitForUpdatesEx`` on a
property collector of its own, so no polling), and ends with a report in state
``success``, or raises `TaskFailed` carrying the task's own error text (the
fault's ``localizedMessage``).  `wait` follows a task to its end, handing each
report to an operation's `Progress` sink (`radium.vcenter.progress`), which each
face renders its own way.

    for report in watch(vc, vm.PowerOnVM_Task()):
        print(report.percent, report.description)
    vm = wait(vc, folder.CreateVM_Task(...), progress)   # the task's result
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from .collect import NO_CHANGE, updates
from .connection import Session
from .errors import TaskFailed, fault_message
from .progress import Progress, TaskProgress

__all__ = ["TaskProgress", "wait", "watch"]

#: Longest single WaitForUpdatesEx; well under the session's request timeout.
MAX_WAIT_SECONDS = 20


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
    last = None
    with contextlib.closing(updates(session, task, "info", MAX_WAIT_SECONDS)) as infos:
        for info in infos:
            if info is NO_CHANGE or info is None:
                continue
            report = _report(task._moId, info)
            if report != last:
                last = report
                yield report
            if last.done:
                break
    assert last is not None
    if last.state == "error":
        raise TaskFailed(
            f"{last.description} failed: {last.error or 'no reason given'}",
            task=last.task,
            error=last.error,
        )


def wait(
    session: Session,
    task: Any,
    progress: Progress | None = None,
    check: Callable[[], None] | None = None,
) -> Any:
    """Wait for `task`, passing each report to `progress`; return the task's result.

    `check` is called before each report is passed on and once at the end (a deploy
    raises there when it was interrupted).  A failed task raises `TaskFailed`.
    """
    last = None
    for report in watch(session, task):
        if check is not None:
            check()
        last = report
        if progress is not None:
            progress(report)
    if check is not None:
        check()
    return last.result if last is not None else None
