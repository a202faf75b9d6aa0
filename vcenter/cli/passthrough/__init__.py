"""`radium-admin passthrough enable|disable HOST DEVICE...`: a host's DirectPath I/O configuration."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console

from radium.remoting import Result

from ..command import Context

if TYPE_CHECKING:
    from radium.vcenter import PassthroughChange

HELP = "switch a host's PCI devices to passthrough (DirectPath I/O) or back"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("host", metavar="HOST", help="the ESXi host, by name (`radium-admin hosts`)")
    p.add_argument("devices", metavar="DEVICE", nargs="+", help="PCI address, e.g. 0000:3b:00.0 (or 3b:00.0)")


def change(ctx: Context, enable: bool) -> Result:
    from radium import vcenter

    result = vcenter.set_passthrough(ctx.session(), ctx.args.host, ctx.args.devices, enable)
    return Result(result, _render(result))


def _render(r: PassthroughChange) -> Callable[[Console], None]:
    verb = "enabled" if r.enable else "disabled"

    def render(c: Console) -> None:
        for d in r.devices:
            if d.changed:
                c.print(f"{r.host}: passthrough {verb} on {d.address} ({d.description})")
            else:
                c.print(f"{r.host}: {d.address} ({d.description}) was already {verb}")
            if d.reboot_needed:
                c.print(f"  {d.address}: configured {verb}, in effect after the host reboots")
        if r.note:
            c.print(f"note: {r.note}")

    return render
