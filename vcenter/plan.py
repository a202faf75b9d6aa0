"""A deploy's plan: everything it checks and chooses before anything exists in vCenter.

`plan(session, request, progress)` checks the request's own values, the package
(`radium.vcenter.package`) and the property values the appliance will get
(`radium.appliance.parse_properties`); then, in one inventory collection, the
host, the name (taken: refused unless ``replace``), the devices, datastore,
network and folder (`radium.vcenter.placement`), the devices' DirectPath
identities (``QueryConfigTarget``) and vCenter's own reading of the descriptor
(``OvfManager.CreateImportSpec``).  Any refusal says what to do, and nothing
has been made.  The appliance's server key pair is made here (in memory): its
public key is known before the VM exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from radium import appliance
from radium.remoting import (
    DEFAULT_PORT,
    ClientConfig,
    KeyPair,
    UsageError,
    operator_identity,
)

from . import appliances as appl
from . import pciids
from .connection import Session
from .errors import Refused, fault_message, translated
from .hardware import mmio_size_gib, passthrough_targets
from .inventory import collect
from .model import VirtualMachine
from .package import OvfPackage
from .placement import choose_datastore, choose_devices, choose_folder, choose_network, datacenter_of
from .progress import Progress, Step

__all__ = ["DEFAULT_TIMEOUT", "DeployPlan", "DeployRequest", "DeployedGpu", "plan"]

#: Seconds a deploy waits for the guest's IP address and then radiumd, together.
DEFAULT_TIMEOUT = 600.0


@dataclass
class DeployRequest:
    name: str  #: the VM's name, also radiumd's name (radium.name) and the appliance's host name
    host: str
    package: Path  #: a .ova, a .ovf with its files beside it, or a folder with one .ovf
    gpus: str = "all"  #: "all" (every assignable accelerator of the host) or "ADDR,ADDR"
    datastore: str | None = None
    network: str | None = None
    folder: str | None = None  #: a path under the datacenter's VM folder, "a/b"
    ip: str = "dhcp"
    gateway: str | None = None
    dns: str | None = None
    port: int = DEFAULT_PORT
    replace: bool = False
    wait: bool = True
    timeout: float = DEFAULT_TIMEOUT
    keys_out: Path | None = None  #: also write the server key pair and operator key here (radiumd layout)

    def check(self) -> None:
        """Refuse values no deploy could use (the package and properties are checked by `deploy`)."""
        if not 1 <= self.port <= 65535:
            raise UsageError(f"--port {self.port}: expected 1-65535")
        if self.timeout <= 0:
            raise UsageError("--timeout: expected a positive number of seconds")

    def problems(self) -> dict[str, str]:
        """What is wrong with each field, before vCenter is asked: {field: message}, empty when none.

        The same rules as the deploy itself (`check`, and the appliance's property
        contract for the name and the network), for a form that checks as you type;
        the package and everything in vCenter are checked by the deploy.
        """
        found: dict[str, str] = {}
        try:
            self.check()
        except UsageError as exc:
            found["port" if exc.message.startswith("--port") else "timeout"] = exc.message
        placeholder = KeyPair.generate()
        values = property_values(self, placeholder.secret or "", placeholder.public, "operator")
        try:
            appliance.parse_properties(values)
        except appliance.PropertyError as exc:
            for line in exc.problems:
                key, _, why = line.partition(": ")
                field_name = PROPERTY_FIELDS.get(key)
                if field_name is not None:
                    found.setdefault(field_name, why)
        return found


#: The request's fields that become the appliance's properties.
PROPERTY_FIELDS = {
    "radium.name": "name",
    "radium.listen_port": "port",
    "radium.network.ip": "ip",
    "radium.network.gateway": "gateway",
    "radium.network.dns": "dns",
}


def property_values(
    request: DeployRequest, server_secret: str, admin_key: str, admin_name: str
) -> dict[str, str]:
    """The property values the appliance gets from `request` (empty ones left out)."""
    values = {
        "radium.name": request.name,
        "radium.server_secret_key": server_secret,
        "radium.admin_public_key": admin_key,
        "radium.admin_name": admin_name,
        "radium.listen_port": str(request.port),
        "radium.network.ip": request.ip or "dhcp",
        "radium.network.gateway": request.gateway or "",
        "radium.network.dns": request.dns or "",
    }
    return {k: v for k, v in values.items() if v}


class DeployedGpu(msgspec.Struct, kw_only=True):
    address: str
    vendor: str
    model: str
    memory_gib: int
    memory_known: bool  #: False: not in the table, the default was assumed


@dataclass
class DeployPlan:
    """What a deploy decided before making anything in vCenter."""

    request: DeployRequest
    package: OvfPackage
    values: dict[str, str]  #: the appliance's property values (the secret key among them)
    settings: appliance.ApplianceSettings  #: the same, checked
    server: KeyPair
    operator: ClientConfig
    operator_path: Path
    operator_new: bool
    host: str
    host_ref: Any
    existing: list[VirtualMachine]  #: VMs of that name, to replace
    known: set[str]  #: managed object ids of the VMs there before
    datastore: Any
    network: Any
    folder: Any
    folder_path: str
    pool: Any
    devices: list[tuple[Any, str | None]]  #: (vim.host.PciDevice, systemId) to pass through
    gpus: list[DeployedGpu]
    mmio: int
    import_spec: Any
    items: list[Any]  #: the files the import asks for
    warnings: list[str] = field(default_factory=list)

    @property
    def static_ip(self) -> str | None:
        network = self.settings.network
        return None if network.dhcp or network.address is None else str(network.address.ip)


def plan(session: Session, request: DeployRequest, progress: Progress) -> DeployPlan:
    """Check `request` against the package, the property contract and vCenter; what to make, chosen."""
    from pyVmomi import vim

    where = session.settings.where
    request.check()
    package = OvfPackage(request.package)
    operator, operator_path, operator_new = operator_identity()
    server = KeyPair.generate()
    assert server.secret is not None
    values = property_values(request, server.secret, operator.client.public_key, operator.client.name)
    settings = appliance.parse_properties(values)  # PropertyError lists every bad value; nothing exists yet

    progress(Step(f"checking {request.host} and its devices"))
    inv = collect(session)
    host = inv.host(request.host)
    if host.connection_state != "connected" or host.maintenance_mode:
        state = "in maintenance mode" if host.maintenance_mode else host.connection_state
        raise Refused(f"host {host.name} is {state}: choose another host, or bring it back first")
    existing = [v for v in inv.vms if v.name == request.name]
    if existing and not request.replace:
        shown = ", ".join(f"{v.id} on {v.host or '?'}, {v.power_state}" for v in existing)
        raise Refused(
            f"a VM named {request.name!r} already exists ({shown}): choose another name, or pass --replace "
            "to power it off and destroy it first"
        )
    if existing:
        ours = {a.id for a in appl.appliances(session)}
        strangers = [v for v in existing if v.id not in ours]
        if strangers:
            raise Refused(
                f"the VM {request.name!r} ({strangers[0].id}) is not a Radium appliance: --replace destroys "
                "only appliances. Remove or rename it in vSphere, or choose another name"
            )
    chosen = choose_devices(inv, host, request.gpus, owner=request.name if request.replace else None)
    with translated(where):
        host_ref = vim.HostSystem(host.id, session.stub)
        dc = datacenter_of(host_ref)
        datastore = choose_datastore(host_ref, request.datastore)
        network = choose_network(host_ref, request.network, package.networks)
        folder, folder_path = choose_folder(dc, request.folder)
        pool = host_ref.parent.resourcePool  # type: ignore[union-attr]
    targets = passthrough_targets(session, host_ref)
    devices, gpus, warnings = [], [], []
    for d in chosen:
        if d.address not in targets:
            raise Refused(
                f"{d.address} on {host.name} is not offered for passthrough by the host (vCenter's "
                "configuration target does not list it): reboot the host if passthrough was just enabled"
            )
        devices.append(targets[d.address])
        memory, memory_known = pciids.memory_gib(int(d.vendor_id, 16), int(d.device_id, 16))
        if not memory_known:
            warnings.append(
                f"{d.address} ({d.vendor} {d.model}): memory size unknown, "
                f"{memory} GiB assumed for the MMIO window"
            )
        gpus.append(
            DeployedGpu(
                address=d.address,
                vendor=d.vendor,
                model=d.model,
                memory_gib=memory,
                memory_known=memory_known,
            )
        )

    with translated(where):
        params = vim.OvfManager.CreateImportSpecParams(
            entityName=request.name,
            propertyMapping=[vim.KeyValue(key=k, value=v) for k, v in values.items()],
            networkMapping=[vim.OvfManager.NetworkMapping(name=n, network=network) for n in package.networks]
            if network is not None
            else [],
            diskProvisioning="thin",
        )
        spec = session.content.ovfManager.CreateImportSpec(
            ovfDescriptor=package.descriptor, resourcePool=pool, datastore=datastore, cisp=params
        )
    if spec.error:
        problems = "; ".join(fault_message(e) for e in spec.error)
        raise Refused(f"vCenter cannot import {package.path}: {problems}; nothing was created")
    warnings += [f"vCenter: {fault_message(w)}" for w in spec.warning or []]
    return DeployPlan(
        request=request,
        package=package,
        values=values,
        settings=settings,
        server=server,
        operator=operator,
        operator_path=operator_path,
        operator_new=operator_new,
        host=host.name,
        host_ref=host_ref,
        existing=existing,
        known={v.id for v in inv.vms},
        datastore=datastore,
        network=network,
        folder=folder,
        folder_path=folder_path,
        pool=pool,
        devices=devices,
        gpus=gpus,
        mmio=mmio_size_gib(g.memory_gib for g in gpus),
        import_spec=spec.importSpec,
        items=list(spec.fileItem or []),
        warnings=warnings,
    )
