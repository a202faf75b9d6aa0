"""`radium-admin revoke NAME --appliance CONFIG_OR_ADDRESS`."""

from __future__ import annotations

import argparse
from pathlib import Path

from radium.remoting import enrolment
from radium.remoting._errors import UsageError
from radium.remoting.cli.output import Result

from .command import Context

HELP = "remove a client's key from an appliance"
FLAGS = ("output",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--appliance", required=True, metavar="CONFIG_OR_ADDRESS")
    p.add_argument("--role", choices=["client", "admin"], default="client")


def run(ctx: Context) -> Result:
    args = ctx.args
    if enrolment.is_local_reference(args.appliance):
        removed = enrolment.revoke_local(Path(args.appliance), args.name, args.role)
        if not removed:
            raise UsageError(f"no {args.role} named {args.name!r} is enrolled in {args.appliance}")
    else:
        enrolment.revoke_remote(args.appliance, args.name, args.role)
    return Result(
        {"name": args.name, "revoked": True},
        lambda c: c.print(f"revoked {args.role} {args.name} on {args.appliance}"),
    )
