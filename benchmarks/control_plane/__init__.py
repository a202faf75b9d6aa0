"""Control-plane benchmark (issue 2): list-gpus, lease latency, 64 concurrent clients.

Everything runs over the two-host topology of `radium.lab.netns`: a real radiumd (the
`Appliance` of tests/support.py) in the appliance namespace, and the client side in
worker processes started inside the client namespace
(`ip netns exec <ns> python -m benchmarks.control_plane --worker MODE --spec FILE`),
each printing its results as one JSON document.  The baseline of every metric is
measured in the same run over the same link: a raw CurveZMQ DEALER/ROUTER ping-pong
with a tiny echo server in the appliance namespace (no radium code on either side).

Run it with `./dev bench` (all benchmarks) or `python -m benchmarks.control_plane`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import measured, standalone

from .bench import Bench
from .report import report
from .workers import MODULE, WORKERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("control_plane")
    g.add_argument("--duration", type=float, default=None, help="seconds of the concurrent run (30)")
    g.add_argument("--quick", action="store_true", help="smoke test: 5 s concurrent run, fewer samples")
    g.add_argument("--clients", type=int, default=64, help="concurrent client identities (64)")
    g.add_argument("--client-procs", type=int, default=2, help="worker processes they share (2)")
    g.add_argument("--acquire-timeout", type=float, default=5.0, help="queue timeout of each Acquire (5)")
    g.add_argument("--hold-ms", type=float, default=0.0, help="how long each lease is held (0)")
    g.add_argument("--json", type=Path, help="also write the results (no raw samples) to this file")


def run(args: argparse.Namespace) -> int:
    from radium.lab import netns

    ok, why = netns.can_create_namespaces()
    if not ok:
        print(f"control_plane: cannot build the two-host topology: {why}", file=sys.stderr)
        return 1
    if args.clients < 1 or args.client_procs < 1:
        print("control_plane: --clients and --client-procs must be at least 1", file=sys.stderr)
        return 2
    if args.duration is None:
        args.duration = 5.0 if args.quick else 30.0
    args.n_ping = 500 if args.quick else 2000
    args.n_list = 100 if args.quick else 500
    args.n_cli = 3 if args.quick else 10
    args.n_lease = 200 if args.quick else 1000
    return measured("control_plane", Bench(args), report, args.json)


def main(argv: list[str] | None = None) -> int:
    return standalone(MODULE, __doc__, WORKERS, add_arguments, run, argv)
