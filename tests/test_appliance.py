"""The appliance: its OVF descriptor and package, the first boot, the systemd units.

The round trip a deployed appliance goes through is played here with real parts:
the descriptor's properties, an OVF environment written the way vSphere writes
it, `radium-firstboot` writing into a folder that stands for the VM's root, and
the result loaded by radiumd (`--check`, then a running radiumd that an operator
reaches with the keys chosen before the appliance existed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import tomli_w
import zmq
from support import BIN, PY, Appliance, Client, Container, free_port, wait_until

from radium.appliance import ovf
from radium.appliance.properties import PROPERTIES, REQUIRED, PropertyError, parse
from radium.remoting._config import (
    ApplianceEntry,
    ClientConfig,
    ClientSection,
    load_daemon_config,
    save_client_config,
)
from radium.remoting._keys import load_keypair

pytestmark = pytest.mark.timeout(180)

UNITS = Path(ovf.__file__).parent / "units"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@host"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def keypair() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def declared(descriptor: str) -> dict[str, str]:
    """The properties a descriptor declares, with their default values (as vSphere would read them)."""
    root = ET.fromstring(descriptor)
    q = f"{{{ovf.OVF}}}"
    return {p.get(q + "key"): p.get(q + "value", "") for p in root.iter(q + "Property")}


def deploy_values(descriptor: str, **overrides: str) -> dict[str, str]:
    """What vSphere puts in the OVF environment: every declared property, defaults filled in."""
    values = declared(descriptor)
    values.update({f"radium.{k.replace('__', '.')}": v for k, v in overrides.items()})
    return values


def firstboot(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "radium.appliance.firstboot", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, **(env or {})),
    )


@pytest.fixture
def keys():
    server_public, server_secret = keypair()
    admin_public, admin_secret = keypair()
    return {"server": (server_public, server_secret), "admin": (admin_public, admin_secret)}


# --- the descriptor -----------------------------------------------------------------------


def test_the_descriptor_is_a_valid_ovf_2_with_the_whole_contract():
    text = ovf.descriptor("gpu-appliance", cpus=8, memory_mib=65536, disk_gib=40)
    assert ovf.validate(text) == []
    if shutil.which("xmllint"):
        out = subprocess.run(["xmllint", "--noout", "-"], input=text, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr

    root = ET.fromstring(text)
    o, r, v = f"{{{ovf.OVF}}}", f"{{{ovf.RASD}}}", f"{{{ovf.VMW}}}"
    assert root.tag == o + "Envelope" and root.get(o + "version") == "2.0"
    vs = root.find(o + "VirtualSystem")
    hw = vs.find(o + "VirtualHardwareSection")
    assert hw.get(o + "transport").split() == ["com.vmware.guestInfo", "iso"]  # guestinfo, or a CD-ROM
    assert hw.find(f"{o}System/{{{ovf.VSSD}}}VirtualSystemType").text == "vmx-17"
    items = {int(i.find(r + "ResourceType").text): i for i in hw.findall(o + "Item")}
    assert items[ovf.CPU].find(r + "VirtualQuantity").text == "8"
    assert items[ovf.MEMORY].find(r + "VirtualQuantity").text == "65536"
    assert items[ovf.MEMORY].find(r + "AllocationUnits").text == "byte * 2^20"
    assert items[ovf.SCSI].find(r + "ResourceSubType").text == "VirtualSCSI"
    assert items[ovf.NIC].find(r + "ResourceSubType").text == "VmxNet3"
    assert items[ovf.DISK].find(r + "HostResource").text == "ovf:/disk/vmdisk1"
    config = {c.get(v + "key"): c.get(v + "value") for c in hw.findall(v + "Config")}
    assert config["firmware"] == "efi"
    assert config["memoryReservationLockedToMax"] == "true"
    disk = root.find(f"{o}DiskSection/{o}Disk")
    assert (disk.get(o + "capacity"), disk.get(o + "capacityAllocationUnits")) == ("40", "byte * 2^30")

    props = {p.get(o + "key"): p for p in vs.iter(o + "Property")}
    assert sorted(props) == sorted(p.key for p in PROPERTIES)
    assert props["radium.server_secret_key"].get(o + "password") == "true"
    assert all(p.get(o + "userConfigurable") == "true" for p in props.values())
    assert props["radium.listen_port"].get(o + "type") == "uint16"
    assert props["radium.listen_port"].get(o + "value") == "7450"
    assert set(REQUIRED) == {"radium.name", "radium.server_secret_key", "radium.admin_public_key"}


def _remove(text: str, xpath: str) -> str:
    root = ET.fromstring(text)
    parents = {c: p for p in root.iter() for c in p}
    for el in root.findall(xpath):
        parents[el].remove(el)
    return ET.tostring(root, encoding="unicode")


NS = f"{{{ovf.OVF}}}"


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda t: t[: len(t) // 2], "not well-formed XML"),
        (lambda t: "<Envelope/>", "not an OVF descriptor"),
        (lambda t: t.replace(ovf.OVF, "http://example.com/ovf"), "not an OVF descriptor"),
        (
            lambda t: _remove(t, f".//{NS}Property[@{NS}key='radium.admin_public_key']"),
            "required properties missing: radium.admin_public_key",
        ),
        (lambda t: _remove(t, f".//{NS}ProductSection"), "no ProductSection"),
        (lambda t: t.replace('ovf:transport="com.vmware.guestInfo iso"', ""), "ovf:transport must include"),
        (lambda t: t.replace('ovf:password="true"', ""), "must be ovf:password"),
        (lambda t: _remove(t, f".//{NS}References/{NS}File"), "which References lacks"),
        (
            lambda t: t.replace('ovf:href="radium-appliance-disk1.vmdk"', 'ovf:href="../../etc/passwd"'),
            "not a plain",
        ),
        (lambda t: _remove(t, f".//{NS}VirtualSystem"), "expected one VirtualSystem, found 0"),
        (lambda t: t.replace("<rasd:ResourceType>10<", "<rasd:ResourceType>24<"), "no network adapter"),
        (lambda t: t.replace("ovf:/disk/vmdisk1", "ovf:/disk/other"), "which DiskSection lacks"),
        (lambda t: t.replace(">16384<", ">lots<"), "memory: VirtualQuantity 'lots' is not a count"),
    ],
)
def test_validate_names_what_is_wrong(change, expected):
    problems = ovf.validate(change(ovf.descriptor()))
    assert problems, "a broken descriptor passed"
    assert any(expected in p for p in problems), problems


def test_an_ovf_1_descriptor_with_the_contract_is_accepted():
    # A descriptor re-exported by ovftool (OVF 1.0) still carries the properties.
    text = ovf.descriptor().replace(ovf.OVF, ovf.OVF1).replace('ovf:version="2.0"', 'ovf:version="1.0"')
    assert ovf.validate(text) == []


# --- packages -----------------------------------------------------------------------------


def test_an_ovf_package_with_manifest_and_placeholder_disk(tmp_path):
    path = ovf.write_ovf(tmp_path / "pkg", "gpu-appliance", disk_gib=16)
    assert ovf.validate_package(path) == [] and ovf.validate_package(path.parent) == []
    disk = tmp_path / "pkg" / "gpu-appliance-disk1.vmdk"
    manifest = (tmp_path / "pkg" / "gpu-appliance.mf").read_text().splitlines()
    assert sorted(manifest) == sorted(
        f"SHA256({f.name})= {hashlib.sha256(f.read_bytes()).hexdigest()}" for f in (path, disk)
    )
    assert disk.read_bytes()[:4] == b"KDMV" and disk.stat().st_size < 200_000
    assert f'ovf:size="{disk.stat().st_size}"' in path.read_text()
    if shutil.which("qemu-img"):
        info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", str(disk)]))
        assert info["format"] == "vmdk" and info["virtual-size"] == 16 << 30
        assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
        assert subprocess.run(["qemu-img", "check", str(disk)], capture_output=True).returncode == 0

    # A changed byte is caught by the manifest; a missing disk by the references.
    data = bytearray(disk.read_bytes())
    data[600] ^= 1
    disk.write_bytes(bytes(data))
    assert any("digest does not match" in p for p in ovf.validate_package(path))
    disk.unlink()
    assert any("not in the package" in p for p in ovf.validate_package(path))


def test_an_ova_is_one_tar_descriptor_first(tmp_path):
    built = tmp_path / "built.vmdk"
    built.write_bytes(b"pretend this is the built image")
    ova = ovf.write_ova(tmp_path / "radium-appliance.ova", disk=built)
    with tarfile.open(ova) as tar:
        names = tar.getnames()
        assert names == ["radium-appliance.ovf", "radium-appliance.mf", "radium-appliance-disk1.vmdk"]
        assert tar.extractfile(names[2]).read() == built.read_bytes()
        assert all(m.uid == 0 and m.mode == 0o644 for m in tar.getmembers())
    assert ovf.validate_package(ova) == []
    assert ovf.validate(ovf.read_descriptor(ova)) == []

    bad = tmp_path / "bad.ova"
    with tarfile.open(bad, "w") as tar:
        tar.add(built, arcname="disk.vmdk")
    assert "first file of an OVA" in ovf.validate_package(bad)[0]
    (tmp_path / "junk.ova").write_bytes(b"junk")
    assert "not a valid OVA" in ovf.validate_package(tmp_path / "junk.ova")[0]


def test_the_package_command(tmp_path):
    out = subprocess.run(
        [PY, "-m", "radium.appliance.ovf", "package", str(tmp_path / "a.ova"), "--cpus", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    check = subprocess.run(
        [PY, "-m", "radium.appliance.ovf", "validate", str(tmp_path / "a.ova")], capture_output=True
    )
    assert check.returncode == 0
    (tmp_path / "broken.ovf").write_text("<Envelope")
    check = subprocess.run(
        [PY, "-m", "radium.appliance.ovf", "validate", "--descriptor-only", str(tmp_path / "broken.ovf")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 1 and "not well-formed XML" in check.stderr


# --- the first boot ----------------------------------------------------------------------------


def test_firstboot_round_trip_from_the_descriptor_to_radiumd(tmp_path, keys):
    server_public, server_secret = keys["server"]
    values = deploy_values(
        ovf.descriptor(),
        name="gpu1",
        server_secret_key=server_secret,
        admin_public_key=keys["admin"][0],
        listen_port="7460",
        network__ip="192.168.10.5/24",
        network__gateway="192.168.10.1",
        network__dns="192.168.10.2, 9.9.9.9",
        ssh_authorized_keys=SSH_KEY,
    )
    env_file = tmp_path / "ovf-env.xml"
    env_file.write_text(ovf.environment(values))
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n::1\tlocalhost ip6-localhost\n")

    out = firstboot("--root", str(root), "--ovf-env", str(env_file))
    assert out.returncode == 0, out.stderr
    assert server_secret not in out.stdout + out.stderr
    assert server_public in out.stdout  # the console shows the public key

    toml = root / "etc/radium/radiumd.toml"
    config = load_daemon_config(toml)
    assert config.server.name == "gpu1" and config.server.listen == "tcp://0.0.0.0:7460"
    assert config.metrics.enabled and config.metrics.listen == "127.0.0.1:9450"
    assert config.server.state_dir == "/var/lib/radium"
    check = subprocess.run(
        [str(BIN / "radiumd"), "--check", "--config", str(toml)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr

    state = root / "var/lib/radium"
    assert mode(state) == 0o711
    assert mode(state / "server.key_secret") == 0o600
    pair = load_keypair(state / "server.key_secret")
    assert (pair.public, pair.secret) == (server_public, server_secret)
    assert zmq.curve_public(pair.secret.encode()).decode() == server_public
    assert load_keypair(state / "server.key") == type(pair)(server_public, None)  # no secret in it
    assert server_secret not in (state / "server.key").read_text()
    assert load_keypair(root / "etc/radium/admins.d/operator.key").public == keys["admin"][0]
    assert (root / "etc/radium/clients.d").is_dir()

    network = (root / "etc/systemd/network/10-radium.network").read_text()
    assert "Address=192.168.10.5/24\nGateway=192.168.10.1\nDNS=192.168.10.2\nDNS=9.9.9.9\n" in network
    assert "DHCP" not in network
    assert (root / "etc/hostname").read_text() == "gpu1\n"
    hosts = (root / "etc/hosts").read_text().splitlines()
    assert "127.0.1.1\tdebian" not in hosts and "127.0.1.1\tgpu1 # radium-firstboot" in hosts
    assert "::1\tlocalhost ip6-localhost" in hosts
    assert (root / "root/.ssh/authorized_keys").read_text() == SSH_KEY + "\n"
    assert mode(root / "root/.ssh/authorized_keys") == 0o600 and mode(root / "root/.ssh") == 0o700
    assert "root:200000:6553600" in (root / "etc/subuid").read_text().splitlines()
    assert server_public in (root / "etc/issue.d/radium.issue").read_text()
    for f in root.rglob("*"):
        if f.is_file() and f.name != "server.key_secret":
            assert server_secret not in f.read_text(errors="replace"), f
    stamp = json.loads((root / "etc/radium/firstboot.done").read_text())
    assert stamp["server_public_key"] == server_public

    # Again: the stamp stops it; forced with the same properties, nothing changes.
    before = {f: f.stat().st_mtime_ns for f in root.rglob("*") if f.is_file()}
    out = firstboot("--root", str(root), "--ovf-env", str(env_file))
    assert out.returncode == 0 and "already configured" in out.stdout
    out = firstboot("--root", str(root), "--ovf-env", str(env_file), "--force")
    assert out.returncode == 0 and "nothing to change" in out.stdout, out.stdout + out.stderr
    assert {f: f.stat().st_mtime_ns for f in root.rglob("*") if f.is_file()} == before

    # Changed properties are applied, and what the operator set by hand survives.
    toml.write_text(toml.read_text().replace("exclude = []", 'exclude = ["opencl:0:1"]'))
    env_file.write_text(
        ovf.environment({**values, "radium.network.ip": "dhcp", "radium.network.gateway": ""})
    )
    out = firstboot("--root", str(root), "--ovf-env", str(env_file), "--force")
    assert out.returncode == 0, out.stderr
    assert "DHCP=yes" in (root / "etc/systemd/network/10-radium.network").read_text()
    assert load_daemon_config(toml).devices.exclude == ["opencl:0:1"]


def test_the_operator_reaches_the_appliance_with_keys_chosen_before_it_existed(tmp_path, keys):
    """What `radium-admin appliance deploy` relies on: it picks both key pairs, and needs nothing back."""
    server_public, server_secret = keys["server"]
    admin_public, admin_secret = keys["admin"]
    port, metrics = free_port(), free_port()
    ops = tmp_path / "ops.toml"  # the operator's side, written before the appliance exists
    save_client_config(
        ClientConfig(
            client=ClientSection(name="ops", public_key=admin_public, secret_key=admin_secret),
            appliances=[
                ApplianceEntry(name="gpu1", address=f"tcp://127.0.0.1:{port}", public_key=server_public)
            ],
        ),
        ops,
    )
    values = deploy_values(
        ovf.descriptor(),
        name="gpu1",
        server_secret_key=server_secret,
        admin_public_key=admin_public,
        admin_name="ops",
        listen_port=str(port),
        metrics_listen=f"127.0.0.1:{metrics}",
    )
    (tmp_path / "env.xml").write_text(ovf.environment(values))
    root = tmp_path / "root"
    out = firstboot("--root", str(root), "--ovf-env", str(tmp_path / "env.xml"))
    assert out.returncode == 0, out.stderr

    # radiumd with that configuration, its appliance paths moved under the test's root.
    config = load_daemon_config(root / "etc/radium/radiumd.toml")
    app = Appliance(tmp_path / "radiumd", name="gpu1", port=port)
    app.dir.mkdir()
    data = {
        "server": {
            "name": config.server.name,
            "listen": config.server.listen,
            "state_dir": str(root / "var/lib/radium"),
            "clients_dir": str(root / "etc/radium/clients.d"),
            "admins_dir": str(root / "etc/radium/admins.d"),
        },
        "metrics": {"listen": config.metrics.listen},
    }
    app.config.write_text(tomli_w.dumps(data))
    app.start()
    try:
        bundle = tmp_path / "vm1.toml"
        enrol = subprocess.run(
            [str(BIN / "radium-admin"), "enroll", "vm1", "--appliance", "gpu1", "-o", str(bundle)],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, RADIUM_ADMIN_CONFIG=str(ops)),
        )
        assert enrol.returncode == 0, enrol.stdout + enrol.stderr
        listing = Client(bundle, tmp_path / "vm1-state").json("list-gpus")
        assert {d["appliance"] for d in listing["devices"]} == {"gpu1"}
    finally:
        app.stop()


def test_a_missing_or_bad_property_is_named_and_nothing_is_written(tmp_path, keys):
    values = deploy_values(ovf.descriptor(), name="gpu1", server_secret_key=keys["server"][1])
    (tmp_path / "env.xml").write_text(ovf.environment(values))
    root = tmp_path / "root"
    out = firstboot("--root", str(root), "--ovf-env", str(tmp_path / "env.xml"))
    assert out.returncode == 2
    assert "radium.admin_public_key" in out.stderr and "missing" in out.stderr
    assert "Traceback" not in out.stderr
    assert not root.exists()

    bad_secret = keys["server"][1][:-1] + "\\"  # not Z85
    values.update(
        {
            "radium.server_secret_key": bad_secret,
            "radium.admin_public_key": keys["admin"][0],
            "radium.listen_port": "99999",
            "radium.network.ip": "10.0.0.300/24",
            "radium.name": "no spaces please",
        }
    )
    (tmp_path / "env.xml").write_text(ovf.environment(values))
    out = firstboot("--root", str(root), "--ovf-env", str(tmp_path / "env.xml"))
    assert out.returncode == 2
    for key in ("radium.server_secret_key", "radium.listen_port", "radium.network.ip", "radium.name"):
        assert key in out.stderr
    assert bad_secret not in out.stderr and "4 problems" in out.stderr
    assert not root.exists()

    (tmp_path / "env.xml").write_text("<Environment")
    out = firstboot("--root", str(root), "--ovf-env", str(tmp_path / "env.xml"))
    assert out.returncode == 2 and "not an OVF environment" in out.stderr


FAKE_RPCTOOL = """\
#!/bin/sh
# vmware-rpctool, as the hypervisor answers it: guest variables are files in $GUESTINFO.
set -eu
cmd=${1%% *}; rest=${1#* }
case "$cmd" in
  info-get) [ -s "$GUESTINFO/$rest" ] || { echo "No value found" >&2; exit 1; }
            cat "$GUESTINFO/$rest"; echo ;;
  info-set) key=${rest%% *}; value=${rest#"$key"}; printf '%s' "${value# }" > "$GUESTINFO/$key" ;;
  *) echo "Unknown command" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def hypervisor(tmp_path):
    """A fake vmware-rpctool and the guest variables it serves."""
    tool = tmp_path / "vmware-rpctool"
    tool.write_text(FAKE_RPCTOOL)
    tool.chmod(0o755)
    variables = tmp_path / "guestinfo"
    variables.mkdir()
    return tool, variables


