"""Reading vCenter's properties: many objects in one property collection, and one property as it changes.

- `retrieve`: properties of every object of some types, over a container view, paged;
- `vm_properties`: every VM's, with its host's name (what appliance and client listings read);
- `updates`: one object's property as vCenter pushes its changes (tasks, a guest's IP address).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from .connection import Session
from .errors import translated

__all__ = [
    "NO_CHANGE",
    "custom_value",
    "Touched",
    "estate_changes",
    "estate_touches",
    "properties_of",
    "retrieve",
    "updates",
    "view_spec",
    "vm_field_key",
    "vm_host_ids",
    "vm_properties",
]


def view_spec(view: Any, properties: dict[Any, list[str]]) -> Any:
    """A filter over every object of a container view: {vim type: [property paths]}."""
    from pyVmomi import vim, vmodl

    pc = vmodl.query.PropertyCollector
    return pc.FilterSpec(
        objectSet=[
            pc.ObjectSpec(
                obj=view,
                skip=True,
                selectSet=[pc.TraversalSpec(name="view", type=vim.view.ContainerView, path="view")],
            )
        ],
        propSet=[pc.PropertySpec(type=t, pathSet=paths) for t, paths in properties.items()],
    )


def retrieve(session: Session, properties: dict[Any, list[str]]) -> list[Any]:
    """`ObjectContent` of every object of the given types: {vim type: [property paths]}.

    One RetrievePropertiesEx (plus one ContinueRetrievePropertiesEx per page), not a
    call per object.
    """
    from pyVmomi import vmodl

    pc = vmodl.query.PropertyCollector
    content = session.content
    view = content.viewManager.CreateContainerView(content.rootFolder, list(properties), True)
    try:
        spec = view_spec(view, properties)
        objects: list[Any] = []
        result = content.propertyCollector.RetrievePropertiesEx(specSet=[spec], options=pc.RetrieveOptions())
        while result is not None:
            objects += result.objects
            token = result.token
            result = content.propertyCollector.ContinueRetrievePropertiesEx(token=token) if token else None
        return objects
    finally:
        view.DestroyView()


def vm_field_key(session: Session, name: str, create: bool = False) -> int | None:
    """The key of the VM custom attribute `name` (made when `create` and missing)."""
    from pyVmomi import vim

    from .errors import Refused

    manager = session.content.customFieldsManager
    if manager is None:
        raise Refused(f"{session.settings.where} has no custom attributes (is it an ESXi host, not vCenter?)")

    def existing() -> int | None:
        for f in manager.field or []:
            if f.name == name and f.managedObjectType in (None, vim.VirtualMachine):
                return int(f.key)
        return None

    key = existing()
    if key is not None or not create:
        return key
    try:
        return int(manager.AddCustomFieldDef(name=name, moType=vim.VirtualMachine).key)
    except vim.fault.DuplicateName:
        # Another session (a second Ansible fork, another operator) made it since we looked.
        key = existing()
        if key is None:
            raise
        return key


def vm_properties(session: Session, paths: list[str]) -> list[tuple[Any, dict[str, Any]]]:
    """(vm ref, {path: value}) of every VM, in one property collection.

    ``runtime.host``, when asked for, is given as the host's name (its managed object
    id when the host has none), not as a reference.
    """
    from pyVmomi import vim

    objects = retrieve(session, {vim.VirtualMachine: paths, vim.HostSystem: ["name"]})
    hosts: dict[str, str] = {}
    vms = []
    for oc in objects:
        props = {p.name: p.val for p in oc.propSet or []}
        if isinstance(oc.obj, vim.HostSystem):
            hosts[oc.obj._moId] = str(props.get("name", oc.obj._moId))
        else:
            vms.append((oc.obj, props))
    if "runtime.host" in paths:
        for _, props in vms:
            host = props.get("runtime.host")
            props["runtime.host"] = hosts.get(host._moId, host._moId) if host is not None else None
    return vms


def properties_of(session: Session, refs: list[Any], paths: list[str]) -> dict[str, dict[str, Any]]:
    """{managed object id: {path: value}} of the objects `refs` (all of one type), in one property
    collection: how a listing reads the heavy properties of the few objects it keeps, after a light
    pass over all of them.  ``runtime.host``, when asked for, is given as the host's name."""
    found = _properties_of(session, refs, paths)
    if "runtime.host" in paths:
        hosts = {h._moId: h for props in found.values() if (h := props.get("runtime.host")) is not None}
        names = _properties_of(session, list(hosts.values()), ["name"]) if hosts else {}
        for props in found.values():
            h = props.get("runtime.host")
            if h is not None:
                props["runtime.host"] = str(names.get(h._moId, {}).get("name", h._moId))
    return found


