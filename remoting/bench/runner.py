"""`radium bench`: every case trained here, then through `radium run`, side by side.

Each run is a process of its own (`python -m radium.remoting.bench.train`, the same
interpreter and files on both sides: the remote one is carried by `radium run`), read line
by line for the progress display.  Cases alternate their order (here first, then the
appliance first) so that a drift in the machine's speed does not favour one side; both
sides get the same thread count, and their library versions are checked to be the same.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .._errors import RadiumError, UsageError
from .._version import VERSION
from .cases import Case

TRAIN = "radium.remoting.bench.train"
LINK = "radium.remoting.bench.link"
PINGS = 50
ACCOUNTING = ("cpu_user_s", "switches_voluntary", "switches_involuntary", "minor_faults", "steal_s")
BULK = 128 << 20


class BenchError(RadiumError):
    """A case could not be measured (the message says why and what to do)."""

    code = "bench-failed"
    exit_code = 1


@dataclass
class Side:
    """One training run of a case, here or on the appliance."""

    images_per_s: float
    steps: int  # timed
    import_s: float  # Python start and imports
    setup_s: float  # model and data on the device
    warmup_s: float
    timed_wall_s: float
    cpu_s: float  # CPU time of the timed loop
    step_median_s: float
    threads: int
    device: str
    host: str
    versions: dict[str, str]
    parameters: int
    started_s: float = 0.0  # from the process's start (here) or `radium run`'s to "ready"
    conditions: dict[str, Any] = field(default_factory=dict)  # train.conditions: compared
    accounting: dict[str, float] = field(default_factory=dict)  # the timed loop's CPU, switches, steal


@dataclass
class CaseResult:
    model: str
    batch: int
    gpus: int
    local: Side | None  # with several rounds, the rounds pooled (`pool`)
    remote: Side
    local_missing: str = ""  # why there is no local figure (no such device here)
    round_ratios: list[float] = field(default_factory=list)  # each round's, with --rounds

    @property
    def ratio(self) -> float | None:
        return self.remote.images_per_s / self.local.images_per_s if self.local else None


@dataclass
class Link:
    rtt_ms: float  # median round trip of a line through the run's standard streams
    rtt_p90_ms: float
    to_appliance_mb_s: float
    from_appliance_mb_s: float


@dataclass
class Record:
    radium: str
    date: str
    appliance: str
    steps: int  # timed steps of every run; 0 with `seconds`
    seconds: float  # timed steps for about this long, the count set by each case's first run
    warmup: int
    threads: int
    link: Link | None
    cases: list[CaseResult] = field(default_factory=list)
    rounds: int = 1

    def to_json(self) -> dict:
        data = asdict(self)
        for case, result in zip(data["cases"], self.cases, strict=True):
            case["ratio"] = result.ratio
        return data


@dataclass
class Plan:
    cases: list[Case]
    steps: int
    warmup: int
    device: str
    threads: int
    appliance: str | None
    data: Path | None
    seconds: float = 0.0  # instead of `steps`: timed steps for about this long (the first side's count)
    rounds: int = 1  # runs of each side per case, alternating, pooled
    python: str = sys.executable

    def worker(self, case: Case, steps: int | None = None) -> list[str]:
        """The training program for `case`: `steps` timed steps, or per the plan."""
        if steps is not None:
            timing = ["--steps", str(steps)]
        else:
            timing = ["--seconds", str(self.seconds)] if self.seconds else ["--steps", str(self.steps)]
        argv = [self.python, "-m", TRAIN, "--model", case.model, "--batch", str(case.batch),
                "--gpus", str(case.gpus), *timing, "--warmup", str(self.warmup),
                "--device", self.device, "--threads", str(self.threads)]  # fmt: skip
        return argv + (["--data", str(self.data.resolve())] if self.data else [])

    def remote(self, argv: list[str], gpus: int = 1) -> list[str]:
        server = ["--server", self.appliance] if self.appliance else []
        return [radium_program(), "run", *server, "-n", str(gpus), "--", *argv]


# glibc's malloc, left alone, moves its mmap threshold as a program frees big blocks: two runs
# of the same training loop then page-fault 18,000 or 370,000 times in 25 steps, and spend up
# to a fifth more CPU per image (measured: docs/bench.md, "Fair").  Both sides get the same
# fixed thresholds, so that neither is faster by its allocator's history: blocks up to 32 MiB
# come from the heap and freed memory is kept.  A user's own settings are left as they are.
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}


def environment() -> dict[str, str]:
    """The environment of both sides' training (radium run carries it to the appliance)."""
    env = dict(os.environ)
    if not any(name in env for name in ALLOCATOR):
        env.update(ALLOCATOR)
    return env


def radium_program() -> str:
    beside = Path(sys.executable).with_name("radium")
    return str(beside) if beside.exists() else (shutil.which("radium") or "radium")


Progress = Callable[[str, int], None]  # (what runs now, its steps done)


