"""`radium-admin lab up|down|status`."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

from radium.remoting.cli.output import Result

from .lab import Lab


def _render_status(st) -> callable:  # type: ignore[valid-type]
    def render(c: Console) -> None:
        if not st.up:
            c.print(f"lab is down ({st.directory})")
            if st.vcenter_pid:
                c.print(f"  vCenter        simulator pid {st.vcenter_pid} still runs (radium-admin lab down)")
            return
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

    return render


def _code(st) -> int:  # type: ignore[no-untyped-def]
    return 0 if st.up and st.error is None and st.vcenter_error is None else 1


def cmd_up(args: argparse.Namespace) -> Result:
    st = Lab().up()
    return Result(st, _render_status(st), _code(st))


def cmd_down(args: argparse.Namespace) -> Result:
    was_up = Lab().down()
    return Result({"stopped": was_up}, lambda c: c.print("lab stopped" if was_up else "lab was not running"))


def cmd_status(args: argparse.Namespace) -> Result:
    st = Lab().status()
    return Result(st, _render_status(st), _code(st))


def add_parser(sub, command) -> None:  # type: ignore[no-untyped-def]
    p = sub.add_parser(
        "lab",
        help="a local appliance in a network namespace, and a vCenter simulator around it",
        description="a local appliance in a network namespace, and a vCenter simulator around it",
    )
    verbs = p.add_subparsers(dest="lab_command", metavar="VERB", required=True)
    for name, func, help in (
        ("up", cmd_up, "start the lab (idempotent)"),
        ("down", cmd_down, "stop the lab (radiumd, the simulator) and remove its namespace"),
        ("status", cmd_status, "show whether the lab runs: radiumd and its devices, the simulator"),
    ):
        v = verbs.add_parser(name, help=help, description=help)
        v.add_argument("--json", action="store_true", help="print machine-readable JSON")
        v.set_defaults(func=func)
