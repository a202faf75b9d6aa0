"""`radium-admin appliance end-session NAME SESSION`: kill a session's runs and release its leases."""

from __future__ import annotations

import argparse

from radium.remoting import Result

from ..command import Context

HELP = "end a client's session on an appliance: its runs are killed (exit 137), its leases released"
FLAGS = ("output", "connection")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the appliance's VM name")
    p.add_argument(
        "session", metavar="SESSION", help="the session's id (`appliance sessions`; 6+ characters)"
    )
    p.add_argument("--reason", default="", help="told to the session's client and logged by radiumd")


def run(ctx: Context) -> Result:
    from radium import vcenter

    a = ctx.args
    done = vcenter.end_session(ctx.session(), a.name, a.session, reason=a.reason)
    return Result(done, lambda c: c.print(done.summary(), markup=False))
