"""What the console sees of the estate and does to it: one plain interface over the library's faces.

The console's screens talk to an `Estate` and to nothing else (as harlequin's
screens talk to its adapter): it reads vCenter (`radium.vcenter`), asks the
appliances' radiumd with the operator key (`radium.remoting`), and calls the same
operations as `radium-admin`, with the same checks and error texts.  Every method
blocks (pyVmomi, ZeroMQ): the app calls them from worker threads only, never on
its event loop.

Sessions: reading and watching each keep a vCenter session of their own (a
pyVmomi session is not shared between threads); each action logs in afresh and
out again, so a long deploy never holds up a refresh.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from radium import vcenter
from radium.remoting import (
    ClientConfig,
    RunInfo,
    admin_config_path,
    enroll,
    load_client_config,
    revoke,
)

if TYPE_CHECKING:
    from radium.remoting import Enrolment, Revocation

__all__ = ["Estate", "Snapshot", "SessionRow", "sessions_of"]


@dataclass(frozen=True)
class Snapshot:
    """The estate as vCenter showed it at one moment (one read, three property collections)."""

    hosts: list[vcenter.Host]
    appliances: list[vcenter.Appliance]
    clients: list[vcenter.ClientVM]
    #: what a read in progress is still reading ("hosts", then "clients"); "" when whole (`Estate.read_parts`)
    reading: str = ""

    @property
    def complete(self) -> bool:
        return not self.reading

    def free_gpus(self) -> dict[str, int]:
        """Free DirectPath GPUs per cluster ("standalone" for hosts outside one)."""
        free: dict[str, int] = {}
        for h in self.hosts:
            key = h.cluster or "standalone"
            free[key] = free.get(key, 0) + sum(1 for d in h.accelerators if d.free)
        return free


@dataclass(frozen=True)
class SessionRow:
    """A client's session on one appliance, as the Sessions view lists it."""

    appliance: str  #: radiumd's name (the key of the probes)
    session: str  #: its id; "" when radiumd does not list sessions (older): then one row per lease
    client: str
    host: str  #: the client's host name, as its Hello said
    devices: list[str]
    share: float  #: of each device (1.0: whole; 0: no lease)
    memory_bytes: int
    runs: list[RunInfo]
    opened_at: float | None  #: seconds since the epoch (the appliance's clock)


def sessions_of(appliance: str, probe: vcenter.Probe) -> list[SessionRow]:
    """The sessions radiumd reported with what they hold and run; its leases alone when it would not
    list sessions."""
    if probe.sessions is not None:
        return [
            SessionRow(
                appliance=appliance,
                session=x.id,
                client=x.client,
                host=x.client_host,
                devices=[p.device_id for lease in x.leases for p in lease.parts],
                share=max((p.fraction for lease in x.leases for p in lease.parts), default=0.0),
                memory_bytes=sum(p.memory_bytes for lease in x.leases for p in lease.parts),
                runs=list(x.runs),
                opened_at=x.opened_at,
            )
            for x in probe.sessions
        ]
    found: dict[str, SessionRow] = {}
    for status in probe.devices:
        for held in status.leases:
            old = found.get(held.lease_id)
            found[held.lease_id] = SessionRow(
                appliance=appliance,
                session="",
                client=held.client,
                host="",
                devices=[*old.devices, status.device.id] if old else [status.device.id],
                share=held.fraction,
                memory_bytes=(old.memory_bytes if old else 0) + held.memory_bytes,
                runs=[],
                opened_at=None,
            )
    return list(found.values())


