"""One case of `radium bench`, trained where it runs: `python -m radium.remoting.bench.train`.

The same program runs here and, through `radium run`, on the appliance; it reports on stdout,
one JSON object a line:

    {"event": "ready", ...}   after the imports and the model's set-up: the device, threads,
                              versions, host, parameters, and how long those took
    {"event": "progress", "steps": N, "warmup": bool, "s": SECONDS}   steps done so far (a line a
                              second, and at the end of the warm-up and of the timed steps)
    {"event": "result", ...}  the figures: images/s of the timed steps, the warm-up's time,
                              the CPU time of the timed loop (rusage), every step's time
    {"event": "error", "kind": KIND, "message": TEXT}   instead, and exit 2: a batch that
                              does not fit the device (oom), no such device, unreadable data

Training as tf_cnn_benchmarks does (notes/cnn-benchmark.md): synthetic data by default, one
fixed image batch per device (truncated normal, mean 127, std 60, NCHW float32) made once on
the device, new random labels each step, no host-to-device copy; plain SGD, lr 0.1, weight
decay 4e-5 on conv and dense weights; fp32.  With N GPUs the model is replicated
(DataParallel) and the global batch is N × batch.  `--data DIR` trains on the CIFAR-10
python batches in DIR instead (data_batch_1..5), copied to the device once.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

T0 = time.perf_counter()
MIN_STEPS = 5  # with --seconds, never fewer timed steps
PROGRESS_EVERY = 1.0  # seconds between progress lines


def say(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Failed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# Environment variables that change how the math libraries run (threads, spinning, allocator).
TUNING_ENV = (
    "OMP_",
    "MKL_",
    "KMP_",
    "GOMP_",
    "OPENBLAS_",
    "MALLOC_",
    "LD_PRELOAD",
    "PYTORCH_",
)


def conditions(torch: Any) -> dict[str, Any]:
    """What the process runs under that could make one side faster than the other: compared
    between the two sides by the runner (runner.check_alike)."""
    limits = {
        name: resource.getrlimit(getattr(resource, f"RLIMIT_{name}")) for name in ("AS", "MEMLOCK", "STACK")
    }
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        thp = "?"
    return {
        "cpus": sorted(os.sched_getaffinity(0)),
        "niceness": os.getpriority(os.PRIO_PROCESS, 0),
        "interop_threads": torch.get_num_interop_threads(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(TUNING_ENV)},
        "limits": {k: list(v) for k, v in limits.items()},
        "transparent_hugepages": thp,
    }


def steal_s() -> float:
    """CPU time the hypervisor took from this machine so far (all CPUs, /proc/stat's steal)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.machine()


def pick_device(torch: Any, wanted: str, gpus: int) -> tuple[Any, str]:
    """The torch device and what it is, in words; Failed when it is not here."""
    has_gpu = torch.cuda.is_available()
    rocm = getattr(torch.version, "hip", None) is not None
    if wanted == "auto":
        wanted = ("rocm" if rocm else "cuda") if has_gpu else "cpu"
    if wanted == "cpu":
        if gpus > 1:
            raise Failed("device", f"--gpus {gpus} needs {gpus} GPUs; this run has the CPU only")
        return torch.device("cpu"), f"cpu ({cpu_model()}, {os.cpu_count()} CPUs)"
    if not has_gpu or (wanted == "rocm") != rocm:
        build = (
            f"torch {torch.__version__} ({'ROCm' if rocm else 'CUDA' if torch.version.cuda else 'CPU'} build)"
        )
        raise Failed("device", f"no {wanted} device here: {build}, {torch.cuda.device_count()} GPUs visible")
    if torch.cuda.device_count() < gpus:
        raise Failed("device", f"--gpus {gpus}: only {torch.cuda.device_count()} {wanted} devices visible")
    return torch.device("cuda:0"), f"{wanted} {torch.cuda.get_device_name(0)}"


def cifar(torch: Any, folder: Path, device: Any) -> tuple[Any, Any]:
    """CIFAR-10's training images and labels (the python batches), on the device, NCHW float."""
    images, labels = [], []
    for i in range(1, 6):
        path = folder / f"data_batch_{i}"
        try:
            with path.open("rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images.append(torch.tensor(batch[b"data"], dtype=torch.uint8).view(-1, 3, 32, 32))
            labels.append(torch.tensor(batch[b"labels"], dtype=torch.long))
        except (OSError, pickle.UnpicklingError, KeyError, EOFError, RuntimeError) as exc:
            raise Failed(
                "data", f"--data {folder}: cannot read {path.name} as a CIFAR-10 python batch: {exc}"
            ) from None
    return torch.cat(images).to(device).float(), torch.cat(labels).to(device)


def train(a: argparse.Namespace) -> dict:
    import torch
    from torch.nn import functional as F

    from .._version import VERSION
    from . import models

    imported = time.perf_counter()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    device, described = pick_device(torch, a.device, a.gpus)
    model = models.build(a.model).to(device).train()
    count = models.parameter_count(model)
    decayed = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]  # conv and dense weights
    others = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]  # BN, biases
    groups: list[dict[str, Any]] = [{"params": decayed, "weight_decay": 4e-5}, {"params": others}]
    opt = torch.optim.SGD(groups, lr=0.1)
    net = torch.nn.DataParallel(model, device_ids=list(range(a.gpus))) if a.gpus > 1 else model
    batch = a.batch * a.gpus  # global
    data = cifar(torch, a.data, device) if a.data else None
    images = torch.nn.init.trunc_normal_(
        torch.empty(batch, 3, 32, 32, device=device), mean=127.0, std=60.0, a=127.0 - 120.0, b=127.0 + 120.0
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    say(
        event="ready",
        device=described,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        python=platform.python_version(),
        radium=VERSION,
        host=platform.node(),
        parameters=count,
        conditions=conditions(torch),
        import_s=imported - T0,
        setup_s=time.perf_counter() - imported,
    )
    steps: list[float] = []
    warm_started = time.perf_counter()
    timed_started, stolen = 0.0, 0.0
    before = resource.getrusage(resource.RUSAGE_SELF)
    timed = a.steps
    step = 0
    said_at = time.perf_counter()
    while step < a.warmup + timed:
        if step == a.warmup:
            if a.seconds:  # as many steps as last about that long, judged by the warm-up's
                sample = steps[1:] or steps  # the first step pays one-time costs
                timed = max(MIN_STEPS, round(a.seconds / statistics.median(sample))) if sample else MIN_STEPS
            sync()
            timed_started = time.perf_counter()
            before, stolen = resource.getrusage(resource.RUSAGE_SELF), steal_s()
        t = time.perf_counter()
        if data is None:  # as there: new labels, uniform in [0, classes - 1), the images reused
            x, y = images, torch.randint(0, models.CLASSES - 1, (batch,), device=device)
        else:
            at = (step * batch) % (len(data[0]) - batch + 1)
            x, y = data[0][at : at + batch], data[1][at : at + batch]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        sync()
        steps.append(time.perf_counter() - t)
        step += 1
        last = step in (a.warmup, a.warmup + timed)
        if last or time.perf_counter() - said_at >= PROGRESS_EVERY:
            # Progress, not every step: through radium run each line crosses three processes,
            # whose CPU time a CPU-bound loop on a small machine would share (docs/bench.md).
            say(event="progress", steps=step, warmup=step <= a.warmup, s=steps[-1])
            said_at = time.perf_counter()
    wall = time.perf_counter() - timed_started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "event": "result",
        "images_per_s": timed * batch / wall,
        "timed_wall_s": wall,
        "warmup_s": timed_started - warm_started,
        # The timed loop's accounting: CPU time, context switches (involuntary: preempted),
        # page faults, and the machine's steal time meanwhile (a busy host takes CPUs away).
        "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        "cpu_user_s": after.ru_utime - before.ru_utime,
        "switches_voluntary": after.ru_nvcsw - before.ru_nvcsw,
        "switches_involuntary": after.ru_nivcsw - before.ru_nivcsw,
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "steal_s": steal_s() - stolen,
        "steps": timed,
        "warmup": a.warmup,
        "global_batch": batch,
        "step_s": steps[a.warmup :],
        "warmup_step_s": steps[: a.warmup],
        "loss": float(loss.item()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m radium.remoting.bench.train", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, required=True, help="images per device and step")
    p.add_argument("--steps", type=int, default=100, help="timed steps (100)")
    p.add_argument("--warmup", type=int, default=10, help="steps first, not timed (10)")
    p.add_argument(
        "--seconds",
        type=float,
        default=0.0,
        help="instead of --steps: as many timed steps as last about this long (by the warm-up)",
    )
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "rocm", "cpu"))
    p.add_argument("--threads", type=int, default=0, help="torch's CPU threads (0: its default)")
    p.add_argument("--data", type=Path, help="CIFAR-10 python batches (default: synthetic, as the paper)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        say(**train(a))
    except Failed as exc:
        say(event="error", kind=exc.kind, message=str(exc))
        return 2
    except ImportError as exc:
        say(
            event="error",
            kind="torch",
            message=f"cannot import torch where this ran ({platform.node()}): {exc}",
        )
        return 2
    except (MemoryError, RuntimeError) as exc:
        text = str(exc).lower()  # CUDA: "out of memory"; the CPU allocator: "can't allocate memory"
        if isinstance(exc, MemoryError) or "out of memory" in text or "allocate memory" in text:
            say(event="error", kind="oom", message=str(exc).splitlines()[0][:300] or "out of memory")
            return 2
        raise
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
