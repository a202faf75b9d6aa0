"""Deploying an appliance: from an OVF package to a VM with its GPUs whose radiumd answers.

`deploy(session, request, progress)` does, in this order:

1. **Checks, before anything exists in vCenter** (`radium.vcenter.plan`).  The request's own
   values (`DeployRequest.check`), the package (`radium.vcenter.package`:
   descriptor, files, manifest) and the property values the appliance will get
   (`radium.appliance.parse_properties`); then, in one inventory collection, the
   host (close matches when unknown), the name (taken: refused unless
   ``replace``), the devices, datastore, network and folder
   (`radium.vcenter.placement`: passthrough-enabled, active, not held by a
   powered-on VM; each refusal says what to do), the devices' DirectPath
   identities (``QueryConfigTarget``), and vCenter's own reading of the
   descriptor (``OvfManager.CreateImportSpec``).
2. **Keys.**  The appliance's CURVE server key pair is made here, so that the
   operator knows its public key before the VM exists; its secret key travels
   only as the masked vApp property ``radium.server_secret_key``.  The operator
   key it trusts is that of the operator configuration in effect
   (`radium.remoting.admin_config_path`); when there is none, an operator
   identity is made and its bundle written there (0600).
3. **Import** (`radium.vcenter.nfc`).  ``ResourcePool.ImportVApp`` and the NFC
   lease: each disk is sent to its ``deviceUrl``, reporting bytes to the caller
   and percent to the lease, then ``HttpNfcLeaseComplete``.
4. **Hardware and configuration** (`radium.vcenter.hardware`).  One
   ``ReconfigVM``: a ``VirtualPCIPassthrough`` per device,
   ``memoryReservationLockedToMax``, EFI firmware without Secure Boot,
   ``pciPassthru.use64bitMMIO`` and ``pciPassthru.64bitMMIOSizeGB`` (the next
   power of two at least twice the devices' memory), and the
   ``guestinfo.radium.*`` keys of the first-boot contract (all but the secret
   key).  The custom attribute ``radium.appliance`` records radiumd's name, port
   and server public key (`radium.vcenter.appliances`).  Then power on.
5. **Wait** (unless ``wait`` is off): for the guest's IP address (VMware Tools;
   a static address is known already), then for radiumd to answer a
   ``ListDevices`` with the operator key and the generated server key, within
   ``timeout``.  The appliance's address is then added to the operator
   configuration, so that `register-vm --appliance NAME` finds it.

What it does is reported to `progress` (`radium.vcenter.progress`: steps, task
bars, the upload's bytes).  A failure between the import and the end (a task's
error, Ctrl-C) removes the half-made VM: the lease is aborted and the VM
powered off and destroyed.  Only the wait running out leaves the VM in place
(it may just be slow to boot): the result says so and what to do.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from radium.remoting import (
    VERSION,
    ApplianceEntry,
    RadiumError,
    record_appliance,
    save_client_config,
    save_keypair,
    save_public_key,
)

from . import appliances as appl
from .connection import Session
from .errors import VCenterError, translated
from .guest import wait_for_ip, wait_for_radiumd
from .hardware import guestinfo_values, hardware_spec
from .nfc import upload, wait_ready
from .plan import DEFAULT_TIMEOUT, DeployedGpu, DeployPlan, DeployRequest
from .plan import plan as make_plan
from .progress import Progress, Step, silent
from .tasks import wait

__all__ = ["DEFAULT_TIMEOUT", "DeployedGpu", "Deployment", "DeployRequest", "Interrupted", "deploy"]


class Interrupted(VCenterError):
    """The deploy was interrupted (Ctrl-C); what it had made was removed."""

    code = "interrupted"
    exit_code = 130


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


# --- 2. keys ---------------------------------------------------------------------------------------


def _write_keys(plan: DeployPlan, progress: Progress) -> None:
    """The operator bundle (when made now); with ``keys_out``, the appliance's keys in radiumd's layout."""
    operator = plan.operator
    if plan.operator_new:
        save_client_config(operator, plan.operator_path)
        progress(
            Step(
                f"made an operator key {operator.client.public_key}: bundle written to "
                f"{plan.operator_path} (0600)"
            )
        )
    folder = plan.request.keys_out
    if folder is not None:  # state_dir=FOLDER, admins_dir=FOLDER/admins.d
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        save_keypair(folder / "server.key", plan.request.name, plan.server)
        (folder / "admins.d").mkdir(exist_ok=True, mode=0o755)
        name = operator.client.name
        save_public_key(folder / "admins.d" / f"{name}.key", name, operator.client.public_key)


# --- 3-5. making it ----------------------------------------------------------------------------------


@dataclass
class _Made:
    """What exists in vCenter so far: what a failed deploy must take away."""

    lease: Any = None
    completed: bool = False  #: the lease was completed (the import is the VM's now)
    vm: Any = None


def _make(
    session: Session,
    plan: DeployPlan,
    result: Deployment,
    made: _Made,
    progress: Progress,
    check: Callable[[], None],
) -> None:
    """Import, configure, mark and power on the VM, then wait for it; `result` is filled in as it goes."""
    request, settings, where = plan.request, plan.settings, session.settings.where
    progress(
        Step(f"importing {plan.package.path.name} as {request.name} on {plan.host} ({plan.datastore.name})")
    )
    with translated(where):
        made.lease = plan.pool.ImportVApp(spec=plan.import_spec, folder=plan.folder, host=plan.host_ref)
    wait_ready(session, made.lease, request.name, check)
    with translated(where):
        made.vm = vm = made.lease.info.entity
        result.id = vm._moId
    upload(session, made.lease, plan.package, plan.items, progress, check)
    with translated(where):
        made.lease.HttpNfcLeaseComplete()
    made.completed = True
    check()

    addresses = ", ".join(g.address for g in plan.gpus)
    plural = "s" if len(plan.devices) != 1 else ""
    progress(
        Step(
            f"adding {len(plan.devices)} DirectPath device{plural} ({addresses}), EFI, memory reservation "
            f"locked, {plan.mmio} GiB 64-bit MMIO"
        )
    )
    with translated(where):
        reconfig = vm.ReconfigVM_Task(
            spec=hardware_spec(plan.devices, plan.mmio, guestinfo_values(plan.values))
        )
    wait(session, reconfig, progress, check)
    record = appl.ApplianceRecord(
        name=settings.name,
        server_public_key=settings.server_public_key,
        port=settings.listen_port,
        ip=plan.static_ip,
        admin_public_key=plan.operator.client.public_key,
        version=VERSION,
    )
    check()
    appl.set_record(session, vm, record)
    with translated(where):
        power_on = vm.PowerOnVM_Task()
    wait(session, power_on, progress, check)
    result.power_state = "poweredOn"

    result.ip = plan.static_ip
    if not request.wait:
        result.address = appl.address_of(result.ip, settings.listen_port)
        return
    result.waited = True
    deadline = time.monotonic() + request.timeout
    if result.ip is None:
        progress(Step(f"waiting for {request.name}'s IP address (VMware Tools in the guest)"))
        result.ip = wait_for_ip(session, vm, deadline, check)
    if result.ip is None:
        result.ready = False
        result.radiumd = appl.Health(
            reachable=False, error=f"the guest reported no IP address within {request.timeout:g} s"
        )
        return
    result.address = appl.address_of(result.ip, settings.listen_port)
    assert result.address is not None
    progress(Step(f"waiting for radiumd at {result.address} to answer"))
    entry = ApplianceEntry(name=settings.name, address=result.address, public_key=settings.server_public_key)
    result.radiumd = wait_for_radiumd(entry, plan.operator, deadline, check)
    result.ready = result.radiumd.reachable


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


def _cleanup(session: Session, name: str, made: _Made, known: set[str]) -> str:
    """Abort the lease and destroy the VM this deploy made; what was done, in words."""
    from pyVmomi import vim

    done = []
    if made.lease is not None and not made.completed:
        with contextlib.suppress(Exception):
            made.lease.HttpNfcLeaseAbort()
            done.append("import aborted")
    vm = made.vm
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
                    wait(session, vm.PowerOffVM_Task())
            wait(session, vm.Destroy_Task())
            done.append(f"the half-made VM {name} was removed")
    except Exception as exc:  # say so: the operator must remove it by hand
        message = exc.message if isinstance(exc, RadiumError) else str(exc)
        done.append(f"the half-made VM {name} could NOT be removed ({message}): remove it in vSphere")
    return "; ".join(done) or "nothing had been made in vCenter"


# --- deploy --------------------------------------------------------------------------------------------


def deploy(session: Session, request: DeployRequest, progress: Progress | None = None) -> Deployment:
    """Deploy an appliance as `request` says; see the module's documentation for the steps."""
    from pyVmomi import vim

    progress = progress or silent
    plan = make_plan(session, request, progress)
    _write_keys(plan, progress)
    operator = plan.operator
    with _Deferred() as interrupt:
        replaced = []  # --replace: the old VM goes first
        for v in plan.existing:
            progress(Step(f"replacing: powering off and destroying {v.name} ({v.id})"))
            interrupt.check()
            appl.destroy_vm(session, vim.VirtualMachine(v.id, session.stub), progress, interrupt.check)
            replaced.append(v.id)
        result = Deployment(
            vm=request.name,
            id="",
            host=plan.host,
            datastore=plan.datastore.name,
            network=plan.network.name if plan.network is not None else None,
            folder=plan.folder_path,
            gpus=plan.gpus,
            mmio_size_gib=plan.mmio,
            server_public_key=plan.settings.server_public_key,
            operator=OperatorKey(
                name=operator.client.name,
                public_key=operator.client.public_key,
                config=str(plan.operator_path),
                created=plan.operator_new,
            ),
            power_state="poweredOff",
            replaced=replaced,
            keys_out=str(request.keys_out) if request.keys_out else None,
            warnings=plan.warnings,
        )
        made = _Made()
        try:
            _make(session, plan, result, made, progress, interrupt.check)
        except KeyboardInterrupt:
            done = _cleanup(session, request.name, made, plan.known)
            raise Interrupted(f"interrupted: {done}") from None
        except BaseException as exc:
            done = _cleanup(session, request.name, made, plan.known)
            if isinstance(exc, RadiumError):
                exc.message = f"{exc.message} ({done})"
                exc.args = (exc.message,)
            raise

    if result.address is not None and (result.ready or not request.wait):
        entry = ApplianceEntry(
            name=plan.settings.name, address=result.address, public_key=plan.settings.server_public_key
        )
        result.operator.recorded = record_appliance(plan.operator_path, entry)
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
