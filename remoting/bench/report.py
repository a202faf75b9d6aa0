"""`radium bench`'s output: the paper's table, the chart of ratios, two results compared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .runner import Record


def _f(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "—" if value is None else f"{value:,.{digits}f}{unit}"


def table(record: Record) -> Any:
    from rich import box
    from rich.table import Table

    timing = f"about {record.seconds:g} s of timed steps" if record.seconds else f"{record.steps} timed steps"
    if record.rounds > 1:
        timing += f", {record.rounds} rounds a side pooled (each round's ratio in brackets)"
    t = Table(
        title=f"radium bench: images/s, {timing} after {record.warmup} warm-up ({record.appliance})",
        box=box.SIMPLE_HEAD,
    )
    for name, justify in (("Case", "left"), ("Local", "right"), ("Radium", "right"), ("ratio", "right"),
                          ("steps", "right"), ("start-up here/remote", "right"),
                          ("warm-up here/remote", "right")):  # fmt: skip
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in record.cases:
        lo, re = r.local, r.remote
        start = f"{_f(lo.started_s if lo else None, 2)} / {_f(re.started_s, 2)} s"
        warm = f"{_f(lo.warmup_s if lo else None, 2)} / {_f(re.warmup_s, 2)} s"
        case = f"{r.model} b{r.batch}" + (f" ×{r.gpus}" if r.gpus > 1 else "")
        local = _f(lo.images_per_s if lo else None)
        steps = str(re.steps) if record.rounds == 1 else f"{re.steps // record.rounds}×{record.rounds}"
        ratio = _f(r.ratio, 3)
        if r.round_ratios:
            ratio += f" ({min(r.round_ratios):.2f}–{max(r.round_ratios):.2f})"
        t.add_row(case, local, _f(re.images_per_s), ratio, steps, start, warm)
    return t


def notes(record: Record, problems: list[str]) -> list[str]:
    lines = []
    first = record.cases[0] if record.cases else None
    if first is not None:
        lo, re = first.local, first.remote
        lines.append(f"remote: {re.device} on {re.host}, {re.threads} threads")
        lines.append(f"local:  {lo.device + ' on ' + lo.host if lo else first.local_missing}")
        versions = ", ".join(f"{k} {v}" for k, v in re.versions.items())
        same = lo is not None and lo.versions == re.versions and not problems
        lines.append(f"versions: {versions}" + (" on both sides (checked)" if same else ""))
    for problem in problems:
        lines.append(f"NOT ALIKE: {problem}")
    if record.link is not None:
        k = record.link
        lines.append(
            f"link (through radium run): round trip {k.rtt_ms:.2f} ms (p90 {k.rtt_p90_ms:.2f}), "
            f"to the appliance {k.to_appliance_mb_s:,.0f} MB/s, from it {k.from_appliance_mb_s:,.0f} MB/s"
        )
    both = [r for r in record.cases if r.local is not None]
    if both:

        def per_image_ms(side: Any) -> float:
            return 1e3 * side.cpu_s / (side.images_per_s * side.timed_wall_s)

        here = sum(per_image_ms(r.local) for r in both) / len(both)
        there = sum(per_image_ms(r.remote) for r in both) / len(both)
        steal = [sum(getattr(r, s).accounting.get("steal_s", 0.0) for r in both) for s in ("local", "remote")]
        lines.append(
            f"timed loops: CPU time per image {here:.2f} ms here, {there:.2f} ms remote (mean over cases); "
            f"the host took {steal[0]:.1f} s of CPU here, {steal[1]:.1f} s remote (steal)"
        )
    lines.append("start-up: process start to the model ready on the device; warm-up: its untimed steps")
    return lines


def plot(record: Record, path: Path) -> None:
    """A bar chart of the ratios, a group of bars per model, one bar per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in record.cases))
    batches = list(dict.fromkeys((r.batch, r.gpus) for r in record.cases))
    width = 0.8 / max(1, len(batches))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(models)), 4.0))
    for j, (batch, gpus) in enumerate(batches):
        xs, ys = [], []
        for i, model in enumerate(models):
            for r in record.cases:
                if (r.model, r.batch, r.gpus) == (model, batch, gpus) and r.ratio is not None:
                    xs.append(i + (j - (len(batches) - 1) / 2) * width)
                    ys.append(r.ratio)
        label = f"batch {batch}" + (f" × {gpus} GPUs" if gpus > 1 else "")
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(0.98, color="grey", linewidth=0.8, linestyle="--", label="0.98")
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("Radium / local (images/s)")
    ax.set_ylim(0, max([1.1, *(r.ratio or 0 for r in record.cases)]) * 1.05)
    ax.set_title(f"radium bench {record.date[:10]}: {record.appliance}")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    tmp.replace(path)


def compare(a: dict, b: dict, names: tuple[str, str]) -> Any:
    from rich import box
    from rich.table import Table

    t = Table(title="radium bench: two results, images/s", box=box.SIMPLE_HEAD)
    t.add_column("Case")
    for name, data in zip(names, (a, b), strict=True):
        label = f"{name}\n{data.get('date', '')[:16]} {data.get('appliance', '')}"
        for column in ("Local", "Radium", "ratio"):
            t.add_column(f"{label}\n{column}" if column == "Local" else column, justify="right")
    t.add_column("ratio B−A", justify="right")
    keyed = [{(c["model"], c["batch"], c["gpus"]): c for c in d["cases"]} for d in (a, b)]
    for key in dict.fromkeys([*keyed[0], *keyed[1]]):
        row = [f"{key[0]} b{key[1]}" + (f" ×{key[2]}" if key[2] > 1 else "")]
        ratios: list[float | None] = []
        for cases in keyed:
            c = cases.get(key)
            local = c and c["local"] and c["local"]["images_per_s"]
            remote = c and c["remote"]["images_per_s"]
            ratio = c and c.get("ratio")
            row += [_f(local), _f(remote), _f(ratio, 3)]
            ratios.append(ratio)
        a_ratio, b_ratio = ratios
        row.append(f"{b_ratio - a_ratio:+.3f}" if a_ratio is not None and b_ratio is not None else "—")
        t.add_row(*row)
    return t
