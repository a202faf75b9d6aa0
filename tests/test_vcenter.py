"""`radium.vcenter` and the vCenter verbs of `radium-admin`, against the real simulator.

The shared simulator (see vcenter/sim/main.go's header): cluster DC0_C0 with
DC0_C0_H0 (NVIDIA) and DC0_C0_H1 (AMD), standalone DC0_H0 (NVIDIA); 4 GPUs per
host at 0000:3b/5e/86/af:00.0, every one passthrough-capable, the 1st and 3rd
enabled and active.  Tests that change passthrough use DC0_H0 and put it back;
tests that create VMs remove them.  Commands run as processes, with their own
HOME, and are checked through their JSON.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import socket
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path

import msgspec
import pytest
from support import BIN

from radium import vcenter
from radium.vcenter import secrets as vsecrets  # noqa: F401 (vcenter.secrets)
from radium.vcenter import settings as vsettings
from radium.vcenter import sim

pytest.importorskip("pyVmomi", reason="pyvmomi is not installed")
from pyVmomi import vim  # noqa: E402

pytestmark = pytest.mark.timeout(180)

MISSING = sim.missing()
needs_vcsim = pytest.mark.skipif(bool(MISSING), reason="vCenter simulator unavailable: " + "; ".join(MISSING))

USER, PASSWORD = "radium", "s3cret"
GPU_IDS = ["0000:3b:00.0", "0000:5e:00.0", "0000:86:00.0", "0000:af:00.0"]
NVIDIA = ("0x10de", "0x1db4", "0x0302", "NVIDIA", "Tesla V100 PCIe 16GB")
AMD = ("0x1002", "0x738c", "0x0380", "AMD", "Instinct MI100")
HOSTS = {"DC0_C0_H0": ("DC0_C0", NVIDIA), "DC0_C0_H1": ("DC0_C0", AMD), "DC0_H0": (None, NVIDIA)}


# ---------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------


def start_sim(**kw) -> sim.Simulator:
    if MISSING:
        pytest.skip("vCenter simulator unavailable: " + "; ".join(MISSING))
    try:
        return sim.start(username=USER, password=PASSWORD, **kw)
    except sim.VcsimUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def vc():
    s = start_sim(clusters=1, hosts_per_cluster=2, standalone_hosts=1, gpus_per_host=4, vms=1)
    yield s
    s.stop()


@pytest.fixture
def home(tmp_path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def env(home) -> dict[str, str]:
    """A clean environment: its own HOME and config folder, no RADIUM_VCENTER_* from outside."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("RADIUM_VCENTER_")}
    e.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    return e


def admin(
    *args: str, env: dict, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "radium-admin"), *args],
        capture_output=True,
        text=True,
        input=stdin if stdin is not None else "",
        timeout=timeout,
        env=env,
    )


def flags(s: sim.Simulator) -> list[str]:
    return ["--url", s.sdk_url, "--user", USER, "--ca", str(s.ca_file)]


def with_password(env: dict, password: str = PASSWORD) -> dict:
    return dict(env, RADIUM_VCENTER_PASSWORD=password)


