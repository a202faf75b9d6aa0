"""Read properties of many managed objects in one property collection (paged), over a container view."""

from __future__ import annotations

from typing import Any

from .connection import Session


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
        from pyVmomi import vim

        spec = pc.FilterSpec(
            objectSet=[
                pc.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[pc.TraversalSpec(name="view", type=vim.view.ContainerView, path="view")],
                )
            ],
            propSet=[pc.PropertySpec(type=t, pathSet=paths) for t, paths in properties.items()],
        )
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
