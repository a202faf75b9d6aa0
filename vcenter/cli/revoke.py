"""`radium-admin revoke NAME --appliance CONFIG_OR_ADDRESS`."""

from __future__ import annotations

import argparse

from radium.remoting import ROLES, Result, revoke

from .command import Context

HELP = "remove a client's key from an appliance"
FLAGS = ("output",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--appliance", required=True, metavar="CONFIG_OR_ADDRESS")
    p.add_argument("--role", choices=ROLES, default="client")


def run(ctx: Context) -> Result:
    a = ctx.args
    done = revoke(a.name, a.appliance, role=a.role)
    return Result(done, lambda c: c.print(f"revoked {a.role} {a.name} on {a.appliance}"))
