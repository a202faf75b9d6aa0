"""`radium-admin`: the operator's command line.

Verbs so far: `version`, `enroll`, `revoke`, and `lab` (a local appliance in a
network namespace).  The vCenter verbs (hosts, passthrough, appliance deploy,
register-vm) arrive with the vCenter integration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from radium.remoting import enrolment
from radium.remoting._config import dump_toml, save_client_config
from radium.remoting._errors import RadiumError, UsageError
from radium.remoting._version import VERSION
from radium.remoting.cli.output import Result, emit, emit_error

PROG = "radium-admin"


def cmd_version(args: argparse.Namespace) -> Result:
    return Result({"radium": VERSION}, lambda c: c.print(f"radium-admin {VERSION}"))


def cmd_enroll(args: argparse.Namespace) -> Result:
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
        c.print(f"{args.role} {args.name}: key {bundle.client.public_key} {how}")
        c.print(f"bundle written to {output} (mode 0600; it holds the secret key)")
        if args.role == "client":
            c.print(f"on the client: radium configure --bundle {output}")
        else:
            c.print(f"use it with: export RADIUM_ADMIN_CONFIG={output.resolve()}")

    return Result(data, render)


def cmd_revoke(args: argparse.Namespace) -> Result:
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


def cmd_show_bundle(args: argparse.Namespace) -> Result:  # pragma: no cover - convenience
    from radium.remoting._config import ClientConfig, load_toml

    bundle = load_toml(args.bundle, ClientConfig)
    text = dump_toml(bundle).replace(bundle.client.secret_key, "<secret>")
    return Result({"bundle": str(args.bundle)}, lambda c: c.print(text))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Operate a Radium estate.")
    parser.add_argument("--version", action="version", version=f"radium-admin {VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        p.set_defaults(func=func)
        return p

    command("version", cmd_version, "print the version")
    p = command("enroll", cmd_enroll, "create a client key, authorise it on an appliance, write a bundle")
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
    p = command("revoke", cmd_revoke, "remove a client's key from an appliance")
    p.add_argument("name")
    p.add_argument("--appliance", required=True, metavar="CONFIG_OR_ADDRESS")
    p.add_argument("--role", choices=["client", "admin"], default="client")
    from radium.lab import cli as lab_cli

    lab_cli.add_parser(sub, command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return emit(args.func(args), args.json)
    except RadiumError as exc:
        return emit_error(PROG, exc, args.json)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
