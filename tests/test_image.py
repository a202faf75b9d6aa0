"""The appliance image: built from this checkout, booted under qemu, proven to become an appliance.

`radium-admin appliance build --with-pocl` makes the OVA (Debian's archive through mmdebstrap,
the package cache kept between builds); its disk boots under qemu with OVMF (EFI), KVM where
it can run OVMF, software emulation otherwise.  The OVF environment reaches the VM the way
vSphere's ISO transport hands it: an `ovf-env.xml` on a CD-ROM labelled "OVF ENV".  With
user networking and forwarded ports, the host then checks what an operator relies on.

Slow: a build (about 2 minutes), a second one from the cache, and three boots (about a
minute each emulated).  `./dev test-image` runs this file alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import zmq

from radium.appliance import ovf
from radium.remoting import VERSION, ApplianceEntry, ClientConfig, ClientSection, save_client_config

pytestmark = pytest.mark.timeout(2400)

BIN = Path(sys.executable).parent
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
TOOLS = ("mmdebstrap", "qemu-system-x86_64", "qemu-img", "xorriso", "mkfs.vfat", "mcopy", "sfdisk", "ssh")


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mmdebstrap makes the image's files with their owners)"
    lacking = [t for t in TOOLS if shutil.which(t) is None] + [str(p) for p in (OVMF_CODE,) if not p.exists()]
    if lacking:
        return f"not installed: {', '.join(lacking)} (./dev setup installs them)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(output: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    argv = [str(BIN / "radium-admin"), "appliance", "build", "--output", str(output), "--with-pocl", "--json"]
    out = subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    return out, json.loads(out.stdout)


def members(ova: Path) -> list[str]:
    with tarfile.open(ova) as tar:
        return tar.getnames()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    reason = missing()
    if reason:
        pytest.skip(reason)
    where = tmp_path_factory.mktemp("image")
    ova = where / "radium-appliance.ova"
    out, done = build(ova)
    with tarfile.open(ova) as tar:
        [disk] = [m for m in tar.getmembers() if m.name.endswith(".vmdk")]
        tar.extract(disk, where, filter="data")
    return {"ova": ova, "vmdk": where / disk.name, "build": done, "progress": out.stderr, "dir": where}


def test_the_build_makes_a_small_valid_ova_step_by_step(image):
    ova, done = image["ova"], image["build"]
    assert ovf.validate_package(ova) == []
    assert members(ova) == ["radium-appliance.ovf", "radium-appliance.mf", "radium-appliance-disk1.vmdk"]
    assert done["size"] == ova.stat().st_size < 600_000_000  # with PoCL, without GPU drivers
    assert done["version"] == VERSION and done["packages"] > 100
    steps = ["tools", "wheels", "system", "radium", "hooks", "disk", "vmdk", "ova"]
    assert list(done["steps"]) == steps
    for n, _ in enumerate(steps, 1):
        assert f"[{n}/8] done in" in image["progress"]
    descriptor = ovf.read_descriptor(ova)
    vmdk_size = image["vmdk"].stat().st_size
    assert f'ovf:size="{vmdk_size}"' in descriptor and 'ovf:capacity="16"' in descriptor
    assert "com.vmware.guestInfo iso" in descriptor
    assert not list(image["dir"].glob(".radium-build-*"))  # the work folder is gone


def test_a_bad_build_request_fails_at_once_and_leaves_nothing(tmp_path):
    if missing():
        pytest.skip(missing())
    argv = [str(BIN / "radium-admin"), "appliance", "build", "--output", str(tmp_path / "x.ova")]
    out = subprocess.run([*argv, "--suite", "buster", "--disk-size", "2", "--extra-packages", "Bad_Name"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode != 0 and "Traceback" not in out.stderr
    for said in ("--suite buster", "--disk-size 2", "'Bad_Name' is not a Debian package name"):
        assert said in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_second_build_reuses_the_package_cache_and_keeps_the_layout(image):
    ova = image["dir"] / "again" / "radium-appliance.ova"
    ova.parent.mkdir()
    _, done = build(ova)
    first = image["build"]
    assert done["reused_packages"] == done["packages"] == first["packages"]  # nothing downloaded again
    assert members(ova) == members(image["ova"])

    def layout(path: Path) -> str:  # the descriptor but the disk's compressed size
        text = ovf.read_descriptor(path)
        return text.replace(f'ovf:size="{_file_size(text)}"', "")

    assert layout(ova) == layout(image["ova"])
    with tarfile.open(ova) as tar:
        manifest = tar.extractfile("radium-appliance.mf").read().decode()  # type: ignore[union-attr]
    assert [line.split("=")[0] for line in manifest.splitlines()] == [
        "SHA256(radium-appliance.ovf)",
        "SHA256(radium-appliance-disk1.vmdk)",
    ]


def _file_size(descriptor: str) -> str:
    import re

    return re.search(r'ovf:size="(\d+)"', descriptor).group(1)  # type: ignore[union-attr]


# --- booting it -------------------------------------------------------------------------------------


class Vm:
    """The image's disk (under a copy-on-write overlay of its own) booted under qemu with OVMF."""

    accel: str | None = None  # decided once: "kvm" when KVM runs OVMF here, else "tcg"

    def __init__(self, where: Path, vmdk: Path, iso: Path | None) -> None:
        self.where, self.iso = where, iso
        where.mkdir(exist_ok=True)
        self.overlay = where / "disk.qcow2"
        if not self.overlay.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(vmdk), "-F", "vmdk",
                            str(self.overlay)], check=True)  # fmt: skip
            shutil.copy(OVMF_VARS, where / "vars.fd")
        self.radiumd, self.ssh_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.serial = where / "serial.log"

    @classmethod
    def choose_accel(cls, where: Path) -> str:
        """KVM, unless it cannot run OVMF here (some nested setups stop at OVMF's first x87 instruction)."""
        if cls.accel is None:
            cls.accel = "tcg"
            if os.access("/dev/kvm", os.R_OK | os.W_OK):
                shutil.copy(OVMF_VARS, where / "probe-vars.fd")
                probe = subprocess.Popen(
                    ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-machine", "q35",
                     "-display", "none", "-serial", "null", "-monitor", "none",
                     "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,file={where / 'probe-vars.fd'}"],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                )  # fmt: skip
                try:
                    said, _ = probe.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    probe.kill()
                    probe.communicate()
                    cls.accel = "kvm"  # still running OVMF after 5 s
                else:
                    print(f"KVM cannot run OVMF here, emulating: {said.strip().splitlines()[:1]}")
        return cls.accel

    def start(self) -> Vm:
        accel = self.choose_accel(self.where)
        cpu = (
            ["-accel", "kvm", "-cpu", "host"]
            if accel == "kvm"
            else ["-accel", "tcg,thread=multi", "-cpu", "max"]
        )
        argv = [
            "qemu-system-x86_64", *cpu, "-m", "2048", "-smp", "2", "-machine", "q35",
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={self.where / 'vars.fd'}",
            "-drive", f"file={self.overlay},if=virtio,format=qcow2",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.radiumd}-:7450,"
                       f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
            "-device", "virtio-net-pci,netdev=n0",
            "-display", "none", "-serial", f"file:{self.serial}",
            "-qmp", f"unix:{self.where / 'qmp.sock'},server=on,wait=off",
        ]  # fmt: skip
        if self.iso is not None:
            argv += ["-drive", f"file={self.iso},media=cdrom,readonly=on"]
        self.serial.unlink(missing_ok=True)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return self

    def log(self) -> str:
        return self.serial.read_text(errors="replace") if self.serial.exists() else ""

    def wait_for(self, ready, what: str, timeout: float = 420) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc is not None
            if self.proc.poll() is not None:
                said = self.proc.stdout.read() if self.proc.stdout else ""
                pytest.fail(f"qemu stopped: {said}\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not after {timeout:.0f} s; the console:\n{self.log()[-4000:]}")
            time.sleep(1)

    def ssh(self, key: Path, command: str, *options: str) -> subprocess.CompletedProcess:
        argv = ["ssh", "-i", str(key), "-p", str(self.ssh_port), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20", "-o", "BatchMode=yes",
                *options, "root@127.0.0.1", command]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    def power_off(self) -> None:
        """ACPI power button, as an operator's "shut down guest"; killed if it does not stop."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(self.where / "qmp.sock"))
                s.recv(4096)
                for cmd in ("qmp_capabilities", "system_powerdown"):
                    s.sendall(json.dumps({"execute": cmd}).encode() + b"\n")
                    s.recv(4096)
            self.proc.wait(180)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(30)


def environment_iso(where: Path, values: dict[str, str]) -> Path:
    """An OVF environment on a CD-ROM, as vSphere's ISO transport makes it."""
    folder = where / "ovf-env"
    folder.mkdir(parents=True)
    (folder / "ovf-env.xml").write_text(ovf.environment(values))
    iso = where / "ovf-env.iso"
    argv = ["xorriso", "-as", "mkisofs", "-quiet", "-V", "OVF ENV", "-J", "-R", "-o", str(iso), str(folder)]
    subprocess.run(argv, check=True, capture_output=True)
    return iso


