"""`radium-admin lab up`."""

from __future__ import annotations

from radium.remoting import Result

from ..command import Context
from . import status_result

HELP = "start the lab (idempotent)"
FLAGS = ("output",)


def run(ctx: Context) -> Result:
    from radium.lab import Lab

    return status_result(Lab().up())
