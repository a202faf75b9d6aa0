"""`radium-admin enroll NAME --appliance CONFIG_OR_ADDRESS`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from radium.remoting import enrolment
from radium.remoting._config import save_client_config
from radium.remoting._errors import UsageError
from radium.remoting.cli.output import Result

from .command import Context

HELP = "create a client key, authorise it on an appliance, write a bundle"
FLAGS = ("output",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the client's name (letters, digits, . _ -)")
    p.add_argument(
        "--appliance",
        required=True,
        metavar="CONFIG_OR_ADDRESS",
        help="a radiumd.toml on this machine, or an appliance address/name known "
        "to the operator configuration (RADIUM_ADMIN_CONFIG)",
    )
    p.add_argument(
        "--address", help="the address clients dial (with a config file; default: from its listen address)"
    )
    p.add_argument("--role", choices=["client", "admin"], default="client")
    p.add_argument(
        "--from-bundle",
        type=Path,
        metavar="FILE",
        help="reuse this bundle's key pair and add the appliance to it",
    )
    p.add_argument("-o", "--output", type=Path, help="bundle file (default NAME.radium.toml)")


def run(ctx: Context) -> Result:
    args = ctx.args
    if enrolment.is_local_reference(args.appliance):
        bundle = enrolment.enroll_local(
            Path(args.appliance), args.name, args.role, args.address, args.from_bundle
        )
        how = f"authorised in the clients folder of {args.appliance}"
    else:
        if args.address:
            raise UsageError("--address applies only when enrolling through a radiumd config file")
        bundle = enrolment.enroll_remote(args.appliance, args.name, args.role, args.from_bundle)
        how = f"authorised on {args.appliance} with the operator key"
    output = args.output or Path(f"{args.name}.radium.toml")
    save_client_config(bundle, output)  # 0600: it holds the secret key
    entry = bundle.appliances[-1]
    data = {
        "name": args.name,
        "role": args.role,
        "bundle": str(output),
        "public_key": bundle.client.public_key,
        "appliance": entry.name,
        "address": entry.address,
    }

    def render(c: Console) -> None:
        c.print(f"{args.role} {args.name}: key {bundle.client.public_key} {how}", markup=False)
        c.print(f"bundle written to {output} (mode 0600; it holds the secret key)")
        if args.role == "client":
            c.print(f"on the client: radium configure --bundle {output}")
        else:
            c.print(f"use it with: export RADIUM_ADMIN_CONFIG={output.resolve()}")

    return Result(data, render)
