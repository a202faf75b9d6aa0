"""`radium-admin appliance sessions [NAME]`: clients' open sessions, their leases and their runs."""

from __future__ import annotations

import argparse
import time

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from radium.remoting import Result

from ..command import Context

HELP = "list the clients' open sessions on the appliances (or one): leases, devices, carried processes"
FLAGS = ("output", "connection")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", metavar="NAME", help="one appliance's VM name (default: all of them)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="how long radiumd may take")


def run(ctx: Context) -> Result:
    from radium import vcenter

    found = vcenter.appliance_sessions(ctx.session(), ctx.args.name, timeout=ctx.args.timeout)

    def render(c: Console) -> None:
        if not found:
            c.print("no Radium appliance in this vCenter")
            return
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("appliance", "session", "client", "leases", "runs", "since"):
            table.add_column(col)
        now = time.time()
        for a in found:
            if a.error is not None:
                table.add_row(Text(a.appliance), Text(f"unreachable: {a.error}", style="red"))
                continue
            for s in a.sessions:
                leases = "\n".join(
                    f"{lease.id} " + ", ".join(p.device_id for p in lease.parts) for lease in s.leases
                )
                runs = "\n".join(vcenter.command_of(r, 50) for r in s.runs)
                client = f"{s.client}@{s.client_host}" if s.client_host else s.client
                cells = (
                    a.appliance,
                    s.id,
                    client,
                    leases or "-",
                    runs or "-",
                    vcenter.age(now - s.opened_at),
                )
                table.add_row(*(Text(cell) for cell in cells))
        c.print(table)
        count = sum(len(a.sessions) for a in found)
        c.print(f"{count} open session{'' if count == 1 else 's'} on {len(found)} appliance(s)")

    failed = any(a.error is not None for a in found)
    return Result({"appliances": found}, render, 1 if failed else 0)
