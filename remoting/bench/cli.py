"""`radium bench`'s options and its output (the runner measures, report renders)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .._errors import UsageError
from . import cases

EPILOG = """\
Every case is trained here first and then through `radium run` on a leased device of the
appliance (the order alternates from case to case), and reported as steady-state images/s
after the warm-up, as the Radium paper did; start-up and warm-up are shown apart.
Example: radium bench --models resnet20_v2 --batch 32 --steps 20 --plot ratios.png
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models",
        default=",".join(cases.DEFAULT_MODELS),
        help=f"comma-separated, of: {', '.join(cases.PARAMETERS)} (default: the paper's five)",
    )
    p.add_argument("--batch", default="32,128,512", help="images per device and step, comma-separated")
    p.add_argument("--gpus", default="1", help="devices per run, comma-separated (data parallel)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per run (100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (10)")
    p.add_argument("--seconds", type=float, metavar="S",
                   help="instead of --steps: time each run for about S seconds (the step count set by "
                   "each case's first run from its warm-up; the other side times as many)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=1, metavar="N",
                   help="run each side of a case N times, alternating, and pool them: cancels a "
                   "machine's drift (default 1)")  # fmt: skip
    p.add_argument("--appliance", metavar="NAME", help="the appliance to run on (default: any)")
    p.add_argument(
        "--device",
        choices=cases.DEVICES,
        default="auto",
        help="cuda, rocm or cpu (default: a GPU where there is one, else the CPU)",
    )
    p.add_argument("--threads", type=int, help="CPU threads on both sides (default: this machine's CPUs)")
    p.add_argument(
        "--data", type=Path, metavar="DIR", help="real CIFAR-10 (its python batches) instead of synthetic"
    )
    p.add_argument("--json", dest="json_out", type=Path, metavar="FILE", help="also write the result here")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the ratios here (matplotlib)")
    p.add_argument("--no-link", action="store_true", help="skip measuring the link")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"),
                   help="show two earlier results side by side, and run nothing")  # fmt: skip


def command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from . import report, runner

    out = Console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(width=120)  # a file or a pipe: the table whole, not wrapped at 80
    if args.compare:
        a, b = (runner.load(path) for path in args.compare)
        out.print(report.compare(a, b, (args.compare[0].name, args.compare[1].name)))
        return 0
    if args.steps < 1 or args.warmup < 0 or (args.seconds is not None and args.seconds <= 0):
        raise UsageError(
            "--steps must be 1 or more, --warmup 0 or more and --seconds above 0 "
            f"(got {args.steps}, {args.warmup}, {args.seconds})"
        )
    if args.data is not None and not args.data.is_dir():
        raise UsageError(f"--data {args.data}: not a folder (expected CIFAR-10's python batches)")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {args.plot}: give a file name ending in .png")
    from .._config import load_client_config

    config = load_client_config()  # a clear error when there is none
    appliance = args.appliance
    if appliance is not None:
        config.appliance(appliance)  # a clear error naming the configured ones
    elif len(config.appliances) == 1:
        appliance = config.appliances[0].name  # what the record names
    plan = runner.Plan(
        cases=cases.cases(
            cases.parse_list(args.models, "models"),
            cases.parse_list(args.batch, "batch", int),
            cases.parse_list(args.gpus, "gpus", int),
        ),
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        threads=args.threads if args.threads is not None else runner.default_threads(),
        appliance=appliance,
        data=args.data,
        seconds=args.seconds or 0.0,
        rounds=args.rounds,
    )
    err = Console(stderr=True)
    with _progress(err, plan) as progress:
        record = runner.run(plan, progress, measure=not args.no_link)
    out.print(report.table(record))
    for line in report.notes(record, runner.check_alike(record.cases)):
        out.print(line, highlight=False)
    if args.json_out:
        runner.save(record, args.json_out)
        out.print(f"result written to {args.json_out}", highlight=False)
    if args.plot:
        report.plot(record, args.plot)
        out.print(f"chart written to {args.plot}", highlight=False)
    return 0


class _progress:
    """A rich progress line while the cases run (nothing when stderr is not a terminal)."""

    def __init__(self, console, plan) -> None:  # type: ignore[no-untyped-def]
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.per_run = plan.steps + plan.warmup  # with --seconds the count is not known: no total
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True, disable=not console.is_terminal,
        )  # fmt: skip
        total = None if plan.seconds else 2 * self.per_run * len(plan.cases) * plan.rounds
        self.task = self.bar.add_task("measuring the link", total=total)
        self.done = 0
        self.current = ""

    def __call__(self, what: str, step: int) -> None:
        run = what.rsplit(" · ", 1)[0]  # the case and the side, without the phase
        if run != self.current:
            if self.current:
                self.done += self.per_run
            self.current = run
        self.bar.update(self.task, description=what, completed=self.done + step)

    def __enter__(self) -> _progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="radium bench")
    add_arguments(p)
    return command(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
