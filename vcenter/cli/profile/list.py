"""`radium-admin profile list`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

from radium.remoting import Result

from ..command import Context

if TYPE_CHECKING:
    from radium.vcenter import Profile

HELP = "list the saved vCenter profiles (the lab's when none are saved)"
FLAGS = ("output",)


def _trust(p: Profile) -> str:
    if p.thumbprint:
        return f"SHA-256 {p.thumbprint[:23]}…"
    if p.insecure:
        return "not verified"
    return f"CA {p.ca}" if p.ca else "system CAs"


def run(ctx: Context) -> Result:
    from radium import vcenter

    saved = vcenter.load_profiles(vcenter.active_profiles_path())
    data = {"file": saved.source, "default": saved.default or None, "profiles": saved.profiles}

    def render(c: Console) -> None:
        if not saved.profiles:
            c.print(
                f"no profiles in {saved.source}; save one with "
                "`radium-admin profile save NAME --url URL --user USER`"
            )
            return
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("", "name", "url", "user", "certificate", "password"):
            table.add_column(col)
        for name in sorted(saved.profiles):
            p = saved.profiles[name]
            table.add_row(
                "*" if name == saved.default else "",
                name,
                p.url,
                p.user or "-",
                _trust(p),
                "keyring" if p.keyring else "file" if p.password_file else "asked",
            )
        c.print(table)
        c.print(f"(* default) {saved.source}")

    return Result(data, render)
