"""`radium run` benchmark (issue 3, "Performance"): warm start, cold transfer, steady state.

Everything runs over the two-host topology of `radium.lab.netns` (a client and an
appliance network namespace joined by a veth pair shaped with tbf to 4.75 Gbit/s), with a
real radiumd (the `Appliance` of tests/support.py) in the appliance namespace and every
client command started inside the client namespace.  Three measurements, each against a
baseline taken in the same run:

1. warm start: `radium run -- python3 -c pass` in an unchanged project (a private tmpfs
   only the client's mount namespace sees), median of the runs after two warm-ups, minus
   the same command run locally; and the cold first run (fresh appliance, fresh client
   state).  `--stats` gives the bytes moved and the supervisor's phases; radiumd's log
   (lease granted, run started/ended) splits the rest of the wall time.
2. cold transfer: a process reading a 1 GiB tree (64 files × 16 MiB of random data on the
   client's private tmpfs) through `radium run` against a freshly started appliance (new
   state directory: an empty content store), in MB/s against iperf3 over the same link.
3. steady state: a PyTorch (CPU) ResNet-20 training loop (benchmarks/resnet.py) run
   locally and through `radium run` with the client's own venv python, alternately (ABBA
   order: by default 4 pairs of runs, each 10 warm-up steps then 25 timed ones); images/s
   remote over local, pooled over the timed steps.  Skipped, with a note, when torch is
   not installed (`pip install torch==2.13.0`, the `bench` extra).

Run it with `./dev bench` (all benchmarks) or `python -m benchmarks.run_remote`.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

from benchmarks import measured, standalone

from .bench import Bench
from .report import report
from .workers import MODULE, WORKERS

# ====================================================================== entry points


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("run_remote")
    if "--quick" not in parser._option_string_actions:  # control_plane's --quick serves both
        g.add_argument("--quick", action="store_true", help="smoke test: fewer runs, a smaller tree")
    g.add_argument("--run-starts", type=int, default=None, help="timed warm starts (10)")
    g.add_argument("--run-start-warmups", type=int, default=2, help="warm-up runs after the cold one (2)")
    g.add_argument("--run-files", type=int, default=None, help="files of the cold tree (64)")
    g.add_argument("--run-file-mib", type=int, default=16, help="MiB per file of the cold tree (16)")
    g.add_argument("--run-steps", type=int, default=None, help="timed ResNet-20 steps per run (25)")
    g.add_argument("--run-batch", type=int, default=64, help="ResNet-20 batch size (64)")
    g.add_argument(
        "--run-rounds", type=int, default=None, help="local+remote ResNet-20 run pairs, in ABBA order (4)"
    )
    g.add_argument("--run-json", type=Path, help="also write the results to this file")
    g.add_argument(
        "--run-parts",
        default="starts,many,resnet,opencl,cold",
        help="which measurements after the baselines, comma-separated (starts,many,resnet,opencl,cold: all)",
    )
    g.add_argument(
        "--run-cold-repeats",
        type=int,
        default=None,
        help="cold reads, each against a new radiumd with iperf3 right before it; the median is reported (3)",
    )
    g.add_argument("--run-opencl", type=int, default=3, help="warm runs of the pyopencl vector add (3)")
    g.add_argument("--run-many", type=int, default=10_000, help="files of the many-files project (10000)")
    g.add_argument("--run-many-runs", type=int, default=3, help="its warm runs (3)")


def run(args: argparse.Namespace) -> int:
    from radium.lab import netns

    ok, why = netns.can_create_namespaces()
    if not ok:
        print(f"run_remote: cannot build the two-host topology: {why}", file=sys.stderr)
        return 1
    if shutil.which("iperf3") is None:
        print("run_remote: iperf3 is not installed (apt-get install iperf3)", file=sys.stderr)
        return 1
    quick = getattr(args, "quick", False)
    args.run_starts = args.run_starts or (3 if quick else 10)
    args.run_files = args.run_files or (16 if quick else 64)
    args.run_steps = args.run_steps or (10 if quick else 25)
    args.run_rounds = args.run_rounds or (1 if quick else 4)
    args.run_cold_repeats = max(1, args.run_cold_repeats or (1 if quick else 3))
    args.iperf_seconds = 2 if quick else 4
    args.curve_mib = 256 if quick else 768
    args.torch = importlib.util.find_spec("torch") is not None
    return measured("run_remote", Bench(args), lambda results: report(results, args), args.run_json)


def main(argv: list[str] | None = None) -> int:
    return standalone(MODULE, __doc__, WORKERS, add_arguments, run, argv)
