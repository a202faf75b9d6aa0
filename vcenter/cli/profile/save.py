"""`radium-admin profile save NAME --url URL --user USER [--thumbprint|--ca|--insecure|--pin] [--keyring]`."""

from __future__ import annotations

import argparse

from rich.console import Console

from radium.remoting._errors import UsageError
from radium.remoting.cli.output import Result

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
    from radium.vcenter import secrets
    from radium.vcenter.connection import check_server, server_thumbprint
    from radium.vcenter.settings import Profile, load_profiles, save_profile

    args = ctx.args
    if args.keyring:
        secrets.require()  # before asking for a password that could not be stored
    s = ctx.settings(need_password=args.keyring, use_profiles=False)
    warnings = []
    pinned_now = None
    if args.pin:
        if s.thumbprint:
            raise UsageError(
                "--pin pins the thumbprint the server presents; do not give one with --thumbprint"
            )
        if s.insecure:
            raise UsageError("--pin and --insecure contradict each other")
        if s.ca:
            pinned_now = check_server(s)  # verified by the CA, then pinned
        else:
            pinned_now = server_thumbprint(s)
            warnings.append(
                f"pinned the thumbprint {s.host}:{s.port} presents now, unverified: {pinned_now}; "
                "check it against the vCenter's certificate"
            )
    profile = Profile(
        url=s.url,
        user=s.user,
        thumbprint=pinned_now or s.thumbprint or "",
        ca=str(s.ca.resolve()) if s.ca and not pinned_now else "",
        insecure=s.insecure,
        keyring=bool(args.keyring),
    )
    if args.keyring:
        assert s.password is not None
        secrets.set_password(s.url, s.user, s.password)
    path = save_profile(args.name, profile, default=args.default)
    is_default = load_profiles(path).default == args.name
    data = {"name": args.name, "file": str(path), "default": is_default, "profile": profile}
    trust = (
        f"pinned SHA-256 {profile.thumbprint}"
        if profile.thumbprint
        else (
            "not verified (--insecure)"
            if profile.insecure
            else (f"CA {profile.ca}" if profile.ca else "system CAs")
        )
    )

    def render(c: Console) -> None:
        c.print(f"profile {args.name}{' (default)' if is_default else ''}: {profile.user} at {profile.url}")
        c.print(f"  certificate: {trust}")
        c.print(f"  password: {'in the system keyring' if args.keyring else 'asked at each use (not saved)'}")
        c.print(f"  saved in {path} (mode 0600)")

    return Result(data, render, warnings=warnings)
