"""DirectPath I/O: switching a host's devices to passthrough, and checking they can be given to a VM.

`set_passthrough` changes the host's passthrough configuration through
``host.configManager.pciPassthruSystem.UpdatePassthruConfig``.  ESXi applies it
at the next reboot: the result says which devices wait for one.  Devices are
checked first, all of them, so nothing changes when one is wrong.

`check_assignable` is what a deployment asks before giving devices to a VM:
each must be passthrough-enabled and active on its host and not held by a
powered-on VM; otherwise the error says what to do.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from .connection import Session
from .errors import Refused, translated
from .inventory import Inventory, PciFunction, collect

__all__ = ["DeviceChange", "PassthroughChange", "check_assignable", "set_passthrough"]


class DeviceChange(msgspec.Struct, kw_only=True):
    address: str
    description: str
    enabled_before: bool
    enabled: bool
    active: bool  #: in effect now
    changed: bool
    reboot_needed: bool  #: enabled != active: the host must reboot before it takes effect


class PassthroughChange(msgspec.Struct, kw_only=True):
    """What `set_passthrough` did on one host."""

    host: str
    enable: bool
    devices: list[DeviceChange]
    changed: bool
    reboot_needed: bool
    note: str = ""


class _Planned(NamedTuple):
    passthruEnabled: bool  # noqa: N815 (as vCenter's PciPassthruInfo spells it)
    passthruActive: bool  # noqa: N815


def _what_to_do_not_capable(host: str, fn: PciFunction, capable: list[str]) -> str:
    others = f"; the passthrough-capable accelerators of {host} are {', '.join(capable)}" if capable else ""
    return (
        f"{fn.address} on {host} ({fn.description}) is not passthrough-capable: the host cannot give it "
        "to a VM. Check that the server's firmware enables VT-d/AMD-Vi (IOMMU) and that the device is "
        f"not the host's own console or boot device{others}"
    )


def set_passthrough(
    session: Session,
    host_name: str,
    addresses: list[str],
    enable: bool,
    *,
    inv: Inventory | None = None,
    dry_run: bool = False,
) -> PassthroughChange:
    """Enable or disable passthrough of `addresses` on the host called `host_name`.

    Refused (nothing changed) when a device is unknown (`NotFound`, with close
    matches), not passthrough-capable, or, when disabling, held by a powered-on VM.
    `dry_run`: check the same, change nothing, and say what would change (with the
    state each device would have; Ansible's check mode).
    """
    if not addresses:
        raise Refused("name at least one PCI device (its address, e.g. 0000:3b:00.0)")
    inv = inv or collect(session)
    host = inv.host(host_name)
    functions: list[PciFunction] = []
    for address in addresses:
        fn = inv.pci_function(host, address)
        if fn not in functions:
            functions.append(fn)
    capable = [d.address for d in host.accelerators if d.capable]
    for fn in functions:
        if enable and not fn.capable:
            raise Refused(_what_to_do_not_capable(host.name, fn, capable))
    if not enable:
        held = {d.address: d.held_by for d in host.accelerators if d.held_by}
        for fn in functions:
            if fn.address in held:
                raise Refused(
                    f"{fn.address} on {host.name} is held by the powered-on VM {held[fn.address]}: "
                    "power it off, or remove the device from it, before disabling passthrough"
                )

    to_change = [fn for fn in functions if fn.enabled != enable]
    state: dict[str, Any] = {}
    if dry_run:
        state = {f.address: _Planned(enable if f in to_change else f.enabled, f.active) for f in functions}
    elif to_change:
        from pyVmomi import vim

        with translated(session.settings.where):
            ref = vim.HostSystem(host.id, session.stub)
            system = ref.configManager.pciPassthruSystem
            if system is None:
                raise Refused(f"host {host.name} has no PCI passthrough system (is it connected?)")
            system.UpdatePassthruConfig(
                [vim.host.PciPassthruConfig(id=fn.address, passthruEnabled=enable) for fn in to_change]
            )
            config = ref.config
            state = {p.id: p for p in (config.pciPassthruInfo if config is not None else [])}

    devices = []
    for fn in functions:
        now = state.get(fn.address)
        enabled = bool(now.passthruEnabled) if now is not None else fn.enabled
        active = bool(now.passthruActive) if now is not None else fn.active
        devices.append(
            DeviceChange(
                address=fn.address,
                description=fn.description,
                enabled_before=fn.enabled,
                enabled=enabled,
                active=active,
                changed=fn in to_change,
                reboot_needed=enabled != active,
            )
        )
    reboot = any(d.reboot_needed for d in devices)
    note = (
        f"host {host.name} needs a reboot before this takes effect (enter maintenance mode, reboot, exit)"
        if reboot
        else ""
    )
    return PassthroughChange(
        host=host.name,
        enable=enable,
        devices=devices,
        changed=bool(to_change),
        reboot_needed=reboot,
        note=note,
    )


def check_assignable(
    inv: Inventory, host_name: str, addresses: list[str], vm: str | None = None
) -> list[str]:
    """Check that `addresses` on the host can be given to a VM (`vm`, when it is that VM's).

    Returns the normalised addresses; raises `NotFound` (close matches) or
    `Refused` saying what to do: enable passthrough, reboot the host, or free
    the device from the powered-on VM that holds it.
    """
    host = inv.host(host_name)
    result = []
    for address in addresses:
        device = inv.device(host, address)
        if not device.capable:
            fn = inv.pci_function(host, address)
            capable = [d.address for d in host.accelerators if d.capable]
            raise Refused(_what_to_do_not_capable(host.name, fn, capable))
        if not device.enabled:
            raise Refused(
                f"{device.address} on {host.name} ({device.vendor} {device.model}) is not enabled for "
                f"passthrough: run `radium-admin passthrough enable {host.name} {device.address}`, then "
                "reboot the host"
            )
        if not device.active:
            raise Refused(
                f"{device.address} on {host.name} is enabled for passthrough but not active yet: "
                "reboot the host (maintenance mode first) so that the change takes effect"
            )
        if device.held_by and device.held_by != vm:
            raise Refused(
                f"{device.address} on {host.name} is held by the powered-on VM {device.held_by}: "
                "choose another device, or power that VM off first"
            )
        result.append(device.address)
    return result
