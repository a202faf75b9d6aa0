"""`radium-admin appliance remove NAME`: power an appliance off and destroy it."""

from __future__ import annotations

import argparse

from rich.console import Console

from radium.remoting import Result

from ..command import Context

HELP = "power an appliance off and destroy its VM (and drop it from the operator configuration)"
FLAGS = ("output", "connection")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the appliance's VM name (`radium-admin appliance list`)")


def run(ctx: Context) -> Result:
    from radium import vcenter

    r = vcenter.remove_appliance(ctx.session(), ctx.args.name, ctx.progress)

    def render(c: Console) -> None:
        how = "powered off and destroyed" if r.powered_off else "destroyed (it was off)"
        c.print(f"appliance {r.vm} ({r.id}) {how}")
        if r.operator_entry_removed:
            c.print(f"removed from the operator configuration {r.operator_entry_removed}")

    return Result(r, render)
