"""The appliance image booted under qemu: the lab's appliance with `lab up --vm`, and the image's tests.

The disk of a built OVA (its stream-optimized VMDK, taken out once) boots under a
copy-on-write overlay of its own, with OVMF as the firmware (EFI, as on vSphere), the OVF
environment on a CD-ROM labelled "OVF ENV" (vSphere's ISO transport, which the first boot
reads), and user networking with radiumd's port and SSH's forwarded to loopback.  KVM where
it can run OVMF here; software emulation otherwise (some nested setups stop at OVMF's first
x87 instruction: KVM then reports an emulation failure and pauses the VM).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path

from radium.remoting import RadiumError

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "xorriso": "xorriso"}
_accel: tuple[str, list[str]] | None = None  # what `accel` found


class VmError(RadiumError):
    code = "vm"
    exit_code = 1


def missing() -> str | None:
    """Why no appliance VM can be booted here (None: it can)."""
    lacking = [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if not OVMF_CODE.exists():
        lacking.append(f"{OVMF_CODE} (Debian package ovmf)")
    return f"not installed: {', '.join(lacking)}" if lacking else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The CPU models tried under KVM, in order: the host's own, then the same without
# IA32_ARCH_CAPABILITIES, which a nested KVM on an AMD host refuses to set (qemu aborts:
# "failed to set MSR 0x10a"; the lab VM moved to such a host on 2026-12-06).
KVM_CPUS = ("host", "host,-arch-capabilities")
TCG = ["-accel", "tcg,thread=multi", "-cpu", "max"]
_KVM_REFUSALS = ("KVM internal error", "emulation failure", "failed to set MSR")


def accel(scratch: Path) -> tuple[str, list[str]]:
    """ "kvm" when KVM runs OVMF on this machine, else "tcg", with qemu's arguments for it (the
    first CPU model of KVM_CPUS that runs); asked once per process."""
    global _accel
    if _accel is None:
        usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
        model = next((m for m in KVM_CPUS if usable and _kvm_runs(scratch, m)), None)
        _accel = ("kvm", ["-accel", "kvm", "-cpu", model]) if model else ("tcg", TCG)
    return _accel


def _kvm_runs(scratch: Path, model: str) -> bool:
    vars_copy = scratch / ".probe-vars.fd"
    shutil.copy(OVMF_VARS, vars_copy)
    probe = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "kvm", "-cpu", model, "-m", "256", "-machine", "q35",
         "-display", "none", "-serial", "null", "-monitor", "none",
         "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
         "-drive", f"if=pflash,format=raw,file={vars_copy}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:  # an emulation failure pauses the VM (qemu stays up): its words tell
        said, _ = probe.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        probe.kill()
        said, _ = probe.communicate()
    vars_copy.unlink(missing_ok=True)
    return not any(refusal in said for refusal in _KVM_REFUSALS)


def extract_disk(ova: Path, into: Path) -> Path:
    """The OVA's VMDK, taken out into `into` (once: kept while the OVA is unchanged)."""
    try:
        with tarfile.open(ova) as tar:
            disks = [m for m in tar.getmembers() if m.name.endswith(".vmdk") and m.isfile()]
            if len(disks) != 1:
                raise VmError(f"{ova}: expected one .vmdk in the OVA, found {len(disks)}")
            target = into / "disk.vmdk"
            stamp = f"{ova.resolve()} {ova.stat().st_mtime_ns} {disks[0].size}"
            if (
                target.exists()
                and (into / "disk.from").exists()
                and (into / "disk.from").read_text() == stamp
            ):
                return target
            into.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(disks[0])
            assert source is not None
            with open(into / "disk.vmdk.partial", "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
    except (OSError, tarfile.TarError) as exc:
        raise VmError(f"{ova}: cannot read the appliance package: {exc}") from None
    os.replace(into / "disk.vmdk.partial", target)
    (into / "disk.from").write_text(stamp)
    return target


def environment_iso(where: Path, values: Mapping[str, str]) -> Path:
    """An OVF environment on a CD-ROM image, as vSphere's ISO transport makes it (0600: a secret is on it)."""
    from radium import appliance

    folder = where / "ovf-env"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o700)
    (folder / "ovf-env.xml").write_text(appliance.ovf_environment(values))
    iso = where / "ovf-env.iso"
    argv = ["xorriso", "-as", "mkisofs", "-quiet", "-V", "OVF ENV", "-J", "-R", "-o", str(iso), str(folder)]
    done = subprocess.run(argv, capture_output=True, text=True)
    shutil.rmtree(folder, ignore_errors=True)
    if done.returncode != 0:
        raise VmError(f"cannot make the OVF environment's CD-ROM: {done.stderr.strip()}")
    iso.chmod(0o600)
    return iso


