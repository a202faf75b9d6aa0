"""`radium-admin lab up|down|status`: the lab (`radium.lab`), a local appliance and a vCenter simulator."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from radium.remoting import Result

if TYPE_CHECKING:
    from radium.lab import LabStatus

HELP = (
    "a local appliance (in a network namespace, or the image under qemu), and a vCenter simulator around it"
)


def status_result(st: LabStatus) -> Result:
    """What `lab up` and `lab status` print; non-zero when a part is down or failed."""

    def render(c: Console) -> None:
        if not st.up:
            c.print(f"lab is down ({st.directory})")
            if st.vcenter_pid:
                c.print(f"  vCenter        simulator pid {st.vcenter_pid} still runs (radium-admin lab down)")
            return
        if st.vm:
            c.print(f"lab is up: the appliance image at {st.address}")
            c.print(f"  VM             {st.vm}")
        else:
            c.print(f"lab is up: radiumd pid {st.pid} at {st.address}")
            c.print(f"  metrics        {st.metrics}")
        c.print(f"  client profile {st.client_config} (used by `radium` when nothing else is configured)")
        c.print(
            f"  operator key   {st.admin_config} (used by `radium-admin` when nothing else is configured)"
        )
        for d in st.devices or []:
            c.print(f"  device         {d}")
        if st.error:
            c.print(f"  [red]error[/red]          {escape(st.error)}")
        if st.vcenter_pid:
            c.print(f"  vCenter        simulator pid {st.vcenter_pid} at {st.vcenter}")
            c.print(f"  vCenter profile {st.vcenter_profile} (used when no vCenter is configured)")
        if st.appliance_vm:
            c.print(f"  appliance VM   {st.appliance_vm}")
        if st.vcenter_error:
            c.print(f"  [red]vCenter error[/red]  {escape(st.vcenter_error)}")
        if st.vcenter_unavailable:
            c.print(f"  vCenter        none: {st.vcenter_unavailable}")

    return Result(st, render, 0 if st.healthy else 1)
