"""`radium-admin version`."""

from __future__ import annotations

from radium.remoting import VERSION, Result

from .command import Context

HELP = "print the version"
FLAGS = ("output",)


def run(ctx: Context) -> Result:
    return Result({"radium": VERSION}, lambda c: c.print(f"radium-admin {VERSION}"))
