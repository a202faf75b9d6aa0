"""`radium-admin register-vm VM --appliance NAME... [--ssh USER@HOST[:PORT] ...]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from radium.remoting import Result, UsageError

from .command import Context

HELP = (
    "give a VM a client key on appliances: enrol it, write guestinfo.radium.* on the VM, "
    "tag it radium.client; with --ssh, install it in the VM and check it"
)
FLAGS = ("output", "connection")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("vm", metavar="VM", help="the VM, by name (or managed object id, e.g. vm-42)")
    p.add_argument(
        "--appliance",
        action="extend",
        nargs="+",
        required=True,
        metavar="NAME",
        help="an appliance by name or address in the operator configuration (RADIUM_ADMIN_CONFIG); "
        "repeatable. The VM is then registered with exactly these: its key is revoked on others",
    )
    p.add_argument(
        "--name", metavar="CLIENT", help="the client's name on the appliances (default: kept, else the VM's)"
    )
    p.add_argument(
        "--new-key", action="store_true", help="make a new key pair (default: keep the VM's current one)"
    )
    g = p.add_argument_group("installing it in the VM over SSH (paramiko; the host key is checked)")
    g.add_argument("--ssh", metavar="USER@HOST[:PORT]", help="log in there and install the configuration")
    g.add_argument(
        "--key", type=Path, metavar="FILE", help="SSH private key (default: agent and ~/.ssh keys)"
    )
    g.add_argument(
        "--known-hosts", type=Path, metavar="FILE", help="known host keys (default ~/.ssh/known_hosts)"
    )
    g.add_argument(
        "--accept-new-host-key",
        action="store_true",
        help="accept and record a host key seen for the first time (a changed key is always refused)",
    )
    g.add_argument(
        "--remote-radium",
        default="radium",
        metavar="CMD",
        help="the radium command on the VM (default: radium, on PATH + /usr/local/bin + ~/.local/bin)",
    )


def run(ctx: Context) -> Result:
    from radium import vcenter

    args = ctx.args
    ssh_options = (args.key, args.known_hosts, args.accept_new_host_key, args.remote_radium != "radium")
    if not args.ssh and any(ssh_options):
        raise UsageError("--key, --known-hosts, --accept-new-host-key and --remote-radium go with --ssh")
    ssh = None
    if args.ssh:
        ssh = vcenter.SshInstall(
            target=args.ssh,
            key_file=args.key,
            known_hosts=args.known_hosts,
            accept_new_host_key=args.accept_new_host_key,
            radium=args.remote_radium,
        )
    reg = vcenter.register_vm(
        ctx.session(),
        args.vm,
        args.appliance,
        client_name=args.name,
        new_key=args.new_key,
        ssh=ssh,
        progress=ctx.progress,
    )
    pushed = reg.ssh

    def render(c: Console) -> None:
        key = "a new key" if reg.new_key else "its key"
        c.print(f"VM {reg.vm} registered as client {reg.client} ({key} {reg.public_key}) with:", markup=False)
        for a in reg.appliances:
            c.print(f"  {a.name}  {a.address}")
        if reg.guestinfo_written:
            c.print(
                f"guestinfo: {len(reg.guestinfo_written)} keys written ({', '.join(reg.guestinfo_written)})"
            )
        else:
            c.print("guestinfo: already up to date")
        c.print(
            f"custom attribute radium.client = {reg.attribute}" + ("" if reg.attribute_changed else " (kept)")
        )
        for appliance, name in reg.revoked.items():
            c.print(f"revoked {name} on {appliance} (no longer named)")
        if pushed is None:
            c.print("in the VM (open-vm-tools): radium configure --from-guestinfo")
        else:
            c.print(f"{pushed.target}: configuration written to {pushed.config}")
            state = "healthy" if pushed.healthy else f"NOT healthy: {pushed.error}"
            c.print(f"{pushed.target}: radium health: {state}")

    warnings = reg.warnings
    return Result(reg, render, 1 if warnings else 0, warnings)
