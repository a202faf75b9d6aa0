"""The one interface every vendor backend implements.

A backend finds its devices, checks their health by really using them, and
reports their usage where the vendor can.  Backends are blocking (driver
calls); the daemon runs them in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..schema import Device, LeasePart


@dataclass(frozen=True)
class Usage:
    memory_used_bytes: int | None = None
    utilization_percent: float | None = None


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    detail: str = ""


# The health kernel every backend runs: y = A*x + B over N floats, checked exactly.
HEALTH_N = 4096
HEALTH_A = 1.5
HEALTH_B = -7.25


def health_inputs():  # type: ignore[no-untyped-def]
    """x, and y pre-filled with NaN so that an element the kernel skipped is caught."""
    import numpy as np

    return np.arange(HEALTH_N, dtype=np.float32), np.full(HEALTH_N, np.nan, dtype=np.float32)


def check_health_result(x, y, api: str) -> HealthResult:  # type: ignore[no-untyped-def]
    """Compare the kernel's y with A*x + B computed here."""
    import numpy as np

    expected = np.float32(HEALTH_A) * x + np.float32(HEALTH_B)
    bad = np.flatnonzero(y != expected)
    if bad.size:
        i = int(bad[0])
        return HealthResult(
            False,
            f"{api} kernel result wrong at {bad.size} of {HEALTH_N} elements "
            f"(y[{i}]={y[i]!r}, expected {expected[i]!r})",
        )
    return HealthResult(True, f"{api} kernel ran on {HEALTH_N} floats, results verified")


@dataclass(frozen=True)
class MpsLimits:
    """A partial lease of NVIDIA devices, as CUDA MPS enforces it (see docs/run.md).

    `memory_mib`: per device index as the process enumerates them (0, 1, ... in
    CUDA_VISIBLE_DEVICES order), the device memory it may pin; `threads`: the
    active thread percentage, the share of each device's SMs its kernels may use.
    """

    memory_mib: dict[int, int]
    threads: int


@dataclass(frozen=True)
class Visibility:
    """How a process is limited to some of this backend's devices (used by `radium run`)."""

    environment: dict[str, str]
    mps: MpsLimits | None = None  # set when the lease holds only part of NVIDIA devices


class Backend(Protocol):
    name: str

    def available(self) -> bool:
        """Whether the vendor library is present on this machine."""

    def discover(self) -> list[Device]:
        """The backend's devices, with stable ids and health "unknown"."""

    def check_health(self, device: Device) -> HealthResult:
        """Use the device for real (a small kernel, a driver query) and say if it works."""

    def usage(self, device: Device) -> Usage:
        """Memory used and utilisation as the vendor reports them; None where it cannot."""

    def visibility(self, devices: list[Device], parts: list[LeasePart] | None = None) -> Visibility:
        """Environment that makes only `devices` visible to a process.

        `parts`: the lease's share of each device (same order); a backend whose vendor
        has a mechanism to hold a process to a share says how (`Visibility.mps`).
        """
