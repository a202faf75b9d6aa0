"""`radium-admin lab down`."""

from __future__ import annotations

from radium.remoting import Result

from ..command import Context

HELP = "stop the lab (radiumd, the simulator) and remove its namespace"
FLAGS = ("output",)


def run(ctx: Context) -> Result:
    from radium.lab import Lab

    was_up = Lab().down()
    return Result({"stopped": was_up}, lambda c: c.print("lab stopped" if was_up else "lab was not running"))
