"""A stand-in appliance: a VM in vCenter that stands for a radiumd running outside it.

The lab runs its radiumd in a network namespace of this machine, not in a VM;
so that `radium-admin appliance list|status`, the console and `register-vm` see
it as they see a deployed appliance, `register_standin` makes the VM a deploy
would have made (the same hardware spec, guestinfo keys and ``radium.appliance``
record), powers it on, and has the guest report the radiumd's address.  On the
simulator the guest's address is set through its ``SET.guest.ipAddress`` key.
"""

from __future__ import annotations

from radium.remoting import ClientConfig

from . import pciids
from .appliances import ApplianceRecord, set_record
from .connection import Session
from .errors import Refused
from .hardware import guestinfo_values, hardware_spec, mmio_size_gib, passthrough_targets
from .inventory import collect
from .placement import datacenter_of
from .tasks import wait

__all__ = ["register_standin"]


def register_standin(
    vc: Session, *, name: str, address: str, port: int, server_public_key: str, admin: ClientConfig
) -> str:
    """Create a powered-on VM `name` standing for a radiumd that runs elsewhere (the lab's, at `address`).

    It looks like a deployed appliance: on the first host (by name) with an
    enabled, active, free GPU, that GPU passed through, memory reservation locked,
    EFI, the 64-bit MMIO keys, the guestinfo.radium.* keys, the radium.appliance
    attribute with radiumd's server key, and `address` as the IP the guest reports.
    Returns the host's name.
    """
    from pyVmomi import vim

    inv = collect(vc)
    for host in inv.hosts:
        free = [d for d in host.accelerators if d.enabled and d.active and d.held_by is None]
        if free and host.connection_state == "connected":
            break
    else:
        raise Refused(f"no host has a free passthrough GPU for the stand-in appliance {name}")
    device = free[0]
    host_ref = vim.HostSystem(host.id, vc.stub)
    pci, system_id = passthrough_targets(vc, host_ref)[device.address]
    memory, _ = pciids.memory_gib(int(device.vendor_id, 16), int(device.device_id, 16))
    values = {
        "radium.name": name,
        "radium.admin_public_key": admin.client.public_key,
        "radium.admin_name": admin.client.name,
        "radium.listen_port": str(port),
        "radium.network.ip": f"{address}/24",
    }
    spec = hardware_spec([(pci, system_id)], mmio_size_gib([memory]), guestinfo_values(values))
    network = next((n for n in host_ref.network if n.name == "VM Network"), host_ref.network[0])
    nic = vim.vm.device.VirtualVmxnet3(
        key=-1,
        backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
            deviceName=network.name, network=network
        ),
        connectable=vim.vm.device.VirtualDevice.ConnectInfo(startConnected=True, connected=True),
    )
    spec.deviceChange.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=nic))
    spec.name = name
    spec.memoryMB = 4096
    spec.numCPUs = 4
    spec.guestId = "otherGuest64"
    spec.files = vim.vm.FileInfo(vmPathName=f"[{host_ref.datastore[0].name}]")
    dc = datacenter_of(host_ref)
    vm = wait(vc, dc.vmFolder.CreateVM_Task(config=spec, pool=host_ref.parent.resourcePool, host=host_ref))  # type: ignore[union-attr]
    record = ApplianceRecord(
        name=name,
        server_public_key=server_public_key,
        port=port,
        ip=address,
        admin_public_key=admin.client.public_key,
    )
    set_record(vc, vm, record)
    wait(vc, vm.PowerOnVM_Task())
    # What VMware Tools would report from inside the guest (the simulator takes it from extraConfig).
    guest = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key="SET.guest.ipAddress", value=address)])
    wait(vc, vm.ReconfigVM_Task(spec=guest))
    return host.name
