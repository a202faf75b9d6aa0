"""`radium-admin appliance deploy|list|status|remove` against the vCenter simulator.

The real parts: the simulator (vcenter/sim: cluster DC0_C0 with DC0_C0_H0
(NVIDIA V100) and DC0_C0_H1 (AMD MI100), standalone DC0_H0 (NVIDIA); 4 GPUs per
host at 0000:3b/5e/86/af:00.0, the 1st and 3rd passthrough-enabled and active),
an OVA written by `radium.appliance.ovf.write_ova` (placeholder disk), the real
`radium-admin` binary, and for the deploy that waits, a real radiumd on loopback
started with the keys the deploy made (`--keys-out`).  The guest's IP address,
which VMware Tools reports in a real vCenter, is set the simulator's way
(extraConfig ``SET.guest.ipAddress``).  What deploy made is read back with pyVmomi.
"""

from __future__ import annotations

import json
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from support import BIN, Appliance, Client, admin, admin_env, free_port, ok_json, wait_until

from radium import vcenter
from radium.appliance import ovf
from radium.remoting import RadiumError
from radium.remoting._config import load_client_config
from radium.remoting._errors import ConfigError
from radium.vcenter import pciids, sim
from radium.vcenter import settings as vsettings
from radium.vcenter.hardware import mmio_size_gib

pytest.importorskip("pyVmomi", reason="pyvmomi is not installed")
from pyVmomi import vim  # noqa: E402

pytestmark = pytest.mark.timeout(120)

MISSING = sim.missing()
needs_vcsim = pytest.mark.skipif(bool(MISSING), reason="vCenter simulator unavailable: " + "; ".join(MISSING))

USER, PASSWORD = "radium", "s3cret"
ENABLED, ENABLED2, DISABLED = "0000:3b:00.0", "0000:86:00.0", "0000:5e:00.0"


