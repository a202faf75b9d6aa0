"""Deploying an appliance: from an OVF package to a VM with its GPUs whose radiumd answers.

`deploy(session, request, reporter)` does, in this order:

1. **Checks, before anything exists in vCenter.**  The package
   (`radium.appliance.ovf.validate_package`: descriptor, files, manifest) and the
   property values the appliance will get (`radium.appliance.properties.parse`);
   then, in one inventory collection, the host (close matches when unknown), the
   name (taken: refused unless ``replace``), the devices (`check_assignable`:
   passthrough-enabled, active, not held by a powered-on VM; each refusal says
   what to do), datastore, network and folder (close matches), the devices'
   DirectPath identities (``QueryConfigTarget``), and vCenter's own reading of the
   descriptor (``OvfManager.CreateImportSpec``).
2. **Keys.**  The appliance's CURVE server key pair is made here, so that the
   operator knows its public key before the VM exists; its secret key travels
   only as the masked vApp property ``radium.server_secret_key``.  The operator
   key it trusts is that of the operator configuration in effect
   (`radium.remoting.enrolment.admin_config_path`); when there is none, an
   operator identity is made and its bundle written there (0600).
3. **Import.**  ``ResourcePool.ImportVApp`` and the NFC lease: each disk is sent
   to its ``deviceUrl`` (``*`` replaced by the vCenter's host:port) over TLS
   trusted the way the session trusts vCenter (`Session.https_connection`),
   reporting bytes to the caller and percent to the lease, then
   ``HttpNfcLeaseComplete``.
4. **Hardware and configuration.**  One ``ReconfigVM``: a ``VirtualPCIPassthrough``
   per device (backing id = PCI id, deviceId/vendorId from the host, systemId
   from the configuration target), ``memoryReservationLockedToMax``, EFI firmware
   without Secure Boot, ``pciPassthru.use64bitMMIO`` and
   ``pciPassthru.64bitMMIOSizeGB`` (the next power of two at least twice the
   devices' memory, `mmio_size_gib`), and the ``guestinfo.radium.*`` keys of the
   first-boot contract (all but the secret key).  The custom attribute
   ``radium.appliance`` records radiumd's name, port and server public key
   (`radium.vcenter.appliances`).  Then power on.
5. **Wait** (unless ``wait`` is off): for the guest's IP address (VMware Tools;
   a static address is known already), then for radiumd to answer a
   ``ListDevices`` with the operator key and the generated server key, within
   ``timeout``.  The appliance's address is then added to the operator
   configuration, so that `register-vm --appliance NAME` finds it.

A failure between the import and the end (a task's error, Ctrl-C) removes the
half-made VM: the lease is aborted and the VM powered off and destroyed.  Only
the wait running out leaves the VM in place (it may just be slow to boot): the
result says so and what to do.
"""

from __future__ import annotations

import contextlib
import signal
import tarfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import msgspec

from radium.appliance import ovf
from radium.appliance.properties import GUESTINFO_PREFIX, SECRET, parse
from radium.remoting import enrolment
from radium.remoting._config import (
    DEFAULT_PORT,
    ApplianceEntry,
    ClientConfig,
    load_client_config,
    save_client_config,
)
from radium.remoting._errors import RadiumError
from radium.remoting._keys import KeyPair, save_keypair, save_public_key
from radium.remoting._version import VERSION

from . import appliances as appl
from . import pciids
from .connection import Session
from .errors import Refused, TaskFailed, VCenterError, fault_message, translated
from .inventory import Inventory, collect
from .model import Host, PassthroughDevice
from .names import resolve
from .passthrough import check_assignable
from .tasks import TaskProgress, watch

__all__ = [
    "DEFAULT_TIMEOUT",
    "Deployment",
    "DeployRequest",
    "Interrupted",
    "Reporter",
    "deploy",
    "mmio_size_gib",
    "passthrough_device",
]

#: Seconds a deploy waits for the guest's IP address and then radiumd, together.
DEFAULT_TIMEOUT = 600.0
CHUNK = 1 << 20
STREAM_VMDK = "application/x-vnd.vmware-streamVmdk"


class Interrupted(VCenterError):
    """The deploy was interrupted (Ctrl-C); what it had made was removed."""

    code = "interrupted"
    exit_code = 130


