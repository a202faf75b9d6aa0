"""`radium-admin appliance list`: the VMs that are Radium appliances."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from radium.remoting import Result

from ..command import Context

HELP = "list the Radium appliances: host, power state, address, GPUs, server public key"
FLAGS = ("output", "connection")

POWER = {"poweredOn": "on", "poweredOff": "off", "suspended": "suspended"}


def run(ctx: Context) -> Result:
    from radium import vcenter

    found = vcenter.list_appliances(ctx.session())

    def render(c: Console) -> None:
        if not found:
            c.print(
                "no Radium appliance in this vCenter "
                "(radium-admin appliance deploy NAME --host HOST --ova PATH)"
            )
            return
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("appliance", "host", "power", "address", "GPUs", "server key"):
            table.add_column(col)
        for a in found:
            gpus = "\n".join(f"{g.address} {g.model}".strip() for g in a.gpus) or "-"
            cells = (
                a.vm,
                a.host or "-",
                POWER.get(a.power_state, a.power_state),
                a.address or (a.ip or "-"),
                gpus,
                a.server_public_key or "(unknown)",
            )
            table.add_row(*(Text(cell) for cell in cells))  # keys hold [ ] /: not markup
        c.print(table)

    return Result({"appliances": found}, render)