def run_side(argv: list[str], where: str, case: Case, progress: Progress) -> tuple[Side | None, str]:
    """One training run: its Side, or (None, why) when the device is not there."""
    progress(f"{case.name} · {where} · starting", 0)  # Python, imports, the model (and the lease)
    started = time.perf_counter()
    errors = tempfile.TemporaryFile("w+")  # not a pipe: a chatty program cannot block on it
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=errors, text=True, bufsize=1, env=environment()
    )
    assert proc.stdout is not None
    ready: dict[str, Any] = {}
    result: dict[str, Any] = {}
    error: dict[str, Any] = {}
    ready_at = 0.0
    try:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # the program's own output (none is expected)
            kind = event.get("event")
            if kind == "ready":
                ready, ready_at = event, time.perf_counter() - started
            elif kind == "progress":
                phase = "warm-up" if event["warmup"] else "timed"
                progress(f"{case.name} · {where} · {phase}", event["steps"])
            elif kind == "result":
                result = event
            elif kind == "error":
                error = event
        code = proc.wait()
        errors.seek(0)
        stderr = errors.read()
    finally:
        errors.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if error:
        if error["kind"] == "device" and where == "here":
            return None, error["message"]
        raise BenchError(_explain(case, where, error))
    if code != 0 or not result:
        said = [line for line in stderr.strip().splitlines() if line.strip()]
        why = said[-1] if said else f"exit status {code}"
        raise BenchError(f"{case.name} {where}: the run failed: {why}")
    return (
        Side(
            images_per_s=result["images_per_s"],
            steps=result["steps"],
            import_s=ready["import_s"],
            setup_s=ready["setup_s"],
            warmup_s=result["warmup_s"],
            timed_wall_s=result["timed_wall_s"],
            cpu_s=result["cpu_s"],
            step_median_s=statistics.median(result["step_s"]),
            threads=ready["threads"],
            device=ready["device"],
            host=ready["host"],
            versions={k: ready[k] for k in ("torch", "python", "radium")},
            parameters=ready["parameters"],
            started_s=ready_at,
            conditions=ready.get("conditions", {}),
            accounting={k: result[k] for k in ACCOUNTING if k in result},
        ),
        "",
    )


def _explain(case: Case, where: str, error: dict) -> str:
    kind, message = error["kind"], error["message"]
    if kind == "oom":
        return (
            f"{case.name} ({where}): batch {case.batch} does not fit in the device's memory ({message}); "
            "try a smaller --batch"
        )
    if kind == "torch":
        return f"{case.name} ({where}): {message}; install it: pip install 'radium[bench]'"
    if kind == "device":
        return f"{case.name} ({where}): {message}; choose another --device or --gpus"
    return f"{case.name} ({where}): {message}"


def measure_link(plan: Plan) -> Link:
    """Round trips and bulk transfers through one `radium run`'s standard streams."""
    errors = tempfile.TemporaryFile("w+")
    pipe = subprocess.PIPE
    proc = subprocess.Popen(plan.remote([plan.python, "-m", LINK]), stdin=pipe, stdout=pipe, stderr=errors)
    assert proc.stdin is not None and proc.stdout is not None

    def failed() -> BenchError:
        proc.kill()
        proc.wait()
        errors.seek(0)
        said = [line for line in errors.read().strip().splitlines() if line.strip()]
        return BenchError(f"measuring the link: the run failed: {said[-1] if said else 'no answer'}")

    try:
        rtts = []
        for _ in range(PINGS + 3):
            t = time.perf_counter()
            try:
                proc.stdin.write(b"ping\n")
                proc.stdin.flush()
            except BrokenPipeError:
                break
            if proc.stdout.readline() != b"pong\n":
                break
            rtts.append(time.perf_counter() - t)
        if len(rtts) < PINGS + 3:
            raise failed()
        rtts = sorted(rtts[3:])  # the first ones wait for the process to start
        block = b"\0" * (1 << 20)
        t = time.perf_counter()
        proc.stdin.write(f"take {BULK}\n".encode())
        for _ in range(BULK >> 20):
            proc.stdin.write(block)
        proc.stdin.flush()
        proc.stdout.readline()  # took N SECONDS
        to_appliance = BULK / (time.perf_counter() - t) / 1e6
        proc.stdin.write(f"give {BULK}\n".encode())
        proc.stdin.flush()
        proc.stdout.readline()  # giving N
        t = time.perf_counter()
        left = BULK
        while left > 0:
            got = proc.stdout.read1(min(left, 1 << 20))  # type: ignore[attr-defined]
            if not got:
                raise BenchError("measuring the link: the run ended early")
            left -= len(got)
        from_appliance = BULK / (time.perf_counter() - t) / 1e6
        proc.stdin.write(b"quit\n")
        proc.stdin.close()
        proc.wait(60)
    except (BrokenPipeError, subprocess.TimeoutExpired):
        raise failed() from None
    finally:
        errors.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Link(
        rtt_ms=statistics.median(rtts) * 1e3,
        rtt_p90_ms=rtts[int(0.9 * (len(rtts) - 1))] * 1e3,
        to_appliance_mb_s=to_appliance,
        from_appliance_mb_s=from_appliance,
    )


