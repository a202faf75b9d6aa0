"""Radium's threads named for the operating system as well as for Python.

Python 3.11 keeps a thread's name to itself: `top -H`, `ps -L`, perf and
/proc/<pid>/task/<tid>/comm show every thread as the process.  The run benchmark
tells where a cold read's CPU went by those names (radium-direct-receive,
radium-files_3, ...), and so can an operator with `top -H`.  Trio names its own
worker threads already.  The name is written where the kernel shows it
(/proc/self/task/<tid>/comm, as prctl(PR_SET_NAME) would set it; no ctypes to import).
"""

from __future__ import annotations

import threading
from typing import Any

COMM_BYTES = 15  # the kernel keeps 15 bytes of a thread's name, and a NUL


def name_for_the_os(name: str | None = None) -> None:
    """Give the calling thread `name` (by default its Python name) in the OS, cut to 15 bytes."""
    raw = (name if name is not None else threading.current_thread().name).encode(errors="replace")
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "wb", buffering=0) as comm:
            comm.write(raw[:COMM_BYTES])
    except OSError:  # no /proc (a sandbox): the name stays Python's own
        pass


class Thread(threading.Thread):
    """A `threading.Thread` that takes its name in the OS as it starts."""

    def run(self) -> Any:
        name_for_the_os(self.name)
        return super().run()
