"""`radium-admin enroll NAME --appliance CONFIG_OR_ADDRESS`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from radium.remoting import ROLES, Result, enroll

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
    p.add_argument("--role", choices=ROLES, default="client")
    p.add_argument(
        "--from-bundle",
        type=Path,
        metavar="FILE",
        help="reuse this bundle's key pair and add the appliance to it",
    )
    p.add_argument("-o", "--output", type=Path, help="bundle file (default NAME.radium.toml)")


def run(ctx: Context) -> Result:
    a = ctx.args
    done = enroll(
        a.name, a.appliance, role=a.role, address=a.address, from_bundle=a.from_bundle, output=a.output
    )

    def render(c: Console) -> None:
        c.print(f"{done.role} {done.name}: key {done.config.client.public_key} {done.how}", markup=False)
        c.print(f"bundle written to {done.bundle} (mode 0600; it holds the secret key)")
        if done.role == "client":
            c.print(f"on the client: radium configure --bundle {done.bundle}")
        else:
            c.print(f"use it with: export RADIUM_ADMIN_CONFIG={done.bundle.resolve()}")

    return Result(done.summary(), render)
