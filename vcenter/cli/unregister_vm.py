"""`radium-admin unregister-vm VM`."""

from __future__ import annotations

import argparse

from rich.console import Console

from radium.remoting import Result

from .command import Context

HELP = "revoke a VM's client key on every appliance and clear what register-vm wrote on it"
FLAGS = ("output", "connection")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("vm", metavar="VM", help="the VM, by name (or managed object id, e.g. vm-42)")
    p.add_argument(
        "--force",
        action="store_true",
        help="clear the VM's guestinfo and attribute even where the key could not be revoked",
    )


def run(ctx: Context) -> Result:
    from radium import vcenter

    done = vcenter.unregister_vm(ctx.session(), ctx.args.vm, force=ctx.args.force, progress=ctx.progress)
    warnings = done.warnings

    def render(c: Console) -> None:
        if not done.changed and not done.not_revoked:
            c.print(f"VM {done.vm} was not registered: nothing to do")
            return
        if done.revoked:
            c.print(f"revoked client {done.client} on {', '.join(done.revoked)}")
        if done.guestinfo_cleared:
            c.print(f"guestinfo cleared on {done.vm}: {', '.join(done.guestinfo_cleared)}")
        if done.attribute_cleared:
            c.print(f"custom attribute radium.client removed from {done.vm}")

    return Result(done, render, 1 if warnings else 0, warnings)
