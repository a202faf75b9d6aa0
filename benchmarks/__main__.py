"""`python -m benchmarks [--only NAME] [--quick] [...]`: run every benchmark in turn."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import BENCHMARKS


def main(argv: list[str] | None = None) -> int:
    modules = {name: importlib.import_module(f"benchmarks.{name}") for name in BENCHMARKS}
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="Run Radium's benchmarks.")
    parser.add_argument("--only", choices=BENCHMARKS, action="append", help="run only this benchmark")
    for module in modules.values():
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    code = 0
    for name in args.only or BENCHMARKS:
        print(f"== benchmark: {name}", flush=True)
        code = max(code, modules[name].run(args))
    return code


if __name__ == "__main__":
    sys.exit(main())