def ok_json(out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


def one_clear_line(out: subprocess.CompletedProcess) -> str:
    """The command failed with a single line on stderr and no traceback."""
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("radium-admin: "), out.stderr
    return lines[0]


def settings_for(s: sim.Simulator, **kw) -> vcenter.ConnectionSettings:
    args = dict(url=s.sdk_url, user=USER, password=PASSWORD, ca=s.ca_file, env={}, use_profiles=False)
    args.update(kw)
    return vsettings.resolve(**args)


@pytest.fixture(scope="module")
def session(vc):
    with vcenter.connect(settings_for(vc)) as s:
        yield s


def server_thumbprint(s: sim.Simulator) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((s.host, s.port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    import hashlib

    return hashlib.sha256(der).hexdigest()


def host_ref(session, name: str) -> vim.HostSystem:
    return vim.HostSystem(vcenter.collect_inventory(session).host(name).id, session.stub)


def passthru_state(host: vim.HostSystem) -> dict[str, tuple[bool, bool, bool]]:
    return {
        p.id: (p.passthruCapable, p.passthruEnabled, p.passthruActive) for p in host.config.pciPassthruInfo
    }


def restore(host: vim.HostSystem, before: dict[str, tuple[bool, bool, bool]]) -> None:
    """Put the GPUs' passthrough state back at once (applyNow also resets 'active')."""
    host.configManager.pciPassthruSystem.UpdatePassthruConfig(
        [vim.host.PciPassthruConfig(id=i, passthruEnabled=before[i][1], applyNow=True) for i in GPU_IDS]
    )
    assert passthru_state(host) == before


def gpu_vm(session, host_name: str, vm_name: str, pci_id: str, *, locked: bool = True) -> vim.VirtualMachine:
    """A VM on `host_name` with GPU `pci_id` passed through (the way a deployment adds it)."""
    host = host_ref(session, host_name)
    target = host.parent.environmentBrowser.QueryConfigTarget(host=host)
    system_id = target.pciPassthrough[0].systemId
    dev = next(d for d in host.hardware.pciDevice if d.id == pci_id)
    backing = vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo(
        id=dev.id,
        deviceId=format(dev.deviceId & 0xFFFF, "x"),
        systemId=system_id,
        vendorId=dev.vendorId,
        deviceName=dev.deviceName,
    )
    spec = vim.vm.ConfigSpec(
        name=vm_name,
        memoryMB=1024,
        numCPUs=2,
        guestId="otherGuest64",
        files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
        memoryReservationLockedToMax=locked,
        deviceChange=[
            vim.vm.device.VirtualDeviceSpec(
                operation="add", device=vim.vm.device.VirtualPCIPassthrough(key=-100, backing=backing)
            )
        ],
    )
    dc = session.content.rootFolder.childEntity[0]
    task = dc.vmFolder.CreateVM_Task(config=spec, pool=host.parent.resourcePool, host=host)
    return vcenter.wait(session, task)


def destroy(session, vm: vim.VirtualMachine) -> None:
    if vm.runtime.powerState == "poweredOn":
        vcenter.wait(session, vm.PowerOffVM_Task())
    vcenter.wait(session, vm.Destroy_Task())


# ---------------------------------------------------------------------------
# radium-admin hosts
# ---------------------------------------------------------------------------


@needs_vcsim
def test_hosts_lists_every_host_and_its_gpus_as_the_simulator_has_them(vc, env):
    data = ok_json(admin("hosts", "--json", *flags(vc), env=with_password(env)))
    hosts = {h["name"]: h for h in data["hosts"]}
    assert list(hosts) == sorted(HOSTS)
    for name, (cluster, (vendor_id, device_id, class_id, vendor, model)) in HOSTS.items():
        h = hosts[name]
        assert (h["cluster"], h["connection_state"], h["power_state"]) == (cluster, "connected", "poweredOn")
        assert h["maintenance_mode"] is False and h["id"].startswith("host-")
        # Only the GPUs: not the chipset, not the host's own SVGA adapter (class 0x0300, VMware).
        assert [d["address"] for d in h["accelerators"]] == GPU_IDS
        for i, d in enumerate(h["accelerators"]):
            enabled = i % 2 == 0
            assert (d["vendor_id"], d["device_id"], d["class_id"]) == (vendor_id, device_id, class_id)
            assert (d["vendor"], d["model"]) == (vendor, model)
            assert (d["capable"], d["enabled"], d["active"]) == (True, enabled, enabled), (name, d)
            assert d["held_by"] is None and d["configured_in"] == []
    # The host list (CreateContainerView, RetrievePropertiesEx, DestroyView), then one page.
    assert data["round_trips"] == 4


@needs_vcsim
def test_hosts_as_a_table(vc, env):
    out = admin("hosts", *flags(vc), env=with_password(env))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.split()[:3] == ["host", "cluster", "state"] for line in lines if line.strip())
    row = next(line for line in lines if line.strip().startswith("DC0_C0_H1"))
    assert "DC0_C0" in row and "0000:3b:00.0" in row and "AMD Instinct MI100" in row
    assert "3 hosts, 12 accelerators (6 enabled for passthrough, 0 held by a powered-on VM)" in out.stdout


@needs_vcsim
def test_the_session_is_logged_out_when_the_command_ends(vc, env, session):
    sessions = session.content.sessionManager
    mine = len(sessions.sessionList)
    with vcenter.connect(settings_for(vc)):
        assert len(sessions.sessionList) == mine + 1  # the list does count sessions
    assert len(sessions.sessionList) == mine
    ok_json(admin("hosts", "--json", *flags(vc), env=with_password(env)))
    assert len(sessions.sessionList) == mine


# ---------------------------------------------------------------------------
# passthrough
# ---------------------------------------------------------------------------


@needs_vcsim
def test_enabling_passthrough_shows_in_hosts_with_the_reboot_note(vc, env, session):
    host = host_ref(session, "DC0_H0")
    before = passthru_state(host)
    try:
        out = admin(
            "passthrough",
            "enable",
            "DC0_H0",
            "5e:00.0",
            "0000:3b:00.0",
            "--json",
            *flags(vc),
            env=with_password(env),
        )
        change = ok_json(out)
        assert change["host"] == "DC0_H0" and change["enable"] is True and change["changed"] is True
        devices = {d["address"]: d for d in change["devices"]}
        assert devices["0000:5e:00.0"] | {"description": ""} == {
            "address": "0000:5e:00.0",
            "description": "",
            "enabled_before": False,
            "enabled": True,
            "active": False,
            "changed": True,
            "reboot_needed": True,
        }
        assert devices["0000:3b:00.0"]["changed"] is False  # already enabled and active
        assert devices["0000:3b:00.0"]["reboot_needed"] is False
        assert change["reboot_needed"] is True and "reboot" in change["note"]

        listed = ok_json(admin("hosts", "--json", *flags(vc), env=with_password(env)))
        gpu = next(
            d
            for h in listed["hosts"]
            if h["name"] == "DC0_H0"
            for d in h["accelerators"]
            if d["address"] == "0000:5e:00.0"
        )
        assert (gpu["capable"], gpu["enabled"], gpu["active"]) == (True, True, False)

        text = admin("hosts", *flags(vc), env=with_password(env)).stdout
        assert "no (reboot pending)" in text
        assert text.splitlines()[-1] == "reboot pending (passthrough changed, not yet in effect): DC0_H0"

        # The same request again changes nothing, and still says the reboot is due.
        again = admin("passthrough", "enable", "DC0_H0", "0000:5e:00.0", *flags(vc), env=with_password(env))
        assert again.returncode == 0
        assert "already enabled" in again.stdout and "needs a reboot" in again.stdout

        # Disabling it again before the reboot: configured and in effect agree, no reboot needed.
        back = ok_json(
            admin(
                "passthrough",
                "disable",
                "DC0_H0",
                "0000:5e:00.0",
                "--json",
                *flags(vc),
                env=with_password(env),
            )
        )
        assert back["devices"][0]["enabled"] is False and back["reboot_needed"] is False
    finally:
        restore(host, before)


@needs_vcsim
def test_a_device_that_is_not_passthrough_capable_is_refused_with_what_to_do(vc, env, session):
    host = host_ref(session, "DC0_H0")
    before = passthru_state(host)
    out = admin(
        "passthrough", "enable", "DC0_H0", "0000:5e:00.0", "0000:00:00.0", *flags(vc), env=with_password(env)
    )
    line = one_clear_line(out)
    assert out.returncode == 3
    assert "0000:00:00.0" in line and "not passthrough-capable" in line
    assert "VT-d" in line and "0000:5e:00.0" in line  # what to check, and what can be passed through
    assert passthru_state(host) == before, "nothing changes when one device is refused"
    err = json.loads(
        admin(
            "passthrough", "enable", "DC0_H0", "0000:00:00.0", "--json", *flags(vc), env=with_password(env)
        ).stdout
    )
    assert err["error"]["code"] == "refused"


@needs_vcsim
def test_an_unknown_host_or_device_lists_close_matches(vc, env):
    out = admin("passthrough", "enable", "DC0_HO", "0000:5e:00.0", *flags(vc), env=with_password(env))
    line = one_clear_line(out)
    assert out.returncode == 2
    assert "no host named 'DC0_HO'" in line and "close matches: DC0_H0" in line

    out = admin(
        "passthrough", "enable", "DC0_H0", "0000:5f:00.0", "--json", *flags(vc), env=with_password(env)
    )
    err = json.loads(out.stdout)["error"]
    assert err["code"] == "not-found" and "0000:5e:00.0" in err["message"].split("close matches:")[1]


@needs_vcsim
def test_a_device_held_by_a_powered_on_vm(vc, env, session):
    vm = gpu_vm(session, "DC0_C0_H0", "holder-vm", "0000:3b:00.0")
    idle = gpu_vm(session, "DC0_C0_H0", "idle-vm", "0000:86:00.0")
    try:
        vcenter.wait(session, vm.PowerOnVM_Task())
        data = ok_json(admin("hosts", "--json", *flags(vc), env=with_password(env)))
        gpus = {d["address"]: d for h in data["hosts"] if h["name"] == "DC0_C0_H0" for d in h["accelerators"]}
        assert gpus["0000:3b:00.0"]["held_by"] == "holder-vm"
        assert gpus["0000:3b:00.0"]["configured_in"] == ["holder-vm"]
        assert gpus["0000:86:00.0"]["held_by"] is None  # configured in a VM that is off
        assert gpus["0000:86:00.0"]["configured_in"] == ["idle-vm"]
        other = {d["address"]: d for h in data["hosts"] if h["name"] == "DC0_H0" for d in h["accelerators"]}
        assert other["0000:3b:00.0"]["held_by"] is None  # same PCI id, another host

        out = admin("passthrough", "disable", "DC0_C0_H0", "0000:3b:00.0", *flags(vc), env=with_password(env))
        line = one_clear_line(out)
        assert "held by the powered-on VM holder-vm" in line and "power it off" in line

        # What a deployment asks before giving devices to a VM.
        inv = vcenter.collect_inventory(session)
        with pytest.raises(vcenter.Refused, match="holder-vm.*choose another device"):
            vcenter.check_assignable(inv, "DC0_C0_H0", ["0000:3b:00.0"])
        assert vcenter.check_assignable(inv, "DC0_C0_H0", ["3b:00.0"], vm="holder-vm") == ["0000:3b:00.0"]
        with pytest.raises(vcenter.Refused, match="radium-admin passthrough enable DC0_C0_H0 0000:5e:00.0"):
            vcenter.check_assignable(inv, "DC0_C0_H0", ["0000:5e:00.0"])
        with pytest.raises(vcenter.NotFound, match="not an accelerator"):
            vcenter.check_assignable(inv, "DC0_C0_H0", ["0000:00:00.0"])
        assert vcenter.check_assignable(inv, "DC0_C0_H0", ["0000:86:00.0"]) == ["0000:86:00.0"]
    finally:
        destroy(session, vm)
        destroy(session, idle)


@needs_vcsim
def test_enabled_but_not_yet_active_is_not_assignable(vc, session):
    host = host_ref(session, "DC0_H0")
    before = passthru_state(host)
    try:
        vcenter.set_passthrough(session, "DC0_H0", ["0000:af:00.0"], enable=True)
        with pytest.raises(vcenter.Refused, match="not active yet: reboot the host"):
            vcenter.check_assignable(vcenter.collect_inventory(session), "DC0_H0", ["0000:af:00.0"])
    finally:
        restore(host, before)


# ---------------------------------------------------------------------------
# connection: password, reachability, TLS
# ---------------------------------------------------------------------------


@needs_vcsim
def test_wrong_password_is_one_clear_line(vc, env):
    out = admin("hosts", *flags(vc), env=with_password(env, "wrong"))
    line = one_clear_line(out)
    assert out.returncode == 77
    assert "refused the login of 'radium': wrong user name or password" in line
    assert "RADIUM_VCENTER_PASSWORD" in line  # where the password came from
    err = json.loads(admin("hosts", "--json", *flags(vc), env=with_password(env, "wrong")).stdout)
    assert err["error"]["code"] == "vcenter-login"


def test_unreachable_vcenter_fails_fast(env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    started = time.monotonic()
    out = admin("hosts", "--url", f"127.0.0.1:{port}", "--user", USER, "--insecure", env=with_password(env))
    assert time.monotonic() - started < 10
    line = one_clear_line(out)
    assert out.returncode == 69 and f"127.0.0.1:{port} refused the connection" in line


def test_a_server_that_never_answers_times_out_within_10_s(env):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the kernel completes the TCP handshake; nobody ever speaks TLS
        port = silent.getsockname()[1]
        started = time.monotonic()
        out = admin(
            "hosts", "--url", f"127.0.0.1:{port}", "--user", USER, "--insecure", env=with_password(env)
        )
        elapsed = time.monotonic() - started
    assert elapsed < 10
    line = one_clear_line(out)
    assert out.returncode == 69 and "did not answer within" in line


@needs_vcsim
def test_a_pinned_thumbprint_is_checked_before_logging_in(vc, env):
    right = server_thumbprint(vc)
    base = ["--url", vc.sdk_url, "--user", USER]
    for spelling in (right, ":".join(right[i : i + 2] for i in range(0, 64, 2)).upper()):
        data = ok_json(admin("hosts", "--json", *base, "--thumbprint", spelling, env=with_password(env)))
        assert len(data["hosts"]) == 3

    wrong = "ab" * 32
    out = admin("hosts", *base, "--thumbprint", wrong, env=with_password(env, "not even tried"))
    line = one_clear_line(out)
    assert out.returncode == 77
    assert vsettings.format_thumbprint(right) in line and vsettings.format_thumbprint(wrong) in line
    assert "refusing to log in" in line


@needs_vcsim
def test_an_untrusted_certificate_is_refused_naming_its_thumbprint(vc, env):
    base = ["--url", vc.sdk_url, "--user", USER]
    out = admin("hosts", *base, env=with_password(env))
    line = one_clear_line(out)
    assert out.returncode == 77
    assert vsettings.format_thumbprint(server_thumbprint(vc)) in line and "--ca FILE" in line
    assert ok_json(admin("hosts", "--json", *base, "--insecure", env=with_password(env)))["hosts"]
    out = admin("hosts", *base, "--insecure", "--ca", str(vc.ca_file), env=with_password(env))
    assert "choose one way to trust the server" in one_clear_line(out)


@needs_vcsim
def test_connection_from_the_environment_and_password_from_stdin(vc, env):
    e = dict(env, RADIUM_VCENTER_URL=vc.sdk_url, RADIUM_VCENTER_USER=USER, RADIUM_VCENTER_CA=str(vc.ca_file))
    assert len(ok_json(admin("hosts", "--json", env=with_password(e)))["hosts"]) == 3
    assert (
        len(ok_json(admin("hosts", "--json", "--password-stdin", env=e, stdin=PASSWORD + "\n"))["hosts"]) == 3
    )
    out = admin("hosts", env=e)  # no password anywhere, and no terminal to ask on
    assert "no password for radium" in one_clear_line(out) and "--password-stdin" in out.stderr


def test_no_vcenter_configured_says_how_to_give_one(env):
    line = one_clear_line(admin("hosts", env=env))
    assert "no vCenter given" in line and "profile save" in line


# ---------------------------------------------------------------------------
# profiles
# ---------------------------------------------------------------------------


@needs_vcsim
def test_profile_save_never_writes_the_password_and_is_0600(vc, env, home):
    url_with_password = f"https://{USER}:{PASSWORD}@127.0.0.1:{vc.port}/sdk"
    out = admin(
        "profile",
        "save",
        "lab",
        "--url",
        url_with_password,
        "--ca",
        str(vc.ca_file),
        "--json",
        env=with_password(env),
    )
    saved = ok_json(out)
    path = home / ".config" / "radium" / "vcenter.toml"
    assert saved["file"] == str(path) and saved["default"] is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert PASSWORD not in text and "password" not in text.lower()
    assert f'url = "https://127.0.0.1:{vc.port}/sdk"' in text and f'user = "{USER}"' in text

    # Used with no flags (the default profile), the password still comes from elsewhere.
    assert len(ok_json(admin("hosts", "--json", env=with_password(env)))["hosts"]) == 3
    assert len(ok_json(admin("hosts", "--json", "--password-stdin", env=env, stdin=PASSWORD))["hosts"]) == 3

    # A second profile, pinned; a file someone loosened goes back to 0600.
    path.chmod(0o644)
    ok_json(
        admin(
            "profile",
            "save",
            "pinned",
            "--url",
            vc.sdk_url,
            "--user",
            USER,
            "--ca",
            str(vc.ca_file),
            "--pin",
            "--json",
            env=env,
        )
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    listed = ok_json(admin("profile", "list", "--json", env=env))
    assert listed["default"] == "lab" and set(listed["profiles"]) == {"lab", "pinned"}
    assert listed["profiles"]["pinned"]["thumbprint"] == vsettings.format_thumbprint(server_thumbprint(vc))
    assert len(ok_json(admin("hosts", "--json", "--profile", "pinned", env=with_password(env)))["hosts"]) == 3

    out = admin("hosts", "--profile", "pined", env=with_password(env))
    assert "close matches: pinned" in one_clear_line(out)
    ok_json(admin("profile", "remove", "lab", "--json", env=env))
    assert ok_json(admin("profile", "list", "--json", env=env))["default"] == "pinned"
    assert PASSWORD not in path.read_text()


FAKE_KEYRING = '''
"""A stand-in for the `keyring` library: a JSON file named by FAKE_KEYRING_FILE."""
import json, os

def _load():
    try:
        with open(os.environ["FAKE_KEYRING_FILE"]) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}

def _save(d):
    with open(os.environ["FAKE_KEYRING_FILE"], "w") as f:
        json.dump(d, f)

def get_password(service, user):
    return _load().get(service + "|" + user)

def set_password(service, user, password):
    d = _load(); d[service + "|" + user] = password; _save(d)

def delete_password(service, user):
    d = _load(); del d[service + "|" + user]; _save(d)
'''


@needs_vcsim
def test_the_password_can_live_in_the_system_keyring(vc, env, tmp_path, home):
    (tmp_path / "fakekr" / "keyring").mkdir(parents=True)
    (tmp_path / "fakekr" / "keyring" / "__init__.py").write_text(FAKE_KEYRING)
    store = tmp_path / "keyring.json"
    e = dict(env, PYTHONPATH=str(tmp_path / "fakekr"), FAKE_KEYRING_FILE=str(store))
    out = admin(
        "profile",
        "save",
        "kr",
        *flags(vc),
        "--keyring",
        "--password-stdin",
        "--json",
        env=e,
        stdin=PASSWORD + "\n",
    )
    assert ok_json(out)["profile"]["keyring"] is True
    assert json.loads(store.read_text()) == {f"radium-vcenter:{vc.sdk_url}|{USER}": PASSWORD}
    assert PASSWORD not in (home / ".config" / "radium" / "vcenter.toml").read_text()
    assert len(ok_json(admin("hosts", "--json", env=e))["hosts"]) == 3  # no password given: the keyring's
    removed = ok_json(admin("profile", "remove", "kr", "--json", env=e))
    assert removed["keyring_entry_removed"] is True and json.loads(store.read_text()) == {}

    if not vcenter.secrets.available():
        # Without the keyring library, --keyring says what to install, before asking for anything.
        out = admin("profile", "save", "kr", *flags(vc), "--keyring", env=env)
        assert "keyring" in one_clear_line(out) and "pip install" in out.stderr


# ---------------------------------------------------------------------------
# the library: inventory round trips, decoders, tasks
# ---------------------------------------------------------------------------


@needs_vcsim
def test_the_inventory_takes_the_same_round_trips_for_2_and_8_hosts(env):
    counts = {}
    for n in (2, 8):
        s = start_sim(clusters=1, hosts_per_cluster=n, standalone_hosts=0, gpus_per_host=4, vms=n)
        try:
            with vcenter.connect(settings_for(s)) as session:
                inv = vcenter.collect_inventory(session)
                assert len(inv.hosts) == n and len(inv.vms) == n
                assert sum(len(h.accelerators) for h in inv.hosts) == 4 * n
                counts[n] = inv.round_trips
                assert session.calls["RetrievePropertiesEx"] == 1
            data = ok_json(admin("hosts", "--json", *flags(s), env=with_password(env)))
            assert len(data["hosts"]) == n and data["round_trips"] == counts[n] + 1  # + the host list
        finally:
            s.stop()
    assert counts == {2: 3, 8: 3}


@needs_vcsim
def test_inventory_pages_come_in_host_order_and_add_up_to_the_whole(session):
    vm = gpu_vm(session, "DC0_H0", "pages-vm", "0000:86:00.0")
    try:
        vcenter.wait(session, vm.PowerOnVM_Task())
        whole = vcenter.collect_inventory(session)
        before = session.calls["RetrievePropertiesEx"]
        pages = list(vcenter.inventory_pages(session, first=1, size=2))
        # The host list, then pages of 1 and 2 hosts: a round trip each, whatever their VMs.
        assert [len(p.hosts) for p in pages] == [1, 2]
        assert session.calls["RetrievePropertiesEx"] - before == 1 + len(pages)
        assert pages[-1].round_trips == 3 + len(pages)
        hosts = [h for p in pages for h in p.hosts]
        assert [h.name for h in hosts] == sorted(h.name for h in whole.hosts)
        assert msgspec.to_builtins(hosts) == msgspec.to_builtins(whole.hosts)  # holders and all
        assert any(d.held_by == "pages-vm" for h in hosts for d in h.accelerators)
        assert sorted(v.name for p in pages for v in p.vms) == sorted(v.name for v in whole.vms)
        slow = list(vcenter.inventory_pages(session, first=1, size=2, decoder="pyvmomi"))
        assert msgspec.to_builtins([h for p in slow for h in p.hosts]) == msgspec.to_builtins(hosts)
    finally:
        destroy(session, vm)


@needs_vcsim
def test_the_fast_decoder_agrees_with_pyvmomi(session):
    vm = gpu_vm(session, "DC0_C0_H1", "decoder-vm", "0000:86:00.0")
    try:
        vcenter.wait(session, vm.PowerOnVM_Task())
        fast = vcenter.collect_inventory(session)
        slow = vcenter.collect_inventory(session, decoder="pyvmomi")
        assert fast.hosts == slow.hosts and fast.vms == slow.vms and fast.pci == slow.pci
        assert msgspec.to_builtins(slow.hosts) == msgspec.to_builtins(fast.hosts)  # plain types both
        assert fast.round_trips == slow.round_trips == 3
        assert fast.vm("decoder-vm").passthrough == ["0000:86:00.0"]
        assert fast.device(fast.host("DC0_C0_H1"), "86:00.0").held_by == "decoder-vm"
    finally:
        destroy(session, vm)


@needs_vcsim
def test_a_task_is_a_stream_of_progress_ending_with_its_own_error(session):
    from rich.console import Console

    from radium.vcenter.cli.progress import ProgressView

    vm = gpu_vm(session, "DC0_C0_H0", "task-vm", "0000:3b:00.0", locked=False)
    try:
        reports = list(vcenter.watch(session, vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="radium"))))
        assert reports and reports[-1].state == "success" and reports[-1].percent == 100
        assert reports[-1].description.startswith("VirtualMachine.reconfig")  # the task's descriptionId

        # The simulator refuses, like vCenter, a passthrough VM without its memory reserved.
        buf = io.StringIO()
        view = ProgressView(Console(file=buf, width=100))
        with pytest.raises(vcenter.TaskFailed) as failed:
            vcenter.wait(session, vm.PowerOnVM_Task(), view)
        view.close()
        assert failed.value.message.startswith("VirtualMachine.powerOn failed: ")
        assert "memory reservation" in failed.value.message and "task-vm" in failed.value.message
        assert failed.value.code == "task-failed"
        assert "VirtualMachine.powerOn" in buf.getvalue()

        seen = []
        result = vcenter.wait(
            session, vm.ReconfigVM_Task(vim.vm.ConfigSpec(memoryReservationLockedToMax=True)), seen.append
        )
        assert result is None and seen[-1].done and seen[-1].state == "success"
        buf = io.StringIO()
        seen = []
        view = ProgressView(Console(file=buf, width=100))
        vcenter.wait(session, vm.PowerOnVM_Task(), lambda r: (seen.append(r), view(r)))
        assert seen[-1].state == "success" and "100%" in buf.getvalue()
    finally:
        destroy(session, vm)


@needs_vcsim
def test_a_fault_in_the_fast_path_is_pyvmomis_typed_fault_then_ours(session):
    from pyVmomi import vmodl

    from radium.vcenter import _soap
    from radium.vcenter.errors import translated

    pc = vmodl.query.PropertyCollector
    gone = session.content.viewManager.CreateContainerView(session.content.rootFolder, [vim.HostSystem], True)
    gone.DestroyView()
    spec = pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=gone)],
        propSet=[pc.PropertySpec(type=vim.view.ContainerView, pathSet=["view"])],
    )
    args = [[spec], pc.RetrieveOptions()]
    with pytest.raises(vmodl.fault.ManagedObjectNotFound):
        _soap.invoke(session, session.content.propertyCollector, "RetrievePropertiesEx", args)
    where = session.settings.where
    with pytest.raises(vcenter.Fault, match="ManagedObjectNotFound") as err, translated(where):
        _soap.invoke(session, session.content.propertyCollector, "RetrievePropertiesEx", args)
    assert err.value.code == "vcenter-fault"
    assert len(vcenter.collect_inventory(session).hosts) == 3  # the connection is still good