# ---------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vc():
    if MISSING:
        pytest.skip("vCenter simulator unavailable (cannot be built here): " + "; ".join(MISSING))
    try:
        s = sim.start(
            username=USER, password=PASSWORD, clusters=1, hosts_per_cluster=2, standalone_hosts=1, vms=1
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
def ova(tmp_path_factory) -> Path:
    return ovf.write_ova(
        tmp_path_factory.mktemp("package") / "radium-appliance.ova", cpus=2, memory_mib=2048, disk_gib=1
    )


@pytest.fixture
def env(tmp_path, vc) -> dict[str, str]:
    return admin_env(
        tmp_path / "home",
        vc,
        USER,
        PASSWORD,
        RADIUM_LAB_DIR=str(tmp_path / "no-lab"),
        RADIUM_ADMIN_CONFIG=str(tmp_path / "operator.toml"),  # made by the first deploy
    )


def refused(out: subprocess.CompletedProcess, code: int = 3) -> str:
    """The command failed with exit `code` and no traceback; its message."""
    assert out.returncode == code, out.stdout + out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    return out.stderr


def vms_named(session, name: str) -> list:
    view = session.content.viewManager.CreateContainerView(
        session.content.rootFolder, [vim.VirtualMachine], True
    )
    try:
        return [v for v in view.view if v.name == name]
    finally:
        view.DestroyView()


def the_vm(session, name: str) -> vim.VirtualMachine:
    found = vms_named(session, name)
    assert len(found) == 1, f"{len(found)} VMs named {name}"
    return found[0]


def deploy(
    name: str, ova: Path, *extra: str, env: dict, host: str = "DC0_C0_H0"
) -> subprocess.CompletedProcess:
    return admin("appliance", "deploy", name, "--host", host, "--ova", str(ova), *extra, env=env)


# ---------------------------------------------------------------------------
# deploy, list, status, remove
# ---------------------------------------------------------------------------


@needs_vcsim
def test_deploy_builds_the_appliance_vm(vc, session, ova, env, tmp_path):
    d = ok_json(deploy("gpu1", ova, "--gpus", ENABLED, "--no-wait", "--json", env=env))
    assert d["vm"] == "gpu1" and d["host"] == "DC0_C0_H0" and d["power_state"] == "poweredOn"
    assert [g["address"] for g in d["gpus"]] == [ENABLED]
    assert d["gpus"][0]["memory_gib"] == 16 and d["mmio_size_gib"] == 32
    assert d["waited"] is False and d["ready"] is None

    # No operator configuration existed: one was made, 0600, and the appliance trusts its key.
    operator = Path(env["RADIUM_ADMIN_CONFIG"])
    assert d["operator"]["created"] is True and d["operator"]["config"] == str(operator)
    assert stat.S_IMODE(operator.stat().st_mode) == 0o600
    assert load_client_config(operator).client.public_key == d["operator"]["public_key"]

    vm = the_vm(session, "gpu1")
    assert vm._moId == d["id"]
    assert vm.runtime.powerState == "poweredOn"
    config = vm.config
    passthrough = [
        dev for dev in config.hardware.device if isinstance(dev, vim.vm.device.VirtualPCIPassthrough)
    ]
    assert [p.backing.id for p in passthrough] == [ENABLED]
    assert passthrough[0].backing.deviceId == "1db4" and passthrough[0].backing.vendorId == 0x10DE
    assert passthrough[0].backing.systemId  # from QueryConfigTarget
    assert config.memoryReservationLockedToMax is True
    assert config.firmware == "efi"
    extra = {o.key: o.value for o in config.extraConfig}
    assert extra["pciPassthru.use64bitMMIO"] == "TRUE"
    assert extra["pciPassthru.64bitMMIOSizeGB"] == "32"
    assert extra["guestinfo.radium.name"] == "gpu1"
    assert extra["guestinfo.radium.admin_public_key"] == d["operator"]["public_key"]
    assert extra["guestinfo.radium.admin_name"] == "operator"
    assert extra["guestinfo.radium.listen_port"] == "7450"
    assert extra["guestinfo.radium.network.ip"] == "dhcp"
    assert "guestinfo.radium.server_secret_key" not in extra  # only the masked vApp property carries it
    # The simulator files the vApp properties (the OVF environment's source) under extraConfig.
    assert extra["radium.name"] == "gpu1" and len(extra["radium.server_secret_key"]) == 40
    marks = {f.key: f.name for f in session.content.customFieldsManager.field}
    record = json.loads(next(v.value for v in vm.customValue if marks[v.key] == "radium.appliance"))
    assert record["server_public_key"] == d["server_public_key"] and record["name"] == "gpu1"

    listed = ok_json(admin("appliance", "list", "--json", env=env))["appliances"]
    (a,) = [x for x in listed if x["vm"] == "gpu1"]
    assert a["host"] == "DC0_C0_H0" and a["power_state"] == "poweredOn" and a["marked"]
    assert a["server_public_key"] == d["server_public_key"]
    assert a["gpus"] == [{"address": ENABLED, "model": "NVIDIA Tesla V100 PCIe 16GB"}]
    table = admin("appliance", "list", env=env)
    assert table.returncode == 0 and "gpu1" in table.stdout and d["server_public_key"] in table.stdout
    hosts = ok_json(admin("hosts", "--json", env=env))["hosts"]
    held = {g["address"]: g["held_by"] for h in hosts if h["name"] == "DC0_C0_H0" for g in h["accelerators"]}
    assert held[ENABLED] == "gpu1"

    # No IP yet (no guest): vCenter's view, and why radiumd cannot be asked.
    st = admin("appliance", "status", "gpu1", "--json", env=env)
    assert st.returncode == 1
    status = json.loads(st.stdout)
    assert status["healthy"] is False and "no IP address" in status["health"]["error"]

    # The name is taken: refused, unless --replace.
    again = refused(deploy("gpu1", ova, "--gpus", ENABLED, "--no-wait", env=env))
    assert "already exists" in again and "--replace" in again
    assert len(vms_named(session, "gpu1")) == 1
    replaced = ok_json(deploy("gpu1", ova, "--gpus", ENABLED, "--no-wait", "--replace", "--json", env=env))
    assert replaced["replaced"] == [d["id"]] and replaced["id"] != d["id"]
    assert replaced["operator"]["created"] is False  # the operator key made the first time is kept
    assert the_vm(session, "gpu1")._moId == replaced["id"]

    stranger = refused(deploy("DC0_H0_VM0", ova, "--no-wait", "--replace", env=env, host="DC0_H0"))
    assert "not a Radium appliance" in stranger
    assert the_vm(session, "DC0_H0_VM0").runtime.powerState == "poweredOn"

    unknown = refused(admin("appliance", "remove", "gpu", env=env), code=2)
    assert "close matches: gpu1" in unknown
    not_ours = refused(admin("appliance", "remove", "DC0_H0_VM0", env=env))
    assert "not a Radium appliance" in not_ours
    gone = ok_json(admin("appliance", "remove", "gpu1", "--json", env=env))
    assert gone["id"] == replaced["id"] and gone["powered_off"] is True
    assert vms_named(session, "gpu1") == []


@needs_vcsim
def test_all_takes_every_free_enabled_gpu(session, ova, env):
    d = ok_json(deploy("gpu-all", ova, "--no-wait", "--json", env=env, host="DC0_C0_H1"))
    assert [g["address"] for g in d["gpus"]] == [ENABLED, ENABLED2]
    assert {g["model"] for g in d["gpus"]} == {"Instinct MI100"}
    assert d["mmio_size_gib"] == 128  # 2 x 32 GiB, twice: 128
    vm = the_vm(session, "gpu-all")
    extra = {o.key: o.value for o in vm.config.extraConfig}
    assert extra["pciPassthru.64bitMMIOSizeGB"] == "128"
    # Nothing is free on that host any more.
    more = refused(deploy("gpu-more", ova, "--no-wait", env=env, host="DC0_C0_H1"))
    assert "held by the powered-on VM gpu-all" in more and "passthrough enable" in more
    assert vms_named(session, "gpu-more") == []
    ok_json(admin("appliance", "remove", "gpu-all", "--json", env=env))


@needs_vcsim
def test_a_device_not_enabled_for_passthrough_is_refused_with_what_to_do(session, ova, env):
    out = refused(deploy("gpu-off", ova, "--gpus", DISABLED, "--no-wait", env=env))
    assert f"radium-admin passthrough enable DC0_C0_H0 {DISABLED}" in out and "reboot" in out
    assert vms_named(session, "gpu-off") == []
    typo = refused(deploy("gpu-off", ova, "--gpus", "0000:3c:00.0", "--no-wait", env=env), code=2)
    assert "close matches" in typo and ENABLED in typo
    host = refused(deploy("gpu-off", ova, "--no-wait", env=env, host="DC0_C0_H"), code=2)
    assert "close matches: DC0_C0_H1, DC0_C0_H0" in host


@needs_vcsim
def test_a_device_held_by_a_powered_on_vm_is_refused(session, ova, env):
    host = vim.HostSystem(vcenter.collect_inventory(session).host("DC0_H0").id, session.stub)
    target = host.parent.environmentBrowser.QueryConfigTarget(host=host)
    pci = next(d for d in host.hardware.pciDevice if d.id == ENABLED)
    from radium.vcenter.hardware import passthrough_device

    spec = vim.vm.ConfigSpec(
        name="holder",
        memoryMB=1024,
        numCPUs=1,
        guestId="otherGuest64",
        files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
        memoryReservationLockedToMax=True,
        deviceChange=[
            vim.vm.device.VirtualDeviceSpec(
                operation="add", device=passthrough_device(-100, pci, target.pciPassthrough[0].systemId)
            )
        ],
    )
    dc = session.content.rootFolder.childEntity[0]
    holder = vcenter.wait(
        session, dc.vmFolder.CreateVM_Task(config=spec, pool=host.parent.resourcePool, host=host)
    )
    try:
        vcenter.wait(session, holder.PowerOnVM_Task())
        out = refused(deploy("gpu-held", ova, "--gpus", ENABLED, "--no-wait", env=env, host="DC0_H0"))
        assert f"{ENABLED} on DC0_H0 is held by the powered-on VM holder" in out
        assert "power that VM off" in out
        assert vms_named(session, "gpu-held") == []
    finally:
        vcenter.wait(session, holder.PowerOffVM_Task())
        vcenter.wait(session, holder.Destroy_Task())


@needs_vcsim
def test_a_malformed_ovf_or_bad_value_is_refused_before_anything_exists(session, ova, env, tmp_path):
    package = ovf.write_ovf(tmp_path / "pkg", "radium-appliance", cpus=2, memory_mib=2048, disk_gib=1)
    text = package.read_text()
    package.write_text(text.replace('ovf:key="radium.admin_public_key"', 'ovf:key="radium.admin_key"'))
    before = {v.id for v in vcenter.collect_inventory(session).vms}
    out = refused(admin("appliance", "deploy", "bad1", "--host", "DC0_C0_H0", "--ovf", str(package), env=env))
    assert "not fit to deploy" in out and "nothing was created" in out
    assert "required properties missing: radium.admin_public_key" in out

    (tmp_path / "pkg" / "radium-appliance-disk1.vmdk").unlink()
    package.write_text(text)
    out = refused(
        admin("appliance", "deploy", "bad2", "--host", "DC0_C0_H0", "--ovf", str(tmp_path / "pkg"), env=env)
    )
    assert "referenced by the descriptor but not in the package" in out

    out = refused(deploy("bad3", ova, "--ip", "10.0.0.5", "--gateway", "10.1.0.1", env=env), code=2)
    assert "radium.network.ip: expected 'dhcp' or ADDR/PREFIX" in out
    out = refused(deploy("bad name", ova, env=env), code=2)
    assert "radium.name: invalid name 'bad name'" in out

    after = {v.id for v in vcenter.collect_inventory(session).vms}
    assert after == before
    assert not Path(env["RADIUM_ADMIN_CONFIG"]).exists()  # not even the operator key was written


@needs_vcsim
def test_ctrl_c_during_a_deploy_removes_the_half_made_vm(session, ova, env):
    proc = subprocess.Popen(
        [
            str(BIN / "radium-admin"),
            "appliance",
            "deploy",
            "gpu-int",
            "--host",
            "DC0_C0_H0",
            "--ova",
            str(ova),
            "--gpus",
            ENABLED,
            "--timeout",
            "60",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        seen = []
        for line in proc.stderr:  # the VM is imported, configured and on; the deploy waits for its IP
            seen.append(line)
            if "waiting for gpu-int's IP address" in line:
                break
        else:
            pytest.fail(f"the deploy ended before waiting: {''.join(seen)}")
        vm = the_vm(session, "gpu-int")
        assert vm.runtime.powerState == "poweredOn"
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest and "the half-made VM gpu-int was removed" in rest
    assert "Traceback" not in rest
    assert vms_named(session, "gpu-int") == []


@needs_vcsim
def test_a_failing_task_ends_with_its_own_error_and_leaves_no_vm(session, ova, tmp_path, monkeypatch):
    """Power-on refused (the spec, broken here on purpose, leaves the reservation unlocked)."""
    from radium.vcenter import deploy as deploy_module

    monkeypatch.setenv("RADIUM_ADMIN_CONFIG", str(tmp_path / "operator.toml"))
    whole = deploy_module.hardware_spec

    def unlocked(*args, **kwargs):
        spec = whole(*args, **kwargs)
        spec.memoryReservationLockedToMax = False
        return spec

    monkeypatch.setattr(deploy_module, "hardware_spec", unlocked)
    request = deploy_module.DeployRequest(
        name="gpu-fail", host="DC0_C0_H0", package=ova, gpus=ENABLED, wait=False
    )
    with pytest.raises(vcenter.TaskFailed) as failed:
        deploy_module.deploy(session, request)
    message = failed.value.message
    assert "memory" in message.lower() and "reserv" in message.lower()  # the simulator's (vCenter's) own text
    assert "the half-made VM gpu-fail was removed" in message
    assert vms_named(session, "gpu-fail") == []


@needs_vcsim
def test_deploy_waits_for_the_guest_ip_and_radiumd(session, ova, env, tmp_path):
    keys = tmp_path / "appliance"
    port = free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "radium-admin"),
            "appliance",
            "deploy",
            "gpu-live",
            "--host",
            "DC0_H0",
            "--ova",
            str(ova),
            "--gpus",
            ENABLED,
            "--port",
            str(port),
            "--keys-out",
            str(keys),
            "--timeout",
            "60",
            "--json",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    app = None
    try:
        # The appliance's first boot, played here: radiumd with the keys the deploy made.
        wait_until(
            lambda: (keys / "server.key_secret").exists() or proc.poll() is not None, 30, "keys written"
        )
        assert proc.poll() is None, proc.communicate()
        assert stat.S_IMODE((keys / "server.key_secret").stat().st_mode) == 0o600
        assert (keys / "admins.d" / "operator.key").exists()
        metrics = free_port()
        (keys / "radiumd.toml").write_text(
            f'[server]\nname = "gpu-live"\nlisten = "tcp://127.0.0.1:{port}"\nstate_dir = "."\n'
            f'clients_dir = "clients.d"\nadmins_dir = "admins.d"\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
        )
        app = Appliance(keys, name="gpu-live", port=port).start()
        # VMware Tools reports the guest's address once it is up (the simulator's way of saying so).
        vm = wait_until(
            lambda: next(
                (v for v in vms_named(session, "gpu-live") if v.runtime.powerState == "poweredOn"), None
            ),
            30,
            "the VM powered on",
        )
        ip = vim.vm.ConfigSpec(
            extraConfig=[vim.option.OptionValue(key="SET.guest.ipAddress", value="127.0.0.1")]
        )
        vcenter.wait(session, vm.ReconfigVM_Task(spec=ip))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
        d = json.loads(out)
        assert d["ready"] is True and d["waited"] is True
        assert d["ip"] == "127.0.0.1" and d["address"] == f"tcp://127.0.0.1:{port}"
        assert d["radiumd"]["server"] == "gpu-live" and d["radiumd"]["devices"]
        assert "waiting for radiumd" in err
        # The operator configuration now knows the appliance (register-vm --appliance gpu-live finds it).
        entry = load_client_config(Path(env["RADIUM_ADMIN_CONFIG"])).appliance("gpu-live")
        assert entry.address == d["address"] and entry.public_key == d["server_public_key"]

        st = ok_json(admin("appliance", "status", "gpu-live", "--json", env=env))
        assert st["healthy"] is True and st["health"]["reachable"] and st["health"]["devices"]
        assert st["appliance"]["address"] == d["address"]
        text = admin("appliance", "status", "gpu-live", env=env)
        assert text.returncode == 0 and "healthy" in text.stdout

        # Its clients' sessions, seen and ended with the operator key the deploy made.
        user = Client(app.enroll("vm9"), keys / "vm9-state")
        lease = user.json("request-gpus", "-n", "1")["lease"]
        listed = ok_json(admin("appliance", "sessions", "--json", env=env))["appliances"]
        [mine] = [
            x for a in listed if a["appliance"] == "gpu-live" for x in a["sessions"] if x["client"] == "vm9"
        ]
        assert [held["id"] for held in mine["leases"]] == [lease["id"]]
        text = admin("appliance", "sessions", "gpu-live", env=env)
        assert text.returncode == 0 and mine["id"] in text.stdout and lease["id"] in text.stdout
        ended = ok_json(admin("appliance", "end-session", "gpu-live", mine["id"][:8], "--json", env=env))
        assert ended["session"] == mine["id"] and ended["leases"] == [lease["id"]]
        listed = ok_json(admin("appliance", "sessions", "gpu-live", "--json", env=env))["appliances"]
        assert [x for x in listed[0]["sessions"] if x["client"] == "vm9"] == []
        wrong = admin("appliance", "end-session", "gpu-live", mine["id"], env=env)
        assert wrong.returncode == 2 and "no session" in wrong.stderr and "Traceback" not in wrong.stderr

        ok_json(admin("appliance", "remove", "gpu-live", "--json", env=env))
        with pytest.raises(ConfigError, match="no appliance named"):
            load_client_config(Path(env["RADIUM_ADMIN_CONFIG"])).appliance("gpu-live")
    finally:
        if proc.poll() is None:
            proc.kill()
        if app is not None:
            app.stop()
        shutil.rmtree(keys, ignore_errors=True)


@needs_vcsim
def test_deploy_that_waits_in_vain_leaves_the_vm_and_says_what_to_do(session, ova, env):
    out = deploy("gpu-slow", ova, "--gpus", ENABLED, "--timeout", "2", "--json", env=env, host="DC0_H0")
    assert out.returncode == 1, out.stderr
    d = json.loads(out.stdout)
    assert d["ready"] is False and "no IP address within 2 s" in d["radiumd"]["error"]
    assert "appliance status gpu-slow" in out.stderr and "appliance remove gpu-slow" in out.stderr
    assert the_vm(session, "gpu-slow").runtime.powerState == "poweredOn"
    ok_json(admin("appliance", "remove", "gpu-slow", "--json", env=env))


# ---------------------------------------------------------------------------
# without the simulator
# ---------------------------------------------------------------------------


def test_mmio_window_is_the_next_power_of_two_of_twice_the_memory():
    v100, _ = pciids.memory_gib(0x10DE, 0x1DB4)
    mi100, _ = pciids.memory_gib(0x1002, 0x738C)
    assert (v100, mi100) == (16, 32)
    assert mmio_size_gib([v100]) == 32
    assert mmio_size_gib([v100, v100]) == 64
    assert mmio_size_gib([v100] * 3) == 128
    assert mmio_size_gib([mi100]) == 64
    unknown, known = pciids.memory_gib(0x10DE, 0x1234)
    assert not known and unknown == pciids.DEFAULT_MEMORY_GIB
    assert mmio_size_gib([unknown]) == 128


def test_the_lab_profile_is_the_fallback_and_its_password_file_must_be_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("RADIUM_LAB_DIR", str(tmp_path / "lab"))
    (tmp_path / "lab").mkdir()
    secret = tmp_path / "lab" / "pw"
    secret.write_text("lab-pass\n")
    secret.chmod(0o600)
    vsettings.write_profile(
        "lab",
        vsettings.Profile(url="127.0.0.1:1234", user="lab", password_file=str(secret)),
        path=tmp_path / "lab" / "vcenter.toml",
    )
    s = vsettings.resolve(env={})
    assert (s.url, s.user, s.password, s.profile) == ("https://127.0.0.1:1234/sdk", "lab", "lab-pass", "lab")
    # Another URL (flags, environment) does not get the lab's password.
    with pytest.raises(vsettings.UsageError, match="no password"):
        vsettings.resolve(url="vc.example.com", user="x", profile="lab", env={})
    secret.chmod(0o640)
    with pytest.raises(vsettings.UsageError, match="chmod 600"):
        vsettings.resolve(env={})
    # Once the user has profiles of their own, those are used; --profile lab still finds the lab's.
    vsettings.write_profile("mine", vsettings.Profile(url="vc.example.com", user="me"))
    secret.chmod(0o600)
    assert vsettings.resolve(env={}, need_password=False).url == "https://vc.example.com/sdk"
    assert vsettings.resolve(env={}, profile="lab").password == "lab-pass"


def test_deploy_is_a_radium_admin_verb():
    out = subprocess.run(
        [str(BIN / "radium-admin"), "appliance", "--help"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0
    for verb in ("deploy", "list", "status", "sessions", "end-session", "remove"):
        assert verb in out.stdout


# ---------------------------------------------------------------------------
# the library face, as the console and the Ansible modules call it
# ---------------------------------------------------------------------------


@needs_vcsim
def test_deploy_and_remove_report_their_progress_as_a_stream_of_events(session, ova, tmp_path, monkeypatch):
    """One call each, no command line: the events come in order, and vCenter holds what they said."""
    monkeypatch.setenv("RADIUM_ADMIN_CONFIG", str(tmp_path / "operator.toml"))
    events: list = []
    request = vcenter.DeployRequest(name="gpu-lib", host="DC0_C0_H0", package=ova, gpus=ENABLED, wait=False)
    done = vcenter.deploy_appliance(session, request, progress=events.append)

    steps = [e.text for e in events if isinstance(e, vcenter.Step)]
    assert steps[0] == "checking DC0_C0_H0 and its devices"
    assert any(s.startswith("made an operator key") for s in steps)
    assert any(s.startswith("importing radium-appliance.ova as gpu-lib") for s in steps)
    upload = [e for e in events if isinstance(e, vcenter.Transfer)]
    assert upload[0].done == 0 and upload[-1].finished and upload[-1].done == upload[0].total > 0
    assert [e.done for e in upload] == sorted(e.done for e in upload)
    tasks = [e for e in events if isinstance(e, vcenter.TaskProgress)]
    finished = [e.description for e in tasks if e.done]
    assert len(finished) == 2 and all(e.state == "success" for e in tasks if e.done)  # reconfigure, power on
    kinds = [type(e).__name__ for e in events]  # steps, then the upload, then the tasks
    assert kinds.index("Transfer") < kinds.index("TaskProgress")

    vm = the_vm(session, "gpu-lib")
    assert vm._moId == done.id and vm.runtime.powerState == "poweredOn"
    assert [a.vm for a in vcenter.list_appliances(session)].count("gpu-lib") == 1

    events.clear()
    removal = vcenter.remove_appliance(session, "gpu-lib", progress=events.append)
    assert removal.powered_off and removal.id == done.id
    assert [e.state for e in events if isinstance(e, vcenter.TaskProgress) and e.done] == ["success"] * 2
    assert vms_named(session, "gpu-lib") == []


@needs_vcsim
def test_a_request_no_deploy_could_use_is_refused_before_vcenter_is_asked(session, ova):
    for bad, message in (({"port": 0}, "--port 0: expected 1-65535"), ({"timeout": 0}, "--timeout")):
        request = vcenter.DeployRequest(name="gpu-bad", host="DC0_C0_H0", package=ova, **bad)
        before = session.round_trips
        with pytest.raises(RadiumError) as refused_:
            vcenter.deploy_appliance(session, request)
        assert message in refused_.value.message and refused_.value.code == "usage"
        assert session.round_trips == before
