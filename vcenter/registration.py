"""Client VMs: registering a VM with appliances through vCenter, and finding the registered ones.

`register(session, "vm1", ["gpu1", "gpu2"])` gives the VM one client key pair,
authorises it on each appliance (with the operator key of
``RADIUM_ADMIN_CONFIG``, see `radium.remoting.enrolment`), writes the
``guestinfo.radium.*`` keys (`radium.remoting.guestinfo`, the contract the
client reads with `radium configure --from-guestinfo`) into the VM's
extraConfig, and tags the VM with the custom attribute ``radium.client`` (its
value: the appliance names).  Registering again keeps the key (unless
``new_key``), revokes it on appliances no longer named, and changes nothing in
vCenter when nothing differs.  `unregister` revokes the key on every appliance
the VM names and clears what `register` wrote.  `registered` lists the VMs that
carry either mark, read in one property collection.

`register_vm` is the operator action (`radium-admin register-vm`, the console,
Ansible): `register`, and with `ssh` the same configuration installed in the VM
over SSH (`radium.vcenter.ssh`; the VM is reached, and its host key trusted,
before anything changes).  Long tasks (the reconfiguration) report to `progress`
(`radium.vcenter.progress`) for the caller to render.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from radium.remoting import (
    ApplianceEntry,
    ClientConfig,
    ClientSection,
    ConfigError,
    RadiumError,
    check_name,
    enroll_many,
    find_appliance,
    guestinfo,
    load_admin_config,
    new_identity,
    revoke_many,
)

from .collect import custom_value, vm_field_key, vm_properties
from .connection import Session
from .errors import Refused, translated
from .names import resolve
from .progress import Progress, silent
from .ssh import PushResult
from .tasks import wait

__all__ = [
    "FIELD",
    "ClientVM",
    "Registration",
    "SshInstall",
    "Unregistration",
    "client_name_for",
    "register",
    "register_vm",
    "registered",
    "unregister",
]

#: The custom attribute (CustomFieldDef on VirtualMachine) that tags registered VMs.
FIELD = "radium.client"


class ApplianceRef(msgspec.Struct, kw_only=True):
    name: str
    address: str


class ClientVM(msgspec.Struct, kw_only=True):
    """A VM registered as a Radium client (by its guestinfo keys, or its custom attribute)."""

    vm: str
    id: str  #: managed object id, e.g. "vm-42"
    host: str | None
    power_state: str
    client: str | None  #: guestinfo.radium.client.name
    public_key: str | None
    appliances: list[str]  #: from guestinfo.radium.appliances
    attribute: str | None  #: the value of the radium.client custom attribute


class Registration(msgspec.Struct, kw_only=True):
    """What `register` did."""

    vm: str
    client: str
    public_key: str
    new_key: bool  #: a key pair was made (first registration, or new_key)
    appliances: list[ApplianceRef]
    guestinfo_written: list[str]  #: guestinfo keys set or removed (empty: they were already so)
    attribute: str  #: value of the radium.client custom attribute
    attribute_changed: bool
    revoked: dict[str, str]  #: appliance → client name revoked there (no longer named)
    not_revoked: dict[str, str]  #: appliance → why the old key could not be revoked there
    changed: bool
    ssh: PushResult | None = None  #: what `register_vm` installed in the VM over SSH

    @property
    def warnings(self) -> list[str]:
        """What did not go as asked, though the VM is registered (a face exits non-zero on any)."""
        out = [f"the old key could not be revoked on {a}: {why}" for a, why in self.not_revoked.items()]
        if self.ssh is not None and not self.ssh.healthy:
            out.append(f"on {self.ssh.target}: radium health: {self.ssh.error}")
        return out


class Unregistration(msgspec.Struct, kw_only=True):
    """What `unregister` did."""

    vm: str
    client: str | None
    revoked: list[str]  #: appliances the key was removed from (or was not enrolled on)
    not_revoked: dict[str, str]  #: appliance → why not (only with force)
    guestinfo_cleared: list[str]
    attribute_cleared: bool
    changed: bool

    @property
    def warnings(self) -> list[str]:
        return [f"the key is still authorised on {a}: {why}" for a, why in self.not_revoked.items()]


# --- reading VMs ---------------------------------------------------------------------


@dataclass
class _VmState:
    ref: Any  # vim.VirtualMachine
    name: str
    host: str | None
    power_state: str
    guestinfo: dict[str, str]  # the guestinfo.radium.* extraConfig keys
    attribute: str | None  # the radium.client custom value (None: not set)

    @property
    def registered(self) -> bool:
        return bool(self.guestinfo.get(guestinfo.NAME) or self.attribute)

    def client_config(self) -> ClientConfig | None:
        """The configuration its guestinfo describes, or None when absent or unreadable."""
        try:
            return guestinfo.decode(self.guestinfo, f"VM {self.name}'s guestinfo")
        except ConfigError:
            return None

    def appliance_names(self) -> list[str]:
        config = self.client_config()
        if config is not None:
            return [a.name for a in config.appliances]
        return [a for a in (self.attribute or "").split(",") if a]


def _field_key(session: Session, create: bool = False) -> int | None:
    """The key of the radium.client custom field, made when `create` and missing."""
    return vm_field_key(session, FIELD, create)


def _vm_states(session: Session) -> list[_VmState]:
    """Every VM with its host, power state, guestinfo.radium.* keys and radium.client value.

    One property collection over a container view (VMs and hosts).
    """
    field_key = _field_key(session)
    vms = vm_properties(
        session, ["name", "runtime.host", "runtime.powerState", "config.extraConfig", "customValue"]
    )
    states = []
    for ref, props in vms:
        extra = {
            str(o.key): str(o.value)
            for o in props.get("config.extraConfig") or []
            if str(o.key).startswith(guestinfo.PREFIX) and o.value not in (None, "")
        }
        states.append(
            _VmState(
                ref=ref,
                name=str(props.get("name", ref._moId)),
                host=props.get("runtime.host"),
                power_state=str(props.get("runtime.powerState", "")),
                guestinfo=extra,
                attribute=custom_value(props, field_key),
            )
        )
    states.sort(key=lambda s: s.name)
    return states


def _find(states: list[_VmState], name: str) -> _VmState:
    """The VM called `name` (or with managed object id `name`); `NotFound` lists close matches."""
    by_name: dict[str, list[_VmState]] = {}
    for s in states:
        by_name.setdefault(s.name, []).append(s)
    if name not in by_name:
        for s in states:
            if s.ref._moId == name:
                return s
    found = resolve("VM", name, by_name)
    if len(found) > 1:
        ids = ", ".join(s.ref._moId for s in found)
        raise Refused(
            f"{len(found)} VMs are named {name!r} (in different folders): name one by its id: {ids}"
        )
    return found[0]


def registered(session: Session) -> list[ClientVM]:
    """The VMs registered as Radium clients, by name."""
    with translated(session.settings.where):
        states = _vm_states(session)
    out = []
    for s in states:
        if not s.registered:
            continue
        out.append(
            ClientVM(
                vm=s.name,
                id=s.ref._moId,
                host=s.host,
                power_state=s.power_state,
                client=s.guestinfo.get(guestinfo.NAME),
                public_key=s.guestinfo.get(guestinfo.PUBLIC_KEY),
                appliances=s.appliance_names(),
                attribute=s.attribute,
            )
        )
    return out


# --- register / unregister ---------------------------------------------------------------


def client_name_for(vm_name: str) -> str:
    """A client name (letters, digits, . _ -; at most 63) made from a VM name."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", vm_name).strip("-_.")[:63].rstrip("-_.")
    return name or "vm"


