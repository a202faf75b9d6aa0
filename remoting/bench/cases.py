"""What `radium bench` measures, without torch: the models, the cases, their arithmetic.

The counterpart of the Radium paper's benchmark (TensorFlow's `tf_cnn_benchmarks` on
CIFAR-10; see ../shared/notes/cnn-benchmark.md and docs/bench.md): each case is a model,
a batch per device and a device count, trained first here and then through `radium run`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import UsageError

#: model name -> its trainable parameters with the 11-way head (the notes' figures)
PARAMETERS = {
    "alexnet": 1_756_619,
    "resnet20": 269_787,
    "resnet20_v2": 269_467,
    "resnet32": 464_219,
    "resnet32_v2": 463_675,
    "resnet56": 853_083,
    "resnet56_v2": 852_091,
    "resnet110": 1_728_027,
    "resnet110_v2": 1_726_027,
}
DEFAULT_MODELS = ["alexnet", "resnet20_v2", "resnet32_v2", "resnet56_v2", "resnet110_v2"]
DEFAULT_BATCHES = [32, 128, 512]
DEVICES = ("auto", "cuda", "rocm", "cpu")


@dataclass(frozen=True)
class Case:
    model: str
    batch: int  # per device
    gpus: int

    @property
    def name(self) -> str:
        return f"{self.model} b{self.batch}" + (f" ×{self.gpus}" if self.gpus > 1 else "")

    @property
    def global_batch(self) -> int:
        return self.batch * self.gpus


def parse_list(text: str, what: str, kind: type = str) -> list:
    """`a,b,c` as a list, each checked; a UsageError naming what is wrong."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UsageError(f"--{what}: give at least one value (comma-separated)")
    if kind is str:
        unknown = [m for m in items if m not in PARAMETERS]
        if unknown:
            raise UsageError(f"--{what}: unknown model {', '.join(unknown)}; known: {', '.join(PARAMETERS)}")
        return items
    values = []
    for item in items:
        try:
            value = int(item)
        except ValueError:
            raise UsageError(f"--{what}: expected whole numbers, got {item!r}") from None
        if value < 1:
            raise UsageError(f"--{what}: expected numbers of 1 or more, got {value}")
        values.append(value)
    return values


def cases(models: list[str], batches: list[int], gpus: list[int]) -> list[Case]:
    return [Case(m, b, g) for g in gpus for m in models for b in batches]


def images_per_s(steps: int, global_batch: int, wall_s: float) -> float:
    """As tf_cnn_benchmarks counts: timed steps × global batch ÷ wall time of the timed loop."""
    return steps * global_batch / wall_s if wall_s > 0 else 0.0
