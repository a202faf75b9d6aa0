"""How command results reach the user, for both command lines (`radium` and `radium-admin`): text or `--json`.

A command returns a `Result`; errors take the same path, so with `--json`
they are machine-readable too: `{"error": {"code": ..., "message": ...}}`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from ._errors import RadiumError

if TYPE_CHECKING:  # rich is imported when something is rendered: `radium run` never needs it
    from rich.console import Console

MIB = 1 << 20


@dataclass
class Result:
    data: Any  # what --json prints
    render: Callable[[Console], None]  # what a person sees
    exit_code: int = 0
    warnings: list[str] = field(default_factory=list)


def emit(result: Result, as_json: bool) -> int:
    if as_json:
        sys.stdout.write(json.dumps(msgspec.to_builtins(result.data), indent=2) + "\n")
    else:
        # Off a terminal (pipes, logs) nothing is truncated to 80 columns.
        width = None if sys.stdout.isatty() else 240
        from rich.console import Console

        result.render(Console(highlight=False, width=width))
    for warning in result.warnings:
        print(f"radium: {warning}", file=sys.stderr)
    return result.exit_code


def emit_error(prog: str, exc: RadiumError, as_json: bool) -> int:
    if as_json:
        payload = {"error": {"code": exc.code, "message": exc.message}}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        print(f"{prog}: {exc.message}", file=sys.stderr)
    return exc.exit_code


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n // MIB:,} MiB"


def percent(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}%"