def _reconfigure(session: Session, state: _VmState, changes: dict[str, str], progress: Progress) -> None:
    """Set (or, with an empty value, remove) extraConfig keys of the VM, following the task."""
    from pyVmomi import vim

    spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in changes.items()])
    with translated(session.settings.where):
        task = state.ref.ReconfigVM_Task(spec=spec)
    wait(session, task, progress)


def _set_attribute(session: Session, state: _VmState, value: str) -> None:
    with translated(session.settings.where):
        key = _field_key(session, create=bool(value))
        if key is not None:
            session.content.customFieldsManager.SetField(entity=state.ref, key=key, value=value)


def _appliances_for_revocation(
    admin: ClientConfig, entries: list[ApplianceEntry]
) -> tuple[list[ApplianceEntry], dict[str, str]]:
    """The operator's entries for the appliances a VM names; and why not, for those it lacks."""
    found, missing = [], {}
    for e in entries:
        try:
            found.append(find_appliance(admin, e.name))
        except ConfigError:
            try:
                found.append(find_appliance(admin, e.address))
            except ConfigError:
                missing[e.name] = f"not in the operator configuration {admin.source}"
    return found, missing


def register(
    session: Session,
    vm_name: str,
    appliances: list[str],
    *,
    client_name: str | None = None,
    new_key: bool = False,
    admin: ClientConfig | None = None,
    progress: Progress | None = None,
) -> tuple[Registration, ClientConfig]:
    """Register VM `vm_name` as a client of `appliances` (names or addresses in the operator config).

    Returns what was done, and the client configuration the VM was given (it
    holds the secret key: hand it on only to the VM).  Everything is checked
    (the VM, the appliances) before anything changes.
    """
    if not appliances:
        raise Refused("name at least one appliance (--appliance NAME)")
    progress = progress or silent
    admin = admin or load_admin_config()
    entries: list[ApplianceEntry] = []
    for ref in appliances:
        entry = find_appliance(admin, ref)
        if entry.name not in {e.name for e in entries}:
            entries.append(entry)
    with translated(session.settings.where):
        state = _find(_vm_states(session), vm_name)

    current = state.client_config()
    if client_name is not None:
        check_name(client_name, "client name")
    name = client_name or (current.client.name if current else client_name_for(state.name))
    if current is not None and not new_key:
        identity = ClientConfig(
            client=ClientSection(
                name=name, public_key=current.client.public_key, secret_key=current.client.secret_key
            )
        )
        made_key = False
    else:
        identity = new_identity(name)
        made_key = True

    # Authorise the key first: a VM is never told about a key its appliances do not know.
    config = enroll_many(admin, entries, identity)

    wanted = guestinfo.encode(config)
    changes = {k: v for k, v in wanted.items() if state.guestinfo.get(k) != v}
    changes.update({k: "" for k in state.guestinfo if k not in wanted})  # an empty value removes a key
    if changes:
        _reconfigure(session, state, changes, progress)
    attribute = ",".join(e.name for e in entries)
    if state.attribute != attribute:
        _set_attribute(session, state, attribute)

    # Where the VM was registered before and no longer is (another name, or an appliance dropped).
    # The registration is complete by now; what fails here is reported, not raised.
    revoked: dict[str, str] = {}
    not_revoked: dict[str, str] = {}
    if current is not None:
        kept = {e.name for e in entries}
        stale = [a for a in current.appliances if current.client.name != name or a.name not in kept]
        targets, not_revoked = _appliances_for_revocation(admin, stale)
        errors = revoke_many(admin, targets, current.client.name) if targets else {}
        revoked = {a: current.client.name for a, e in errors.items() if e is None}
        not_revoked.update({a: e.message for a, e in errors.items() if e is not None})

    result = Registration(
        vm=state.name,
        client=name,
        public_key=config.client.public_key,
        new_key=made_key,
        appliances=[ApplianceRef(name=e.name, address=e.address) for e in entries],
        guestinfo_written=sorted(changes),
        attribute=attribute,
        attribute_changed=state.attribute != attribute,
        revoked=revoked,
        not_revoked=not_revoked,
        changed=bool(changes or state.attribute != attribute or revoked or made_key),
    )
    return result, config