class Estate:
    """One vCenter (its connection settings) and the operator key the appliances know."""

    def __init__(self, settings: vcenter.ConnectionSettings, admin_path: Path | None = None) -> None:
        self.settings = settings
        self.admin_path = admin_path
        self._reader: vcenter.Session | None = None
        #: Whether the last read that failed did so on a session kept from an earlier read (its
        #: connection may have died with an outage since): worth one more try, logged in afresh.
        self.failed_on_kept_session = False
        self._vm_hosts: dict[str, str] = {}  # VM id -> its host's name, as last read
        self._lock = threading.Lock()  # one read at a time on the reader session

    @property
    def where(self) -> str:
        """vCenter, as messages name it."""
        return self.settings.where

    # --- reading -------------------------------------------------------------------------

    def read(self) -> Snapshot:
        """Hosts with their accelerators, appliances and client VMs, as vCenter holds them now."""
        *_, whole = self.read_parts(partial=False)
        return whole

    def read_parts(self, partial: bool = True, last: Snapshot | None = None) -> Iterator[Snapshot]:
        """`read`, as it comes: with `partial`, a snapshot after each page of hosts (in name order: the
        first screen first), then the appliances, then the clients; the last one is whole
        (`complete`).  Until they are read, the appliances and clients are those of `last`."""
        with self._reading() as session:
            hosts: list[vcenter.Host] = []
            appliances = last.appliances if last else []
            clients = last.clients if last else []
            vm_hosts: dict[str, str] = {}
            for page in vcenter.inventory_pages(session):
                hosts = hosts + page.hosts
                vm_hosts.update((v.id, v.host) for v in page.vms if v.host)
                if partial:
                    yield Snapshot(hosts, appliances, clients, reading="hosts")
            appliances = vcenter.list_appliances(session)
            if partial:
                yield Snapshot(hosts, appliances, clients, reading="clients")
            clients = vcenter.list_clients(session)
        self._vm_hosts = vm_hosts
        yield Snapshot(hosts, appliances, clients)

    def refresh(self, last: Snapshot, touched: vcenter.Touched) -> Snapshot:
        """`last` with what `touched` names read again: the hosts touched and those of the VMs touched
        (which hold devices there), and the appliances and clients when a VM was touched.  A change
        to a cluster reads everything again."""
        if touched.others:
            return self.read()
        with self._reading() as session:
            by_name = {h.name: h.id for h in last.hosts}
            # A VM's host before the change (it may have moved) and after.
            ids = set(touched.hosts) | {
                by_name[name] for v in touched.vms if (name := self._vm_hosts.get(v)) in by_name
            }
            ids |= set(vcenter.vm_host_ids(session, sorted(touched.vms - touched.gone)).values())
            ids -= touched.gone
            fresh = vcenter.hosts_inventory(session, sorted(ids))
            appliances, clients = last.appliances, last.clients
            if touched.vms:
                appliances = vcenter.list_appliances(session)
                clients = vcenter.list_clients(session)
        for v in touched.vms:
            self._vm_hosts.pop(v, None)
        self._vm_hosts.update((v.id, v.host) for v in fresh.vms if v.host)
        kept = [h for h in last.hosts if h.id not in ids and h.id not in touched.gone]
        hosts = sorted([*kept, *fresh.hosts], key=lambda h: h.name)
        return Snapshot(hosts, appliances, clients)

    def changes(self, stop: threading.Event, max_wait: int = 1) -> Iterator[vcenter.Touched | None]:
        """None once the watch is up, then what each batch of changes vCenter pushes touched, until
        `stop` is set.

        Logs in with a session of its own; raises (a `VCenterError`) when vCenter
        goes away, and the caller starts it again.
        """
        with vcenter.connect(self.settings) as session:
            up = False
            for touched in vcenter.estate_touches(session, max_wait=max_wait):
                if stop.is_set():
                    return
                if touched or not up:
                    up = True
                    yield touched

    def admin(self) -> ClientConfig | None:
        """The operator configuration in effect (`RADIUM_ADMIN_CONFIG`, ...), if there is one."""
        path = self.admin_path or admin_config_path()
        return load_client_config(path) if path.exists() else None

    def probe(self, appliances: list[vcenter.Appliance], timeout: float = 3.0) -> dict[str, vcenter.Probe]:
        """What each appliance's radiumd answers the operator key, all asked at once (by appliance name)."""
        probes = vcenter.probe_appliances(appliances, self.admin(), timeout=timeout)
        return {a.name: p for a, p in zip(appliances, probes, strict=True)}

    @contextlib.contextmanager
    def _reading(self) -> Iterator[vcenter.Session]:
        """The reader's session, one read at a time; a failed read drops it (the next logs in afresh)."""
        with self._lock:
            kept, self.failed_on_kept_session = self._reader is not None, False
            try:
                if self._reader is None:
                    self._reader = vcenter.connect(self.settings)
                yield self._reader
            except BaseException:
                self.failed_on_kept_session = kept
                self._drop_reader()
                raise

    def close(self) -> None:
        with self._lock:
            self._drop_reader()

    def _drop_reader(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            except Exception:  # noqa: BLE001 (vCenter may be gone: the session goes with it)
                pass
            self._reader = None

    # --- actions: each one operation of the library ------------------------------------

    def _session(self) -> vcenter.Session:
        return vcenter.connect(self.settings)

    def set_passthrough(self, host: str, addresses: list[str], enable: bool) -> vcenter.PassthroughChange:
        with self._session() as s:
            return vcenter.set_passthrough(s, host, addresses, enable)

    def deploy(self, request: vcenter.DeployRequest, progress: vcenter.Progress) -> vcenter.Deployment:
        with self._session() as s:
            return vcenter.deploy_appliance(s, request, progress)

    def remove(self, name: str, progress: vcenter.Progress) -> vcenter.Removal:
        with self._session() as s:
            return vcenter.remove_appliance(s, name, progress)

    def register(
        self, vm: str, appliances: list[str], client_name: str | None, progress: vcenter.Progress
    ) -> vcenter.Registration:
        with self._session() as s:
            return vcenter.register_vm(s, vm, appliances, client_name=client_name, progress=progress)

    def unregister(self, vm: str, force: bool, progress: vcenter.Progress) -> vcenter.Unregistration:
        with self._session() as s:
            return vcenter.unregister_vm(s, vm, force=force, progress=progress)

    def enroll(self, name: str, appliance: str, output: Path) -> Enrolment:
        return enroll(name, appliance, output=output)

    def revoke(self, name: str, appliance: str) -> Revocation:
        return revoke(name, appliance)

    def end_session(self, appliance: str, session_id: str) -> vcenter.SessionEnd:
        """`appliance`: the VM's name or managed object id."""
        with self._session() as s:
            return vcenter.end_session(s, appliance, session_id, admin=self.admin())


#: How long the console waits before trying vCenter again, after the 1st, 2nd, ... failure in a row.
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0)


def describe(exc: BaseException) -> str:
    """One line for a failure: a `RadiumError`'s message, else the exception's type and text."""
    message = getattr(exc, "message", None)
    if isinstance(message, str) and message:
        return message.splitlines()[0] if len(message) > 300 else message
    return f"{type(exc).__name__}: {exc}"
