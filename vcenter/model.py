"""The inventory model: GPU hosts, their passthrough devices, and the VMs that hold them.

One model for the CLI (`--json` prints it as is), the TUI and Ansible.  PCI ids
are hexadecimal strings (``"0x10de"``) so that JSON readers see what `lspci` shows.
"""

from __future__ import annotations

import msgspec

__all__ = ["Host", "PassthroughDevice", "VirtualMachine"]


class PassthroughDevice(msgspec.Struct, kw_only=True):
    """An accelerator PCI function of a host and its DirectPath I/O state."""

    address: str  #: PCI id on the host, e.g. "0000:3b:00.0"
    vendor_id: str  #: "0x10de"
    device_id: str  #: "0x1db4"
    class_id: str  #: "0x0302"
    vendor: str  #: "NVIDIA"
    model: str  #: "Tesla V100 PCIe 16GB", or "unknown 0x10de:0x1234"
    capable: bool  #: the host can pass it through
    enabled: bool  #: passthrough is configured on
    active: bool  #: passthrough is in effect (enabled, and the host rebooted since)
    memory_gib: int | None = None  #: its memory, where the model is known (`pciids.MEMORY_GIB`)
    held_by: str | None = None  #: the powered-on VM using it
    configured_in: list[str] = msgspec.field(default_factory=list)  #: VMs configured with it, any power state

    @property
    def reboot_pending(self) -> bool:
        """Configured one way, in effect the other: the host needs a reboot."""
        return self.enabled != self.active

    @property
    def free(self) -> bool:
        """Ready for an appliance: passthrough enabled and in effect, and no powered-on VM holds it."""
        return self.enabled and self.active and self.held_by is None


class Host(msgspec.Struct, kw_only=True):
    """An ESXi host and its accelerators."""

    name: str
    id: str  #: managed object id, e.g. "host-21"
    cluster: str | None  #: None for a standalone host
    connection_state: str  #: connected | disconnected | notResponding
    power_state: str  #: poweredOn | poweredOff | standBy | unknown
    maintenance_mode: bool
    accelerators: list[PassthroughDevice] = msgspec.field(default_factory=list)


class VirtualMachine(msgspec.Struct, kw_only=True):
    """A VM as the inventory needs it: where it runs and which host devices it passes through."""

    name: str
    id: str
    host: str | None  #: the host's name
    power_state: str
    passthrough: list[str] = msgspec.field(default_factory=list)  #: PCI ids on its host
