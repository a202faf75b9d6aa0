"""An appliance VM's hardware: its DirectPath devices, locked memory, EFI, the 64-bit MMIO window, guestinfo.

What a deploy gives the VM it imported, and what the lab's stand-in appliance
gets too (`radium.vcenter.standin`), in one ``ReconfigVM`` / ``CreateVM`` spec.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from radium import appliance

from .connection import Session
from .errors import translated

__all__ = ["guestinfo_values", "hardware_spec", "mmio_size_gib", "passthrough_device", "passthrough_targets"]


def mmio_size_gib(memory_gib: Iterable[int]) -> int:
    """``pciPassthru.64bitMMIOSizeGB``: the next power of two at least twice the devices' memory."""
    need = 2 * sum(memory_gib)
    size = 1
    while size < need:
        size *= 2
    return max(size, 32)


def passthrough_device(key: int, pci: Any, system_id: str | None) -> Any:
    """A VirtualPCIPassthrough for host PCI device `pci` (a vim.host.PciDevice)."""
    from pyVmomi import vim

    backing = vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo(
        id=pci.id,
        deviceId=format(pci.deviceId & 0xFFFF, "x"),
        vendorId=pci.vendorId,
        systemId=system_id or "",
        deviceName=pci.deviceName or "",
    )
    return vim.vm.device.VirtualPCIPassthrough(key=key, backing=backing)


def passthrough_targets(session: Session, host_ref: Any) -> dict[str, tuple[Any, str | None]]:
    """PCI id → (vim.host.PciDevice, systemId) for every device the host offers VMs for passthrough."""
    with translated(session.settings.where):
        browser = host_ref.parent.environmentBrowser
        target = browser.QueryConfigTarget(host=host_ref) if browser is not None else None
    out = {}
    for p in getattr(target, "pciPassthrough", None) or []:
        dev = getattr(p, "pciDevice", None)
        if dev is not None and dev.id:
            out[dev.id.lower()] = (dev, getattr(p, "systemId", None))
    return out


def hardware_spec(devices: list[tuple[Any, str | None]], mmio_gib: int, guestinfo: dict[str, str]) -> Any:
    """The ReconfigVM spec of an appliance: DirectPath devices, reservation, EFI, MMIO, guestinfo."""
    from pyVmomi import vim

    extra = {"pciPassthru.use64bitMMIO": "TRUE", "pciPassthru.64bitMMIOSizeGB": str(mmio_gib), **guestinfo}
    return vim.vm.ConfigSpec(
        deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="add", device=passthrough_device(-100 - i, pci, sid))
            for i, (pci, sid) in enumerate(devices)
        ],
        memoryReservationLockedToMax=True,
        firmware="efi",
        bootOptions=vim.vm.BootOptions(efiSecureBootEnabled=False),
        extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in extra.items()],
    )


def guestinfo_values(values: dict[str, str]) -> dict[str, str]:
    """The ``guestinfo.radium.*`` variables for property values; never the secret key."""
    prefix, secret = appliance.GUESTINFO_PREFIX, appliance.SECRET_PROPERTIES
    return {prefix + k: v for k, v in values.items() if v and k not in secret}
