"""Radium appliances in vCenter: how a VM is marked as one, finding them, their health, removing one.

A deployed appliance (`radium.vcenter.deploy`) carries the custom attribute
``radium.appliance`` (a CustomFieldDef on VirtualMachine) whose value is a
compact JSON `ApplianceRecord`: radiumd's name, the server's CURVE public key,
its port and, when the deploy gave one, its static address.  Its
``guestinfo.radium.*`` extraConfig keys (the first-boot contract,
`radium.appliance.properties`) mark it too: a VM with ``guestinfo.radium.name``
but no attribute is listed, without a server key.

    for a in appliances(vc):                       # one property collection
        print(a.vm, a.host, a.address, [g.address for g in a.gpus])
    report = status(vc, "gpu1", admin=load_admin_config())   # vCenter state + radiumd's answer
    remove(vc, "gpu1")                             # power off, destroy

Clients reach an appliance at ``tcp://ADDRESS:PORT`` where ADDRESS is the
static address of the record, else the IP address the guest reports (VMware
Tools), and its server key is the record's: what `status` dials with the
operator's key (``RADIUM_ADMIN_CONFIG``).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from radium.remoting import (
    DEFAULT_PORT,
    ApplianceEntry,
    ClientConfig,
    DeviceStatus,
    RadiumError,
    SessionInfo,
    admin_config_path,
    forget_appliance,
    load_client_config,
)

from . import pciids
from .collect import custom_value, properties_of, vm_field_key, vm_properties
from .connection import Session
from .errors import NotFound, Refused, translated
from .names import closest, resolve
from .progress import Progress
from .tasks import wait

if TYPE_CHECKING:
    from radium.remoting import Survey

__all__ = [
    "FIELD",
    "Appliance",
    "ApplianceGpu",
    "ApplianceRecord",
    "ApplianceStatus",
    "Health",
    "Probe",
    "Removal",
    "address_of",
    "appliances",
    "default_admin",
    "entry_of",
    "field_key",
    "find",
    "probe",
    "probe_many",
    "remove",
    "set_record",
    "start",
    "status",
]

#: The custom attribute that marks a VM as a Radium appliance; its value is an `ApplianceRecord` (JSON).
FIELD = "radium.appliance"

GUESTINFO_NAME = "guestinfo.radium.name"
GUESTINFO_PORT = "guestinfo.radium.listen_port"


class ApplianceRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a deploy records in the ``radium.appliance`` attribute (compact JSON)."""

    name: str  #: radiumd's server name (radium.name)
    server_public_key: str  #: the appliance's CURVE public key (Z85)
    port: int = DEFAULT_PORT
    ip: str | None = None  #: the static address given at deploy (no prefix); None: DHCP, ask the guest
    admin_public_key: str | None = None  #: the operator key it was given
    version: str = ""  #: the radium-admin that deployed it

    def encode(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def decode(cls, text: str) -> ApplianceRecord | None:
        try:
            return msgspec.json.decode(text, type=cls)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None


class ApplianceGpu(msgspec.Struct, kw_only=True):
    """A DirectPath device of an appliance VM."""

    address: str  #: PCI id on its host
    model: str  #: as the backing names it ("" when unknown)


class Appliance(msgspec.Struct, kw_only=True):
    """A VM that is a Radium appliance, as vCenter sees it."""

    vm: str
    id: str  #: managed object id
    name: str  #: radiumd's name (the record's, else guestinfo.radium.name, else the VM's)
    host: str | None
    power_state: str
    ip: str | None  #: the guest's IP address (VMware Tools), or the static one when it reports none
    address: str | None  #: tcp://ADDRESS:PORT that clients dial, when known
    port: int
    server_public_key: str | None  #: from the record (None: not deployed by radium-admin)
    gpus: list[ApplianceGpu]
    marked: bool  #: carries the radium.appliance attribute


class Health(msgspec.Struct, kw_only=True):
    """What radiumd answered (or why it did not)."""

    reachable: bool
    server: str | None = None  #: the name radiumd gives itself
    version: str | None = None
    devices: list[str] = msgspec.field(default_factory=list)  #: "ID MODEL (health)"
    error: str | None = None


class ApplianceStatus(msgspec.Struct, kw_only=True):
    appliance: Appliance
    health: Health
    healthy: bool


class Removal(msgspec.Struct, kw_only=True):
    vm: str
    id: str
    powered_off: bool
    operator_entry_removed: str | None  #: the operator configuration it was removed from


# --- reading ---------------------------------------------------------------------------------


def field_key(session: Session, create: bool = False) -> int | None:
    """The key of the radium.appliance custom field (made when `create` and missing)."""
    return vm_field_key(session, FIELD, create)


def set_record(session: Session, vm: Any, record: ApplianceRecord | None) -> None:
    """Mark `vm` (a vim.VirtualMachine) as an appliance with `record`, or clear the mark (None)."""
    with translated(session.settings.where):
        key = field_key(session, create=record is not None)
        if key is not None:
            session.content.customFieldsManager.SetField(
                entity=vm, key=key, value=record.encode() if record is not None else ""
            )


def address_of(ip: str | None, port: int) -> str | None:
    """``tcp://IP:PORT`` (brackets for IPv6), or None without an IP."""
    if not ip:
        return None
    try:
        parsed = ipaddress.ip_address(ip.split("/")[0])
    except ValueError:
        return f"tcp://{ip}:{port}"  # a host name
    host = f"[{parsed}]" if parsed.version == 6 else str(parsed)
    return f"tcp://{host}:{port}"


def _gpus(devices: list[Any]) -> list[ApplianceGpu]:
    from pyVmomi import vim

    out = []
    for d in devices or []:
        if not isinstance(d, vim.vm.device.VirtualPCIPassthrough):
            continue
        b = d.backing
        address = getattr(b, "id", None) or getattr(b, "assignedId", None) or ""
        reported = str(getattr(b, "deviceName", None) or "")
        try:
            vendor, device = (
                int(getattr(b, "vendorId", 0) or 0),
                int(str(getattr(b, "deviceId", "") or "0"), 16),
            )
        except ValueError:
            vendor = device = 0
        model = (
            f"{pciids.vendor_name(vendor)} {pciids.model_name(vendor, device, reported)}"
            if vendor
            else reported
        )
        out.append(ApplianceGpu(address=str(address), model=model))
    return out


def _is_appliance(props: dict[str, Any], key: int | None) -> bool:
    if custom_value(props, key) is not None:
        return True
    return any(str(o.key) == GUESTINFO_NAME and o.value for o in props.get("config.extraConfig") or [])


def _appliance(ref: Any, props: dict[str, Any], key: int | None) -> Appliance | None:
    extra = {str(o.key): str(o.value) for o in props.get("config.extraConfig") or [] if o.value}
    value = custom_value(props, key)
    if value is None and not extra.get(GUESTINFO_NAME):
        return None
    record = ApplianceRecord.decode(value) if value else None
    vm_name = str(props.get("name", ref._moId))
    port_text = extra.get(GUESTINFO_PORT, "")
    port = record.port if record else (int(port_text) if port_text.isdigit() else DEFAULT_PORT)
    guest_ip = str(props.get("guest.ipAddress") or "") or None
    ip = (record.ip if record and record.ip else None) or guest_ip
    return Appliance(
        vm=vm_name,
        id=ref._moId,
        name=(record.name if record else None) or extra.get(GUESTINFO_NAME) or vm_name,
        host=props.get("runtime.host"),
        power_state=str(props.get("runtime.powerState", "")),
        ip=ip,
        address=address_of(ip, port),
        port=port,
        server_public_key=record.server_public_key if record else None,
        gpus=_gpus(props.get("config.hardware.device") or []),
        marked=value is not None,
    )


def _all(session: Session) -> tuple[list[tuple[Any, Appliance]], list[str]]:
    """The appliances (with their refs), and the names of every VM."""
    with translated(session.settings.where):
        key = field_key(session)
        # Light over every VM (which are appliances), then heavy over the appliances alone: at
        # 10,000 VMs, every VM's virtual devices would be 90 MB of XML for a handful of VMs.
        vms = vm_properties(session, ["name", "config.extraConfig", "customValue"])
        marked = [(ref, props) for ref, props in vms if _is_appliance(props, key)]
        heavy = ["runtime.host", "runtime.powerState", "guest.ipAddress", "config.hardware.device"]
        details = properties_of(session, [ref for ref, _ in marked], heavy)
    found = []
    for ref, props in marked:
        a = _appliance(ref, {**props, **details.get(ref._moId, {})}, key)
        if a is not None:
            found.append((ref, a))
    found.sort(key=lambda x: x[1].vm)
    return found, sorted(str(p.get("name", r._moId)) for r, p in vms)


def appliances(session: Session) -> list[Appliance]:
    """Every VM marked as a Radium appliance, by name."""
    return [a for _, a in _all(session)[0]]


def _find(session: Session, name: str) -> tuple[Any, Appliance]:
    found, all_vms = _all(session)
    by_name: dict[str, list[tuple[Any, Appliance]]] = {}
    for ref, a in found:
        by_name.setdefault(a.vm, []).append((ref, a))
        if a.id == name:
            return ref, a
    if name not in by_name and not any(k.lower() == name.lower() for k in by_name):
        if name in all_vms:
            raise Refused(
                f"VM {name!r} is not a Radium appliance (it has no {FIELD} attribute nor guestinfo.radium.* "
                "keys): radium-admin manages only the appliances it deployed"
            )
        matches = closest(name, by_name)
        hint = (
            "close matches: " + ", ".join(matches)
            if matches
            else ("appliances: " + ", ".join(sorted(by_name)) if by_name else "there are no appliances")
        )
        raise NotFound(f"no appliance named {name!r} ({hint})", kind="appliance", name=name, matches=matches)
    hits = resolve("appliance", name, by_name)
    if len(hits) > 1:
        ids = ", ".join(a.id for _, a in hits)
        raise Refused(
            f"{len(hits)} appliances are named {name!r} (in different folders): name one by id: {ids}"
        )
    return hits[0]


def find(session: Session, name: str) -> Appliance:
    """The appliance VM called `name` (or with that managed object id); close matches when unknown."""
    return _find(session, name)[1]


# --- health ------------------------------------------------------------------------------------


class Probe(msgspec.Struct, kw_only=True):
    """What radiumd answered the operator's key: its health, and its devices with their load and leases."""

    health: Health
    devices: list[DeviceStatus] = msgspec.field(default_factory=list)
    queue_length: int = 0  #: requests waiting in its first-come-first-served queue
    #: its clients' open sessions with their leases and runs; None when it would not say (`sessions_error`)
    sessions: list[SessionInfo] | None = None
    sessions_error: str | None = None


def _why_unreachable(appliance: Appliance, admin: ClientConfig | None) -> str | None:
    if appliance.address is None:
        why = "powered off" if appliance.power_state != "poweredOn" else "the guest reports no IP address yet"
        return f"no address to reach it at ({why})"
    if appliance.server_public_key is None:
        return f"its server key is unknown (no {FIELD} attribute: not deployed by radium-admin)"
    if admin is None:
        return "no operator configuration (RADIUM_ADMIN_CONFIG) to reach it with"
    return None


def entry_of(appliance: Appliance, admin: ClientConfig | None) -> ApplianceEntry:
    """How the operator dials `appliance` (its recorded address and server key); `Refused` saying why
    when it cannot be reached."""
    why = _why_unreachable(appliance, admin)
    if why is not None:
        raise Refused(f"cannot reach appliance {appliance.vm}: {why}")
    assert appliance.address is not None and appliance.server_public_key is not None
    return ApplianceEntry(
        name=appliance.name, address=appliance.address, public_key=appliance.server_public_key
    )


def default_admin(admin: ClientConfig | None = None) -> ClientConfig | None:
    """`admin`, else the operator configuration in effect (``RADIUM_ADMIN_CONFIG``, ...) when there is one."""
    if admin is None:
        path = admin_config_path()
        admin = load_client_config(path) if path.exists() else None
    return admin


def probe_many(
    appliances: list[Appliance],
    admin: ClientConfig | None,
    timeout: float = 5.0,
    usage: bool = True,
    sessions: bool = True,
) -> list[Probe]:
    """Ask each appliance's radiumd for its devices (`usage`: with memory used and utilisation) and
    (`sessions`) its sessions, with the operator's key and the recorded address and server key: one
    `Probe` per appliance, in order.

    The reachable ones are asked together, in one fan-out of the client API (`survey`).
    """
    probes: list[Probe | None] = []
    entries: list[ApplianceEntry] = []
    for a in appliances:
        why = _why_unreachable(a, admin)
        probes.append(Probe(health=Health(reachable=False, error=why)) if why else None)
        if why is None:
            entries.append(entry_of(a, admin))
    if entries:
        from radium.remoting import survey  # (ZeroMQ: only when an appliance is asked)

        assert admin is not None
        config = ClientConfig(client=admin.client, appliances=entries, source=admin.source)
        try:
            answers = [
                (r.value, r.error.message if r.error else None)
                for r in asyncio.run(survey(config, usage=usage, timeout=timeout, sessions=sessions))
            ]
        except RadiumError as exc:
            answers = [(None, exc.message)] * len(entries)
        asked = iter(answers)
        for i, p in enumerate(probes):
            if p is None:
                reply, error = next(asked)
                probes[i] = _probe_of(reply, error)
    return [p for p in probes if p is not None]


def _probe_of(reply: Survey | None, error: str | None) -> Probe:
    if reply is None:
        return Probe(health=Health(reachable=False, error=error or "no answer"))
    listed = reply.devices
    devices = [f"{d.device.id} {d.device.model} ({d.device.health})" for d in listed.devices]
    health = Health(reachable=True, server=listed.server.name, version=listed.server.version, devices=devices)
    return Probe(
        health=health,
        devices=list(listed.devices),
        queue_length=listed.queue_length,
        sessions=list(reply.sessions.sessions) if reply.sessions else None,
        sessions_error=reply.sessions_error or None,
    )


def probe(
    appliance: Appliance,
    admin: ClientConfig | None,
    timeout: float = 5.0,
    usage: bool = True,
    sessions: bool = True,
) -> Probe:
    """`probe_many` of one appliance."""
    return probe_many([appliance], admin, timeout, usage, sessions)[0]


def check(appliance: Appliance, admin: ClientConfig | None, timeout: float = 5.0) -> Health:
    """Whether radiumd answers the operator's key (`probe`'s health)."""
    return probe(appliance, admin, timeout, usage=False, sessions=False).health


def status(
    session: Session, name: str, admin: ClientConfig | None = None, timeout: float = 5.0
) -> ApplianceStatus:
    """vCenter's view of appliance `name`, and whether radiumd answers there.

    radiumd is asked with the operator key of `admin`, by default the operator
    configuration in effect (``RADIUM_ADMIN_CONFIG``, ...) when there is one.
    """
    a = find(session, name)
    health = check(a, default_admin(admin), timeout)
    healthy = a.power_state == "poweredOn" and health.reachable and bool(health.devices)
    return ApplianceStatus(appliance=a, health=health, healthy=healthy)


# --- removing ------------------------------------------------------------------------------------


def destroy_vm(
    session: Session, vm: Any, progress: Progress | None = None, check: Callable[[], None] | None = None
) -> bool:
    """Power `vm` off (when on) and destroy it; whether it had to be powered off."""
    where = session.settings.where
    with translated(where):
        powered_on = str(vm.runtime.powerState) != "poweredOff"
        if powered_on:
            wait(session, vm.PowerOffVM_Task(), progress, check)
        wait(session, vm.Destroy_Task(), progress, check)
    return powered_on


def start(session: Session, name: str, progress: Progress | None = None, dry_run: bool = False) -> bool:
    """Power appliance `name` on, unless it is on; whether it had to be (`dry_run`: would have to be)."""
    ref, a = _find(session, name)
    if a.power_state == "poweredOn":
        return False
    if not dry_run:
        with translated(session.settings.where):
            wait(session, ref.PowerOnVM_Task(), progress)
    return True


def remove(session: Session, name: str, progress: Progress | None = None) -> Removal:
    """Power off and destroy appliance `name`, and drop it from the operator configuration."""
    ref, a = _find(session, name)
    powered_off = destroy_vm(session, ref, progress)
    return Removal(vm=a.vm, id=a.id, powered_off=powered_off, operator_entry_removed=forget_appliance(a.name))
