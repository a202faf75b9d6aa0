"""`radium-admin appliance status NAME`: vCenter's view of an appliance, and whether radiumd answers."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

from radium.remoting import Result

from ..command import Context

HELP = "show an appliance's state in vCenter and its radiumd's health (reached with the operator key)"
FLAGS = ("output", "connection")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the appliance's VM name (`radium-admin appliance list`)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="how long radiumd may take")


def run(ctx: Context) -> Result:
    from radium import vcenter

    st = vcenter.appliance_status(ctx.session(), ctx.args.name, timeout=ctx.args.timeout)
    a, h = st.appliance, st.health

    def render(c: Console) -> None:
        state = "[green]healthy[/green]" if st.healthy else "[red]NOT healthy[/red]"
        c.print(f"appliance {escape(a.vm)}: {state}")
        c.print(f"  vCenter      {a.id} on {a.host or '-'}, {a.power_state}", markup=False)
        for g in a.gpus:
            c.print(f"  GPU          {g.address} {g.model}".rstrip(), markup=False)
        c.print(f"  address      {a.address or '-'}", markup=False)
        c.print(f"  server key   {a.server_public_key or '(unknown)'}", markup=False)
        if h.reachable:
            c.print(f"  radiumd      {h.server} {h.version}: {len(h.devices)} device(s)", markup=False)
            for d in h.devices:
                c.print(f"               {d}", markup=False)
        else:
            c.print(f"  radiumd      unreachable: {h.error}", markup=False)

    return Result(st, render, 0 if st.healthy else 1)
