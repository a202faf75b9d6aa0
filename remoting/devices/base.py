"""The one interface every vendor backend implements.

A backend finds its devices, checks their health by really using them, and
reports their usage where the vendor can.  Backends are blocking (driver
calls); the daemon runs them in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .._schema import Device


@dataclass(frozen=True)
class Usage:
    memory_used_bytes: int | None = None
    utilization_percent: float | None = None


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Visibility:
    """How a process is limited to some of this backend's devices (used by `radium run`)."""

    environment: dict[str, str]


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

    def visibility(self, devices: list[Device]) -> Visibility:
        """Environment that makes only `devices` visible to a process."""
