"""`radium-admin hosts`: every host, its cluster and state, and its accelerators."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

from radium.remoting import Result

from .command import Context

if TYPE_CHECKING:
    from radium.vcenter import Host, Inventory, PassthroughDevice

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


COLUMNS = ("host", "cluster", "state", "device", "vendor / model", "capable", "enabled", "active", "held by")


def _rows(hosts: list[Host]) -> Iterator[tuple[list[str], bool]]:
    """Each line of the table, and whether it ends its host's section."""
    for h in hosts:
        first = [h.name, h.cluster or "-", _state(h)]
        if not h.accelerators:
            yield [*first, "-", "no accelerators", "", "", "", ""], True
        for i, d in enumerate(h.accelerators):
            lead = first if i == 0 else ["", "", ""]
            cells = [d.address, f"{d.vendor} {d.model}", _yes(d.capable), _yes(d.enabled), _active(d)]
            yield [*lead, *cells, d.held_by or "-"], i == len(h.accelerators) - 1


def _table(hosts: list[Host], widths: list[int], header: bool) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_header=header)
    for col, width in zip(COLUMNS, widths, strict=True):
        table.add_column(col, width=width, overflow="fold")
    for cells, end in _rows(hosts):
        table.add_row(*cells, end_section=end)
    return table


def _widths(hosts: list[Host]) -> list[int]:
    """Widths that fit the first page, with room to spare, kept for the pages after it (so they line up)."""
    widths = [len(col) for col in COLUMNS]
    for cells, _ in _rows(hosts):
        widths = [max(w, len(cell)) for w, cell in zip(widths, cells, strict=True)]
    return [w + 2 if i in (0, 1, 8) else w for i, w in enumerate(widths)]  # names vary; the rest hardly


def render_pages(pages: Iterable[Inventory]) -> Callable[[Console], None]:
    """Print each page of hosts as it arrives (a first screen in a fraction of the whole), then totals."""

    def render(c: Console) -> None:
        hosts: list[Host] = []
        widths: list[int] | None = None
        round_trips = 0
        for page in pages:
            round_trips = page.round_trips
            if not page.hosts:
                continue
            first = widths is None
            widths = widths or _widths(page.hosts)
            c.print(_table(page.hosts, widths, header=first))
            hosts += page.hosts
        if not hosts:
            c.print("no hosts in this vCenter")
            return
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

    pages = vcenter.inventory_pages(ctx.session())
    if not ctx.json:  # printed page by page, as vCenter answers
        return Result(None, render_pages(pages))
    read = list(pages)
    data = {"hosts": [h for p in read for h in p.hosts], "round_trips": read[-1].round_trips}
    return Result(data, render_pages(read))