def check_alike(results: list[CaseResult]) -> list[str]:
    """Differences between the two sides that would make the comparison unfair: threads,
    versions, the model, and the conditions the processes ran under (train.conditions)."""
    problems = []
    for r in results:
        lo, re, case = r.local, r.remote, f"{r.model} b{r.batch}"
        if lo is None:
            continue
        pairs = {"threads": (lo.threads, re.threads), "versions": (lo.versions, re.versions),
                 "parameters": (lo.parameters, re.parameters)}  # fmt: skip
        for key in sorted(set(lo.conditions) | set(re.conditions)):
            pairs[key] = (lo.conditions.get(key), re.conditions.get(key))
        for key, (here, there) in pairs.items():
            if here != there:
                problems.append(f"{case}: {key} {here} here, {there} remote")
    return problems


def run(plan: Plan, progress: Progress, measure: bool = True) -> Record:
    """Measure the link, then every case: here and remote, alternating which goes first."""
    if plan.threads < 1 or plan.rounds < 1:
        raise UsageError(f"--threads and --rounds must be 1 or more, got {plan.threads}, {plan.rounds}")
    if plan.seconds and plan.warmup < 2:
        raise UsageError("--seconds judges a step's time by the warm-up: give --warmup 2 or more")
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise UsageError(
            f"torch is not installed for {plan.python}: pip install 'radium[bench]' (or the torch build "
            "for your GPUs); the appliance's runs use the same files"
        )
    record = Record(
        radium=VERSION,
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        appliance=plan.appliance or "",
        steps=0 if plan.seconds else plan.steps,
        seconds=plan.seconds,
        warmup=plan.warmup,
        threads=plan.threads,
        link=measure_link(plan) if measure else None,
        rounds=plan.rounds,
    )
    for i, case in enumerate(plan.cases):
        runs: dict[str, list[Side]] = {"here": [], "remote": []}
        missing = ""
        steps = None  # with plan.seconds: the case's first run sets the count for the others
        for r in range(plan.rounds):
            # Which side goes first alternates from case to case and round to round (ABBA).
            for where in ("here", "remote") if (i + r) % 2 == 0 else ("remote", "here"):
                if where == "here" and missing:
                    continue
                argv = plan.worker(case, steps)
                if where == "remote":
                    argv = plan.remote(argv, case.gpus)
                label = where if plan.rounds == 1 else f"{where}, round {r + 1}"
                side, missing_here = run_side(argv, label, case, progress)
                if side is None:
                    missing = missing_here
                    continue
                steps = steps or side.steps
                runs[where].append(side)
        local = pool(runs["here"]) if runs["here"] else None
        remote = pool(runs["remote"])
        ratios = [
            re.images_per_s / lo.images_per_s for lo, re in zip(runs["here"], runs["remote"], strict=False)
        ]
        result = CaseResult(case.model, case.batch, case.gpus, local, remote, missing)
        result.round_ratios = ratios if plan.rounds > 1 else []
        record.cases.append(result)
        if not record.appliance:
            record.appliance = remote.host
    return record


def pool(sides: list[Side]) -> Side:
    """Several runs of one side of a case as one: images/s over all their timed loops, the
    loops' time, CPU and accounting summed, start-up and warm-up averaged."""
    if len(sides) == 1:
        return sides[0]
    wall = sum(s.timed_wall_s for s in sides)
    images = sum(s.images_per_s * s.timed_wall_s for s in sides)
    n = len(sides)
    return replace(
        sides[0],
        images_per_s=images / wall,
        steps=sum(s.steps for s in sides),
        timed_wall_s=wall,
        cpu_s=sum(s.cpu_s for s in sides),
        import_s=sum(s.import_s for s in sides) / n,
        setup_s=sum(s.setup_s for s in sides) / n,
        warmup_s=sum(s.warmup_s for s in sides) / n,
        started_s=sum(s.started_s for s in sides) / n,
        step_median_s=statistics.median(s.step_median_s for s in sides),
        accounting={k: sum(s.accounting.get(k, 0.0) for s in sides) for k in sides[0].accounting},
    )


def load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"--compare {path}: not a radium bench result: {exc}") from None
    if not isinstance(data, dict) or "cases" not in data:
        raise UsageError(f"--compare {path}: not a radium bench result (no cases)")
    return data


def save(record: Record, path: Path) -> None:
    from .._keys import write_atomic

    write_atomic(path, json.dumps(record.to_json(), indent=2) + "\n", mode=0o644)


def default_threads() -> int:
    return len(os.sched_getaffinity(0))