# ---------------------------------------------------------------------------
# without a simulator: settings, names, PCI ids, the public surface
# ---------------------------------------------------------------------------


def test_settings_precedence_flags_then_environment_then_profile(tmp_path):
    profiles = tmp_path / "vcenter.toml"
    vsettings.write_profile(
        "p", vsettings.Profile(url="vc-profile", user="puser", thumbprint="aa" * 32), path=profiles
    )
    env = {"RADIUM_VCENTER_USER": "euser", "RADIUM_VCENTER_PROFILE": "p", "RADIUM_VCENTER_PASSWORD": "pw"}
    s = vsettings.resolve(env=env, profiles_file=profiles)
    assert (s.url, s.user, s.thumbprint, s.profile) == (
        "https://vc-profile/sdk",
        "euser",
        "AA:" * 31 + "AA",
        "p",
    )
    assert s.password == "pw" and s.password_source == "RADIUM_VCENTER_PASSWORD"
    s = vsettings.resolve(url="vc-flag:8443", user="fuser", insecure=True, env=env, profiles_file=profiles)
    # The TLS choice is taken whole from the highest level that makes one.
    assert (s.url, s.user, s.thumbprint, s.insecure) == ("https://vc-flag:8443/sdk", "fuser", None, True)
    assert s.where == "vCenter at vc-flag:8443"
    # The default profile is used only when no URL is given otherwise.
    s = vsettings.resolve(env={"RADIUM_VCENTER_PASSWORD": "x"}, profiles_file=profiles)
    assert s.profile == "p"
    s = vsettings.resolve(
        env={"RADIUM_VCENTER_URL": "other", "RADIUM_VCENTER_USER": "u", "RADIUM_VCENTER_PASSWORD": "x"},
        profiles_file=profiles,
    )
    assert (s.url, s.profile, s.thumbprint) == ("https://other/sdk", None, None)
    # The user and password may come with the URL (never saved).
    s = vsettings.resolve(url="https://me%40vsphere.local:p%40ss@vc/sdk", env={}, profiles_file=profiles)
    assert (s.url, s.user, s.password, s.password_source) == (
        "https://vc/sdk",
        "me@vsphere.local",
        "p@ss",
        "the URL",
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(url="vc", user="u", thumbprint="ab" * 20), "SHA-1"),
        (dict(url="vc", user="u", thumbprint="xyz"), "hexadecimal"),
        (dict(url="http://vc", user="u"), "only https"),
        (dict(url="vc:99999", user="u"), "port"),
        (dict(url="vc"), "no vCenter user"),
        (dict(url="vc", user="u", ca="/nonexistent.pem"), "no such file"),
        (dict(url="vc", user="u"), "no password for u at vCenter at vc:443"),
        (dict(url="vc", user="u", profile="nope"), "no vCenter profile named 'nope'"),
    ],
)
def test_settings_mistakes_say_what_is_wrong(tmp_path, kwargs, message):
    with pytest.raises(vsettings.UsageError, match=message):
        vsettings.resolve(env={}, profiles_file=tmp_path / "none.toml", **kwargs)


