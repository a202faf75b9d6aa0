"""Reading vCenter's properties: many objects in one property collection, and one property as it changes.

- `retrieve`: properties of every object of some types, over a container view, paged;
- `vm_properties`: every VM's, with its host's name (what appliance and client listings read);
- `updates`: one object's property as vCenter pushes its changes (tasks, a guest's IP address).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any

from .connection import Session
from .errors import translated

__all__ = [
    "NO_CHANGE",
    "custom_value",
    "estate_changes",
    "properties_of",
    "retrieve",
    "updates",
    "view_spec",
    "vm_field_key",
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
    for f in manager.field or []:
        if f.name == name and f.managedObjectType in (None, vim.VirtualMachine):
            return int(f.key)
    if not create:
        return None
    return int(manager.AddCustomFieldDef(name=name, moType=vim.VirtualMachine).key)


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
    if "runtime.host" in paths:
        hosts = {h._moId: h for props in found.values() if (h := props.get("runtime.host")) is not None}
        names = properties_of(session, list(hosts.values()), ["name"]) if hosts else {}
        for props in found.values():
            h = props.get("runtime.host")
            if h is not None:
                props["runtime.host"] = str(names.get(h._moId, {}).get("name", h._moId))
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


def estate_changes(session: Session, max_wait: int = 30) -> Generator[int, None, None]:
    """The estate as it changes: after each batch vCenter pushes, how many objects it touched.

    One property collector of its own with one filter over every host, VM and
    cluster (a container view), fed by ``WaitForUpdatesEx``: nothing is polled.
    First a 0 once the watch is up (the first batch, everything as it is now, is
    not counted); after that a count of the objects added, changed or removed
    whenever something changes, and 0 whenever `max_wait` seconds pass without a
    change (so that the caller can stop).  The collector and view are destroyed
    when the caller stops.
    """
    from pyVmomi import vim

    types = {getattr(vim, name): paths for name, paths in WATCHED.items()}
    with translated(session.settings.where):
        content = session.content
        view = content.viewManager.CreateContainerView(content.rootFolder, list(types), True)
    try:
        with contextlib.closing(_pushed(session, view_spec(view, types), True, max_wait)) as pushed:
            for n, update in enumerate(pushed):
                if update is None or n == 0:  # nothing changed; or the first batch: the watch is up
                    yield 0
                elif touched := sum(len(fs.objectSet or []) for fs in update.filterSet or []):
                    yield touched
    finally:
        with contextlib.suppress(Exception):  # the session may be gone; the view goes with it
            view.DestroyView()
