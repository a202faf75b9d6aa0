"""`radium-admin version`."""

from __future__ import annotations

from radium.remoting._version import VERSION
from radium.remoting.cli.output import Result

from .command import Context

HELP = "print the version"
FLAGS = ("output",)


def run(ctx: Context) -> Result:
    return Result({"radium": VERSION}, lambda c: c.print(f"radium-admin {VERSION}"))
