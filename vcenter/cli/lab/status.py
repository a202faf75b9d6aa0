"""`radium-admin lab status`."""

from __future__ import annotations

from radium.remoting import Result

from ..command import Context
from . import status_result

HELP = "show whether the lab runs: radiumd and its devices, the simulator"
FLAGS = ("output",)


def run(ctx: Context) -> Result:
    from radium.lab import Lab

    return status_result(Lab().status())
