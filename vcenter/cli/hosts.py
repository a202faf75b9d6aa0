"""`radium-admin hosts`: every host, its cluster and state, and its accelerators."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

from radium.remoting import Result

from .command import Context

if TYPE_CHECKING:
    from radium.vcenter import Host, PassthroughDevice

HELP = "list hosts and their accelerators: passthrough capable/enabled/active, and the VM holding each"
FLAGS = ("output", "connection")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _state(h: Host) -> str:
    power = {"poweredOn": "on", "poweredOff": "off", "standBy": "standby"}.get(h.power_state, h.power_state)
    state = f"{h.connection_state}, {power}"
    return state + ", maintenance" if h.maintenance_mode else state


def _active(d: PassthroughDevice) -> str:
    return _yes(d.active) + (" (reboot pending)" if d.reboot_pending else "")


def render_hosts(hosts: list[Host], round_trips: int) -> Callable[[Console], None]:
    def render(c: Console) -> None:
        if not hosts:
            c.print("no hosts in this vCenter")
            return
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for col in (
            "host",
            "cluster",
            "state",
            "device",
            "vendor / model",
            "capable",
            "enabled",
            "active",
            "held by",
        ):
            table.add_column(col)
        for h in hosts:
            first = [h.name, h.cluster or "-", _state(h)]
            if not h.accelerators:
                table.add_row(*first, "-", "no accelerators", "", "", "", "")
            for i, d in enumerate(h.accelerators):
                lead = first if i == 0 else ["", "", ""]
                table.add_row(
                    *lead,
                    d.address,
                    f"{d.vendor} {d.model}",
                    _yes(d.capable),
                    _yes(d.enabled),
                    _active(d),
                    d.held_by or "-",
                    end_section=i == len(h.accelerators) - 1,
                )
        c.print(table)
        devices = [d for h in hosts for d in h.accelerators]
        enabled = sum(d.enabled for d in devices)
        held = sum(bool(d.held_by) for d in devices)
        pending = sorted({h.name for h in hosts for d in h.accelerators if d.reboot_pending})
        c.print(
            f"{len(hosts)} hosts, {len(devices)} accelerators ({enabled} enabled for passthrough, "
            f"{held} held by a powered-on VM); collected in {round_trips} round trips"
        )
        if pending:
            c.print(f"reboot pending (passthrough changed, not yet in effect): {', '.join(pending)}")

    return render


def run(ctx: Context) -> Result:
    from radium import vcenter

    inv = vcenter.collect_inventory(ctx.session())
    data = {"hosts": inv.hosts, "round_trips": inv.round_trips}
    return Result(data, render_hosts(inv.hosts, inv.round_trips))