class Reporter:
    """Where a deploy reports what it does; this one reports nothing (the CLI draws rich progress)."""

    def step(self, text: str) -> None:
        """A line: what is being done now."""

    def task(self, stream: Iterable[TaskProgress]) -> None:
        """A vCenter task's progress reports (raises `TaskFailed` from the stream)."""
        for _ in stream:
            pass

    @contextlib.contextmanager
    def transfer(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A byte transfer of `total` bytes; the caller calls the function with each chunk's size."""
        yield lambda n: None


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


class DeployedGpu(msgspec.Struct, kw_only=True):
    address: str
    vendor: str
    model: str
    memory_gib: int
    memory_known: bool  #: False: not in the table, the default was assumed


class OperatorKey(msgspec.Struct, kw_only=True):
    name: str  #: radium.admin_name: the key's file name on the appliance
    public_key: str
    config: str  #: the operator configuration holding the secret key
    created: bool  #: made by this deploy (there was none)
    recorded: bool = False  #: the appliance's address was added to it


class Deployment(msgspec.Struct, kw_only=True):
    """What `deploy` did."""

    vm: str
    id: str
    host: str
    datastore: str
    network: str | None
    folder: str
    gpus: list[DeployedGpu]
    mmio_size_gib: int
    server_public_key: str
    operator: OperatorKey
    power_state: str
    replaced: list[str]  #: managed object ids of the VMs destroyed first (--replace)
    ip: str | None = None
    address: str | None = None
    waited: bool = False
    ready: bool | None = None  #: radiumd answered (None: not waited for)
    radiumd: appl.Health | None = None
    keys_out: str | None = None
    warnings: list[str] = msgspec.field(default_factory=list)


# --- the package ------------------------------------------------------------------------------


class _Package:
    """A checked OVF package: its descriptor, and each file it references as (opener, size)."""

    def __init__(self, path: Path) -> None:
        problems = ovf.validate_package(path)
        if problems:
            lines = "\n  ".join(problems)
            raise Refused(
                f"the OVF package {path} is not fit to deploy ({len(problems)} problem"
                f"{'s' if len(problems) > 1 else ''}); nothing was created in vCenter:\n  {lines}",
                problems=problems,
            )
        self.path = Path(path)
        self.descriptor = ovf.read_descriptor(self.path)
        self.networks = _ovf_networks(self.descriptor)
        self._tar: dict[str, tuple[int, int]] = {}
        if self.path.suffix.lower() == ".ova" and self.path.is_file():
            with tarfile.open(self.path, "r:") as tar:
                for m in tar.getmembers():
                    self._tar[m.name] = (m.offset_data, m.size)
            self.folder = self.path.parent
        else:
            ovf_path = next(iter(sorted(self.path.glob("*.ovf")))) if self.path.is_dir() else self.path
            self.folder = ovf_path.parent

    def size(self, name: str) -> int:
        if self._tar:
            return self._tar[name][1]
        return (self.folder / name).stat().st_size

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[tuple[BinaryIO, int]]:
        """The file's bytes as a stream positioned at its start, and its size."""
        if self._tar:
            offset, size = self._tar[name]
            with open(self.path, "rb") as f:
                f.seek(offset)
                yield f, size
        else:
            path = self.folder / name
            with open(path, "rb") as f:
                yield f, path.stat().st_size


def _ovf_networks(descriptor: str) -> list[str]:
    """The network names of the descriptor's NetworkSection (what networkMapping maps)."""
    names = []
    for section in ET.fromstring(descriptor):
        if section.tag.rpartition("}")[2] != "NetworkSection":
            continue
        for el in section:
            if el.tag.rpartition("}")[2] == "Network":
                name = next((v for k, v in el.attrib.items() if k.rpartition("}")[2] == "name"), "")
                if name:
                    names.append(name)
    return names


# --- pieces also used by the lab ---------------------------------------------------------------


def mmio_size_gib(memory_gib: Iterable[int]) -> int:
    """``pciPassthru.64bitMMIOSizeGB``: the next power of two at least twice the devices' memory."""
    need = 2 * sum(memory_gib)
    size = 1
    while size < need:
        size *= 2
    return max(size, 32)


def passthrough_device(key: int, pci: Any, system_id: str | None) -> Any:
    """A VirtualPCIPassthrough for host PCI device `pci` (a vim.host.PciDevice)."""
    from pyVmomi import vim

    backing = vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo(
        id=pci.id,
        deviceId=format(pci.deviceId & 0xFFFF, "x"),
        vendorId=pci.vendorId,
        systemId=system_id or "",
        deviceName=pci.deviceName or "",
    )
    return vim.vm.device.VirtualPCIPassthrough(key=key, backing=backing)


def passthrough_targets(session: Session, host_ref: Any) -> dict[str, tuple[Any, str | None]]:
    """PCI id → (vim.host.PciDevice, systemId) for every device the host offers VMs for passthrough."""
    with translated(session.settings.where):
        browser = host_ref.parent.environmentBrowser
        target = browser.QueryConfigTarget(host=host_ref) if browser is not None else None
    out = {}
    for p in getattr(target, "pciPassthrough", None) or []:
        dev = getattr(p, "pciDevice", None)
        if dev is not None and dev.id:
            out[dev.id.lower()] = (dev, getattr(p, "systemId", None))
    return out


def hardware_spec(devices: list[tuple[Any, str | None]], mmio_gib: int, guestinfo: dict[str, str]) -> Any:
    """The ReconfigVM spec of an appliance: DirectPath devices, reservation, EFI, MMIO, guestinfo."""
    from pyVmomi import vim

    extra = {"pciPassthru.use64bitMMIO": "TRUE", "pciPassthru.64bitMMIOSizeGB": str(mmio_gib), **guestinfo}
    return vim.vm.ConfigSpec(
        deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="add", device=passthrough_device(-100 - i, pci, sid))
            for i, (pci, sid) in enumerate(devices)
        ],
        memoryReservationLockedToMax=True,
        firmware="efi",
        bootOptions=vim.vm.BootOptions(efiSecureBootEnabled=False),
        extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in extra.items()],
    )


