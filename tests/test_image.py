"""The appliance image: built from this checkout, booted under qemu, proven to become an appliance.

`radium-admin appliance build --with-pocl` makes the OVA (Debian's archive through mmdebstrap,
the package cache kept between builds); its disk boots under qemu with OVMF (EFI), KVM where
it can run OVMF, software emulation otherwise.  The OVF environment reaches the VM the way
vSphere's ISO transport hands it: an `ovf-env.xml` on a CD-ROM labelled "OVF ENV".  With
user networking and forwarded ports, the host then checks what an operator relies on.

Slow: a build (about 2 minutes), a second one from the cache, and three boots (about a
minute each emulated): one with an SSH key, its second boot, and the lab's (no SSH key).
`./dev test-image` runs this file alone, the second build too (`./dev test` leaves it out, to
stay within 20 minutes); with RADIUM_TEST_IMAGE=FILE.ova it boots that image instead of
building one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import zmq
from test_run_devices import PROBE

from radium.appliance import ovf
from radium.lab.vm import ApplianceVm, environment_iso
from radium.lab.vm import missing as vm_missing
from radium.remoting import VERSION, ApplianceEntry, ClientConfig, ClientSection, save_client_config

pytestmark = pytest.mark.timeout(2400)

BIN = Path(sys.executable).parent
TOOLS = ("mmdebstrap", "qemu-system-x86_64", "qemu-img", "xorriso", "mkfs.vfat", "mcopy", "sfdisk", "ssh")


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mmdebstrap makes the image's files with their owners)"
    lacking = [t for t in TOOLS if shutil.which(t) is None]
    if lacking:
        return f"not installed: {', '.join(lacking)} (./dev setup installs them)"
    return vm_missing()


HOOK = '#!/bin/sh\nset -e\necho "added by a hook" > "$1/etc/radium-hook-ran"\n'


def build(output: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`appliance build --with-pocl` with one hook (what a driver hook would be), as JSON."""
    hook = output.parent / "mark-hook.sh"
    hook.write_text(HOOK)
    hook.chmod(0o755)
    argv = [str(BIN / "radium-admin"), "appliance", "build", "--output", str(output), "--with-pocl", "--json"]
    argv += ["--hook", str(hook)]
    out = subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    return out, json.loads(out.stdout)


def members(ova: Path) -> list[str]:
    with tarfile.open(ova) as tar:
        return tar.getnames()


SLOW = os.environ.get("RADIUM_TEST_SLOW") == "1"  # set by ./dev test-image


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    reason = missing()
    if reason:
        pytest.skip(reason)
    given = os.environ.get("RADIUM_TEST_IMAGE")  # an OVA built before: boot tests only
    if not (SLOW or given):
        # Seven minutes on these machines: more than the whole suite may spend beside the rest.
        pytest.skip("the image's build and boots (7-10 minutes) run in ./dev test-image, not ./dev test")
    where = tmp_path_factory.mktemp("image")
    if given:
        ova, out, done = Path(given), None, None
    else:
        ova = where / "radium-appliance.ova"
        out, done = build(ova)
    with tarfile.open(ova) as tar:
        [disk] = [m for m in tar.getmembers() if m.name.endswith(".vmdk")]
        tar.extract(disk, where, filter="data")
    return {
        "ova": ova,
        "vmdk": where / disk.name,
        "build": done,
        "progress": out and out.stderr,
        "dir": where,
    }


def built_here(image: dict) -> None:
    if image["build"] is None:
        pytest.skip("RADIUM_TEST_IMAGE gave the image: its build is not tested")


# radium's uid; radiumd's ids and capabilities; "UID COMM" of its fork server and supervisors.
WHO_RUNS_RADIUMD = r"""
id -u radium
pid=$(systemctl show -p MainPID --value radiumd)
grep -E '^(Uid|CapEff):' /proc/$pid/status
for p in /proc/[0-9]*; do
  c=$(cat $p/comm 2>/dev/null)
  case $c in radium-forksrv|radium-sup) echo "$(awk '/^Uid:/ {print $2}' $p/status) $c";; esac
done | sort -u
"""


def test_the_build_makes_a_small_valid_ova_step_by_step(image):
    built_here(image)
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
    if not SLOW:
        pytest.skip("the second build (about 2 minutes) runs in ./dev test-image, not in ./dev test")
    built_here(image)
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