def test_appliance_setup_makes_a_plain_host_an_appliance_and_keeps_its_key(tmp_path, keys):
    """radium-appliance-setup (the radium_appliance role's step on the host): radiumd's part of
    the first boot, a server key made there and kept, and the unit pointed at this installation."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("bench-7\n")
    admin = keys["admin"][0]
    argv = [str(BIN / "radium-appliance-setup"), "--root", str(root), "--json", "--name", "bench7"]
    argv += [f"--admin-key={admin}", "--admin-name", "ops", "--port", "7461"]  # a Z85 key may begin with "-"
    first = subprocess.run(argv, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    done = json.loads(first.stdout)
    state = root / "var/lib/radium"
    pair = load_keypair(state / "server.key_secret")
    assert done["server_public_key"] == pair.public and pair.secret not in first.stdout
    assert mode(state / "server.key_secret") == 0o600 and mode(state) == 0o711
    assert "/etc/radium/radiumd.toml" in done["changed"] and done["unit"] in done["changed"]
    toml = root / "etc/radium/radiumd.toml"
    config = load_daemon_config(toml)
    assert config.server.name == "bench7" and config.server.listen == "tcp://0.0.0.0:7461"
    check = subprocess.run(
        [str(BIN / "radiumd"), "--check", "--config", str(toml)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert load_keypair(root / "etc/radium/admins.d/ops.key").public == admin
    assert "root:200000:6553600" in (root / "etc/subgid").read_text().splitlines()
    unit = (root / "etc/systemd/system/radiumd.service").read_text()
    assert f"ExecStart={BIN}/radiumd --config /etc/radium/radiumd.toml" in unit  # this installation's
    assert "NoNewPrivileges=yes" in unit  # the shipped unit, hardening and all
    # radiumd's own user (the unit's --user), made by systemd-sysusers from the shipped file.
    assert "--user radium" in unit and "user radium" in done["changed"]
    assert (root / "etc/sysusers.d/radium.conf").read_text() == (UNITS / "radium.sysusers").read_text()
    passwd = [line.split(":") for line in (root / "etc/passwd").read_text().splitlines()]
    assert [(u[0], u[5], u[6]) for u in passwd if u[0] == "radium"] == [
        ("radium", "/var/lib/radium", "/usr/sbin/nologin")
    ]
    # A host keeps its network, its name and its SSH: none of them is touched.
    assert (root / "etc/hostname").read_text() == "bench-7\n"
    assert not (root / "etc/systemd/network").exists() and not (root / "root").exists()

    again = subprocess.run(argv, capture_output=True, text=True)
    assert json.loads(again.stdout)["changed"] == [] and load_keypair(state / "server.key_secret") == pair

    bad = subprocess.run(
        [*argv[:-5], "--admin-key", "nope", "--port", "70000"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "radium.admin_public_key (--admin-key): expected a CURVE public key" in bad.stderr
    assert "radium.listen_port (--port): expected a TCP port 1-65535" in bad.stderr
    assert load_keypair(root / "etc/radium/admins.d/ops.key").public == admin  # nothing changed


def test_firstboot_reads_guestinfo_and_then_blanks_the_secret(tmp_path, keys, hypervisor):
    tool, variables = hypervisor
    server_public, server_secret = keys["server"]
    values = deploy_values(
        ovf.descriptor(), name="gpu2", server_secret_key=server_secret, admin_public_key=keys["admin"][0]
    )
    (variables / "guestinfo.ovfEnv").write_text(ovf.environment(values))
    # A variable of its own overrides the OVF environment (as register/deploy may set it).
    (variables / "guestinfo.radium.network.ip").write_text("fd00::5/64")
    env = {"GUESTINFO": str(variables)}
    root = tmp_path / "root"

    out = firstboot("--root", str(root), "--rpctool", str(tool), env=env)
    assert out.returncode == 0, out.stderr
    assert "Address=fd00::5/64" in (root / "etc/systemd/network/10-radium.network").read_text()
    origins = json.loads((root / "etc/radium/firstboot.done").read_text())["properties"]
    assert origins["radium.network.ip"] == "guestinfo.radium.network.ip"
    assert origins["radium.name"] == "guestinfo.ovfEnv"
    assert load_keypair(root / "var/lib/radium/server.key_secret").public == server_public
    assert "blanked the secret key in guestinfo.ovfEnv" in out.stdout
    assert server_secret not in (variables / "guestinfo.ovfEnv").read_text()
    assert ovf.environment_values((variables / "guestinfo.ovfEnv").read_text())["radium.name"] == "gpu2"

    # Next power-on: vSphere hands the secret again; the stamp stops reconfiguration, the scrub runs.
    (variables / "guestinfo.ovfEnv").write_text(ovf.environment(values))
    (variables / "guestinfo.radium.server_secret_key").write_text(server_secret)
    out = firstboot("--root", str(root), "--rpctool", str(tool), env=env)
    assert out.returncode == 0 and "already configured" in out.stdout
    assert server_secret not in (variables / "guestinfo.ovfEnv").read_text()
    assert (variables / "guestinfo.radium.server_secret_key").read_text() == ""
    assert server_secret not in out.stdout + out.stderr


def test_firstboot_without_any_environment_says_what_is_missing(tmp_path, hypervisor):
    tool, variables = hypervisor
    out = firstboot(
        "--root", str(tmp_path / "root"), "--rpctool", str(tool), env={"GUESTINFO": str(variables)}
    )
    assert out.returncode == 2 and "guestinfo.ovfEnv is empty" in out.stderr
    out = firstboot("--root", str(tmp_path / "root"), env={"PATH": "/nonexistent"})
    assert out.returncode == 2 and "vmware-rpctool not found" in out.stderr


def test_property_values_are_checked_where_they_are_parsed(keys):
    base = {
        "radium.name": "a",
        "radium.server_secret_key": keys["server"][1],
        "radium.admin_public_key": keys["admin"][0],
    }
    s = parse(base)
    assert s.network.dhcp and s.listen_port == 7450 and s.metrics_listen == "127.0.0.1:9450"
    assert s.server_public_key == keys["server"][0] and keys["server"][1] not in repr(s)
    assert parse({**base, "radium.metrics_listen": "off"}).metrics_listen is None
    keys_text = f"{SSH_KEY};  {SSH_KEY}\n"
    assert parse({**base, "radium.ssh_authorized_keys": keys_text}).ssh_authorized_keys == (SSH_KEY, SSH_KEY)
    s = parse({**base, "radium.network.ip": "10.1.2.3/16", "radium.network.dns": "1.1.1.1 8.8.8.8"})
    assert str(s.network.address) == "10.1.2.3/16" and len(s.network.dns) == 2

    for extra, text in [
        ({"radium.network.gateway": "10.0.0.1"}, "needs a static"),
        ({"radium.network.ip": "10.0.0.5/24", "radium.network.gateway": "fd00::1"}, "is IPv6"),
        ({"radium.network.ip": "10.0.0.5"}, "ADDR/PREFIX"),
        ({"radium.metrics_listen": "9450"}, "HOST:PORT"),
        ({"radium.ssh_authorized_keys": "ssh-ed25519 bm90IGEga2V5"}, "not a ssh-ed25519 key"),
        ({"radium.admin_name": "../x"}, "invalid name"),
        ({"radium.network.dns": "dns.example"}, "not an IP address"),
    ]:
        with pytest.raises(PropertyError) as err:
            parse({**base, **extra})
        assert text in str(err.value), str(err.value)
        assert all(p.startswith("radium.") for p in err.value.problems)


# --- the systemd units ------------------------------------------------------------------


def unit(name: str) -> dict[str, list[str]]:
    """A unit's settings as `Section.Key` -> values (repeated keys kept)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    # verify checks that ExecStart's program exists: the units name /opt/radium/bin (the image's
    # install); here they point at stand-ins, and nothing else about them changes.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("radiumd", "radium-firstboot"):
        (bin_dir / program).write_text("#!/bin/sh\n")
        (bin_dir / program).chmod(0o755)
    units = []
    for src in sorted(UNITS.glob("*.service")):
        target = tmp_path / src.name
        text = src.read_text()
        assert "/opt/radium/bin/" in text
        target.write_text(text.replace("/opt/radium/bin/", f"{bin_dir}/"))
        units.append(str(target))
    assert [Path(u).name for u in units] == ["radium-firstboot.service", "radiumd.service"]

    def verify(*paths: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [analyze, "verify", "--man=no", *paths], capture_output=True, text=True, timeout=60
        )

    out = verify(*units)
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr

    # The check has teeth: a misspelt setting is reported.
    broken = tmp_path / "broken.service"
    broken.write_text((tmp_path / "radiumd.service").read_text().replace("NoNewPrivileges", "NoNewPrivilege"))
    out = verify(str(broken))
    assert "Unknown key" in out.stderr and "NoNewPrivilege" in out.stderr


def test_radiumd_unit_hardening_keeps_what_runs_need():
    u = unit("radiumd.service")
    assert u["Service.ExecStart"] == [
        "/opt/radium/bin/radiumd --config /etc/radium/radiumd.toml --user radium"
    ]
    # ... the user it drops to, made by systemd-sysusers, with the groups of GPUs' device nodes.
    users = [line.split() for line in (UNITS / "radium.sysusers").read_text().splitlines()]
    users = [fields for fields in users if fields and not fields[0].startswith("#")]
    assert users[0][:3] == ["u", "radium", "-"] and users[0][-1] == "/usr/sbin/nologin"
    assert sorted(tuple(f) for f in users[1:]) == [("m", "radium", "render"), ("m", "radium", "video")]
    assert u["Service.Restart"] == ["on-failure"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelModules": "yes",
        "Delegate": "yes",  # each run's cgroup is made in the unit's subtree (run/limits.py)
        "LockPersonality": "yes",
        "StateDirectory": "radium",
        "ConfigurationDirectory": "radium",
    }.items():
        assert u[f"Service.{key}"] == [value], key
    # These would break `radium run` (see the unit's comments and the tests below).
    for key in (
        "ProtectKernelTunables",
        "ProtectKernelLogs",
        "PrivateDevices",
        "RestrictNamespaces",
        "PrivateUsers",
        "ProtectControlGroups",  # /sys/fs/cgroup read-only: no run's cgroup could be made
        "MemoryDenyWriteExecute",
        "ProtectClock",
        "DeviceAllow",
        "CapabilityBoundingSet",
        "User",
    ):
        assert f"Service.{key}" not in u, key
    assert "radium-firstboot.service" in " ".join(u["Unit.After"])

    f = unit("radium-firstboot.service")
    assert f["Service.Type"] == ["oneshot"] and f["Service.RemainAfterExit"] == ["yes"]
    assert f["Service.ExecStart"] == ["/opt/radium/bin/radium-firstboot"]
    before = " ".join(f["Unit.Before"]).split()
    assert {"radiumd.service", "systemd-networkd.service", "network-pre.target"} <= set(before)


def _can_map_ids() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("unshare", "setpriv", "newuidmap"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    subuid = Path("/etc/subuid").read_text() if Path("/etc/subuid").exists() else ""
    if not any(line.startswith("root:200000:") for line in subuid.splitlines()):
        return "root has no delegated ids in /etc/subuid (./dev setup adds them)"
    return None


RUN_LIKE = "unshare --user --map-users=200000,0,65536 --map-groups=200000,0,65536 --pid --fork --mount-proc"


def test_no_new_privileges_still_lets_root_map_a_runs_ids():
    """radiumd.service sets NoNewPrivileges: newuidmap is setuid, but root gains nothing from it."""
    reason = _can_map_ids()
    if reason:
        pytest.skip(reason)
    out = subprocess.run(
        ["setpriv", "--no-new-privs", "--", *RUN_LIKE.split(), "--setuid=1000", "--setgid=1000",
         "--", "sh", "-c", "id -u; grep NoNewPrivs /proc/self/status; cat /proc/self/uid_map"],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0] == "1000" and lines[1].split() == ["NoNewPrivs:", "1"]
    assert lines[2].split() == ["0", "200000", "65536"]


def test_protect_kernel_tunables_would_break_a_runs_proc():
    """Why radiumd.service leaves out ProtectKernelTunables: /proc/sys over-mounted, no fresh /proc."""
    reason = _can_map_ids()
    if reason:
        pytest.skip(reason)
    script = textwrap.dedent(
        f"""
        set -e
        {RUN_LIKE} true && echo plain-ok
        mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys
        {RUN_LIKE} true && echo tunables-ok || echo tunables-refused
        """
    )
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if "plain-ok" not in out.stdout:
        pytest.skip(f"this machine cannot mount a /proc in a user namespace at all: {out.stderr.strip()}")
    assert "tunables-refused" in out.stdout, out.stdout + out.stderr


# --- the descriptor in vCenter (the simulator) ------------------------------------------------


def test_the_package_imports_into_vcenter(tmp_path, keys):
    """What `radium-admin appliance deploy` will do first: import spec, NFC upload, a VM."""
    from radium.vcenter import sim

    missing = sim.missing()
    if missing:
        pytest.skip("vCenter simulator unavailable: " + "; ".join(missing))
    connect = pytest.importorskip("pyVim.connect")
    from pyVmomi import vim

    path = ovf.write_ovf(tmp_path / "pkg", "radium-appliance", cpus=2, memory_mib=4096, disk_gib=8)
    values = deploy_values(
        path.read_text(), name="gpu9", server_secret_key=keys["server"][1], admin_public_key=keys["admin"][0]
    )
    parse(values)  # what deploy checks before creating anything
    with sim.start(clusters=1, hosts_per_cluster=1, gpus_per_host=1, vms=0) as vc:
        si = connect.SmartConnect(**vc.connect_args(), disableSslCertValidation=True)
        try:
            content = si.RetrieveContent()
            dc = content.rootFolder.childEntity[0]
            host = dc.hostFolder.childEntity[0].host[0]
            pool, datastore = host.parent.resourcePool, host.datastore[0]
            result = content.ovfManager.CreateImportSpec(
                ovfDescriptor=path.read_text(),
                resourcePool=pool,
                datastore=datastore,
                cisp=vim.OvfManager.CreateImportSpecParams(
                    entityName="gpu9",
                    propertyMapping=[vim.KeyValue(key=k, value=v) for k, v in values.items()],
                ),
            )
            assert not result.error and not result.warning, (result.error, result.warning)
            config = result.importSpec.configSpec
            assert (config.numCPUs, config.memoryMB, config.version) == (2, 4096, "vmx-17")
            kinds = {type(c.device).__name__ for c in config.deviceChange}
            assert {"vim.vm.device.ParaVirtualSCSIController", "vim.vm.device.VirtualDisk"} <= kinds
            assert "vim.vm.device.VirtualVmxnet3" in kinds
            assert [f.path for f in result.fileItem] == [path.with_name("radium-appliance-disk1.vmdk").name]

            lease = pool.ImportVApp(spec=result.importSpec, folder=dc.vmFolder, host=host)
            disk = path.with_name(result.fileItem[0].path).read_bytes()
            url = lease.info.deviceUrl[0].url.replace("*", f"{vc.host}:{vc.port}")
            import ssl
            import urllib.request

            request = urllib.request.Request(url, data=disk, method="PUT")
            request.add_header("Content-Type", "application/x-vnd.vmware-streamVmdk")
            with urllib.request.urlopen(request, context=ssl._create_unverified_context(), timeout=30) as r:
                assert r.status in (200, 201)
            vm = lease.info.entity
            lease.HttpNfcLeaseComplete()
            assert vm.name == "gpu9"
            extra = {o.key: o.value for o in vm.config.extraConfig}
            # The simulator files vApp properties under extraConfig; vCenter builds guestinfo.ovfEnv.
            assert extra.get("radium.name") == "gpu9"
        finally:
            connect.Disconnect(si)


# --- under a real systemd: this machine's OS booted in systemd-nspawn -----------------------------


@pytest.mark.timeout(900)
def test_the_units_boot_an_appliance_under_systemd(tmp_path, keys):
    """This machine's OS, booted in a container with the units enabled, becomes an appliance.

    radium-firstboot.service configures it from guestinfo (a stand-in vmware-rpctool);
    radiumd.service, hardened as shipped, serves the operator's keys, and `radium run`
    works under that hardening.  Radium is installed the image's way, in /opt/radium,
    its user made by systemd-sysusers: radiumd runs as that user, without capabilities,
    and only its fork server and supervisors are root.
    """
    reason = Container.missing() or (None if shutil.which("git") else "git not installed")
    if reason:
        pytest.skip(reason)
    repo = Path(__file__).resolve().parents[1]
    box = Container(tmp_path / "box")
    root = box.root
    try:
        files = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        src = root / "opt/radium-src"  # not /tmp: the container gets a fresh one
        for name in files:
            if not name.startswith("tests/") and (repo / name).is_file():
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(repo / name, src / name)
        (root / "usr/lib/sysusers.d").mkdir(parents=True, exist_ok=True)
        shutil.copy(UNITS / "radium.sysusers", root / "usr/lib/sysusers.d/radium.conf")
        install = subprocess.run(
            [*box.nspawn, "sh", "-c",
             "python3.11 -m venv /opt/radium && /opt/radium/bin/pip install -q '/opt/radium-src[appliance]'"
             " && systemd-sysusers /usr/lib/sysusers.d/radium.conf"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]

        system = root / "etc/systemd/system"
        for name, target in (("radium-firstboot.service", "sysinit"), ("radiumd.service", "multi-user")):
            shutil.copy(UNITS / name, system / name)
            (system / f"{target}.target.wants").mkdir(exist_ok=True)
            (system / f"{target}.target.wants" / name).unlink(missing_ok=True)
            (system / f"{target}.target.wants" / name).symlink_to(f"../{name}")
        for stale in ("etc/radium", "var/lib/radium"):
            shutil.rmtree(root / stale, ignore_errors=True)
        guestinfo = root / "var/lib/fake-guestinfo"
        guestinfo.mkdir(parents=True)
        rpctool = root / "usr/local/bin/vmware-rpctool"
        rpctool.write_text(FAKE_RPCTOOL.replace("$GUESTINFO", "/var/lib/fake-guestinfo"))
        rpctool.chmod(0o755)
        server_public, server_secret = keys["server"]
        admin_public, admin_secret = keys["admin"]
        values = deploy_values(
            ovf.descriptor(),
            name="nspawn1",
            server_secret_key=server_secret,
            admin_public_key=admin_public,
            admin_name="ops",
        )
        (guestinfo / "guestinfo.ovfEnv").write_text(ovf.environment(values))
        save_client_config(
            ClientConfig(
                client=ClientSection(name="ops", public_key=admin_public, secret_key=admin_secret),
                appliances=[
                    ApplianceEntry(name="nspawn1", address="tcp://127.0.0.1:7450", public_key=server_public)
                ],
            ),
            root / "root/ops.toml",
        )

        box.start()
        box.wait_until(
            lambda: (
                box.inside("systemctl is-active radiumd.service").stdout.strip() == "active"
                and "radiumd serving" in box.inside("journalctl -u radiumd.service --no-pager").stdout
            ),
            "radiumd serving",
        )
        log = box.inside("journalctl -u radium-firstboot.service -u radiumd.service --no-pager -o cat").stdout
        assert server_public in log and server_secret not in log
        assert server_secret not in (guestinfo / "guestinfo.ovfEnv").read_text()  # scrubbed
        env = "RADIUM_ADMIN_CONFIG=/root/ops.toml RADIUM_CONFIG=/root/vm1.toml RADIUM_STATE_DIR=/root/rs"
        out = box.inside(
            f"export {env}; set -e; cd /opt/radium/bin;"
            " ./radium-admin enroll vm1 --appliance nspawn1 -o /root/vm1.toml >/dev/null;"
            " mkdir -p /root/w; cd /root/w; echo hello > in.txt;"
            " /opt/radium/bin/radium run -- sh -c"
            " 'cat in.txt; grep NoNewPrivs /proc/self/status; echo out >out.txt';"
            " cat out.txt"
        )
        assert out.returncode == 0, out.stdout + out.stderr
        lines = out.stdout.split("\n")
        assert lines[0] == "hello" and lines[1].split() == ["NoNewPrivs:", "1"] and lines[2] == "out", (
            out.stdout
        )
        shown = box.inside(
            "systemctl show radiumd.service -p NoNewPrivileges -p ProtectSystem -p ProtectHome"
        ).stdout
        assert (
            "NoNewPrivileges=yes" in shown and "ProtectSystem=strict" in shown and "ProtectHome=yes" in shown
        )

        # radiumd is radium's, with no capability; its fork server and supervisors are root's.
        radium_uid = box.inside("id -u radium").stdout.strip()
        main_pid = box.inside("systemctl show -p MainPID --value radiumd.service").stdout.strip()
        status = box.inside(f"cat /proc/{main_pid}/status").stdout
        fields = {line.split(":")[0]: line.split()[1:] for line in status.splitlines()}
        assert fields["Uid"] == [radium_uid] * 4 and fields["Gid"][0] != "0", status
        assert fields["CapEff"] == ["0000000000000000"] and fields["CapPrm"] == ["0000000000000000"]
        procs = box.inside("ps -e -o user=,comm=").stdout.split("\n")
        assert "root radium-forksrv" in [" ".join(p.split()) for p in procs], procs
        assert "root radium-sup" in [" ".join(p.split()) for p in procs], procs  # the spare
        # Enrolment over the network (above) wrote the client's key as radium.
        assert box.inside("stat -c %U /etc/radium/clients.d/vm1.key").stdout.strip() == "radium"
        # The run's folder (its upper layer holds files of the run's ids) is gone: the fork
        # server removed it for radiumd, which could not.
        wait_until(lambda: list((box.state / "runs").iterdir()) == [], 30, "the run's folder removed")

        # Without its fork server, radiumd (not root) cannot start supervisors: runs are
        # refused, saying why and what to do, and radiumd serves on.
        box.inside("pkill -KILL -x radium-forksrv; pkill -KILL -x radium-sup")
        refused = box.inside(f"export {env}; cd /root/w; /opt/radium/bin/radium run -- true")
        assert refused.returncode == 69, refused.stdout + refused.stderr
        assert "fork server is gone" in refused.stderr and "restart radiumd" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert box.inside("systemctl is-active radiumd.service").stdout.strip() == "active"
    finally:
        box.close()
