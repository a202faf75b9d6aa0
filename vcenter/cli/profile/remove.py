"""`radium-admin profile remove NAME`."""

from __future__ import annotations

import argparse

from radium.remoting import Result

from ..command import Context

HELP = "remove a saved vCenter profile (and its password from the system keyring)"
FLAGS = ("output",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")


def run(ctx: Context) -> Result:
    from radium import vcenter

    done = vcenter.remove_profile(ctx.args.name)
    note = " and its password from the system keyring" if done.keyring_entry_removed else ""
    return Result(done, lambda c: c.print(f"removed profile {done.removed}{note}"))