def unregister(
    session: Session,
    vm_name: str,
    *,
    force: bool = False,
    admin: ClientConfig | None = None,
    progress: Progress | None = None,
) -> Unregistration:
    """Revoke the VM's key on every appliance its guestinfo names, then clear its guestinfo and attribute.

    When a revocation fails nothing in vCenter is cleared (the guestinfo is the
    record of where the key is authorised), unless `force`.
    """
    progress = progress or silent
    with translated(session.settings.where):
        state = _find(_vm_states(session), vm_name)
    current = state.client_config()
    revoked: list[str] = []
    not_revoked: dict[str, str] = {}
    if current is not None and current.appliances:
        admin = admin or load_admin_config()
        targets, not_revoked = _appliances_for_revocation(admin, current.appliances)
        errors = revoke_many(admin, targets, current.client.name) if targets else {}
        revoked = [a for a, e in errors.items() if e is None]
        not_revoked.update({a: e.message for a, e in errors.items() if e is not None})
        if not_revoked and not force:
            lines = "; ".join(f"{a}: {why}" for a, why in not_revoked.items())
            raise RadiumError(
                f"the key of {state.name} ({current.client.name}) could not be revoked on: {lines}. "
                "Nothing was cleared in vCenter; fix that and run again, or pass --force to clear anyway"
            )
    cleared = sorted(state.guestinfo)
    if cleared:
        _reconfigure(session, state, dict.fromkeys(cleared, ""), progress)
    attribute_cleared = state.attribute is not None
    if attribute_cleared:
        _set_attribute(session, state, "")
    return Unregistration(
        vm=state.name,
        client=current.client.name if current else state.guestinfo.get(guestinfo.NAME),
        revoked=sorted(revoked),
        not_revoked=not_revoked,
        guestinfo_cleared=cleared,
        attribute_cleared=attribute_cleared,
        changed=bool(revoked or cleared or attribute_cleared),
    )


