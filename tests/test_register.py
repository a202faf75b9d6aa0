"""Client VMs: `radium-admin register-vm / unregister-vm / clients` and `radium configure --from-guestinfo`.

Against the real parts: the vCenter simulator (vcenter/sim), two real radiumd
appliances on loopback with an operator key enrolled on both (the operator
configuration, RADIUM_ADMIN_CONFIG), the real `radium-admin` and `radium`
binaries, and for `--ssh` a real OpenSSH sshd on a free loopback port (its own
host key, an authorized_keys for a generated user key) whose `radium` is this
checkout's.  What register-vm wrote is read back with pyVmomi; the client inside
the VM is played by `radium configure --from-guestinfo` reading files named like
the guestinfo keys (RADIUM_GUESTINFO_DIR), as vmware-rpctool would read them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from support import BIN, Appliance, admin, admin_env, free_port, ok_json, sshd_config

from radium import vcenter
from radium.remoting import guestinfo
from radium.remoting._config import load_client_config
from radium.vcenter import settings as vsettings
from radium.vcenter import sim

pytest.importorskip("pyVmomi", reason="pyvmomi is not installed")

pytestmark = pytest.mark.timeout(120)

MISSING = sim.missing()
needs_vcsim = pytest.mark.skipif(bool(MISSING), reason="vCenter simulator unavailable: " + "; ".join(MISSING))

USER, PASSWORD = "radium", "s3cret"
VM = "DC0_C0_RP0_VM{}".format  # the simulator's VMs: DC0_C0_RP0_VM0, _VM1, _VM2 (host DC0_C0_H0)
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
SSH_KEYGEN = shutil.which("ssh-keygen")


# ---------------------------------------------------------------------------
# the real parts
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vc():
    if MISSING:
        pytest.skip("vCenter simulator unavailable: " + "; ".join(MISSING))
    try:
        s = sim.start(
            username=USER,
            password=PASSWORD,
            clusters=1,
            hosts_per_cluster=1,
            standalone_hosts=0,
            gpus_per_host=1,
            vms=3,
        )
    except sim.VcsimUnavailable as exc:
        pytest.skip(str(exc))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def session(vc):
    settings = vsettings.resolve(
        url=vc.sdk_url, user=USER, password=PASSWORD, ca=vc.ca_file, env={}, use_profiles=False
    )
    with vcenter.connect(settings) as s:
        yield s


@pytest.fixture(scope="module")
def appliances(tmp_path_factory):
    """Two appliances, app1 and app2, and an operator key trusted by both (the admin configuration)."""
    root = tmp_path_factory.mktemp("appliances")
    apps = [Appliance(root / name, name=name) for name in ("app1", "app2")]
    for a in apps:
        a.write_config()
    started = []
    try:
        for a in apps:
            started.append(a.start())
        ops = apps[0].enroll("ops", role="admin")
        out = subprocess.run(
            [
                str(BIN / "radium-admin"),
                "enroll",
                "ops",
                "--role",
                "admin",
                "--appliance",
                str(apps[1].config),
                "--address",
                apps[1].endpoint,
                "--from-bundle",
                str(ops),
                "-o",
                str(ops),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        yield {"app1": apps[0], "app2": apps[1], "admin_config": ops}
    finally:
        for a in started:
            a.stop()


@pytest.fixture
def env(tmp_path, vc, appliances) -> dict[str, str]:
    return admin_env(
        tmp_path / "home", vc, USER, PASSWORD, RADIUM_ADMIN_CONFIG=str(appliances["admin_config"])
    )


def radium(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "radium"), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def vm_ref(session, name: str):
    from pyVmomi import vim

    view = session.content.viewManager.CreateContainerView(
        session.content.rootFolder, [vim.VirtualMachine], True
    )
    try:
        return next(v for v in view.view if v.name == name)
    finally:
        view.DestroyView()


def guestinfo_on(session, name: str) -> dict[str, str]:
    """The VM's guestinfo.radium.* extraConfig keys, as vCenter has them now."""
    vm = vm_ref(session, name)
    return {o.key: o.value for o in vm.config.extraConfig if o.key.startswith("guestinfo.radium.")}


def attribute_on(session, name: str) -> str | None:
    fields = {f.name: f.key for f in session.content.customFieldsManager.field or []}
    if "radium.client" not in fields:
        return None
    values = [v.value for v in vm_ref(session, name).customValue if v.key == fields["radium.client"]]
    assert len(values) <= 1
    return values[0] if values and values[0] else None


def authorised(appliance: Appliance, client: str) -> str | None:
    """The public key the appliance trusts for `client` (its clients folder), or None."""
    import zmq.auth

    key = appliance.dir / "clients.d" / f"{client}.key"
    return zmq.auth.load_certificate(str(key))[0].decode() if key.exists() else None


