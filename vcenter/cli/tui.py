"""`radium-admin tui [--profile NAME]` (also `radium-tui`): the operator's console."""

from __future__ import annotations

from rich.console import Console

from radium.remoting import Result

from .command import Context

HELP = "the operator's console: hosts, appliances, clients and sessions on one live screen (Textual)"
FLAGS = ("connection",)


def run(ctx: Context) -> Result:
    from radium.tui import Console as Tui
    from radium.tui import Estate

    settings = ctx.settings()  # the same resolution as every command: flags, environment, profile, lab
    estate = Estate(settings)
    try:
        Tui(estate).run()
    finally:
        estate.close()

    def render(c: Console) -> None:
        pass

    return Result({"closed": True}, render)
