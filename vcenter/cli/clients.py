"""`radium-admin clients`: the VMs registered as Radium clients."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from radium.remoting import Result

from .command import Context

HELP = "list the VMs registered as clients (register-vm): host, power state, client name, appliances"
FLAGS = ("output", "connection")

_POWER = {"poweredOn": "on", "poweredOff": "off", "suspended": "suspended"}


def run(ctx: Context) -> Result:
    from radium import vcenter

    clients = vcenter.list_clients(ctx.session())

    def render(c: Console) -> None:
        if not clients:
            c.print("no VM is registered as a client (radium-admin register-vm VM --appliance NAME)")
            return
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("VM", "host", "power", "client", "appliances"):
            table.add_column(col)
        for v in clients:
            appliances = ", ".join(v.appliances) or "-"
            if v.client is None:
                appliances += " (attribute only: guestinfo missing)"
            table.add_row(
                v.vm, v.host or "-", _POWER.get(v.power_state, v.power_state), v.client or "-", appliances
            )
        c.print(table)

    return Result({"clients": clients}, render)