def test_a_broken_profile_file_names_file_and_key(tmp_path):
    bad = tmp_path / "vcenter.toml"
    bad.write_text('[profiles.x]\nurl = "vc"\nport = 1\n')
    with pytest.raises(vsettings.ConfigError, match=r"vcenter.toml: profiles.x.port: unknown key"):
        vsettings.load_profiles(bad)
    bad.write_text('default = "y"\n[profiles.x]\nurl = "vc"\n')
    with pytest.raises(vsettings.ConfigError, match="default: no profile named 'y'"):
        vsettings.load_profiles(bad)


def test_connection_environment_is_read_in_one_place():
    root = Path(vcenter.__file__).parent
    readers = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "RADIUM_VCENTER_" in p.read_text() and "os.environ" in p.read_text()
    )
    assert readers == ["settings.py"]


def test_close_matches():
    from radium.vcenter.names import closest, resolve

    assert closest("esx-O1", ["esx-01", "esx-02", "db-01"])[:2] == ["esx-01", "esx-02"]
    assert resolve("host", "ESX-01", {"esx-01": 1}) == 1  # the only case-insensitive match
    with pytest.raises(vcenter.NotFound, match=r"no VM named 'web' \(close matches: web-1\)") as err:
        resolve("VM", "web", {"web-1": 1, "db": 2})
    assert err.value.detail["matches"] == ["web-1"]
    with pytest.raises(vcenter.NotFound, match=r"known hosts: a, b"):
        resolve("host", "zzz", {"a": 1, "b": 2})