class Operator:
    """The operator's side: a configuration naming the VM's forwarded radiumd, and the commands."""

    def __init__(self, where: Path, admin: tuple[str, str], server_public: str) -> None:
        self.where, self.admin, self.server_public = where, admin, server_public
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RADIUM_")}
        self.env.update(
            RADIUM_ADMIN_CONFIG=str(where / "ops.toml"),
            RADIUM_CONFIG=str(where / "c1.toml"),
            RADIUM_STATE_DIR=str(where / "state"),
        )

    def trust(self, vm: Vm, server_key: str | None = None, admin: tuple[str, str] | None = None) -> None:
        public, secret = admin or self.admin
        entry = ApplianceEntry(
            name="qemu1", address=f"tcp://127.0.0.1:{vm.radiumd}", public_key=server_key or self.server_public
        )
        client = ClientSection(name="ops", public_key=public, secret_key=secret)
        save_client_config(ClientConfig(client=client, appliances=[entry]), self.where / "ops.toml")

    def enroll(self, name: str) -> subprocess.CompletedProcess:
        argv = [
            str(BIN / "radium-admin"),
            "enroll",
            name,
            "--appliance",
            "qemu1",
            "-o",
            str(self.where / f"{name}.toml"),
        ]
        return subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=60)

    def radium(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        argv = [str(BIN / "radium"), *args]
        return subprocess.run(argv, capture_output=True, text=True, env=self.env, cwd=cwd, timeout=300)


def test_the_image_boots_into_an_appliance_from_its_ovf_environment(image, tmp_path):
    server_public, server_secret = (k.decode() for k in zmq.curve_keypair())
    admin = tuple(k.decode() for k in zmq.curve_keypair())
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True)
    key = tmp_path / "id"
    values = {
        "radium.name": "qemu1",
        "radium.server_secret_key": server_secret,
        "radium.admin_public_key": admin[0],
        "radium.admin_name": "ops",
        "radium.ssh_authorized_keys": (tmp_path / "id.pub").read_text().strip(),
    }
    ops = Operator(tmp_path, admin, server_public)  # type: ignore[arg-type]
    vm = Vm(tmp_path / "vm1", image["vmdk"], environment_iso(tmp_path / "env", values)).start()
    try:
        ops.trust(vm)
        vm.wait_for(lambda: ops.enroll("c1").returncode == 0, "radiumd answering the operator key")
        # The operator key from the environment enrolled c1: it sees the image's PoCL device, and a
        # program it carries runs on the appliance's kernel.
        gpus = ops.radium("list-gpus", "--json")
        assert gpus.returncode == 0 and "pthread" in gpus.stdout and "qemu1" in gpus.stdout, gpus.stderr
        (tmp_path / "work").mkdir()
        ran = ops.radium("run", "--", "uname", "-a", cwd=tmp_path / "work")
        release = vm.ssh(key, "uname -r")
        assert ran.returncode == 0 and release.returncode == 0, ran.stderr + release.stderr
        assert ran.stdout.split()[:3] == ["Linux", "qemu1", release.stdout.strip()]
        assert release.stdout.strip() != os.uname().release  # the appliance's kernel, not this machine's

        # An unknown operator key is refused, and so is a server that is not the one expected.
        ops.trust(vm, admin=tuple(k.decode() for k in zmq.curve_keypair()))  # type: ignore[arg-type]
        assert ops.enroll("c2").returncode != 0 and not (tmp_path / "c2.toml").exists()
        ops.trust(vm, server_key=zmq.curve_keypair()[0].decode())
        wrong = ops.enroll("c2")
        assert wrong.returncode != 0 and "public key" in wrong.stderr, wrong.stderr
        ops.trust(vm)

        # SSH: the key from the environment, never a password; no password anywhere.
        inside = vm.ssh(
            key,
            "cut -d: -f2 /etc/shadow | sort -u;"
            " sshd -T | grep -E '^(passwordauthentication|permitrootlogin) ';"
            " cat /usr/lib/radium/image.json; ls /etc/ssh/",
        )
        assert inside.returncode == 0, inside.stderr
        hashes, _, rest = inside.stdout.partition("passwordauthentication")
        assert set(hashes.split()) <= {"*", "!", "!*"}, hashes  # every account locked
        assert (
            "passwordauthentication no" in inside.stdout
            and "permitrootlogin without-password" in inside.stdout
        )
        record = json.loads(rest[rest.index("{") : rest.rindex("}") + 1])
        assert record["radium"] == VERSION and record["with_pocl"] and len(record["packages"]) > 100
        assert "ssh_host_ed25519_key" in inside.stdout  # made on this appliance at its first start
        password = vm.ssh(key, "true", "-o", "PreferredAuthentications=password,keyboard-interactive")
        assert password.returncode != 0 and "Permission denied" in password.stderr

        # The secret key is no longer readable from the environment: the CD-ROM was ejected.
        cd = vm.ssh(
            key, f"head -c 2048 /dev/sr0 >/dev/null; grep -rlF '{server_secret}' /etc /root /var/log; true"
        )
        assert "No medium found" in cd.stderr, cd.stderr
        assert cd.stdout.strip() == "", cd.stdout  # nowhere but in radiumd's key file
        journal = vm.ssh(key, f"journalctl -b --no-pager | grep -cF '{server_secret}'; true")
        assert journal.stdout.strip() == "0"

        # A second boot (vSphere hands the environment again) keeps the keys and configures nothing anew.
        vm.power_off()
        vm.start()  # the same forwarded ports: c1's bundle names them
        vm.wait_for(lambda: ops.radium("list-gpus").returncode == 0, "radiumd after the second boot")
        again = vm.ssh(key, "journalctl -b -u radium-firstboot -o cat --no-pager; head -c 1 /dev/sr0")
        assert "already configured" in again.stdout and "ejected" in again.stdout
        assert "No medium found" in again.stderr
    finally:
        vm.power_off()

    # Deployed with no SSH key: SSH is off.
    del values["radium.ssh_authorized_keys"]
    bare = Vm(tmp_path / "vm2", image["vmdk"], environment_iso(tmp_path / "env2", values)).start()
    try:
        ops.trust(bare)
        bare.wait_for(lambda: ops.enroll("c3").returncode == 0, "radiumd of the appliance without SSH keys")
        refused = bare.ssh(key, "true")
        assert refused.returncode == 255, refused.stderr
        assert "Permission denied" not in refused.stderr  # no sshd at all, not a refused key
    finally:
        bare.power_off()
