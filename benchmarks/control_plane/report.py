"""The control-plane benchmark's table, and the invariants it checks (no lease ever overbooks a device)."""

from __future__ import annotations

import sys

from benchmarks import ratio_table


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs" if seconds < 0.01 else f"{seconds * 1e3:,.1f} ms"


def report(r: dict) -> bool:
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 120)
    c = r["concurrent"]
    ping, lease = r["ping"], r["lease"]
    rows = [
        (
            "ListDevices, open connection: median",
            r["list_devices"]["median"],
            ping["median"],
            "raw CurveZMQ ping-pong: median",
            _us,
        ),
        (
            "ListDevices, open connection: p99",
            r["list_devices"]["p99"],
            ping["p99"],
            "raw CurveZMQ ping-pong: p99",
            _us,
        ),
        (
            "`radium list-gpus --json` wall: median",
            r["cli"]["median"],
            r["cold_ping"]["median"],
            "new python: import zmq, connect, 1 ping",
            _us,
        ),
        (
            "Acquire(1 × 0.25) + Release: median",
            lease["median"],
            2 * ping["median"],
            "2 × raw ping-pong: median",
            _us,
        ),
        ("Acquire(1 × 0.25) + Release: p99", lease["p99"], 2 * ping["p99"], "2 × raw ping-pong: p99", _us),
        (
            f"{c['clients']} clients, 0.25 leases: grants/s",
            c["rate"],
            r["ping_concurrent"]["rate"] / 2,
            f"{c['clients']} raw clients: round trips/s ÷ 2",
            lambda v: f"{v:,.0f}/s",
        ),
    ]
    table = ratio_table("Radium control plane, two-host topology (veth, tbf 4.75 Gbit/s)", rows)
    console.print(table)

    counts = c["counts"]
    print(
        f"concurrent: {counts['sent']} Acquire sent, {counts['granted']} granted, "
        f"{counts['timeouts']} clean timeouts, {counts['errors']} other errors, "
        f"{counts['unanswered']} unanswered; {counts['released']} released "
        f"({counts['release_errors']} release errors), {counts['session_errors']} sessions lost; "
        f"after the run: {c['final']['memory_allocated_bytes']} B allocated, "
        f"{c['final']['leases']} leases, queue {c['final']['queue_length']}"
    )
    ov, polls = c["overlap"], c["polls"]
    peaks = ", ".join(
        f"{d}: {p['max_concurrent_leases']} leases / {p['max_fraction']:.2f}" for d, p in ov["peak"].items()
    )
    print(
        f"overlap check: {ov['intervals']} lease intervals, peak per device {peaks}; "
        f"{ov['violations']} overbooked, {ov['duplicate_ids']} duplicate ids, "
        f"{ov['bad_intervals']} bad intervals"
    )
    seen = ", ".join(
        f"{d}: {polls['max_leases'][d]} leases / {polls['max_fraction'][d]:.2f}" for d in polls["max_leases"]
    )
    print(
        f"ListDevices polls during the run: {polls['n']}, "
        f"{len(polls['violations'])} with allocated > memory; peak seen {seen}"
    )
    if c["late_start_s"] > 0.5:
        print(f"note: a concurrent worker started {c['late_start_s']:.1f} s late (throughput uses its start)")
    for e in c["errors"][:5]:
        print(f"  error: {e}")
    for v in polls["violations"][:5]:
        print(f"  poll violation: {v}")
    ok = True
    for name, passed in c["invariants"].items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
        ok = ok and passed
    return ok
