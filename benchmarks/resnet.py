"""ResNet-20 (v1, CIFAR) training loop in PyTorch on the CPU, as tf_cnn_benchmarks counts it.

The PyTorch counterpart of what the Radium paper ran (`tf_cnn_benchmarks --model=resnet20
--data_name=cifar10`; see the notes on that benchmark): basic blocks in three stages of
16/32/64 filters at 32/16/8 pixels, three blocks a stage; bias-free 3×3 convolutions;
stem conv + BN with no ReLU; block conv-BN-ReLU-conv-BN, add, ReLU; shortcut "option A"
(identity, or a stride-2 subsample with the new channels zero-padded equally on both
sides); global average pool and a dense 64 → 11 head (CIFAR-10 is declared with 11
classes there).  269,787 parameters.  BN decay 0.9 (momentum 0.1), eps 1e-5, with scale.

Training as that benchmark does it: synthetic data, one fixed NCHW float32 image batch
(truncated normal, mean 127, std 60) made once and reused, new random labels each step;
plain SGD (no momentum), lr 0.1, weight decay 4e-5 on the non-BN weights; fp32.  Warm-up
steps are discarded; images/s = timed steps × batch ÷ wall time of the timed loop.

`python -m benchmarks.resnet --steps 50 --batch 64 --warmup 10` trains and prints one JSON
line: images/s, the per-step times, the thread count and how long import and setup took.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def _machine_cpu() -> tuple[float, float]:
    """The whole machine's busy and idle CPU-seconds so far (/proc/stat: every process on it,
    the client's and the appliance's too when both are namespaces of one machine)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    busy = sum(fields[:3]) + fields[5] + fields[6]  # user, nice, system, irq, softirq
    return busy / tick, (fields[3] + fields[4]) / tick  # and idle, iowait


def _own_cpu() -> tuple[float, int]:
    """This process's CPU-seconds and voluntary waits so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_nvcsw


T0 = time.perf_counter()
MACHINE0, OWN0 = _machine_cpu(), _own_cpu()

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from radium.remoting.bench import models  # noqa: E402

IMPORTED = time.perf_counter()
MACHINE1, OWN1 = _machine_cpu(), _own_cpu()

CLASSES = models.CLASSES  # tf_cnn_benchmarks declares CIFAR-10 with 11 classes
RESNET20_PARAMETERS = 269_787


def ResNetCifarV1() -> nn.Module:  # noqa: N802 (kept as the name this benchmark has always used)
    """ResNet-20 v1 for CIFAR: `radium bench`'s model (remoting/bench/models.py), one definition."""
    return models.build("resnet20")


def parameter_count(model: nn.Module) -> int:
    return models.parameter_count(model)


def train(steps: int, batch: int, warmup: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    started = time.perf_counter()
    model = ResNetCifarV1().train()
    count = parameter_count(model)
    decayed = [p for name, p in model.named_parameters() if p.ndim > 1]  # conv and dense weights
    others = [p for name, p in model.named_parameters() if p.ndim <= 1]  # BN scale/shift, dense bias
    opt = torch.optim.SGD([{"params": decayed, "weight_decay": 4e-5}, {"params": others}], lr=0.1)
    images = torch.nn.init.trunc_normal_(
        torch.empty(batch, 3, 32, 32), mean=127.0, std=60.0, a=127.0 - 120.0, b=127.0 + 120.0
    )
    times = []
    timed_start = timed_start_unix = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            timed_start, timed_start_unix = time.perf_counter(), time.time()
        t = time.perf_counter()
        labels = torch.randint(0, CLASSES - 1, (batch,))  # as there: uniform in [0, classes - 1)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - timed_start
    return {
        "images_per_s": steps * batch / wall,
        "timed_wall_s": wall,
        "timed_start_unix": timed_start_unix,
        "steps": steps,
        "warmup": warmup,
        "batch": batch,
        "step_s": times[warmup:],
        "warmup_step_s": times[:warmup],
        "parameters": count,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "import_s": IMPORTED - T0,
        # where the import's time went: the importer's own CPU and waits, the machine's
        "import_cpu_s": OWN1[0] - OWN0[0],
        "import_waits": OWN1[1] - OWN0[1],
        "import_machine_busy_s": MACHINE1[0] - MACHINE0[0],
        "import_machine_idle_s": MACHINE1[1] - MACHINE0[1],
        "setup_s": timed_start - started,
        "loss": loss.item(),
        "hostname": os.uname().nodename,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.resnet", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100, help="timed steps (100)")
    p.add_argument("--batch", type=int, default=64, help="images per step (64)")
    p.add_argument("--warmup", type=int, default=10, help="steps run first and discarded (10)")
    p.add_argument("--check", action="store_true", help="only check the parameter count")
    a = p.parse_args(argv)
    if a.check:
        count = parameter_count(ResNetCifarV1())
        print(json.dumps({"parameters": count, "expected": RESNET20_PARAMETERS}))
        return 0 if count == RESNET20_PARAMETERS else 1
    result = train(a.steps, a.batch, a.warmup)
    print(json.dumps(result), flush=True)
    return 0 if result["parameters"] == RESNET20_PARAMETERS else 1


if __name__ == "__main__":
    sys.exit(main())
