"""A run opens only its device nodes: the basic ones, its lease's and the operator's
(remoting/run/devicefilter.py), held by its cgroup: v1's `devices` controller through
`radium run` here, and v2's eBPF device filter on this machine's cgroup2 mount.

The nodes tried are character devices of a number no driver has (major 240, "local use"),
mode 0666: opening one the cgroup lets through reaches the kernel's driver lookup and fails
with ENXIO; one it refuses fails with EPERM, before any driver is asked.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import subprocess
from pathlib import Path

import pytest
from support import BIN
from test_run_faults import start_remote
from test_run_limits import in_project

from radium.remoting.devices.pci import device_nodes
from radium.remoting.run import devicefilter, limits

pytestmark = pytest.mark.timeout(240)

RADIUM = str(BIN / "radium")
PROBE = (
    "import errno, sys\n"
    "for path in sys.argv[1:]:\n"
    "    try:\n"
    "        open(path, 'rb').close(); print('ok')\n"
    "    except OSError as e:\n"
    "        print(errno.errorcode[e.errno])\n"
)


@pytest.fixture
def nodes():
    """Two device nodes in /dev (what a run sees of the appliance's): one to lend, one not."""
    tag = secrets.token_hex(4)
    made = {name: Path(f"/dev/radium-test-{name}-{tag}") for name in ("lent", "other")}
    try:
        for minor, path in enumerate(made.values()):
            try:
                os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(240, minor))
            except PermissionError:
                pytest.skip("cannot make device nodes in /dev here (no CAP_MKNOD, or /dev read-only)")
            path.chmod(0o666)
        yield made
    finally:
        for path in made.values():
            path.unlink(missing_ok=True)


@pytest.mark.skipif(limits.version() != 1, reason="cgroup v1 controllers (devices among them) not mounted")
def test_a_run_opens_the_basic_and_lent_device_nodes_and_no_other(two_hosts, tmp_path, nodes):
    lent, other = str(nodes["lent"]), str(nodes["other"])
    r = start_remote(two_hosts, tmp_path, f'[run]\ndevice_nodes = ["{lent}"]\n')
    try:
        client = r.client()
        paths = f"/dev/null /dev/urandom /dev/tty {lent} {other}"
        out = in_project(
            client, f"{RADIUM} run -- python3 probe.py {paths} < /dev/null\n", {"probe.py": PROBE}
        )
        assert out.returncode == 0, out.stderr.decode()
        # /dev/tty: allowed, but the run has no terminal here (ENXIO, not EPERM).
        assert out.stdout.decode().split() == ["ok", "ok", "ENXIO", "ENXIO", "EPERM"], out.stdout
        # The same node opens (to the driver's ENXIO) on the appliance itself: the cgroup refused it.
        with pytest.raises(OSError) as raised:
            open(other, "rb")
        assert raised.value.errno == errno.ENXIO
    finally:
        r.close()
        r.appliance.stop()


def _cgroup2() -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, where, fstype = line.split()[:3]
        if fstype == "cgroup2" and os.access(where, os.W_OK):
            return Path(where)
    return None


@pytest.mark.skipif(_cgroup2() is None, reason="no writable cgroup2 mount (the unified hierarchy)")
def test_the_v2_device_filter_refuses_what_its_rules_do_not_name(tmp_path, nodes):
    """The eBPF program that confines runs on cgroup v2, attached to a cgroup of this machine's
    unified hierarchy (device programs need no controller), with a process moved into it."""
    folder = _cgroup2() / f"radium-test-{secrets.token_hex(4)}"
    folder.mkdir()
    try:
        lent, _ = devicefilter.rules_for([str(nodes["lent"])])
        devicefilter.attach_v2(folder, [*devicefilter.BASIC, *lent])
        paths = ["/dev/null", "/dev/zero", str(nodes["lent"]), str(nodes["other"])]
        inside = f'echo $$ > {folder}/cgroup.procs && exec python3 -c "$0" "$@"'
        out = subprocess.run(["sh", "-c", inside, PROBE, *paths], capture_output=True, text=True, timeout=60)
        assert out.stdout.split() == ["ok", "ok", "ENXIO", "EPERM"], (out.stdout, out.stderr)
        # Write access is its own: the basic rules give /dev/null read and write, not mknod.
        made = tmp_path / "made"
        mknod = f'echo $$ > {folder}/cgroup.procs && exec python3 -c "import os, sys; os.mknod(sys.argv[1], 0o20600, os.makedev(1, 3))" {made}'  # noqa: E501
        refused = subprocess.run(["sh", "-c", mknod], capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "Operation not permitted" in refused.stderr, refused.stderr
        assert not made.exists()
    finally:
        folder.rmdir()


def test_a_leased_gpus_nodes_are_found_by_its_pci_address(tmp_path):
    """What the kernel and the NVIDIA and AMD drivers lay out, in a tree of files: the nodes
    a lease of the GPU at a PCI address lends its run."""
    sys_root, proc, dev = tmp_path / "sys", tmp_path / "proc", tmp_path / "dev"
    nvidia, amd = "0000:3b:00.0", "0000:c1:00.0"
    for address, vendor, drm in (
        (nvidia, "0x10de", ["card1", "renderD129"]),
        (amd, "0x1002", ["renderD128"]),
    ):
        device = sys_root / "bus/pci/devices" / address
        (device / "drm").mkdir(parents=True)
        (device / "vendor").write_text(vendor + "\n")
        for name in drm:
            (device / "drm" / name).mkdir()
    info = proc / "driver/nvidia/gpus" / nvidia / "information"
    info.parent.mkdir(parents=True)
    info.write_text("Model: \t\t NVIDIA A100\nIRQ:   \t\t 90\nDevice Minor: \t 3\n")
    (dev / "dri").mkdir(parents=True)
    (dev / "nvidia-caps").mkdir()
    for name in ("dri/card1", "dri/renderD129", "dri/renderD128", "nvidia3", "nvidia0", "nvidiactl",
                 "nvidia-uvm", "kfd", "nvidia-caps/nvidia-cap1"):  # fmt: skip
        (dev / name).touch()

    def found(address):
        return [Path(p).relative_to(dev).as_posix() for p in device_nodes(address, sys_root, proc, dev)]

    assert found(nvidia) == ["dri/card1", "dri/renderD129", "nvidia3", "nvidiactl", "nvidia-uvm",
                             "nvidia-caps/nvidia-cap1"]  # fmt: skip
    assert found(amd) == ["dri/renderD128", "kfd"]
    assert found(None) == [] and found("0000:00:02.0") == []  # a CPU device; an unknown address
