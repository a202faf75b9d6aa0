"""`radium-admin appliance deploy NAME --host HOST --ova PATH|--ovf PATH [...]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from radium.remoting import DEFAULT_PORT, Result, UsageError

from ..command import Context

HELP = (
    "deploy an appliance: import the OVF, give it the host's GPUs (DirectPath), configure and power "
    "it on, and wait for its radiumd"
)
FLAGS = ("output", "connection")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from radium.vcenter import DEFAULT_TIMEOUT

    p.add_argument(
        "name",
        metavar="NAME",
        help="the VM's name, also radiumd's name and the appliance's host name (letters, digits, . _ -)",
    )
    p.add_argument("--host", required=True, metavar="HOST", help="the ESXi host whose GPUs it gets")
    p.add_argument(
        "--gpus",
        default="all",
        metavar="all|ADDR,...",
        help="the host's devices to pass through: 'all' (default: every one enabled, active and free) "
        "or PCI addresses separated by commas",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ova", type=Path, metavar="PATH", help="the appliance package, one .ova file")
    source.add_argument(
        "--ovf",
        type=Path,
        metavar="PATH",
        help="the appliance package: a .ovf with its files, or their folder",
    )
    g = p.add_argument_group(
        "placement (default: the host's datastore with most free space, its network "
        "named as in the OVF else its first, the datacenter's VM folder)"
    )
    g.add_argument("--datastore", metavar="NAME")
    g.add_argument("--network", metavar="NAME", help="the port group the appliance's NIC joins")
    g.add_argument("--folder", metavar="PATH", help="a VM folder under the datacenter's, e.g. radium/gpu")
    n = p.add_argument_group("the appliance's network")
    n.add_argument("--ip", default="dhcp", metavar="dhcp|ADDR/PREFIX", help="default: dhcp")
    n.add_argument("--gateway", metavar="ADDR", help="default gateway (with a static --ip)")
    n.add_argument("--dns", metavar="ADDR,...", help="DNS servers")
    n.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"radiumd's port (default {DEFAULT_PORT})")
    p.add_argument(
        "--replace",
        action="store_true",
        help="power off and destroy a VM of that name first (default: refuse)",
    )
    p.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="return once it is powered on, without waiting for its IP address and radiumd",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for its IP address and radiumd together (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--keys-out",
        type=Path,
        metavar="DIR",
        help="also write the appliance's key pair and operator key into DIR as radiumd lays them out "
        "(server.key, server.key_secret, admins.d/): for tests and recovery; it holds the secret key",
    )


def run(ctx: Context) -> Result:
    from radium import vcenter

    a = ctx.args
    if a.ova is not None and a.ova.suffix.lower() != ".ova":
        raise UsageError(f"--ova {a.ova}: expected a .ova file (use --ovf for a .ovf or a package folder)")
    if a.ovf is not None and a.ovf.suffix.lower() == ".ova":
        raise UsageError(f"--ovf {a.ovf}: that is an OVA; use --ova")
    request = vcenter.DeployRequest(
        name=a.name,
        host=a.host,
        package=a.ova or a.ovf,
        gpus=a.gpus,
        datastore=a.datastore,
        network=a.network,
        folder=a.folder,
        ip=a.ip,
        gateway=a.gateway,
        dns=a.dns,
        port=a.port,
        replace=a.replace,
        wait=a.wait,
        timeout=a.timeout,
        keys_out=a.keys_out,
    )
    request.check()  # before logging in to vCenter
    d = vcenter.deploy_appliance(ctx.session(), request, ctx.progress)

    def render(c: Console) -> None:
        c.print(
            f"appliance {d.vm} deployed on {d.host} ({d.id}; datastore {d.datastore}; folder {d.folder})",
            markup=False,
        )
        for g in d.gpus:
            guess = "" if g.memory_known else ", assumed"
            c.print(
                f"  GPU          {g.address} {g.vendor} {g.model} ({g.memory_gib} GiB{guess})", markup=False
            )
        c.print(
            f"  64-bit MMIO  {d.mmio_size_gib} GiB; EFI; memory reservation locked to the maximum",
            markup=False,
        )
        c.print(f"  server key   {d.server_public_key}", markup=False)
        made = " (made now)" if d.operator.created else ""
        c.print(
            f"  operator     {d.operator.name} {d.operator.public_key}{made}: {d.operator.config}",
            markup=False,
        )
        if d.keys_out:
            c.print(f"  keys         also written to {d.keys_out} (it holds the secret key)", markup=False)
        c.print(f"  power        {d.power_state}", markup=False)
        if d.address:
            c.print(
                f"  address      {d.address}"
                + ("; added to the operator configuration" if d.operator.recorded else ""),
                markup=False,
            )
        elif not d.waited:
            c.print(
                f"  address      not known yet (--no-wait): `radium-admin appliance status {d.vm}` shows it"
            )
        if d.radiumd is not None and d.radiumd.reachable:
            c.print(f"  radiumd      answers: {len(d.radiumd.devices)} device(s)", markup=False)
            for dev in d.radiumd.devices:
                c.print(f"               {dev}", markup=False)
        elif d.waited:
            c.print("  radiumd      [red]did not answer[/red]")

    return Result(d, render, 1 if d.ready is False else 0, list(d.warnings))
