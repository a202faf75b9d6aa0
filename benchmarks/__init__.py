"""Radium's benchmarks: `./dev bench` (or `.venv/bin/python -m benchmarks`) runs them all.

Each benchmark is a module with `add_arguments(parser)` and `run(args) -> int`; it
prints one table of metrics, each against a baseline measured in the same run, and
returns non-zero when a correctness invariant it checks fails.  Results of the last
full run are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # the repository root

BENCHMARKS = ["control_plane", "vcenter_inventory", "run_remote"]


def standalone(
    module: str,
    doc: str | None,
    workers: dict[str, Callable[[dict], Any]],
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: list[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """`python -m benchmarks.NAME`: one benchmark alone, or (`--worker MODE --spec FILE`)
    one of its workers, which the benchmark starts inside a network namespace.

    A worker's result (what `workers[MODE](spec)` returns, awaited if it is a coroutine)
    is printed as JSON on the last line of its stdout; `worker_result` reads it back.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or module).splitlines()[0])
    parser.add_argument("--worker", choices=sorted(workers), help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    if extra is not None:
        extra(parser)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if not args.worker:
        return run(args)
    result = workers[args.worker](json.loads(args.spec.read_text()))
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def worker_result(stdout: str) -> Any:
    """What a worker printed as its result (the last line of its output)."""
    return json.loads(stdout.strip().splitlines()[-1])
