"""Radium's benchmarks: `./dev bench` (or `.venv/bin/python -m benchmarks`) runs them all.

Each benchmark is a module with `add_arguments(parser)` and `run(args) -> int`; it
prints one table of metrics, each against a baseline measured in the same run, and
returns non-zero when a correctness invariant it checks fails.  Results of the last
full run are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # the repository root

BENCHMARKS = ["control_plane", "vcenter_inventory", "run_remote", "console", "cnn"]


def standalone(
    module: str,
    doc: str | None,
    workers: Mapping[str, Callable[[dict], Any]],
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


def tests_support() -> Any:
    """tests/support.py (Appliance, Client, stop_run_agents): shared with the tests, not copied."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import support

    return support


def ratio_table(
    title: str, rows: list[tuple[str, float, float, str, Callable[[float], str]]], digits: int = 2
) -> Any:
    """The benchmarks' table: rows of (metric, value, baseline, what the baseline is, format)."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"{title}; ratio = value / baseline", box=box.SIMPLE_HEAD)
    for col, justify in (
        ("metric", "left"),
        ("value", "right"),
        ("baseline", "right"),
        ("ratio", "right"),
        ("baseline is", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, value, base, what, fmt in rows:
        ratio = f"{value / base:.{digits}f}×" if base == base else "-"  # (NaN: a baseline not measured)
        table.add_row(name, fmt(value), fmt(base), ratio, what)
    return table


def worker_argv(module: str, folder: Path, mode: str, spec: dict) -> list[str]:
    """`python -m MODULE --worker MODE --spec FILE`, with `spec` written to a file of its own in `folder`."""
    fd, path = tempfile.mkstemp(prefix=f"{mode}-", suffix=".json", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f)
    os.chmod(path, 0o644)  # as a plain file would be: a worker may run as another user
    return [sys.executable, "-m", module, "--worker", mode, "--spec", path]


def worker_result(stdout: str) -> Any:
    """What a worker printed as its result (the last line of its output)."""
    return json.loads(stdout.strip().splitlines()[-1])


def machine() -> str:
    """This machine, in words: cores, CPU model, OS (and what reclaims its page cache unasked)."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    words = f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {cpu}, {platform.platform()}"
    reclaim = idle_pageout()
    return f"{words}; {reclaim}" if reclaim else words


def idle_pageout(damon: Path = Path("/sys/kernel/mm/damon/admin/kdamonds")) -> str | None:
    """Whether the kernel's DAMON pages out memory left idle (a host's proactive reclaim), in
    words; None when it does not. A baseline whose files nothing read for that long (the
    local `import torch` of a benchmark's first round) then reads some of them from the disk."""
    with contextlib.suppress(OSError, ValueError):
        for kdamond in sorted(damon.iterdir()):
            if (kdamond / "state").read_text().strip() != "on":
                continue
            for scheme in sorted(kdamond.glob("contexts/*/schemes/*")):
                if (scheme / "action").read_text().strip() != "pageout":
                    continue
                aggregation = scheme.parent.parent / "monitoring_attrs/intervals/aggr_us"
                idle = int((scheme / "access_pattern/age/min").read_text()) * int(aggregation.read_text())
                return f"DAMON pages out memory idle for {idle / 1e6:.0f} s or more"
    return None


def revision() -> str:
    """The code measured: `git describe --always --dirty` of the repository."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def measured(name: str, bench: Any, report: Callable[[dict], bool], json_path: Path | None) -> int:
    """Run `bench` (its `setup` if it has one, `run`, then always `close`), stamped with the date,
    this machine and the revision; print its report; write its results to `json_path` when given.

    Non-zero when the report says a checked invariant failed.
    """
    started = time.monotonic()
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"  {when}; {machine()}; radium {revision()}", flush=True)
    try:
        if hasattr(bench, "setup"):
            bench.setup()
        results = bench.run()
    finally:
        bench.close()
    results["date"], results["machine"], results["revision"] = when, machine(), revision()
    results["wall_s"] = time.monotonic() - started
    passed = report(results)
    print(f"{name}: {results['wall_s']:.0f} s in all")
    if json_path:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if passed else 1
