"""Radium's benchmarks: `./dev bench` (or `.venv/bin/python -m benchmarks`) runs them all.

Each benchmark is a module with `add_arguments(parser)` and `run(args) -> int`; it
prints one table of metrics, each against a baseline measured in the same run, and
returns non-zero when a correctness invariant it checks fails.  Results of the last
full run are recorded in benchmarks/README.md.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root

BENCHMARKS = ["control_plane", "vcenter_inventory", "run_remote"]
