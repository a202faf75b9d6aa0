"""Flags shared by many commands, each set created once and composed into commands (argparse parents).

    OUTPUT      --json
    TARGET      --url --user --thumbprint --ca --insecure   (which vCenter, and how to trust it)
    PROFILE     --profile                                   (a saved profile to start from)
    PASSWORD    --password-stdin

A command that talks to vCenter takes CONNECTION = TARGET + PROFILE + PASSWORD.
Environment variables are read in one place, `radium.vcenter.settings`.
"""

from __future__ import annotations

import argparse

__all__ = ["CONNECTION", "GROUPS", "OUTPUT", "PASSWORD", "PROFILE", "TARGET"]


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def _output() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--json", action="store_true", help="print machine-readable JSON (errors too)")
    return p


# One title: argparse merges the groups of parents that share it into one help section.
TITLE = "vCenter connection (default: RADIUM_VCENTER_* variables, then the default profile)"


def _target() -> argparse.ArgumentParser:
    p = _parent()
    g = p.add_argument_group(TITLE)
    g.add_argument("--url", metavar="URL", help="vCenter address: HOST[:PORT] or https://HOST[:PORT]/sdk")
    g.add_argument("-u", "--user", metavar="USER", help="user name, e.g. administrator@vsphere.local")
    # One way to trust the server; settings.resolve refuses two.
    g.add_argument(
        "--thumbprint",
        metavar="SHA256",
        help="accept only the server certificate with this SHA-256 thumbprint",
    )
    g.add_argument("--ca", metavar="FILE", help="verify the server certificate with this CA bundle (PEM)")
    g.add_argument(
        "--insecure", action="store_true", default=None, help="do not verify the server certificate"
    )
    return p


def _profile() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument_group(TITLE).add_argument(
        "--profile", metavar="NAME", help="start from this saved profile (`radium-admin profile list`)"
    )
    return p


def _password() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument_group(TITLE).add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input "
        "(default: RADIUM_VCENTER_PASSWORD, the system keyring, else a prompt on a terminal)",
    )
    return p


OUTPUT = _output()
TARGET = _target()
PROFILE = _profile()
PASSWORD = _password()
CONNECTION = [TARGET, PROFILE, PASSWORD]

#: Flag sets by the name a command lists in its FLAGS.
GROUPS: dict[str, list[argparse.ArgumentParser]] = {
    "output": [OUTPUT],
    "connection": CONNECTION,
    "target": [TARGET],
    "password": [PASSWORD],
}
