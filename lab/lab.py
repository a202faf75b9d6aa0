"""The lab: a real appliance on this machine, and a vCenter around it, for the main job and for trying things.

`radium-admin lab up` makes a network namespace for the appliance, joined to
this machine's own namespace by a shaped veth pair, starts `radiumd` in it with
this machine's OpenCL devices, enrols a client and an operator key, and writes
a lab profile (client.toml, admin.toml) that `radium` and `radium-admin` use
when nothing else is configured.

It also builds (once) and starts the vCenter simulator (`radium.vcenter.sim`)
as a background process, writes a vCenter profile for it (vcenter.toml, with its
CA and a password file, 0600) that `radium-admin` uses when no other vCenter is
configured, and registers the lab's radiumd as the appliance of one simulated
host: a powered-on VM `lab-appliance` with that host's first free GPU passed
through, its memory reservation locked, the guestinfo keys, the
`radium.appliance` attribute, and the lab radiumd's address as its guest IP, so
that `radium-admin appliance list|status` show it.  Without Go and govmomi's
source (`radium.vcenter.sim.missing()`), the lab runs without the simulator and
says why.  `lab down` undoes all of it.

With `lab up --vm OVA`, the appliance is the real image instead (`vm.py`): the OVA's disk
booted under qemu, configured by its own first boot from an OVF environment on a CD-ROM
(the lab's keys), radiumd reached on a forwarded loopback port.

Every piece is idempotent: `lab up` starts what is not running and keeps what is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from radium.remoting import (
    ApplianceEntry,
    KeyPair,
    RadiumError,
    enroll,
    enroll_many,
    lab_profile_dir,
    list_devices,
    load_client_config,
    load_keypair,
    new_identity,
    save_client_config,
    write_atomic,
)

from . import netns
from . import vm as vms

# One lab per machine by default; RADIUM_LAB_NAMESPACE / RADIUM_LAB_SUBNET make another
# (the tests use that, so that they never touch an operator's running lab).
NAMESPACE = "radium-lab"
SUBNET = 255  # 10.231.SUBNET.0/24; the test topologies use 1-254
PORT = 7450
METRICS_PORT = 9450
APPLIANCE_NAME = "lab-appliance"
VCENTER_PROFILE = "lab"
VCENTER_USER = "lab@vsphere.local"
#: The simulated estate: cluster DC0_C0 (hosts DC0_C0_H0 NVIDIA, DC0_C0_H1 AMD), standalone DC0_H0.
VCSIM_ARGS = ["-clusters=1", "-hosts-per-cluster=2", "-standalone-hosts=1", "-gpus-per-host=4", "-vms=1"]


class LabError(RadiumError):
    code = "lab"
    exit_code = 1


def lab_dir() -> Path:
    return lab_profile_dir()


@dataclass
class LabStatus:
    up: bool
    directory: str
    pid: int | None = None
    address: str | None = None
    metrics: str | None = None
    client_config: str | None = None
    admin_config: str | None = None
    devices: list[str] | None = None
    error: str | None = None
    vcenter: str | None = None  #: the simulator's SDK URL
    vcenter_pid: int | None = None
    vcenter_profile: str | None = None  #: the profile file radium-admin falls back to
    appliance_vm: str | None = None  #: "lab-appliance on HOST (GPU)" as vCenter has it
    vm: str | None = None  #: with `lab up --vm`: the qemu VM that is the appliance
    vcenter_error: str | None = None  #: why the simulator or the registration is missing
    vcenter_unavailable: str | None = None  #: the simulator cannot be built here (not an error)

    @property
    def healthy(self) -> bool:
        """radiumd is up and answers, and the simulator, where it can run, runs with its appliance VM."""
        return self.up and self.error is None and self.vcenter_error is None


class Lab:
    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or lab_dir()
        self.namespace = os.environ.get("RADIUM_LAB_NAMESPACE", NAMESPACE)
        subnet = int(os.environ.get("RADIUM_LAB_SUBNET", SUBNET))
        self.host_address = f"10.231.{subnet}.1"
        self.address = f"10.231.{subnet}.2"
        self.root_if, self.lab_if = f"rdmlab{subnet}a", f"rdmlab{subnet}b"
        self.config_path = self.dir / "radiumd.toml"
        self.client_path = self.dir / "client.toml"
        self.admin_path = self.dir / "admin.toml"
        self.pid_path = self.dir / "radiumd.pid"
        self.log_path = self.dir / "radiumd.log"
        self.vcsim_dir = self.dir / "vcsim"
        self.vcsim_pid_path = self.dir / "vcsim.pid"
        self.vcsim_log_path = self.dir / "vcsim.log"
        self.vcsim_url_path = self.dir / "vcsim.url"
        self.vcsim_ca_path = self.dir / "vcsim-ca.pem"
        self.vcsim_password_path = self.dir / "vcsim.password"
        self.vcenter_profile_path = self.dir / "vcenter.toml"
        self.vm_dir = self.dir / "vm"  # `lab up --vm`: the appliance VM's overlay, console, ports
        self._vcenter_failure: str | None = None  # why `up` could not start the simulator

    # --- state --------------------------------------------------------------

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"radium.remoting.daemon" in cmdline else None

    def vcsim_pid(self) -> int | None:
        try:
            pid = int(self.vcsim_pid_path.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"radium-vcsim" in cmdline else None

    def machine(self) -> vms.ApplianceVm | None:
        """The lab's appliance VM (`lab up --vm`), when it runs."""
        if not (self.vm_dir / "vm.json").exists():
            return None
        machine = vms.ApplianceVm(self.vm_dir, self.dir / "image" / "disk.vmdk")
        return machine if machine.pid() is not None else None

    def status(self) -> LabStatus:
        machine = self.machine()
        pid = machine.pid() if machine else self.pid()
        st = LabStatus(up=pid is not None, directory=str(self.dir), pid=pid)
        self._vcenter_status(st)
        if pid is None:
            return st
        if machine is not None:
            st.address = f"tcp://127.0.0.1:{machine.radiumd_port}"
            st.vm = f"qemu pid {pid} ({machine.accel}), console {machine.serial} (no SSH: given no key)"
        else:
            st.address = f"tcp://{self.address}:{PORT}"
            st.metrics = f"http://{self.address}:{METRICS_PORT}/metrics"
        st.client_config, st.admin_config = str(self.client_path), str(self.admin_path)
        try:
            config = load_client_config(self.client_path)
            (result,) = asyncio.run(list_devices(config))
            if result.error is not None:
                raise result.error
            assert result.value is not None
            st.devices = [f"{d.device.id} {d.device.model}" for d in result.value.devices]
        except RadiumError as exc:
            st.error = str(exc)
        return st

    # --- up and down ----------------------------------------------------------

    def up(
        self, timeout: float = 60.0, vm: Path | None = None, progress: Callable[[str], None] = lambda _: None
    ) -> LabStatus:
        """Start what is not running; `vm`: the appliance is that OVA's image, booted under qemu."""
        if vm is not None:
            if self.pid() is not None:
                raise LabError(
                    "the lab's radiumd runs in its network namespace: `radium-admin lab down` first, "
                    "then `lab up --vm`"
                )
            if self.machine() is None:
                self._up_vm(Path(vm), timeout, progress)
        elif self.machine() is None and self.pid() is None:
            self._up_radiumd(timeout)
        self._up_vcenter()
        return self.status()

    def _up_vm(self, ova: Path, timeout: float, progress: Callable[[str], None]) -> None:
        """Boot the image of `ova` as the lab's appliance, with keys made now, and enrol the lab's client."""
        reason = vms.missing()
        if reason:
            raise LabError(f"lab up --vm: {reason}")
        if not ova.is_file():
            raise LabError(
                f"{ova}: no appliance package there: build one (as root) with "
                "`radium-admin appliance build --with-pocl`, or give its path: `lab up --vm FILE.ova`"
            )
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.rmtree(self.vm_dir, ignore_errors=True)  # a new appliance each time
        progress(f"taking the disk out of {ova}")
        disk = vms.extract_disk(ova, self.dir / "image")  # kept while the OVA is the same
        server, admin = KeyPair.generate(), new_identity("lab-admin")
        assert server.secret is not None
        self.vm_dir.mkdir(mode=0o700)
        iso = vms.environment_iso(
            self.vm_dir,
            {
                "radium.name": APPLIANCE_NAME,
                "radium.server_secret_key": server.secret,
                "radium.admin_public_key": admin.client.public_key,
                "radium.admin_name": "lab-admin",
            },
        )
        machine = vms.ApplianceVm(self.vm_dir, disk).start(iso, detach=True)
        how = (
            "with KVM" if machine.accel == "kvm" else "emulated (no KVM that runs OVMF here): about a minute"
        )
        progress(f"booting the appliance image under qemu, {how}; its console: {machine.serial}")
        entry = ApplianceEntry(
            name=APPLIANCE_NAME, address=f"tcp://127.0.0.1:{machine.radiumd_port}", public_key=server.public
        )
        admin.appliances = [entry]
        save_client_config(admin, self.admin_path)
        (self.vm_dir / "server.key.public").write_text(server.public + "\n")
        # Booting takes a minute emulated: wait for its radiumd to take the lab's client key.
        deadline = time.monotonic() + max(timeout, 600.0)
        while True:
            try:
                client = enroll_many(admin, [entry], new_identity("lab-client"))
                break
            except RadiumError as exc:
                if not machine.running() or time.monotonic() > deadline:
                    console = machine.console()[-2000:]
                    machine.power_off(30)
                    raise LabError(
                        f"the appliance VM did not answer ({exc.message}); its console ends:\n{console}"
                    ) from None
                time.sleep(2)
        iso.unlink()  # the VM has read it (and ejected it): the secret key stays only in the VM
        save_client_config(client, self.client_path)
        progress(f"radiumd of the appliance VM answers at {entry.address}; lab-client enrolled")

    def _up_radiumd(self, timeout: float) -> None:
        ok, why = netns.can_create_namespaces(need_tc=True)
        if not ok:
            raise LabError(f"the lab needs a network namespace, and {why}: run it as root")
        self._teardown_network()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._make_network()
        self._write_config()
        for name in ("lab-client", "lab-admin"):
            (self.dir / "clients.d" / f"{name}.key").unlink(missing_ok=True)
        address = f"tcp://{self.address}:{PORT}"
        enroll("lab-client", str(self.config_path), address=address, output=self.client_path)
        enroll("lab-admin", str(self.config_path), role="admin", address=address, output=self.admin_path)
        self._start_daemon(timeout)

    def down(self) -> bool:
        machine = self.machine()
        if machine is not None:
            machine.power_off(60)
        shutil.rmtree(self.vm_dir, ignore_errors=True)
        pid = self.pid()
        if pid is not None:
            _stop(pid, self.pid)
        self.pid_path.unlink(missing_ok=True)
        self._teardown_network()
        sim_pid = self.vcsim_pid()
        if sim_pid is not None:
            _stop(sim_pid, self.vcsim_pid)
        for path in (
            self.vcsim_pid_path,
            self.vcsim_url_path,
            self.vcenter_profile_path,
            self.vcsim_password_path,
            self.vcsim_ca_path,
        ):
            path.unlink(missing_ok=True)
        return pid is not None or sim_pid is not None or machine is not None

    # --- the vCenter simulator ---------------------------------------------------

    def _up_vcenter(self) -> None:
        from radium.vcenter import sim

        if sim.missing():
            return  # status() says why
        try:
            if self.vcsim_pid() is None:
                self._start_vcsim(sim.build())
            self._register_appliance()
        except (sim.VcsimUnavailable, sim.VcsimError, RadiumError, OSError) as exc:
            # radiumd serves without it; status() reports what went wrong
            self._vcenter_failure = getattr(exc, "message", None) or str(exc)

    def _start_vcsim(self, binary: Path, timeout: float = 30.0) -> None:
        self.vcsim_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in (self.vcsim_url_path, self.vcsim_ca_path):
            path.unlink(missing_ok=True)
        password = secrets.token_urlsafe(18)
        write_atomic(self.vcsim_password_path, password + "\n", 0o600)
        args = [
            str(binary),
            *VCSIM_ARGS,
            f"-url-file={self.vcsim_url_path}",
            f"-ca-file={self.vcsim_ca_path}",
            f"-username={VCENTER_USER}",
            f"-password={password}",
        ]
        with open(self.vcsim_log_path, "ab") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.vcsim_dir,
                start_new_session=True,  # outlives `radium-admin lab up`; `lab down` stops it
            )
        write_atomic(self.vcsim_pid_path, str(proc.pid), 0o644)
        deadline = time.monotonic() + timeout
        while not self.vcsim_url_path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                tail = self.vcsim_log_path.read_text(errors="replace")[-2000:]
                raise LabError(
                    f"the vCenter simulator did not start (exit {proc.poll()}); its log ends:\n{tail}"
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.02)
        parts = urlsplit(self.vcsim_url_path.read_text().strip())
        from radium import vcenter

        self.vcenter_profile_path.unlink(missing_ok=True)
        vcenter.write_profile(
            VCENTER_PROFILE,
            vcenter.Profile(
                url=f"https://{parts.hostname}:{parts.port}/sdk",
                user=VCENTER_USER,
                ca=str(self.vcsim_ca_path),
                password_file=str(self.vcsim_password_path),
            ),
            default=True,
            path=self.vcenter_profile_path,
        )

    def vcenter_settings(self):  # type: ignore[no-untyped-def]
        """Settings for the lab's simulator (from the lab profile, whatever the environment says)."""
        from radium import vcenter

        return vcenter.resolve(profile=VCENTER_PROFILE, profiles_file=self.vcenter_profile_path, env={})

    def _register_appliance(self) -> None:
        """Make the VM `lab-appliance` stand for the lab's radiumd in the simulator (once)."""
        from radium import vcenter

        with vcenter.connect(self.vcenter_settings()) as vc:
            if any(a.vm == APPLIANCE_NAME for a in vcenter.list_appliances(vc)):
                return
            machine = self.machine()
            if machine is not None:
                address, port = "127.0.0.1", machine.radiumd_port
                server_public = (self.vm_dir / "server.key.public").read_text().strip()
            else:
                address, port = self.address, PORT
                server_public = load_keypair(self.dir / "state" / "server.key").public
            vcenter.register_standin(
                vc,
                name=APPLIANCE_NAME,
                address=address,
                port=port,
                server_public_key=server_public,
                admin=load_client_config(self.admin_path),
            )

    def _vcenter_status(self, st: LabStatus) -> None:
        from radium.vcenter import sim

        missing = sim.missing()
        if missing:
            st.vcenter_unavailable = "the vCenter simulator cannot be built here: " + "; ".join(missing)
            return
        st.vcenter_pid = self.vcsim_pid()
        if self._vcenter_failure:
            st.vcenter_error = self._vcenter_failure
            return
        if st.vcenter_pid is None:
            if st.up:
                st.vcenter_error = "the vCenter simulator is not running (radium-admin lab up starts it)"
            return
        st.vcenter_profile = str(self.vcenter_profile_path)
        try:
            from radium import vcenter

            settings = self.vcenter_settings()
            st.vcenter = settings.url
            with vcenter.connect(settings) as vc:
                a = vcenter.find_appliance(vc, APPLIANCE_NAME)
            gpus = ", ".join(g.address for g in a.gpus)
            st.appliance_vm = f"{a.vm} on {a.host} ({gpus}), {a.power_state}, {a.address}"
        except RadiumError as exc:
            st.vcenter_error = exc.message

    # --- the pieces -----------------------------------------------------------

    def _make_network(self) -> None:
        run = netns._run_ip
        run(["ip", "netns", "add", self.namespace])
        run(
            [
                "ip",
                "link",
                "add",
                self.root_if,
                "mtu",
                "1500",
                "type",
                "veth",
                "peer",
                "name",
                self.lab_if,
                "netns",
                self.namespace,
                "mtu",
                "1500",
            ]
        )
        run(["ip", "addr", "add", f"{self.host_address}/24", "dev", self.root_if])
        run(["ip", "link", "set", self.root_if, "up"])
        run(["ip", "-n", self.namespace, "addr", "add", f"{self.address}/24", "dev", self.lab_if])
        run(["ip", "-n", self.namespace, "link", "set", self.lab_if, "up"])
        run(["ip", "-n", self.namespace, "link", "set", "lo", "up"])
        for prefix in ([], ["-n", self.namespace]):
            dev = self.lab_if if prefix else self.root_if
            run(
                [
                    "tc",
                    *prefix,
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    *netns.shaper(),
                ]
            )

    def _teardown_network(self) -> None:
        subprocess.run(["ip", "link", "del", self.root_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, check=False)

    def _write_config(self) -> None:
        text = f"""# radiumd of the Radium lab (written by `radium-admin lab up`)
[server]
name = "{APPLIANCE_NAME}"
listen = "tcp://{self.address}:{PORT}"
state_dir = "state"
clients_dir = "clients.d"
admins_dir = "admins.d"

[metrics]
listen = "{self.address}:{METRICS_PORT}"

[log]
format = "json"
"""
        write_atomic(self.config_path, text, 0o644)

    def _start_daemon(self, timeout: float) -> None:
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.namespace,
                    sys.executable,
                    "-m",
                    "radium.remoting.daemon",
                    "--config",
                    str(self.config_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        write_atomic(self.pid_path, str(proc.pid), 0o644)
        config = load_client_config(self.client_path)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                self._teardown_network()
                raise LabError(f"radiumd exited with {proc.returncode}; its log ends:\n{tail}")
            (result,) = asyncio.run(list_devices(config, timeout=1.0))
            if result.error is None:
                return
            if time.monotonic() > deadline:
                self.down()
                raise LabError(f"radiumd did not answer within {timeout:g}s: {result.error}")


def _stop(pid: int, alive) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM a process that is not our child, then SIGKILL after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while alive() is not None and time.monotonic() < deadline:
        time.sleep(0.05)  # not our child: nothing to wait on but /proc
    if alive() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