class ApplianceVm:
    """One appliance VM: its overlay, firmware variables, ports, console log and process, in `directory`."""

    def __init__(self, directory: Path, disk: Path, *, memory_mib: int = 2048, cpus: int = 2) -> None:
        self.dir, self.disk = directory, disk
        self.memory_mib, self.cpus = memory_mib, cpus
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.overlay = self.dir / "disk.qcow2"
        self.serial = self.dir / "serial.log"
        self.state_file = self.dir / "vm.json"
        self.proc: subprocess.Popen | None = None
        state = self._state()
        self.radiumd_port: int = state.get("radiumd_port") or free_port()
        self.ssh_port: int = state.get("ssh_port") or free_port()

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def pid(self) -> int | None:
        """The qemu process of this VM, if it runs (also one started by another process)."""
        pid = self._state().get("pid")
        if not pid:
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"qemu-system" in cmdline and str(self.overlay).encode() in cmdline else None

    def start(self, iso: Path | None, *, detach: bool = False) -> ApplianceVm:
        """Boot it; `detach`: it outlives this process (the lab), its output going to the console log."""
        if not self.overlay.exists():
            argv = [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(self.disk),
                "-F",
                "vmdk",
                str(self.overlay),
            ]
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                raise VmError(f"cannot make the VM's disk overlay: {done.stderr.strip()}")
            shutil.copy(OVMF_VARS, self.dir / "vars.fd")
        kind, cpu = accel(self.dir)
        forward = f"hostfwd=tcp:127.0.0.1:{self.radiumd_port}-:7450,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"
        argv = [
            "qemu-system-x86_64", *cpu, "-m", str(self.memory_mib), "-smp", str(self.cpus), "-machine", "q35",
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={self.dir / 'vars.fd'}",
            "-drive", f"file={self.overlay},if=virtio,format=qcow2",
            "-netdev", f"user,id=n0,{forward}", "-device", "virtio-net-pci,netdev=n0",
            "-display", "none", "-serial", f"file:{self.serial}", "-monitor", "none",
            "-qmp", f"unix:{self.dir / 'qmp.sock'},server=on,wait=off",
        ]  # fmt: skip
        if iso is not None:
            argv += ["-drive", f"file={iso},media=cdrom,readonly=on"]
        self.serial.unlink(missing_ok=True)
        with open(self.dir / "qemu.log", "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=detach
            )
        state = {
            "pid": self.proc.pid,
            "radiumd_port": self.radiumd_port,
            "ssh_port": self.ssh_port,
            "accel": kind,
        }
        self.state_file.write_text(json.dumps(state) + "\n")
        return self

    @property
    def accel(self) -> str | None:
        return self._state().get("accel")

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid() is not None

    def console(self) -> str:
        """What the VM printed on its serial console so far."""
        return self.serial.read_text(errors="replace") if self.serial.exists() else ""

    def power_off(self, timeout: float = 180) -> None:
        """The ACPI power button, as "shut down guest" does; killed when it does not stop in time."""
        pid = self.proc.pid if self.proc is not None and self.proc.poll() is None else self.pid()
        if pid is None:
            return
        with contextlib.suppress(OSError):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(self.dir / "qmp.sock"))
                s.recv(4096)
                for command in ("qmp_capabilities", "system_powerdown"):
                    s.sendall(json.dumps({"execute": command}).encode() + b"\n")
                    s.recv(4096)
        deadline = time.monotonic() + timeout
        while self._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if self._alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        if self.proc is not None:
            self.proc.wait(30)

    def _alive(self, pid: int) -> bool:
        if self.proc is not None and self.proc.pid == pid:
            return self.proc.poll() is None
        return Path(f"/proc/{pid}").exists()
