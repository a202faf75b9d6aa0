"""`radium-admin lab up [--vm [FILE.ova]]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from radium.remoting import Result

from ..command import Context
from . import status_result

HELP = "start the lab (idempotent); --vm: its appliance is the built image, booted under qemu"
FLAGS = ("output",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--vm",
        nargs="?",
        type=Path,
        const=Path("radium-appliance.ova"),
        metavar="FILE.ova",
        help="boot this appliance image (default radium-appliance.ova, from `appliance build`) under qemu "
        "as the lab's appliance, instead of a radiumd in a network namespace (a minute or more to boot)",
    )


def run(ctx: Context) -> Result:
    from radium import vcenter
    from radium.lab import Lab

    return status_result(Lab().up(vm=ctx.args.vm, progress=lambda text: ctx.progress(vcenter.Step(text))))