def vm_host_ids(session: Session, vm_ids: list[str]) -> dict[str, str]:
    """{VM id: its host's id} of the VMs `vm_ids` (managed object ids) that are on a host."""
    from pyVmomi import vim

    refs = [vim.VirtualMachine(i, session.stub) for i in vm_ids]
    with translated(session.settings.where):
        found = _properties_of(session, refs, ["runtime.host"])
    return {vm: p["runtime.host"]._moId for vm, p in found.items() if p.get("runtime.host") is not None}


def _properties_of(session: Session, refs: list[Any], paths: list[str]) -> dict[str, dict[str, Any]]:
    from pyVmomi import vmodl

    if not refs:
        return {}
    pc = vmodl.query.PropertyCollector
    spec = pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=r, skip=False) for r in refs],
        propSet=[pc.PropertySpec(type=type(refs[0]), pathSet=paths)],
    )
    collector = session.content.propertyCollector
    found: dict[str, dict[str, Any]] = {}
    result = collector.RetrievePropertiesEx(specSet=[spec], options=pc.RetrieveOptions())
    while result is not None:
        for oc in result.objects:
            found[oc.obj._moId] = {p.name: p.val for p in oc.propSet or []}
        result = collector.ContinueRetrievePropertiesEx(token=result.token) if result.token else None
    return found


def custom_value(props: dict[str, Any], key: int | None) -> str | None:
    """The value of custom field `key` in a VM's ``customValue`` property (None: unset or empty)."""
    if key is None:
        return None
    for v in props.get("customValue") or []:
        if v.key == key and getattr(v, "value", ""):
            return str(v.value)
    return None


def _pushed(session: Session, spec: Any, partial: bool, max_wait: int) -> Generator[Any, None, None]:
    """Each `UpdateSet` vCenter pushes for the filter `spec`, on a property collector of its own.

    The first holds everything as it is now; None whenever `max_wait` seconds pass
    without a change.  The collector is destroyed when the caller stops iterating.
    """
    from pyVmomi import vmodl

    wait = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=max_wait)
    where = session.settings.where
    with translated(where):
        collector = session.content.propertyCollector.CreatePropertyCollector()
    try:
        with translated(where):
            collector.CreateFilter(spec, partialUpdates=partial)
        version = ""
        while True:
            with translated(where):
                update = collector.WaitForUpdatesEx(version, wait)
            if update is not None:
                version = update.version
            yield update
    finally:
        with contextlib.suppress(Exception):  # the session may be gone (Ctrl-C, logout); it goes with it
            collector.DestroyPropertyCollector()


def updates(session: Session, obj: Any, path: str, max_wait: int) -> Generator[Any, None, None]:
    """Each new value of property `path` of `obj`, as vCenter pushes it (``WaitForUpdatesEx``, no polling).

    The first is its value now; after that a value whenever it changes, and
    `NO_CHANGE` whenever `max_wait` seconds pass without one (so that the caller
    can give up).  The property collector made for it is destroyed when the
    caller stops iterating.
    """
    from pyVmomi import vmodl

    pc = vmodl.query.PropertyCollector
    spec = pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=obj)], propSet=[pc.PropertySpec(type=type(obj), pathSet=[path])]
    )
    with contextlib.closing(_pushed(session, spec, False, max_wait)) as pushed:
        for update in pushed:
            if update is None:
                yield NO_CHANGE
                continue
            for fs in update.filterSet or []:
                for oc in fs.objectSet or []:
                    for change in oc.changeSet or []:
                        if change.name == path:
                            yield change.val


#: What `updates` yields when nothing changed within its wait.
NO_CHANGE = object()


#: What the estate's change stream watches: what the console's views show.
WATCHED: dict[str, list[str]] = {
    "HostSystem": [
        "name",
        "runtime.connectionState",
        "runtime.powerState",
        "runtime.inMaintenanceMode",
        "config.pciPassthruInfo",
    ],
    "VirtualMachine": [
        "name",
        "runtime.host",
        "runtime.powerState",
        "config.hardware.device",
        "customValue",
        "guest.ipAddress",
    ],
    "ComputeResource": ["name"],
}