class Vm(ApplianceVm):
    """The image's disk booted under qemu (`radium.lab.vm`, as `lab up --vm` boots it); the test's waits."""

    def __init__(self, where: Path, vmdk: Path, iso: Path | None) -> None:
        super().__init__(where, vmdk)
        self.iso = iso

    def start(self) -> Vm:  # type: ignore[override]
        super().start(self.iso)
        return self

    def wait_for(self, ready, what: str, timeout: float = 420) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.running():
                said = (self.dir / "qemu.log").read_text(errors="replace")
                pytest.fail(f"qemu stopped: {said}\n{self.console()[-3000:]}")
            if time.monotonic() > deadline:
                console = self.console()[-4000:]
                pytest.fail(f"{what}: not after {timeout:.0f} s ({self.accel}); its console:\n{console}")
            time.sleep(1)

    def ssh(self, key: Path, command: str, *options: str) -> subprocess.CompletedProcess:
        argv = ["ssh", "-i", str(key), "-p", str(self.ssh_port), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20", "-o", "BatchMode=yes",
                "-o", "LogLevel=ERROR", *options, "root@127.0.0.1", command]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)


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
            name="qemu1",
            address=f"tcp://127.0.0.1:{vm.radiumd_port}",
            public_key=server_key or self.server_public,
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
        # Confined (cgroup v2 here, under systemd, the unit delegating its subtree) and writing
        # onto a file system of its own.
        probe = "cat /proc/self/cgroup /proc/self/mountinfo"
        world = ops.radium("run", "--", "sh", "-c", probe, cwd=tmp_path / "work")
        assert world.returncode == 0, world.stderr
        assert "radiumd.service/radium-runs/R-" in world.stdout, world.stdout
        assert "/layer/upper" in world.stdout, world.stdout
        # Its device nodes only (v2: the eBPF device filter): a 0666 node it was not lent is EPERM.
        made = vm.ssh(key, "mknod -m 666 /dev/radium-test c 240 0")
        assert made.returncode == 0, made.stderr
        opens = ops.radium(
            "run", "--", "python3", "-c", PROBE, "/dev/null", "/dev/radium-test", cwd=tmp_path / "work"
        )
        assert opens.stdout.split() == ["ok", "EPERM"], opens.stdout + opens.stderr
        # Its memory held to what it asked for, swap included; the user told which limit ended it.
        hog = "x = bytearray(1 << 30); x[::4096] = b'y' * len(x[::4096]); print('survived')"
        ended = ops.radium("run", "--memory", "256M", "--", "python3", "-c", hog, cwd=tmp_path / "work")
        assert ended.returncode == 137 and "survived" not in ended.stdout, ended.stdout + ended.stderr
        assert "out of memory: the run's limit is 256 MiB" in ended.stderr, ended.stderr
        # radiumd runs as its own user, no capability left; its fork server and supervisors as root.
        who = vm.ssh(key, WHO_RUNS_RADIUMD)
        assert who.returncode == 0, who.stderr
        lines = [" ".join(line.split()) for line in who.stdout.splitlines()]
        uid = lines[0]
        assert lines[1:3] == [f"Uid: {uid} {uid} {uid} {uid}", "CapEff: 0000000000000000"], lines
        assert uid != "0" and set(lines[3:]) == {"0 radium-forksrv", "0 radium-sup"}, lines

        # An unknown operator key is refused, and so is a server that is not the one expected.
        ops.trust(vm, admin=tuple(k.decode() for k in zmq.curve_keypair()))  # type: ignore[arg-type]
        refused = ops.enroll("c2")
        assert refused.returncode != 0 and not (tmp_path / "c2.toml").exists()
        assert "refused this client's key" in refused.stderr, refused.stderr
        ops.trust(vm, server_key=zmq.curve_keypair()[0].decode())
        wrong = ops.enroll("c2")
        assert wrong.returncode != 0 and "public key" in wrong.stderr, wrong.stderr
        ops.trust(vm)

        # SSH: the key from the environment, never a password; no password anywhere.
        inside = vm.ssh(
            key,
            "cut -d: -f2 /etc/shadow | sort -u; echo ---;"
            " sshd -T | grep -E '^(passwordauthentication|permitrootlogin) '; echo ---;"
            " cat /usr/lib/radium/image.json; echo ---; ls /etc/ssh/",
        )
        assert inside.returncode == 0, inside.stderr
        hashes, sshd, rest, host_keys = inside.stdout.split("---\n")
        assert set(hashes.split()) <= {"*", "!", "!*"}, hashes  # every account locked
        assert "passwordauthentication no" in sshd and "permitrootlogin without-password" in sshd
        record = json.loads(rest)
        assert record["radium"] == VERSION and record["with_pocl"] and len(record["packages"]) > 100
        if image["build"] is not None:  # built here, with the test's hook
            assert record["hooks"] == ["mark-hook.sh"]
            assert vm.ssh(key, "cat /etc/radium-hook-ran").stdout == "added by a hook\n"
        assert "ssh_host_ed25519_key" in host_keys  # made on this appliance at its first start
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


