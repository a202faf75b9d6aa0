"""`radium bench` over the lab's two-host topology (issue 14): the Radium paper's CNN table.

The client and the appliance are network namespaces joined by a veth pair shaped to
4.75 Gbit/s (`radium.lab.netns`, as the run_remote benchmark), a real radiumd with two PoCL
devices in the appliance namespace, and `radium bench` run in the client namespace: every
case (alexnet and the four v2 ResNets × batch 32/128/512, one device) trained here and
through `radium run`, each against the other in the same run.  These machines have no GPU:
the training runs on the CPU on both sides (2 threads), which `radium bench` says; the
appliance lends a PoCL device for each remote run's lease.

Reduced steps on the CPU (the paper's 10 warm-up and 100 timed steps of resnet110 at batch
512 would take about 13 minutes a side here): by default 5 warm-up steps, then timed steps
for about `--cnn-seconds` (20 s) a run (`radium bench --seconds`: the count set by each
case's first run from its warm-up, at least 5; the other side times as many).
Printed beside the paper's figures (Radium over a local GPU: 0.42–1.04 at batch 32,
0.84–0.996 at batch 512).

    ./dev bench --only cnn                  # about 15 minutes
    python -m benchmarks.cnn --cnn-models resnet20_v2 --cnn-batch 32   # one case
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from benchmarks import measured, standalone

MODULE = "benchmarks.cnn"
PAPER = {32: "0.42–1.04", 512: "0.84–0.996"}  # Radium / local GPU, the paper's tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cnn")
    g.add_argument("--cnn-models", default="alexnet,resnet20_v2,resnet32_v2,resnet56_v2,resnet110_v2")
    g.add_argument("--cnn-batch", default="32,128,512")
    g.add_argument("--cnn-steps", type=int, help="timed steps of every run (default: from --cnn-seconds)")
    g.add_argument("--cnn-seconds", type=float, default=20.0, help="length of each timed loop (20)")
    g.add_argument("--cnn-warmup", type=int, default=5, help="warm-up steps (5)")
    g.add_argument("--cnn-rounds", type=int, default=1, help="runs of each side per case, pooled (1)")
    g.add_argument("--cnn-json", type=Path, help="also write the results to this file")
    g.add_argument("--cnn-plot", type=Path, help="radium bench's chart of the ratios (PNG)")


def run(args: argparse.Namespace) -> int:
    from radium.lab import netns

    ok, why = netns.can_create_namespaces()
    if not ok:
        print(f"cnn: cannot build the two-host topology: {why}", file=sys.stderr)
        return 1
    from .bench import CnnBench
    from .report import report

    if getattr(args, "quick", False):  # a smoke test: one small case, short runs
        args.cnn_models, args.cnn_batch, args.cnn_seconds, args.cnn_warmup = "resnet20_v2", "32", 3.0, 3
    if importlib.util.find_spec("torch") is None:
        print("cnn: torch is not installed (./dev setup installs the bench extra)", file=sys.stderr)
        return 1

    return measured("cnn", CnnBench(args), lambda results: report(results, args), args.cnn_json)


def main(argv: list[str] | None = None) -> int:
    return standalone(MODULE, __doc__, {}, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
