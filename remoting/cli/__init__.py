"""`radium`: the user's command line on a client VM (the verbs are in commands.py).

`radium run` first tries the run agent (client/handoff.py): a warm process that
runs it without this one importing the client.  Everything else, and `radium
run` when no agent can serve it, goes through `commands.main`.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["run"]:
        from ..client import handoff

        try:
            code = handoff.run(sys.argv[2:])
        except KeyboardInterrupt:  # before the handover (a run the agent took ends when we go)
            print("radium: interrupted", file=sys.stderr)
            code = 130
        if code is not None:
            os._exit(code)  # its output is written and its terminal restored: nothing to tear down
    from .commands import main as run_command

    return run_command(argv)


__all__ = ["main"]
