"""`radium-admin profile save NAME --url URL --user USER [--thumbprint|--ca|--insecure|--pin] [--keyring]`."""

from __future__ import annotations

import argparse

from rich.console import Console

from radium.remoting import Result

from ..command import Context

HELP = "save a vCenter connection (URL, user, how to trust it) as a profile; never the password"
FLAGS = ("output", "target", "password")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the profile's name")
    p.add_argument(
        "--pin",
        action="store_true",
        help="connect now and pin the SHA-256 thumbprint the server presents (check it against vCenter's); "
        "with --ca the certificate is verified first",
    )
    p.add_argument(
        "--keyring",
        action="store_true",
        help="store the password in the system keyring (needs the `keyring` library); "
        "it is read from --password-stdin, RADIUM_VCENTER_PASSWORD, or a prompt",
    )
    p.add_argument("--default", action="store_true", help="make it the default profile")


def run(ctx: Context) -> Result:
    from radium import vcenter

    args = ctx.args
    if args.keyring:
        vcenter.check_keyring()  # before asking for a password that could not be stored
    settings = ctx.settings(need_password=args.keyring, use_profiles=False)
    saved = vcenter.save_profile(
        args.name, settings, pin=args.pin, keyring=args.keyring, default=args.default
    )
    profile = saved.profile

    def render(c: Console) -> None:
        c.print(
            f"profile {saved.name}{' (default)' if saved.default else ''}: {profile.user} at {profile.url}"
        )
        c.print(f"  certificate: {saved.trust}")
        c.print(
            f"  password: {'in the system keyring' if profile.keyring else 'asked at each use (not saved)'}"
        )
        c.print(f"  saved in {saved.path} (mode 0600)")

    return Result(saved.summary(), render, warnings=saved.warnings)