def test_pci_names_and_classes():
    from radium.vcenter import pciids

    assert pciids.model_name(0x10DE, 0x1DB4) == "Tesla V100 PCIe 16GB"
    assert pciids.model_name(0x1002, 0x738C) == "Instinct MI100"
    assert pciids.vendor_name(-32634) == "Intel"  # pyVmomi's ids are signed 16-bit
    assert pciids.model_name(0x10DE, 0x9999) == "unknown 0x10de:0x9999"
    assert pciids.model_name(0x10DE, 0x9999, "GA999") == "GA999"
    assert pciids.is_accelerator(0x0302, 0x10DE) and pciids.is_accelerator(0x1200, 0x1234)
    assert pciids.is_accelerator(0x0300, 0x10DE)  # a consumer-class NVIDIA GPU
    assert not pciids.is_accelerator(0x0300, 0x15AD)  # the host's VMware SVGA console
    assert not pciids.is_accelerator(0x0200, 0x10DE)  # a NIC, even from NVIDIA


def test_every_vcenter_error_is_a_radium_error():
    """(Which names the face exports is pinned in test_faces.py.)"""
    from radium.remoting import RadiumError

    names = "CertificateError Fault LoginFailed NotFound NotPermitted Refused TaskFailed Unreachable"
    for name in names.split():
        assert issubclass(getattr(vcenter, name), vcenter.VCenterError)
    assert issubclass(vcenter.VCenterError, RadiumError)
    assert issubclass(vcenter.Interrupted, vcenter.VCenterError)


