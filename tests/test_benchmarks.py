"""The benchmarks' own helpers (the benchmarks themselves run with `./dev bench`)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import idle_pageout


def _kdamond(root: Path, state: str, action: str, age: int, aggr_us: int) -> None:
    """A kdamond as the kernel's DAMON sysfs shows it, with one context and one scheme."""
    context = root / "0" / "contexts" / "0"
    (context / "monitoring_attrs" / "intervals").mkdir(parents=True)
    (context / "monitoring_attrs" / "intervals" / "aggr_us").write_text(f"{aggr_us}\n")
    scheme = context / "schemes" / "0"
    (scheme / "access_pattern" / "age").mkdir(parents=True)
    (scheme / "access_pattern" / "age" / "min").write_text(f"{age}\n")
    (scheme / "action").write_text(f"{action}\n")
    (root / "0" / "state").write_text(f"{state}\n")


def test_a_kernel_that_pages_out_idle_memory_is_named_with_how_long_idle(tmp_path):
    """The lab VM's host runs DAMON paging out what was idle for 12 aggregations of 5 s: the
    benchmarks say so beside the machine, as it explains a baseline read from the disk."""
    _kdamond(tmp_path / "on", "on", "pageout", 12, 5_000_000)
    assert idle_pageout(tmp_path / "on") == "DAMON pages out memory idle for 60 s or more"
    _kdamond(tmp_path / "off", "off", "pageout", 12, 5_000_000)
    _kdamond(tmp_path / "stat", "on", "stat", 12, 5_000_000)
    assert idle_pageout(tmp_path / "off") is None and idle_pageout(tmp_path / "stat") is None
    assert idle_pageout(tmp_path / "none") is None  # no DAMON in this kernel