def test_the_built_ova_deploys_into_the_vcenter_simulator_disk_and_all(image, tmp_path, monkeypatch):
    """`appliance deploy` (the operation the CLI, the console and Ansible call) with the built OVA:
    its disk is uploaded whole through the NFC lease, and the VM has the image's disk."""
    from radium import vcenter
    from radium.vcenter import settings as vsettings
    from radium.vcenter import sim

    if sim.missing():
        pytest.skip("vCenter simulator unavailable: " + "; ".join(sim.missing()))
    monkeypatch.setenv("RADIUM_ADMIN_CONFIG", str(tmp_path / "operator.toml"))
    vc = sim.start(username="radium", password="s3cret", clusters=1, hosts_per_cluster=1, standalone_hosts=0)
    try:
        settings = vsettings.resolve(url=vc.sdk_url, user="radium", password="s3cret", ca=vc.ca_file, env={},
                                     use_profiles=False)  # fmt: skip
        events: list = []
        with vcenter.connect(settings) as session:
            request = vcenter.DeployRequest(name="gpu1", host="DC0_C0_H0", package=image["ova"], wait=False)
            done = vcenter.deploy_appliance(session, request, events.append)
            from pyVmomi import vim

            view = session.content.viewManager.CreateContainerView(
                session.content.rootFolder, [vim.VirtualMachine], True
            )
            [vm] = [v for v in view.view if v.name == "gpu1"]
            disks = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
            view.DestroyView()
        sent = [e for e in events if isinstance(e, vcenter.Transfer)]
        assert sent and sent[-1].done == sent[-1].total == image["vmdk"].stat().st_size
        assert done.power_state == "poweredOn" and done.vm == "gpu1"
        assert [d.capacityInKB for d in disks] == [16 << 20]  # the image's 16 GiB disk
    finally:
        vc.stop()


def test_lab_up_vm_makes_the_built_image_the_labs_appliance(image, tmp_path):
    """`radium-admin lab up --vm FILE.ova`: a newcomer tries the real appliance on one machine."""
    from radium.vcenter import sim

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADIUM_") and not k.startswith("XDG_")}
    env.update(
        HOME=str(home),
        RADIUM_VCSIM_CACHE=str(sim.default_cache_dir()),
        RADIUM_LAB_DIR=str(tmp_path / "lab"),
        RADIUM_LAB_NAMESPACE=f"radium-labvm-{os.getpid()}",
        RADIUM_LAB_SUBNET="0",
    )

    def run(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / tool), *args], env=env, capture_output=True, text=True, timeout=timeout
        )

    try:
        up = run("radium-admin", "lab", "up", "--vm", str(image["ova"]), "--json", timeout=900)
        assert up.returncode == 0, up.stdout + up.stderr
        st = json.loads(up.stdout)
        assert st["up"] and st["vm"] and st["address"].startswith("tcp://127.0.0.1:")
        assert any("pthread" in d for d in st["devices"])  # the image's PoCL device, from inside the VM
        assert not list((tmp_path / "lab").rglob("*.iso"))  # the environment (and its secret) is gone
        # `radium` with no configuration of its own uses the lab: it runs on the VM's kernel.
        (tmp_path / "work").mkdir()
        ran = subprocess.run([str(BIN / "radium"), "run", "--", "uname", "-n"], env=env, capture_output=True,
                             text=True, timeout=300, cwd=tmp_path / "work")  # fmt: skip
        assert ran.returncode == 0 and ran.stdout.strip() == "lab-appliance", ran.stderr
        # The lab deploys it with no SSH key: no sshd answers (not a refused key: none at all).
        port = json.loads((tmp_path / "lab" / "vm" / "vm.json").read_text())["ssh_port"]
        options = [
            "BatchMode=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "ConnectTimeout=20",
        ]
        argv = ["ssh", "-p", str(port), *(f"-o{o}" for o in options), "root@127.0.0.1", "true"]
        ssh = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert ssh.returncode == 255 and "Permission denied" not in ssh.stderr, ssh.stderr
        again = run("radium-admin", "lab", "up", "--vm", str(image["ova"]), "--json")
        assert (
            again.returncode == 0 and json.loads(again.stdout)["pid"] == st["pid"]
        )  # kept, not booted again
        if st.get("vcenter"):  # the simulator knows the VM as the lab's appliance, at its forwarded port
            assert st["appliance_vm"] and st["address"].removeprefix("tcp://") in st["appliance_vm"]
    finally:
        down = run("radium-admin", "lab", "down", timeout=300)
    assert down.returncode == 0, down.stderr
    assert not (tmp_path / "lab" / "vm").exists()
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path / "lab") not in processes  # no qemu left behind
