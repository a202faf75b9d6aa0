"""Where a deploy puts an appliance: its host's devices, datastore, network and VM folder, chosen and checked.

Every choice is made before anything exists in vCenter; an unknown name is
answered with its close matches, a device that cannot be given with what to do.
"""

from __future__ import annotations

from typing import Any

from .errors import Refused
from .inventory import Inventory
from .model import Host, PassthroughDevice
from .names import resolve
from .passthrough import check_assignable

__all__ = ["choose_datastore", "choose_devices", "choose_folder", "choose_network", "datacenter_of"]


def datacenter_of(entity: Any) -> Any:
    from pyVmomi import vim

    node = entity
    while node is not None and not isinstance(node, vim.Datacenter):
        node = node.parent
    if node is None:
        raise Refused(f"{entity.name} is in no datacenter")
    return node


def choose_devices(
    inv: Inventory, host: Host, gpus: str, owner: str | None = None
) -> list[PassthroughDevice]:
    """The devices of `host` that `gpus` names ("all": every enabled, active one that is free or `owner`'s).

    Refused, saying what to do, when none (or one named) can be given to a VM now.
    """
    if gpus.strip().lower() == "all":
        ready = [
            d
            for d in host.accelerators
            if d.enabled and d.active and (d.held_by is None or d.held_by == owner)
        ]
        if ready:
            return ready
        if not host.accelerators:
            raise Refused(f"host {host.name} has no accelerators to give an appliance: choose another host")
        lines = "; ".join(
            f"{d.address} ({d.model}): "
            + (
                f"held by the powered-on VM {d.held_by}"
                if d.held_by
                else "enabled, reboot pending"
                if d.enabled
                else "not enabled for passthrough"
                if d.capable
                else "not passthrough-capable"
            )
            for d in host.accelerators
        )
        raise Refused(
            f"no accelerator of {host.name} can be given to an appliance now ({lines}). Enable one "
            f"(`radium-admin passthrough enable {host.name} ADDRESS`, then reboot the host), free one, "
            "or choose another host"
        )
    addresses = [a.strip() for a in gpus.split(",") if a.strip()]
    if not addresses:
        raise Refused("--gpus: name at least one PCI address, or 'all'")
    chosen = check_assignable(inv, host.name, addresses, vm=owner)
    by_address = {d.address: d for d in host.accelerators}
    return [by_address[a] for a in dict.fromkeys(chosen)]


def choose_datastore(host_ref: Any, wanted: str | None) -> Any:
    """The host's datastore `wanted` (close matches when unknown), else its accessible one with most space."""
    stores = {ds.name: ds for ds in host_ref.datastore or []}
    if wanted:
        return resolve("datastore", wanted, stores, where=f"on host {host_ref.name}")
    usable = [ds for ds in stores.values() if getattr(ds.summary, "accessible", True)]
    if not usable:
        raise Refused(f"host {host_ref.name} has no accessible datastore")
    return max(usable, key=lambda ds: ds.summary.freeSpace or 0)


def choose_network(host_ref: Any, wanted: str | None, ovf_networks: list[str]) -> Any | None:
    """The port group `wanted` of the host, else the one named as in the OVF, else its first."""
    nets = {n.name: n for n in host_ref.network or []}
    if wanted:
        return resolve("network", wanted, nets, where=f"on host {host_ref.name}")
    for name in ovf_networks:
        if name in nets:
            return nets[name]
    return next(iter(nets.values()), None)


def choose_folder(dc: Any, path: str | None) -> tuple[Any, str]:
    """The VM folder `path` ("a/b") under the datacenter's, and its path in words ("DC0/vm/a/b")."""
    from pyVmomi import vim

    folder = dc.vmFolder
    shown = [dc.name, "vm"]
    for part in [p for p in (path or "").split("/") if p]:
        children = {c.name: c for c in folder.childEntity or [] if isinstance(c, vim.Folder)}
        folder = resolve("folder", part, children, where=f"in {'/'.join(shown)}")
        shown.append(folder.name)
    return folder, "/".join(shown)
