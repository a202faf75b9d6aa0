"""The CNN benchmark's table: each case's ratio against the paper's figures for its batch."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from . import PAPER

TARGET = 0.98


def report(results: dict[str, Any], args: argparse.Namespace) -> bool:
    from benchmarks import ratio_table

    rows = []
    ok = True
    for c in results["cases"]:
        if c["local"] is None:
            ok = False
            continue
        local, remote = c["local"], c["remote"]
        same = local["versions"] == remote["versions"] and local["threads"] == remote["threads"]
        ok = ok and same and local["parameters"] == remote["parameters"]
        met = "met" if c["ratio"] >= TARGET else "MISSED"
        paper = PAPER.get(c["batch"], "—")
        rows.append(
            (
                f"{c['model']} b{c['batch']}: images/s ({remote['steps']} steps)",
                remote["images_per_s"],
                local["images_per_s"],
                f"local, same run; ≥ {TARGET}: {met}; paper (GPU) {paper}",
                lambda v: f"{v:,.1f}/s",
            )
        )
    Console().print(ratio_table("radium bench: through radium run vs local (CPU, 2 threads)", rows, 3))
    link = results.get("link") or {}
    if link:
        print(
            f"link through radium run: round trip {link['rtt_ms']:.2f} ms, to the appliance "
            f"{link['to_appliance_mb_s']:.0f} MB/s, from it {link['from_appliance_mb_s']:.0f} MB/s"
        )
    print(f"chart: {results['chart']}; radium bench took {results['wall_bench_s']:.0f} s")
    return ok