def guestinfo_values(values: dict[str, str]) -> dict[str, str]:
    """The ``guestinfo.radium.*`` variables for property values; never the secret key."""
    return {GUESTINFO_PREFIX + k: v for k, v in values.items() if v and k not in SECRET}


def datacenter_of(entity: Any) -> Any:
    from pyVmomi import vim

    node = entity
    while node is not None and not isinstance(node, vim.Datacenter):
        node = node.parent
    if node is None:
        raise Refused(f"{entity.name} is in no datacenter")
    return node


# --- choosing where -------------------------------------------------------------------------------


def _devices(inv: Inventory, host: Host, request: DeployRequest) -> list[PassthroughDevice]:
    if request.gpus.strip().lower() == "all":
        owner = request.name if request.replace else None
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
    addresses = [a.strip() for a in request.gpus.split(",") if a.strip()]
    if not addresses:
        raise Refused("--gpus: name at least one PCI address, or 'all'")
    chosen = check_assignable(inv, host.name, addresses, vm=request.name if request.replace else None)
    by_address = {d.address: d for d in host.accelerators}
    return [by_address[a] for a in dict.fromkeys(chosen)]


def _datastore(host_ref: Any, wanted: str | None) -> Any:
    stores = {ds.name: ds for ds in host_ref.datastore or []}
    if wanted:
        return resolve("datastore", wanted, stores, where=f"on host {host_ref.name}")
    usable = [ds for ds in stores.values() if getattr(ds.summary, "accessible", True)]
    if not usable:
        raise Refused(f"host {host_ref.name} has no accessible datastore")
    return max(usable, key=lambda ds: ds.summary.freeSpace or 0)


def _network(host_ref: Any, wanted: str | None, ovf_networks: list[str]) -> Any | None:
    nets = {n.name: n for n in host_ref.network or []}
    if wanted:
        return resolve("network", wanted, nets, where=f"on host {host_ref.name}")
    for name in ovf_networks:
        if name in nets:
            return nets[name]
    return next(iter(nets.values()), None)


