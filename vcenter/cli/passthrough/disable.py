"""`radium-admin passthrough disable HOST DEVICE...`."""

from __future__ import annotations

from radium.remoting import Result

from ..command import Context
from . import add_arguments, change

__all__ = ["FLAGS", "HELP", "add_arguments", "run"]

HELP = "disable passthrough of PCI devices on a host (in effect after its next reboot)"
FLAGS = ("output", "connection")


def run(ctx: Context) -> Result:
    return change(ctx, enable=False)
