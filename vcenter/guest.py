"""Waiting for a powered-on appliance: for its guest's IP address (VMware Tools), then for its radiumd."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from radium.remoting import ApplianceEntry, ClientConfig

from . import appliances as appl
from .collect import NO_CHANGE, updates
from .connection import Session

__all__ = ["wait_for_ip", "wait_for_radiumd"]


def _usable_ip(ip: str | None) -> bool:
    return bool(ip) and not str(ip).lower().startswith("fe80:") and not str(ip).startswith("169.254.")


def wait_for_ip(session: Session, vm: Any, deadline: float, check: Callable[[], None]) -> str | None:
    """The IP address the guest reports (VMware Tools), or None when `deadline` passes first."""
    with contextlib.closing(updates(session, vm, "guest.ipAddress", max_wait=2)) as values:
        for ip in values:
            check()
            if ip is not NO_CHANGE and _usable_ip(ip):
                return str(ip)
            if time.monotonic() >= deadline:
                return None
    return None


def wait_for_radiumd(
    entry: ApplianceEntry, operator: ClientConfig, deadline: float, check: Callable[[], None]
) -> appl.Health:
    """Ask radiumd for its devices until it answers or `deadline` passes; the last answer."""
    a = appl.Appliance(
        vm=entry.name,
        id="",
        name=entry.name,
        host=None,
        power_state="poweredOn",
        ip=None,
        address=entry.address,
        port=0,
        server_public_key=entry.public_key,
        gpus=[],
        marked=True,
    )
    while True:
        check()
        left = deadline - time.monotonic()
        health = appl.check(a, operator, timeout=max(0.5, min(3.0, left)))
        if health.reachable or time.monotonic() >= deadline:
            return health
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
