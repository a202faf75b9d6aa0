"""`radium-admin appliance build [--output FILE.ova] [--suite S] [--disk-size GiB] [--with-pocl] ...`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from radium.remoting import Result

from ..command import Context

HELP = (
    "build the appliance image from this checkout: a minimal Debian with radiumd, as a bootable OVA "
    "(needs root, mmdebstrap and Debian's package archive)"
)
FLAGS = ("output",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output", "-o", type=Path, default=Path("radium-appliance.ova"), metavar="FILE.ova",
        help="the OVA to write (default radium-appliance.ova; its name is the package's)",
    )  # fmt: skip
    p.add_argument("--suite", default="bookworm", help="the Debian release (default bookworm)")
    p.add_argument(
        "--disk-size", type=int, default=16, metavar="GiB", help="the system disk's size (default 16)"
    )
    p.add_argument(
        "--with-pocl", action="store_true", help="add PoCL, an OpenCL device on the CPU (for trying it out)"
    )
    p.add_argument(
        "--extra-packages", default="", metavar="PKG,...", help="more Debian packages, separated by commas"
    )
    p.add_argument(
        "--hook", type=Path, action="append", default=[], metavar="SCRIPT",
        help="an executable run with the image's root folder as its argument, after radium is installed "
        "(how GPU drivers are added: see appliance/README.md); may be repeated",
    )  # fmt: skip
    p.add_argument("--mirror", default=None, metavar="URL", help="Debian's archive (default deb.debian.org)")
    p.add_argument(
        "--cache", type=Path, metavar="DIR",
        help="where downloaded packages are kept for the next build "
        "(default ~/.cache/radium/appliance-build)",
    )  # fmt: skip


def run(ctx: Context) -> Result:
    from radium import vcenter
    from radium.appliance import BuildRequest, build_image

    a = ctx.args
    request = BuildRequest(
        output=a.output,
        suite=a.suite,
        disk_gib=a.disk_size,
        with_pocl=a.with_pocl,
        extra_packages=[x.strip() for x in a.extra_packages.split(",") if x.strip()],
        hooks=a.hook,
        cache=a.cache,
    )
    if a.mirror:
        request.mirror = a.mirror
    done = build_image(request, lambda text: ctx.progress(vcenter.Step(text)))

    def render(c: Console) -> None:
        c.print(done.summary(), markup=False)
        steps = ", ".join(f"{name} {took:.0f} s" for name, took in done.steps.items())
        c.print(f"  steps  {steps}", markup=False)

    return Result(done, render)