# --- the operator action: register, and install over SSH --------------------------------


@dataclass(frozen=True)
class SshInstall:
    """Where and how `register_vm` installs the configuration in the VM (`radium.vcenter.ssh`)."""

    target: str  #: USER@HOST[:PORT]
    key_file: Path | None = None  #: SSH private key (default: the agent and ~/.ssh keys)
    known_hosts: Path | None = None  #: default ~/.ssh/known_hosts
    accept_new_host_key: bool = False  #: record a host key seen for the first time (a changed one: never)
    radium: str = "radium"  #: the radium command on the VM


def register_vm(
    session: Session,
    vm_name: str,
    appliances: list[str],
    *,
    client_name: str | None = None,
    new_key: bool = False,
    ssh: SshInstall | None = None,
    admin: ClientConfig | None = None,
    progress: Progress | None = None,
) -> Registration:
    """Register the VM (`register`); with `ssh`, install the configuration in it and check its health.

    A VM that cannot be reached over SSH, or whose host key is not trusted, stops
    the registration before anything changes.  `Registration.warnings` says what
    did not go as asked (an old key left authorised, an unhealthy VM).
    """
    from . import ssh as ssh_

    client = target = None
    if ssh is not None:
        target = ssh_.SshTarget.parse(ssh.target)
        client = ssh_.connect(
            target, key_file=ssh.key_file, known_hosts=ssh.known_hosts, accept_new=ssh.accept_new_host_key
        )
    try:
        registration, config = register(
            session,
            vm_name,
            appliances,
            client_name=client_name,
            new_key=new_key,
            admin=admin,
            progress=progress,
        )
        if client is not None and target is not None and ssh is not None:
            registration.ssh = ssh_.push_config(client, target, config, radium=ssh.radium)
    finally:
        if client is not None:
            client.close()
    return registration
