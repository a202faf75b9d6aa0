"""Radium's management plane over vCenter (pyVmomi).

    from radium import vcenter

    settings = vcenter.resolve(profile="lab")          # flags > environment > profile
    with vcenter.connect(settings) as vc:               # one session, logged out at exit
        inv = vcenter.collect_inventory(vc)             # one property collection
        for host in inv.hosts:
            print(host.name, [d.model for d in host.accelerators])
        vcenter.set_passthrough(vc, "esx1", ["0000:3b:00.0"], enable=True)

Modules: `settings` (flags, environment, profiles), `connection` (TLS trust,
login, round trips), `inventory` and `model` (hosts, accelerators, VMs),
`passthrough`, `tasks` (progress streams), `deploy` (an appliance from its OVF),
`appliances` (finding, checking, removing them), `registration` (client VMs),
`names` (close matches), `errors` (the exception tree), `pciids`, and `sim` (the
simulator for tests and the lab).
Names are loaded on first use; pyVmomi only when a session is opened.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> (module, attribute).  Loaded on first use, so that `radium-admin version`
# (whose code lives in radium.vcenter.cli) does not pay for what it does not use.
_EXPORTS: dict[str, tuple[str, str]] = {
    "Session": (".connection", "Session"),
    "connect": (".connection", "connect"),
    "server_thumbprint": (".connection", "server_thumbprint"),
    **{
        name: (".errors", name)
        for name in (
            "CertificateError",
            "Fault",
            "LoginFailed",
            "NotFound",
            "NotPermitted",
            "Refused",
            "TaskFailed",
            "Unreachable",
            "VCenterError",
        )
    },
    "Inventory": (".inventory", "Inventory"),
    "collect_inventory": (".inventory", "collect"),
    "hosts": (".inventory", "hosts"),
    "Host": (".model", "Host"),
    "PassthroughDevice": (".model", "PassthroughDevice"),
    "VirtualMachine": (".model", "VirtualMachine"),
    "PassthroughChange": (".passthrough", "PassthroughChange"),
    "check_assignable": (".passthrough", "check_assignable"),
    "set_passthrough": (".passthrough", "set_passthrough"),
    "ConnectionSettings": (".settings", "ConnectionSettings"),
    "Profile": (".settings", "Profile"),
    "resolve": (".settings", "resolve"),
    "TaskProgress": (".tasks", "TaskProgress"),
    "wait": (".tasks", "wait"),
    "watch": (".tasks", "watch"),
}

__all__ = [
    "CertificateError",
    "ConnectionSettings",
    "Fault",
    "Host",
    "Inventory",
    "LoginFailed",
    "NotFound",
    "NotPermitted",
    "PassthroughChange",
    "PassthroughDevice",
    "Profile",
    "Refused",
    "Session",
    "TaskFailed",
    "TaskProgress",
    "Unreachable",
    "VCenterError",
    "VirtualMachine",
    "check_assignable",
    "collect_inventory",
    "connect",
    "hosts",
    "resolve",
    "server_thumbprint",
    "set_passthrough",
    "wait",
    "watch",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from .connection import Session, connect, server_thumbprint
    from .errors import (
        CertificateError,
        Fault,
        LoginFailed,
        NotFound,
        NotPermitted,
        Refused,
        TaskFailed,
        Unreachable,
        VCenterError,
    )
    from .inventory import Inventory, hosts
    from .inventory import collect as collect_inventory
    from .model import Host, PassthroughDevice, VirtualMachine
    from .passthrough import PassthroughChange, check_assignable, set_passthrough
    from .settings import ConnectionSettings, Profile, resolve
    from .tasks import TaskProgress, wait, watch
