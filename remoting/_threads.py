"""Radium's threads named for the operating system as well as for Python.

Python 3.11 keeps a thread's name to itself: `top -H`, `ps -L`, perf and
/proc/<pid>/task/<tid>/comm show every thread as the process.  The run benchmark
tells where a cold read's CPU went by those names (radium-direct-receive,
radium-files_3, ...), and so can an operator with `top -H`.  Trio names its own
worker threads already.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

_PR_SET_NAME = 15  # <linux/prctl.h>; the kernel keeps 15 bytes and a NUL

try:
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux, or no libc symbol: names stay Python's own
    _prctl = None


def name_for_the_os(name: str | None = None) -> None:
    """Give the calling thread `name` (by default its Python name) in the OS, cut to 15 bytes."""
    if _prctl is not None:
        raw = (name if name is not None else threading.current_thread().name).encode(errors="replace")
        _prctl(_PR_SET_NAME, ctypes.c_char_p(raw[:15]), 0, 0, 0)


class Thread(threading.Thread):
    """A `threading.Thread` that takes its name in the OS as it starts."""

    def run(self) -> Any:
        name_for_the_os(self.name)
        return super().run()