def _folder(dc: Any, path: str | None) -> tuple[Any, str]:
    from pyVmomi import vim

    folder = dc.vmFolder
    shown = [dc.name, "vm"]
    for part in [p for p in (path or "").split("/") if p]:
        children = {c.name: c for c in folder.childEntity or [] if isinstance(c, vim.Folder)}
        folder = resolve("folder", part, children, where=f"in {'/'.join(shown)}")
        shown.append(folder.name)
    return folder, "/".join(shown)


# --- keys -------------------------------------------------------------------------------------------


def _operator() -> tuple[ClientConfig, Path, bool]:
    """The operator configuration in effect, or a new operator identity (not written yet)."""
    path = enrolment.admin_config_path()
    if path.exists():
        return load_client_config(path), path, False
    return enrolment.new_identity("operator"), path, True


def _write_keys_out(folder: Path, name: str, server: KeyPair, admin_name: str, admin_public: str) -> None:
    """The appliance's keys where a radiumd would look: state_dir=FOLDER, admins_dir=FOLDER/admins.d."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    save_keypair(folder / "server.key", name, server)
    (folder / "admins.d").mkdir(exist_ok=True, mode=0o755)
    save_public_key(folder / "admins.d" / f"{admin_name}.key", admin_name, admin_public)


def _record_address(config_path: Path, entry: ApplianceEntry) -> bool:
    """Add (or update) the appliance in the operator configuration."""
    try:
        config = load_client_config(config_path)
    except RadiumError:
        return False
    config.appliances = [a for a in config.appliances if a.name != entry.name] + [entry]
    save_client_config(config, config_path)
    return True


# --- the NFC lease ------------------------------------------------------------------------------------


def _wait_lease(
    session: Session, lease: Any, name: str, check: Callable[[], None], timeout: float = 300.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        check()
        with translated(session.settings.where):
            state = str(lease.state)
            if state == "ready":
                return
            if state == "error":
                error = lease.error
                text = (
                    getattr(error, "localizedMessage", None) or fault_message(error)
                    if error
                    else "no reason given"
                )
                raise TaskFailed(f"importing {name} failed: {text}", error=text)
        if state == "done":
            return
        if time.monotonic() > deadline:
            raise TaskFailed(
                f"importing {name}: vCenter did not make the import lease ready within {timeout:g} s"
            )
        time.sleep(0.2)


def _upload(
    session: Session,
    lease: Any,
    package: _Package,
    items: list[Any],
    reporter: Reporter,
    check: Callable[[], None],
) -> None:
    """Send each file of the import to its device URL, reporting bytes and lease progress."""
    urls = {u.importKey: u for u in lease.info.deviceUrl or []}
    total = sum(package.size(item.path) for item in items)
    sent = 0
    last_percent, last_report = -1, 0.0

    def lease_progress(force: bool = False) -> None:
        nonlocal last_percent, last_report
        percent = int(100 * sent / total) if total else 100
        now = time.monotonic()
        if percent != last_percent and (force or now - last_report >= 1.0):
            with translated(session.settings.where):
                lease.HttpNfcLeaseProgress(percent=min(percent, 99))
            last_percent, last_report = percent, now

    with reporter.transfer(f"uploading {package.path.name}", total) as advance:
        for item in items:
            device = urls.get(item.deviceId)
            if device is None:
                raise TaskFailed(f"the import lease has no upload URL for {item.path} ({item.deviceId})")
            url = device.url.replace("*", f"{session.settings.host}:{session.settings.port}", 1)
            parts = urlsplit(url)
            conn = session.https_connection(
                parts.hostname or "",
                parts.port or 443,
                thumbprint=getattr(device, "sslThumbprint", None) or None,
            )
            method = "PUT" if item.create else "POST"
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            where = f"{parts.hostname}:{parts.port or 443}"
            try:
                with package.open(item.path) as (f, size), translated(where):
                    conn.putrequest(method, target)
                    conn.putheader("Content-Type", STREAM_VMDK)
                    conn.putheader("Content-Length", str(size))
                    if (parts.hostname, parts.port or 443) == (session.settings.host, session.settings.port):
                        conn.putheader("Cookie", session.stub.cookie)  # vCenter's own NFC service only
                    conn.endheaders()
                    left = size
                    while left:
                        chunk = f.read(min(CHUNK, left))
                        if not chunk:
                            raise TaskFailed(f"{package.path}: {item.path} ended {left} bytes early")
                        conn.send(chunk)
                        left -= len(chunk)
                        sent += len(chunk)
                        advance(len(chunk))
                        lease_progress()
                        check()
                    resp = conn.getresponse()
                    body = resp.read()
                    if resp.status not in (200, 201, 204):
                        raise TaskFailed(
                            f"uploading {item.path} to {where} failed: HTTP {resp.status} {resp.reason}: "
                            f"{body[:200].decode(errors='replace').strip()}"
                        )
            finally:
                conn.close()
    lease_progress(force=True)


# --- waiting for the guest and radiumd -----------------------------------------------------------------


def _usable_ip(ip: str | None) -> bool:
    return bool(ip) and not str(ip).lower().startswith("fe80:") and not str(ip).startswith("169.254.")


def _wait_for_ip(session: Session, vm: Any, deadline: float, check: Callable[[], None]) -> str | None:
    """The IP address the guest reports (VMware Tools), or None when `deadline` passes first."""
    from pyVmomi import vim, vmodl

    pc = vmodl.query.PropertyCollector
    where = session.settings.where
    with translated(where):
        collector = session.content.propertyCollector.CreatePropertyCollector()
    try:
        with translated(where):
            collector.CreateFilter(
                pc.FilterSpec(
                    objectSet=[pc.ObjectSpec(obj=vm)],
                    propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=["guest.ipAddress"])],
                ),
                partialUpdates=False,
            )
        version = ""
        while True:
            check()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with translated(where):
                update = collector.WaitForUpdatesEx(
                    version, pc.WaitOptions(maxWaitSeconds=max(1, min(2, int(left))))
                )
            if update is None:
                continue
            version = update.version
            for fs in update.filterSet or []:
                for oc in fs.objectSet or []:
                    for change in oc.changeSet or []:
                        if change.name == "guest.ipAddress" and _usable_ip(change.val):
                            return str(change.val)
    finally:
        with contextlib.suppress(Exception):
            collector.DestroyPropertyCollector()


def _wait_for_radiumd(
    entry: ApplianceEntry, operator: ClientConfig, deadline: float, check: Callable[[], None]
) -> appl.Health:
    """Ask radiumd for its devices until it answers or `deadline` passes; the last answer."""
    a = appl.Appliance(
        vm=entry.name,
        id="",
        name=entry.name,
        host=None,
        power_state="poweredOn",
        ip=None,
        address=entry.address,
        port=0,
        server_public_key=entry.public_key,
        gpus=[],
        marked=True,
    )
    while True:
        check()
        left = deadline - time.monotonic()
        health = appl.check(a, operator, timeout=max(0.5, min(3.0, left)))
        if health.reachable or time.monotonic() >= deadline:
            return health
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


# --- cleaning up ----------------------------------------------------------------------------------------


class _Deferred:
    """Ctrl-C while vCenter is being changed, taken at the next safe point rather than anywhere.

    A KeyboardInterrupt raised in the middle of pyVmomi can leave its connection
    pool's lock held, and then nothing more can be said to vCenter, not even the
    clean-up.  So while a deploy changes vCenter, SIGINT only sets a flag, and
    `check()` (between steps, per uploaded chunk, in every wait) raises
    KeyboardInterrupt there.  A second Ctrl-C changes nothing: the clean-up runs
    to its end.
    """

    def __init__(self) -> None:
        self.asked = False
        self._previous: Any = None
        self._main = threading.current_thread() is threading.main_thread()

    def _handler(self, signum: int, frame: Any) -> None:
        self.asked = True

    def check(self) -> None:
        if self.asked:
            raise KeyboardInterrupt

    def __enter__(self) -> _Deferred:
        if self._main:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._main:
            signal.signal(signal.SIGINT, self._previous)


def _checked(stream: Iterable[TaskProgress], check: Callable[[], None]) -> Iterator[TaskProgress]:
    for report in stream:
        check()
        yield report
    check()


def _cleanup(session: Session, name: str, lease: Any, completed: bool, vm: Any, known: set[str]) -> str:
    """Abort the lease and destroy the VM this deploy made; what was done, in words."""
    from pyVmomi import vim

    done = []
    if lease is not None and not completed:
        with contextlib.suppress(Exception):
            lease.HttpNfcLeaseAbort()
            done.append("import aborted")
    try:
        if vm is None:  # made, but not known yet: find it by name among the VMs that were not there before
            view = session.content.viewManager.CreateContainerView(
                session.content.rootFolder, [vim.VirtualMachine], True
            )
            try:
                vm = next((v for v in view.view if v._moId not in known and v.name == name), None)
            finally:
                view.DestroyView()
        if vm is not None:
            with contextlib.suppress(Exception):
                if str(vm.runtime.powerState) != "poweredOff":
                    watch_done(session, vm.PowerOffVM_Task())
            watch_done(session, vm.Destroy_Task())
            done.append(f"the half-made VM {name} was removed")
    except Exception as exc:  # say so: the operator must remove it by hand
        message = exc.message if isinstance(exc, RadiumError) else str(exc)
        done.append(f"the half-made VM {name} could NOT be removed ({message}): remove it in vSphere")
    return "; ".join(done) or "nothing had been made in vCenter"


def watch_done(session: Session, task: Any) -> None:
    for _ in watch(session, task):
        pass


# --- deploy --------------------------------------------------------------------------------------------


def deploy(session: Session, request: DeployRequest, reporter: Reporter | None = None) -> Deployment:
    """Deploy an appliance as `request` says; see the module's documentation for the steps."""
    from pyVmomi import vim

    reporter = reporter or Reporter()
    where = session.settings.where
    warnings: list[str] = []

    # 1. local checks: the package and the values the appliance will get
    package = _Package(request.package)
    operator, operator_path, operator_new = _operator()
    admin_name = operator.client.name
    server = KeyPair.generate()
    assert server.secret is not None
    values = {
        "radium.name": request.name,
        "radium.server_secret_key": server.secret,
        "radium.admin_public_key": operator.client.public_key,
        "radium.admin_name": admin_name,
        "radium.listen_port": str(request.port),
        "radium.network.ip": request.ip or "dhcp",
        "radium.network.gateway": request.gateway or "",
        "radium.network.dns": request.dns or "",
    }
    values = {k: v for k, v in values.items() if v}
    settings = parse(values)  # PropertyError lists every bad value; nothing exists yet

    # 1b. vCenter checks
    reporter.step(f"checking {request.host} and its devices")
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
    devices = _devices(inv, host, request)
    with translated(where):
        host_ref = vim.HostSystem(host.id, session.stub)
        dc = datacenter_of(host_ref)
        datastore = _datastore(host_ref, request.datastore)
        network = _network(host_ref, request.network, package.networks)
        folder, folder_path = _folder(dc, request.folder)
        pool = host_ref.parent.resourcePool  # type: ignore[union-attr]
    targets = passthrough_targets(session, host_ref)
    chosen = []
    gpus = []
    for d in devices:
        if d.address not in targets:
            raise Refused(
                f"{d.address} on {host.name} is not offered for passthrough by the host (vCenter's "
                "configuration target does not list it): reboot the host if passthrough was just enabled"
            )
        pci, system_id = targets[d.address]
        chosen.append((pci, system_id))
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
    mmio = mmio_size_gib(g.memory_gib for g in gpus)

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
    items = list(spec.fileItem or [])

    # 2. keys: written once everything is checked
    if operator_new:
        save_client_config(operator, operator_path)
        reporter.step(
            f"made an operator key {operator.client.public_key}: bundle written to {operator_path} (0600)"
        )
    if request.keys_out is not None:
        _write_keys_out(request.keys_out, request.name, server, admin_name, operator.client.public_key)

    with _Deferred() as interrupt:
        # --replace: the old VM goes first
        replaced = []
        for v in existing:
            reporter.step(f"replacing: powering off and destroying {v.name} ({v.id})")
            interrupt.check()
            appl.destroy_vm(session, vim.VirtualMachine(v.id, session.stub), reporter.task)
            replaced.append(v.id)

        known = {v.id for v in inv.vms}
        lease = vm = None
        completed = False
        result = Deployment(
            vm=request.name,
            id="",
            host=host.name,
            datastore=datastore.name,
            network=network.name if network is not None else None,
            folder=folder_path,
            gpus=gpus,
            mmio_size_gib=mmio,
            server_public_key=settings.server_public_key,
            operator=OperatorKey(
                name=admin_name,
                public_key=operator.client.public_key,
                config=str(operator_path),
                created=operator_new,
            ),
            power_state="poweredOff",
            replaced=replaced,
            keys_out=str(request.keys_out) if request.keys_out else None,
            warnings=warnings,
        )
        static_ip = None if settings.network.dhcp else str(settings.network.address.ip)  # type: ignore[union-attr]
        try:
            # 3. import
            reporter.step(
                f"importing {package.path.name} as {request.name} on {host.name} ({datastore.name})"
            )
            with translated(where):
                lease = pool.ImportVApp(spec=spec.importSpec, folder=folder, host=host_ref)
            _wait_lease(session, lease, request.name, interrupt.check)
            with translated(where):
                vm = lease.info.entity
                result.id = vm._moId
            _upload(session, lease, package, items, reporter, interrupt.check)
            with translated(where):
                lease.HttpNfcLeaseComplete()
            completed = True
            interrupt.check()

            # 4. hardware, configuration, mark, power on
            reporter.step(
                f"adding {len(chosen)} DirectPath device{'s' if len(chosen) != 1 else ''} "
                f"({', '.join(g.address for g in gpus)}), EFI, memory reservation locked, "
                f"{mmio} GiB 64-bit MMIO"
            )
            with translated(where):
                reconfig = vm.ReconfigVM_Task(spec=hardware_spec(chosen, mmio, guestinfo_values(values)))
            reporter.task(_checked(watch(session, reconfig), interrupt.check))
            record = appl.ApplianceRecord(
                name=settings.name,
                server_public_key=settings.server_public_key,
                port=settings.listen_port,
                ip=static_ip,
                admin_public_key=operator.client.public_key,
                version=VERSION,
            )
            interrupt.check()
            appl.set_record(session, vm, record)
            with translated(where):
                power_on = vm.PowerOnVM_Task()
            reporter.task(_checked(watch(session, power_on), interrupt.check))
            result.power_state = "poweredOn"

            # 5. wait for the guest and radiumd
            result.ip = static_ip
            if request.wait:
                result.waited = True
                deadline = time.monotonic() + request.timeout
                if static_ip is None:
                    reporter.step(f"waiting for {request.name}'s IP address (VMware Tools in the guest)")
                    result.ip = _wait_for_ip(session, vm, deadline, interrupt.check)
                if result.ip is None:
                    result.ready = False
                    result.radiumd = appl.Health(
                        reachable=False,
                        error=f"the guest reported no IP address within {request.timeout:g} s",
                    )
                else:
                    result.address = appl.address_of(result.ip, settings.listen_port)
                    assert result.address is not None
                    reporter.step(f"waiting for radiumd at {result.address} to answer")
                    entry = ApplianceEntry(
                        name=settings.name, address=result.address, public_key=settings.server_public_key
                    )
                    result.radiumd = _wait_for_radiumd(entry, operator, deadline, interrupt.check)
                    result.ready = result.radiumd.reachable
            else:
                result.address = appl.address_of(result.ip, settings.listen_port)
        except KeyboardInterrupt:
            done = _cleanup(session, request.name, lease, completed, vm, known)
            raise Interrupted(f"interrupted: {done}") from None
        except BaseException as exc:
            done = _cleanup(session, request.name, lease, completed, vm, known)
            if isinstance(exc, RadiumError):
                exc.message = f"{exc.message} ({done})"
                exc.args = (exc.message,)
            raise

    if result.address is not None and (result.ready or not request.wait):
        entry = ApplianceEntry(
            name=settings.name, address=result.address, public_key=settings.server_public_key
        )
        result.operator.recorded = _record_address(operator_path, entry)
    if result.ready is False:
        why = result.radiumd.error if result.radiumd else "no answer"
        result.warnings.append(
            f"{request.name} is deployed and powered on, but radiumd did not answer within "
            f"{request.timeout:g} s ({why}). It is left as it is: look at its console (the first boot "
            "prints what it did), then "
            f"`radium-admin appliance status {request.name}`; or remove it: `radium-admin appliance remove "
            f"{request.name}`"
        )
    return result