@needs_vcsim
def test_estate_touches_names_what_each_change_touched(vc, session):
    """The change stream a live view waits on: what a passthrough change and a VM's power touched."""
    import queue
    import threading

    seen: queue.Queue = queue.Queue()
    stop = threading.Event()

    def watch() -> None:
        with vcenter.connect(settings_for(vc)) as watcher:
            for touched in vcenter.estate_touches(watcher, max_wait=1):
                seen.put(touched)
                if stop.is_set():
                    return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert seen.get(timeout=30) is None  # the watch is up; the estate as it is is not reported

    def next_touch() -> vcenter.Touched:
        while (touched := seen.get(timeout=30)) is None:
            pass
        return touched

    host = host_ref(session, "DC0_H0")
    vcenter.set_passthrough(session, "DC0_H0", ["0000:5e:00.0"], enable=True)
    try:
        touched = next_touch()
        assert host._moId in touched.hosts and not touched.gone
    finally:
        vcenter.set_passthrough(session, "DC0_H0", ["0000:5e:00.0"], enable=False)
    next_touch()
    vm = gpu_vm(session, "DC0_C0_H1", "touch-vm", "0000:86:00.0")  # made: a VM enters
    touched = next_touch()
    assert vm._moId in touched.vms
    destroy(session, vm)  # and leaves
    while vm._moId not in (touched := next_touch()).gone:
        pass
    assert len(touched) >= 1
    stop.set()
    thread.join(10)


def test_a_custom_attribute_made_by_several_sessions_at_once_is_one_attribute(vc):
    """Ansible registers clients in forks: each finds the attribute missing and adds it; the
    ones that lose the race get vCenter's DuplicateName, and must take the winner's key."""
    from radium.vcenter.collect import vm_field_key

    name, n = "radium.test-race", 6
    sessions = [vcenter.connect(settings_for(vc)) for _ in range(n)]
    start = threading.Barrier(n)

    def make(s):
        start.wait()
        return vm_field_key(s, name, create=True)

    try:
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            keys = list(pool.map(make, sessions))
        held = [f.key for f in sessions[0].content.customFieldsManager.field if f.name == name]
        assert len(held) == 1 and keys == held * n
    finally:
        for s in sessions:
            s.close()
