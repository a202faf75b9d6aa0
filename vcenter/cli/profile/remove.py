"""`radium-admin profile remove NAME`."""

from __future__ import annotations

import argparse

from radium.remoting.cli.output import Result

from ..command import Context

HELP = "remove a saved vCenter profile (and its password from the system keyring)"
FLAGS = ("output",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")


def run(ctx: Context) -> Result:
    from radium.vcenter import secrets
    from radium.vcenter.settings import remove_profile

    removed = remove_profile(ctx.args.name)
    forgot = secrets.delete_password(removed.url, removed.user) if removed.keyring else False
    note = " and its password from the system keyring" if forgot else ""
    return Result(
        {"removed": ctx.args.name, "keyring_entry_removed": forgot},
        lambda c: c.print(f"removed profile {ctx.args.name}{note}"),
    )