class GuestVM:
    """The client inside a VM: its guestinfo (files named like the keys) and its own config and state."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.guestinfo = root / "guestinfo"
        self.config = root / "client.toml"
        self.env = dict(
            env,
            RADIUM_GUESTINFO_DIR=str(self.guestinfo),
            RADIUM_CONFIG=str(self.config),
            RADIUM_STATE_DIR=str(root / "state"),
        )

    def boot_with(self, values: dict[str, str]) -> None:
        """What vmware-rpctool would read in the VM now."""
        shutil.rmtree(self.guestinfo, ignore_errors=True)
        self.guestinfo.mkdir(parents=True)
        for key, value in values.items():
            (self.guestinfo / key).write_text(value + "\n")

    def radium(self, *args: str) -> subprocess.CompletedProcess:
        return radium(*args, env=self.env)


# ---------------------------------------------------------------------------
# register, re-register, unregister
# ---------------------------------------------------------------------------


@needs_vcsim
def test_register_vm_authorises_one_key_everywhere_and_hands_it_to_the_vm(env, session, appliances, tmp_path):
    vm = VM(0)
    reg = ok_json(admin("register-vm", vm, "--appliance", "app1", "app2", "--json", env=env))
    assert reg["vm"] == vm and reg["client"] == vm and reg["new_key"] is True and reg["changed"] is True
    assert [a["name"] for a in reg["appliances"]] == ["app1", "app2"]
    assert reg["appliances"][1]["address"] == appliances["app2"].endpoint
    assert reg["ssh"] is None

    # What vCenter now holds: the documented keys, and the custom attribute.
    info = guestinfo_on(session, vm)
    assert sorted(info) == sorted(guestinfo.KEYS) == sorted(reg["guestinfo_written"])
    assert info[guestinfo.FORMAT] == "1"
    assert info[guestinfo.NAME] == vm and info[guestinfo.PUBLIC_KEY] == reg["public_key"]
    listed = json.loads(info[guestinfo.APPLIANCES])
    assert [(a["name"], a["address"]) for a in listed] == [
        ("app1", appliances["app1"].endpoint),
        ("app2", appliances["app2"].endpoint),
    ]
    assert attribute_on(session, vm) == "app1,app2"

    # Inside the VM: radium configure --from-guestinfo, and both appliances accept the key.
    guest = GuestVM(tmp_path / "vm", env)
    guest.boot_with(info)
    out = guest.radium("configure", "--from-guestinfo", "--json")
    assert json.loads(out.stdout)["appliances"] == ["app1", "app2"], out.stderr
    assert stat.S_IMODE(guest.config.stat().st_mode) == 0o600
    assert load_client_config(guest.config).client.secret_key == info[guestinfo.SECRET_KEY]
    devices = json.loads(guest.radium("list-gpus", "--json").stdout)
    assert devices["errors"] == [] and {d["appliance"] for d in devices["devices"]} == {"app1", "app2"}
    assert authorised(appliances["app1"], vm) == authorised(appliances["app2"], vm) == reg["public_key"]

    # clients lists it.
    clients = ok_json(admin("clients", "--json", env=env))["clients"]
    assert [(c["vm"], c["host"], c["power_state"], c["client"], c["appliances"]) for c in clients] == [
        (vm, "DC0_C0_H0", "poweredOn", vm, ["app1", "app2"])
    ]
    table = admin("clients", env=env).stdout
    assert vm in table and "app1, app2" in table and "DC0_C0_H0" in table

    # Registering again with the same appliances changes nothing, and keeps the key.
    again = ok_json(admin("register-vm", vm, "--appliance", "app1", "--appliance", "app2", "--json", env=env))
    assert again["public_key"] == reg["public_key"]
    assert (again["new_key"], again["changed"], again["guestinfo_written"]) == (False, False, [])
    assert guestinfo_on(session, vm) == info

    # Only app1 now: the key is revoked on app2, and the VM's guestinfo says app1 alone.
    fewer = ok_json(admin("register-vm", vm, "--appliance", "app1", "--json", env=env))
    assert fewer["revoked"] == {"app2": vm} and fewer["guestinfo_written"] == [guestinfo.APPLIANCES]
    assert attribute_on(session, vm) == "app1"
    guest.boot_with(guestinfo_on(session, vm))
    assert guest.radium("configure", "--from-guestinfo").returncode == 0
    assert [a.name for a in load_client_config(guest.config).appliances] == ["app1"]  # replaced, not merged

    assert authorised(appliances["app2"], vm) is None

    # --new-key: another key pair, which replaces the old one on the appliance.
    rekeyed = ok_json(admin("register-vm", vm, "--appliance", "app1", "--new-key", "--json", env=env))
    assert rekeyed["new_key"] is True and rekeyed["public_key"] != reg["public_key"]
    assert authorised(appliances["app1"], vm) == rekeyed["public_key"]
    guest.boot_with(guestinfo_on(session, vm))
    assert guest.radium("configure", "--from-guestinfo").returncode == 0
    assert guest.radium("list-gpus").returncode == 0

    # unregister-vm: the key is revoked, the keys and the attribute are gone.
    gone = ok_json(admin("unregister-vm", vm, "--json", env=env))
    assert gone["revoked"] == ["app1"] and gone["client"] == vm
    assert authorised(appliances["app1"], vm) is None
    assert sorted(gone["guestinfo_cleared"]) == sorted(guestinfo.KEYS) and gone["attribute_cleared"] is True
    refused = guest.radium("list-gpus", "--json")
    assert refused.returncode == 77, refused.stdout + refused.stderr
    assert "refused this client's key" in json.loads(refused.stdout)["errors"][0]["message"]
    assert guestinfo_on(session, vm) == {} and attribute_on(session, vm) is None
    assert ok_json(admin("clients", "--json", env=env))["clients"] == []

    # Unregistering again is a no-op; the VM's guestinfo no longer configures anything.
    assert ok_json(admin("unregister-vm", vm, "--json", env=env))["changed"] is False
    guest.boot_with({})
    out = guest.radium("configure", "--from-guestinfo")
    assert out.returncode == 2 and "not registered" in out.stderr


@needs_vcsim
def test_unknown_names_are_refused_before_anything_changes(env, session):
    out = admin("register-vm", "DC0_C0_RP0_VMO", "--appliance", "app1", env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no VM named 'DC0_C0_RP0_VMO'" in out.stderr and "close matches: " in out.stderr
    assert VM(0) in out.stderr.split("close matches: ")[1]

    err = json.loads(admin("register-vm", VM(1), "--appliance", "app9", "--json", env=env).stdout)["error"]
    assert err["code"] == "config" and "no appliance 'app9'" in err["message"] and "app1" in err["message"]
    assert guestinfo_on(session, VM(1)) == {} and attribute_on(session, VM(1)) is None

    out = admin("unregister-vm", "DC0_C0_RP0_VM", "--json", env=env)
    assert json.loads(out.stdout)["error"]["code"] == "not-found"


@needs_vcsim
def test_unregister_keeps_the_record_when_an_appliance_cannot_revoke(env, session, appliances, tmp_path):
    """The guestinfo is where the key is known to be authorised: not cleared while a revocation fails."""
    vm = VM(2)
    ok_json(admin("register-vm", vm, "--appliance", "app1", "--json", env=env))
    # An operator configuration that lacks app1: the key cannot be revoked there.
    other = tmp_path / "other-admin.toml"
    other.write_text(appliances["admin_config"].read_text().split("[[appliances]]")[0])
    other.chmod(0o600)
    lacking = dict(env, RADIUM_ADMIN_CONFIG=str(other))
    out = admin("unregister-vm", vm, env=lacking)
    assert out.returncode == 1 and "could not be revoked on: app1" in out.stderr and "--force" in out.stderr
    assert guestinfo.NAME in guestinfo_on(session, vm) and attribute_on(session, vm) == "app1"
    # The real operator configuration revokes it.
    assert ok_json(admin("unregister-vm", vm, "--json", env=env))["revoked"] == ["app1"]
    assert guestinfo_on(session, vm) == {}


def test_guestinfo_round_trip_and_rpctool_reader(tmp_path, monkeypatch):
    """The contract: encode → decode is the identity; vmware-rpctool is asked `info-get KEY`."""
    from radium.remoting import enrolment
    from radium.remoting._config import ApplianceEntry

    config = enrolment.new_identity("vm-a")
    server = enrolment.new_identity("server")
    config.appliances = [
        ApplianceEntry(name="g1", address="tcp://10.0.0.1:7450", public_key=server.client.public_key)
    ]
    values = guestinfo.encode(config)
    assert list(values) == list(guestinfo.KEYS) and all("\n" not in v for v in values.values())
    back = guestinfo.decode(values)
    assert (back.client, back.appliances) == (config.client, config.appliances)

    # A stand-in for open-vm-tools' vmware-rpctool: prints the value, or fails like it does when unset.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    store = tmp_path / "store"
    store.mkdir()
    for k, v in values.items():
        (store / k).write_text(v + "\n")
    tool = bin_dir / "vmware-rpctool"
    tool.write_text(
        "#!/bin/sh\n"
        "key=${1#info-get }\n"
        f'if [ -f "{store}/$key" ]; then cat "{store}/$key"; else echo "No value found"; exit 1; fi\n'
    )
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    read = guestinfo.read(guestinfo.rpctool_reader())
    assert read.client == config.client and read.appliances == config.appliances
    (store / guestinfo.SECRET_KEY).unlink()
    with pytest.raises(Exception, match=r"guestinfo.radium.client.secret_key not set.*register-vm"):
        guestinfo.read(guestinfo.rpctool_reader())


# ---------------------------------------------------------------------------
# --ssh: a real sshd
# ---------------------------------------------------------------------------


def _keygen(path: Path) -> str:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture
def sshd(tmp_path):
    """An OpenSSH sshd on a free loopback port; logs in the current user with a generated key."""
    if SSHD is None or SSH_KEYGEN is None:
        pytest.skip("OpenSSH is not installed: apt-get install -y openssh-server openssh-client")
    if os.geteuid() != 0:
        pytest.skip("sshd with privilege separation needs root")
    d = tmp_path / "sshd"
    d.mkdir()
    host_pub = _keygen(d / "host_key")
    user_pub = _keygen(d / "user_key")
    (d / "authorized_keys").write_text(user_pub + "\n")
    vm_home = d / "vm"  # what the VM's radium writes: kept inside this test's folder
    port = free_port()
    config = sshd_config(
        f"127.0.0.1:{port}",
        d,
        "sshd",
        f"AuthorizedKeysFile {d}/authorized_keys",
        f"SetEnv RADIUM_CONFIG={vm_home}/client.toml RADIUM_STATE_DIR={vm_home}/state",
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation folder
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.skip(f"sshd did not start: {proc.communicate()[1][-500:]}")
            time.sleep(0.05)
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    yield {
        "target": f"{user}@127.0.0.1:{port}",
        "key": d / "user_key",
        "known_line": f"[127.0.0.1]:{port} {' '.join(host_pub.split()[:2])}",
        "vm_config": vm_home / "client.toml",
        "dir": d,
    }
    proc.terminate()
    proc.wait(10)


@needs_vcsim
def test_register_vm_over_ssh_installs_the_config_and_runs_health(env, session, sshd, tmp_path):
    vm = VM(1)
    known = tmp_path / "known_hosts"
    known.write_text("")
    ssh = ["--ssh", sshd["target"], "--key", str(sshd["key"]), "--remote-radium", str(BIN / "radium")]

    # A host key not in known_hosts is refused, before anything changes.
    out = admin("register-vm", vm, "--appliance", "app1", *ssh, "--known-hosts", str(known), env=env)
    assert out.returncode == 77 and "Traceback" not in out.stderr
    assert "is not in" in out.stderr and "--accept-new-host-key" in out.stderr and "SHA256:" in out.stderr
    assert guestinfo_on(session, vm) == {} and not sshd["vm_config"].exists()

    # With the host key known: the configuration lands in the VM (0600) and radium health passes there.
    known.write_text(sshd["known_line"] + "\n")
    args = ["register-vm", vm, "--appliance", "app1", "app2", *ssh, "--known-hosts", str(known), "--json"]
    reg = ok_json(admin(*args, env=env))
    assert reg["ssh"]["healthy"] is True, reg["ssh"]
    assert reg["ssh"]["config"] == str(sshd["vm_config"])
    assert [a["appliance"] for a in reg["ssh"]["health"]["appliances"]] == ["app1", "app2"]
    assert stat.S_IMODE(sshd["vm_config"].stat().st_mode) == 0o600
    pushed = load_client_config(sshd["vm_config"])
    assert pushed.client.public_key == reg["public_key"] == guestinfo_on(session, vm)[guestinfo.PUBLIC_KEY]
    assert [a.name for a in pushed.appliances] == ["app1", "app2"]
    assert not list(Path("/tmp").glob("tmp.*/guestinfo.radium.client.secret_key"))  # the handover is gone

    # --accept-new-host-key records a first-seen key; a changed key is always refused.
    fresh = tmp_path / "fresh_known_hosts"
    text = ok_json(admin(*args[:-3], "--known-hosts", str(fresh), "--accept-new-host-key", "--json", env=env))
    assert text["ssh"]["healthy"] is True and fresh.read_text().split() == sshd["known_line"].split()
    other = _keygen(tmp_path / "other_host_key").split()
    fresh.write_text(f"{sshd['known_line'].split()[0]} {other[0]} {other[1]}\n")
    out = admin(*args[:-3], "--known-hosts", str(fresh), "--accept-new-host-key", env=env)
    assert out.returncode == 77 and "has CHANGED" in out.stderr

    ok_json(admin("unregister-vm", vm, "--json", env=env))
