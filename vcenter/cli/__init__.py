"""`radium-admin`: the operator's command line.

Laid out like govc: a folder per noun, a file per verb (`passthrough/enable.py`),
each verb a module following the contract of `command.py`, and the flags that
many verbs share created once in `flags.py`.  `COMMANDS` below is the whole
command tree.  A verb returns a `Result` that prints itself as text or, with
`--json`, as JSON; errors take the same path.  A vCenter session is opened on
first use and closed when the command ends.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from radium.remoting import VERSION, RadiumError, emit, emit_error

from . import flags
from .command import Context

PROG = "radium-admin"

#: Command words → the verb's module (relative to this package).
COMMANDS: dict[str, str] = {
    "version": "version",
    "enroll": "enroll",
    "revoke": "revoke",
    "hosts": "hosts",
    "passthrough enable": "passthrough.enable",
    "passthrough disable": "passthrough.disable",
    "register-vm": "register_vm",
    "unregister-vm": "unregister_vm",
    "clients": "clients",
    "appliance build": "appliance.build",
    "appliance deploy": "appliance.deploy",
    "appliance list": "appliance.list",
    "appliance status": "appliance.status",
    "appliance remove": "appliance.remove",
    "appliance sessions": "appliance.sessions",
    "appliance end-session": "appliance.end_session",
    "profile save": "profile.save",
    "profile list": "profile.list",
    "profile remove": "profile.remove",
    "lab up": "lab.up",
    "lab down": "lab.down",
    "lab status": "lab.status",
    "tui": "tui",
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{name}")


def _add_verb(sub: argparse._SubParsersAction, word: str, module: ModuleType) -> None:
    parents = [p for group in getattr(module, "FLAGS", ()) for p in flags.GROUPS[group]]
    p = sub.add_parser(word, help=module.HELP, description=module.HELP, parents=parents)
    if hasattr(module, "add_arguments"):
        module.add_arguments(p)
    p.set_defaults(run=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Operate a Radium estate.")
    parser.add_argument("--version", action="version", version=f"radium-admin {VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    nouns: dict[str, argparse._SubParsersAction] = {}
    for words, module_name in COMMANDS.items():
        module = _module(module_name)
        noun, _, verb = words.partition(" ")
        if not verb:
            _add_verb(sub, noun, module)
            continue
        if noun not in nouns:
            package = _module(module_name.rpartition(".")[0])
            p = sub.add_parser(noun, help=package.HELP, description=package.HELP)
            nouns[noun] = p.add_subparsers(dest=f"{noun}_command", metavar="VERB", required=True)
        _add_verb(nouns[noun], verb, module)
    return parser


def tui_main(argv: list[str] | None = None) -> int:
    """`radium-tui`: `radium-admin tui`."""
    return main(["tui", *(sys.argv[1:] if argv is None else argv)])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = Context(args)
    try:
        return emit(args.run(ctx), ctx.json)
    except RadiumError as exc:
        return emit_error(PROG, exc, ctx.json)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        ctx.close()