@dataclass
class Touched:
    """What one batch of pushed changes touched, by managed object id."""

    hosts: set[str] = field(default_factory=set)
    vms: set[str] = field(default_factory=set)
    others: set[str] = field(default_factory=set)  #: clusters and other compute resources
    gone: set[str] = field(default_factory=set)  #: of the above, those that left the estate

    def __len__(self) -> int:
        return len(self.hosts) + len(self.vms) + len(self.others)

    def update(self, other: Touched) -> None:
        self.hosts |= other.hosts
        self.vms |= other.vms
        self.others |= other.others
        self.gone |= other.gone


def _touched_fast(session: Session, collector: Any, version: str, wait: Any) -> tuple[str, Touched] | None:
    """WaitForUpdatesEx, its answer read with ElementTree for what it touched alone (at 10,000 VMs the
    first batch, every VM's devices, is 90 MB of XML: pyVmomi would take half a minute)."""
    from . import _soap

    answer = _soap.invoke(session, collector, "WaitForUpdatesEx", [version, wait])
    new_version = answer.findtext(_soap.VIM + "version")
    if not new_version:
        return None  # nothing within the wait
    touched = Touched()
    for fs in answer.iterfind(_soap.VIM + "filterSet"):
        for oc in fs.iterfind(_soap.VIM + "objectSet"):
            obj = oc.find(_soap.VIM + "obj")
            if obj is None or not obj.text:
                continue
            by_type = {"HostSystem": touched.hosts, "VirtualMachine": touched.vms}
            by_type.get(obj.get("type") or "", touched.others).add(obj.text)
            if oc.findtext(_soap.VIM + "kind") == "leave":
                touched.gone.add(obj.text)
    return new_version, touched


def _touched_pyvmomi(update: Any) -> Touched:
    from pyVmomi import vim

    touched = Touched()
    for fs in update.filterSet or []:
        for oc in fs.objectSet or []:
            moid = oc.obj._moId
            if isinstance(oc.obj, vim.HostSystem):
                touched.hosts.add(moid)
            elif isinstance(oc.obj, vim.VirtualMachine):
                touched.vms.add(moid)
            else:
                touched.others.add(moid)
            if str(oc.kind) == "leave":
                touched.gone.add(moid)
    return touched


def estate_touches(session: Session, max_wait: int = 30) -> Generator[Touched | None, None, None]:
    """The estate as it changes: after each batch vCenter pushes, what it touched.

    One property collector of its own with one filter over every host, VM and
    cluster (a container view), fed by ``WaitForUpdatesEx``: nothing is polled.
    First None once the watch is up (the first batch, everything as it is now, is
    not reported); after that a `Touched` whenever something changes, and None
    whenever `max_wait` seconds pass without a change (so that the caller can
    stop).  The collector and view are destroyed when the caller stops.
    """
    from pyVmomi import vim, vmodl

    from . import _soap

    types = {getattr(vim, name): paths for name, paths in WATCHED.items()}
    where = session.settings.where
    with translated(where):
        content = session.content
        view = content.viewManager.CreateContainerView(content.rootFolder, list(types), True)
    if not _soap.supported(session.stub):
        try:
            with contextlib.closing(_pushed(session, view_spec(view, types), True, max_wait)) as pushed:
                for n, update in enumerate(pushed):
                    yield None if update is None or n == 0 else _touched_pyvmomi(update)
        finally:
            with contextlib.suppress(Exception):
                view.DestroyView()
        return
    wait = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=max_wait)
    with translated(where):
        collector = content.propertyCollector.CreatePropertyCollector()
    try:
        with translated(where):
            collector.CreateFilter(view_spec(view, types), partialUpdates=True)
        version, first = "", True
        while True:
            with translated(where):
                answer = _touched_fast(session, collector, version, wait)
            if answer is None:
                yield None
                continue
            version, touched = answer
            yield None if first else touched
            first = False
    finally:
        with contextlib.suppress(Exception):  # the session may be gone (Ctrl-C, logout); they go with it
            collector.DestroyPropertyCollector()
        with contextlib.suppress(Exception):
            view.DestroyView()


def estate_changes(session: Session, max_wait: int = 30) -> Generator[int, None, None]:
    """`estate_touches`, counted: 0 once the watch is up and whenever `max_wait` seconds pass without a
    change, else how many objects a batch of changes touched."""
    for touched in estate_touches(session, max_wait):
        if touched is None:
            yield 0
        elif touched:
            yield len(touched)
