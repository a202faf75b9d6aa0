"""The GPU inventory of a vCenter in one property collection.

`collect(session)` asks the property collector once, through a container
view over every HostSystem, VirtualMachine and ComputeResource, for the few
properties the model needs (`PROPERTIES`), following ``ContinueRetrievePropertiesEx``
tokens when vCenter pages the answer.  That is three round trips
(CreateContainerView, RetrievePropertiesEx, DestroyView) plus one per further
page, however many hosts there are: the number depends on the size of the
answer in pages, never on a call per host or per VM.

Which VM holds a device comes from the VMs' ``VirtualPCIPassthrough`` devices:
``backing.id`` (a fixed DirectPath device), or ``backing.assignedId`` (a dynamic
one, once the VM is powered on), matched with the PCI id on the VM's host.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from . import _soap, pciids
from .collect import view_spec
from .connection import Session
from .errors import translated
from .model import Host, PassthroughDevice, VirtualMachine
from .names import resolve

__all__ = ["PAGE", "PROPERTIES", "Inventory", "PciFunction", "collect", "hosts", "normalize_pci_id", "pages"]

#: What is collected, by managed object type.
PROPERTIES: dict[str, list[str]] = {
    "HostSystem": [
        "name",
        "parent",
        "runtime.connectionState",
        "runtime.powerState",
        "runtime.inMaintenanceMode",
        "hardware.pciDevice",
        "config.pciPassthruInfo",
    ],
    "VirtualMachine": ["name", "runtime.host", "runtime.powerState", "config.hardware.device"],
    "ComputeResource": ["name"],  # also matches ClusterComputeResource
}

Decoder = Literal["fast", "pyvmomi"]


@dataclass
class PciFunction:
    """A PCI function of a host as the host reports it, with its passthrough state."""

    address: str
    class_id: int
    vendor_id: int
    device_id: int
    vendor_name: str = ""
    device_name: str = ""
    capable: bool = False
    enabled: bool = False
    active: bool = False

    @property
    def accelerator(self) -> bool:
        return pciids.is_accelerator(self.class_id, self.vendor_id)

    @property
    def description(self) -> str:
        return (
            f"{pciids.vendor_name(self.vendor_id, self.vendor_name)} "
            f"{pciids.model_name(self.vendor_id, self.device_id, self.device_name)}"
        )


@dataclass
class _VmDevice:
    """A VirtualPCIPassthrough device of a VM."""

    id: str | None  # backing.id (fixed DirectPath)
    assigned_id: str | None  # backing.assignedId (dynamic DirectPath, set at power-on)


@dataclass
class _Object:
    type: str
    id: str
    props: dict[str, Any]


@dataclass
class Inventory:
    """Hosts (with their accelerators) and VMs, as collected at `collected_at`."""

    hosts: list[Host]
    vms: list[VirtualMachine]
    round_trips: int  #: SOAP requests the collection took
    seconds: float  #: wall time of the collection
    collected_at: float = field(default_factory=time.time)
    #: every PCI function per host id, accelerators or not
    pci: dict[str, dict[str, PciFunction]] = field(default_factory=dict, repr=False)

    def host(self, name: str) -> Host:
        """The host called `name`; `NotFound` lists close matches."""
        return resolve("host", name, {h.name: h for h in self.hosts})

    def vm(self, name: str) -> VirtualMachine:
        """The VM called `name`; `NotFound` lists close matches."""
        return resolve("VM", name, {v.name: v for v in self.vms})

    def pci_function(self, host: Host, address: str) -> PciFunction:
        """A PCI function of `host` by address ("0000:3b:00.0", or "3b:00.0").

        `NotFound` lists close matches among the host's accelerators (and its
        other functions when none is close).
        """
        functions = self.pci.get(host.id, {})
        wanted = normalize_pci_id(address)
        if wanted in functions:
            return functions[wanted]
        accelerators = {d.address: functions[d.address] for d in host.accelerators if d.address in functions}
        from .errors import NotFound
        from .names import closest

        matches = closest(wanted, accelerators) or closest(wanted, functions)
        if matches:
            hint = "close matches: " + ", ".join(matches)
        elif accelerators:
            hint = "its accelerators: " + ", ".join(accelerators)
        else:
            hint = "it has no accelerators"
        raise NotFound(
            f"host {host.name} has no PCI device {address!r} ({hint})",
            kind="device",
            name=address,
            matches=matches,
        )

    def device(self, host: Host, address: str) -> PassthroughDevice:
        """An accelerator of `host` by address; `NotFound` (with close matches) otherwise."""
        fn = self.pci_function(host, address)
        for d in host.accelerators:
            if d.address == fn.address:
                return d
        from .errors import NotFound

        raise NotFound(
            f"{fn.address} on {host.name} is {fn.description} "
            f"(class 0x{fn.class_id:04x}), not an accelerator",
            kind="device",
            name=address,
            matches=[d.address for d in host.accelerators],
        )


def normalize_pci_id(address: str) -> str:
    """``3b:00.0`` → ``0000:3b:00.0``; lower case."""
    a = address.strip().lower()
    return a if a.count(":") >= 2 else f"0000:{a}"


# --- collection --------------------------------------------------------------------


def _filter_spec(view: Any) -> Any:
    from pyVmomi import vim

    return view_spec(view, {getattr(vim, name): paths for name, paths in PROPERTIES.items()})


def _ask(session: Session, spec: Any) -> _soap.Answer:
    """The first answer of a property collection, unparsed (`_soap.call`)."""
    from pyVmomi import vmodl

    pc = session.content.propertyCollector
    return _soap.call(
        session, pc, "RetrievePropertiesEx", [[spec], vmodl.query.PropertyCollector.RetrieveOptions()]
    )


def _collect_fast(session: Session, spec: Any, asked: _soap.Answer | None = None) -> Iterator[_Object]:
    """The objects of a property collection, decoded with ElementTree; `asked`: its first answer, when
    already read (`_ask`)."""
    pc = session.content.propertyCollector
    answer = (asked or _ask(session, spec)).returnval()
    while True:
        yield from _decode_objects(answer)
        token = answer.findtext(_soap.VIM + "token")
        if not token:
            return
        answer = _soap.invoke(session, pc, "ContinueRetrievePropertiesEx", [token])


def _decode_objects(returnval: Any) -> Iterator[_Object]:
    vim_ = _soap.VIM
    for obj in returnval.iterfind(vim_ + "objects"):
        ref = obj.find(vim_ + "obj")
        if ref is None:
            continue
        props: dict[str, Any] = {}
        for prop in obj.iterfind(vim_ + "propSet"):
            name = prop.findtext(vim_ + "name") or ""
            val = prop.find(vim_ + "val")
            if val is not None:
                props[name] = _decode_value(name, val)
        yield _Object(ref.get("type") or "", ref.text or "", props)


def _decode_value(name: str, val: Any) -> Any:
    if name == "hardware.pciDevice":
        return [
            PciFunction(
                address=f.get("id", ""),
                class_id=int(f.get("classId") or 0),
                vendor_id=int(f.get("vendorId") or 0),
                device_id=int(f.get("deviceId") or 0),
                vendor_name=f.get("vendorName", ""),
                device_name=f.get("deviceName", ""),
            )
            for f in map(_soap.fields, val)
        ]
    if name == "config.pciPassthruInfo":
        return [
            (
                f.get("id", ""),
                f.get("passthruCapable") == "true",
                f.get("passthruEnabled") == "true",
                f.get("passthruActive") == "true",
            )
            for f in map(_soap.fields, val)
        ]
    if name == "config.hardware.device":
        devices = []
        for dev in val:
            if _soap.xsi_type(dev) != "VirtualPCIPassthrough":
                continue
            backing = dev.find(_soap.VIM + "backing")
            b = _soap.fields(backing) if backing is not None else {}
            devices.append(_VmDevice(b.get("id") or None, b.get("assignedId") or None))
        return devices
    if name == "runtime.inMaintenanceMode":
        return val.text == "true"
    return val.text or ""  # strings, enums, and managed object references (their id)


def _collect_pyvmomi(session: Session, spec: Any) -> Iterator[_Object]:
    from pyVmomi import vmodl

    pc = session.content.propertyCollector
    result = pc.RetrievePropertiesEx(specSet=[spec], options=vmodl.query.PropertyCollector.RetrieveOptions())
    while result is not None:
        for oc in result.objects:
            props = {p.name: _convert_value(p.name, p.val) for p in oc.propSet}
            yield _Object(oc.obj._wsdlName, oc.obj._moId, props)
        result = pc.ContinueRetrievePropertiesEx(token=result.token) if result.token else None


def _convert_value(name: str, val: Any) -> Any:
    from pyVmomi import vim
    from pyVmomi.VmomiSupport import ManagedObject

    if name == "hardware.pciDevice":
        return [
            PciFunction(d.id, d.classId, d.vendorId, d.deviceId, d.vendorName or "", d.deviceName or "")
            for d in val
        ]
    if name == "config.pciPassthruInfo":
        return [(p.id, bool(p.passthruCapable), bool(p.passthruEnabled), bool(p.passthruActive)) for p in val]
    if name == "config.hardware.device":
        return [
            _VmDevice(getattr(d.backing, "id", None) or None, getattr(d.backing, "assignedId", None) or None)
            for d in val
            if isinstance(d, vim.vm.device.VirtualPCIPassthrough)
        ]
    if isinstance(val, ManagedObject):
        return val._moId
    if isinstance(val, str):
        return str(val)  # pyVmomi's enums are str subclasses; the model holds plain strings
    return val


def _build(
    objects: Iterable[_Object],
) -> tuple[list[Host], list[VirtualMachine], dict[str, dict[str, PciFunction]]]:
    compute: dict[str, _Object] = {}
    host_objs: list[_Object] = []
    vm_objs: list[_Object] = []
    for o in objects:
        if o.type == "HostSystem":
            host_objs.append(o)
        elif o.type == "VirtualMachine":
            vm_objs.append(o)
        elif o.type in ("ComputeResource", "ClusterComputeResource"):
            compute[o.id] = o

    host_names = {o.id: o.props.get("name", o.id) for o in host_objs}
    vms: list[VirtualMachine] = []
    held: dict[tuple[str, str], str] = {}  # (host id, pci id) -> powered-on VM
    configured: dict[tuple[str, str], list[str]] = {}
    for o in vm_objs:
        p = o.props
        host_id = p.get("runtime.host") or None
        power = p.get("runtime.powerState", "")
        ids: list[str] = []
        for d in p.get("config.hardware.device", []):
            fixed = normalize_pci_id(d.id) if d.id else None
            assigned = normalize_pci_id(d.assigned_id) if d.assigned_id else None
            if fixed:
                ids.append(fixed)
            elif assigned and power == "poweredOn":
                ids.append(assigned)
        vm = VirtualMachine(
            name=p.get("name", o.id),
            id=o.id,
            host=host_names.get(host_id) if host_id else None,
            power_state=power,
            passthrough=ids,
        )
        vms.append(vm)
        if host_id:
            for pci_id in ids:
                configured.setdefault((host_id, pci_id), []).append(vm.name)
                if power == "poweredOn":
                    held.setdefault((host_id, pci_id), vm.name)

    hosts: list[Host] = []
    pci: dict[str, dict[str, PciFunction]] = {}
    for o in host_objs:
        p = o.props
        functions = {normalize_pci_id(f.address): f for f in p.get("hardware.pciDevice", [])}
        for f in functions.values():
            f.address = normalize_pci_id(f.address)
        for pci_id, capable, enabled, active in p.get("config.pciPassthruInfo", []):
            f = functions.get(normalize_pci_id(pci_id))
            if f is not None:
                f.capable, f.enabled, f.active = capable, enabled, active
        pci[o.id] = functions
        parent = compute.get(p.get("parent", ""))
        cluster = (
            parent.props.get("name")
            if parent is not None and parent.type == "ClusterComputeResource"
            else None
        )
        accelerators = [
            PassthroughDevice(
                address=f.address,
                vendor_id=f"0x{f.vendor_id & 0xFFFF:04x}",
                device_id=f"0x{f.device_id & 0xFFFF:04x}",
                class_id=f"0x{f.class_id & 0xFFFF:04x}",
                vendor=pciids.vendor_name(f.vendor_id, f.vendor_name),
                model=pciids.model_name(f.vendor_id, f.device_id, f.device_name),
                capable=f.capable,
                enabled=f.enabled,
                active=f.active,
                memory_gib=_known_memory(f.vendor_id, f.device_id),
                held_by=held.get((o.id, f.address)),
                configured_in=sorted(configured.get((o.id, f.address), [])),
            )
            for f in sorted(functions.values(), key=lambda f: f.address)
            if f.accelerator
        ]
        hosts.append(
            Host(
                name=p.get("name", o.id),
                id=o.id,
                cluster=cluster,
                connection_state=p.get("runtime.connectionState", ""),
                power_state=p.get("runtime.powerState", ""),
                maintenance_mode=bool(p.get("runtime.inMaintenanceMode", False)),
                accelerators=accelerators,
            )
        )
    hosts.sort(key=lambda h: h.name)
    vms.sort(key=lambda v: v.name)
    return hosts, vms, pci


def _known_memory(vendor_id: int, device_id: int) -> int | None:
    gib, known = pciids.memory_gib(vendor_id, device_id)
    return gib if known else None


def _objects(session: Session, spec: Any, fast: bool, asked: _soap.Answer | None = None) -> list[_Object]:
    """The objects of one property collection, by the decoder chosen (`asked`: its first answer, read)."""
    return list(_collect_fast(session, spec, asked) if fast else _collect_pyvmomi(session, spec))


def _inventory(session: Session, objects: list[_Object], started: float, before: int) -> Inventory:
    """`objects` made into the model; the round trips and seconds counted from `before` and `started`."""
    hosts_, vms, pci = _build(objects)
    return Inventory(
        hosts=hosts_,
        vms=vms,
        round_trips=session.round_trips - before,
        seconds=time.perf_counter() - started,
        pci=pci,
    )


def _fast(session: Session, decoder: Decoder) -> bool:
    return decoder == "fast" and _soap.supported(session.stub)


def collect(session: Session, decoder: Decoder = "fast") -> Inventory:
    """Collect every host, its accelerators and the VMs that hold them, in one property collection.

    `decoder` "fast" decodes the answer with ElementTree (see `radium.vcenter._soap`);
    "pyvmomi" lets pyVmomi decode it (slower; the same result).
    """
    from pyVmomi import vim

    started, before = time.perf_counter(), session.round_trips
    with translated(session.settings.where):
        content = session.content
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.HostSystem, vim.VirtualMachine, vim.ComputeResource], True
        )
        try:
            objects = _objects(session, _filter_spec(view), _fast(session, decoder))
        finally:
            view.DestroyView()
    return _inventory(session, objects, started, before)


#: Hosts per page of `pages` after the first (which is `FIRST_PAGE`): at 10 VMs a host, a page of
#: 200 is some 17 MB of XML (0.7 s to read); the first is small, so that a screen fills at once.
PAGE = 200
FIRST_PAGE = 50


def _host_list(session: Session) -> list[tuple[str, str]]:
    """(name, managed object id) of every host, sorted by name: one small property collection."""
    from pyVmomi import vim

    content = session.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    try:
        spec = view_spec(view, {vim.HostSystem: ["name"]})
        found = _objects(session, spec, _soap.supported(session.stub))
    finally:
        view.DestroyView()
    return sorted((o.props.get("name", o.id), o.id) for o in found if o.type == "HostSystem")


def _page_spec(session: Session, host_ids: list[str]) -> Any:
    """Hosts `host_ids`, the VMs registered on them (HostSystem.vm) and their parent compute resources."""
    from pyVmomi import vim, vmodl

    pc = vmodl.query.PropertyCollector
    follow = [
        pc.TraversalSpec(name="vms", type=vim.HostSystem, path="vm", skip=False),
        pc.TraversalSpec(name="parent", type=vim.HostSystem, path="parent", skip=False),
    ]
    return pc.FilterSpec(
        objectSet=[
            pc.ObjectSpec(obj=vim.HostSystem(i, session.stub), skip=False, selectSet=follow) for i in host_ids
        ],
        propSet=[
            pc.PropertySpec(type=getattr(vim, name), pathSet=paths) for name, paths in PROPERTIES.items()
        ],
    )


def pages(
    session: Session, first: int = FIRST_PAGE, size: int = PAGE, decoder: Decoder = "fast"
) -> Iterator[Inventory]:
    """The inventory a page of hosts at a time, in host name order: what a screen shows first comes first.

    Each page holds its hosts with their accelerators and the VMs registered on them
    (so who holds each device: a VM holding a host's device runs there); its
    `round_trips` and `seconds` count from the start, so the last page's are the
    whole collection's.  The first page is `first` hosts, the others `size`.  Round
    trips: the host list (3, as `collect`), then one per page; a VM on no host
    (orphaned) is in no page.
    """
    started, before = time.perf_counter(), session.round_trips
    fast = _fast(session, decoder)
    with translated(session.settings.where), ThreadPoolExecutor(1, "radium-inventory") as reader:
        listed = [i for _, i in _host_list(session)]
        cuts = [0, *range(first, len(listed), size), len(listed)] if listed else [0, 0]
        specs = [_page_spec(session, listed[a:b]) for a, b in itertools.pairwise(cuts)]
        # While a page is decoded (CPU), the next one is asked for and read (the network: no GIL).
        asked: Future[_soap.Answer] | None = (
            reader.submit(_ask, session, specs[0]) if fast and listed else None
        )
        for k, spec in enumerate(specs):
            answer = asked.result() if asked is not None else None
            asked = reader.submit(_ask, session, specs[k + 1]) if fast and k + 1 < len(specs) else None
            objects = _objects(session, spec, fast, answer) if listed else []
            yield _inventory(session, objects, started, before)


def of_hosts(session: Session, host_ids: list[str], decoder: Decoder = "fast") -> Inventory:
    """The hosts `host_ids` (managed object ids) as they are now, with the VMs on them: one page of
    `pages`, for a view that re-reads what a change touched.  (A host removed meanwhile fails the
    whole read, as vCenter refuses the request: read everything again then.)"""
    started, before = time.perf_counter(), session.round_trips
    objects: list[_Object] = []
    if host_ids:
        with translated(session.settings.where):
            objects = _objects(session, _page_spec(session, host_ids), _fast(session, decoder))
    return _inventory(session, objects, started, before)


def hosts(session: Session) -> list[Host]:
    """Every host with its accelerators (`collect(session).hosts`)."""
    return collect(session).hosts
