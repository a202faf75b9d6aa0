"""The Ansible collection (`ansible/`, radium.estate), run as operators run it: `ansible-playbook`.

Against the vCenter simulator and a real radiumd standing in it as appliance `app1`
(the lab's way): the playbooks deploy an appliance and register client VMs; what
vCenter and radiumd hold afterwards is checked through the library, not the play's
output; a second run changes nothing; `--check` changes nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import zmq
from support import Appliance, recap, stand_in

from radium import vcenter
from radium.appliance import ovf
from radium.remoting import load_client_config
from radium.vcenter import sim

pytest.importorskip("ansible", reason="ansible-core is not installed (./dev setup installs it)")
pytest.importorskip("pyVmomi", reason="pyvmomi is not installed")

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PLAYBOOKS = ROOT / "ansible" / "playbooks"
USER, PASSWORD = "radium", "s3cret"
MISSING = sim.missing()
CLIENTS = ["DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1"]  # the simulator's VMs of the cluster
GPU_HOST = "DC0_C0_H1"


@pytest.fixture(scope="module")
def estate(tmp_path_factory):
    """The simulator, radiumd app1 standing in it, the operator key, the collection where Ansible finds it."""
    if MISSING:
        pytest.skip("vCenter simulator unavailable: " + "; ".join(MISSING))
    root = tmp_path_factory.mktemp("ansible")
    vc = sim.start(
        username=USER, password=PASSWORD, clusters=1, hosts_per_cluster=2, standalone_hosts=1, vms=2
    )
    app1 = Appliance(root / "app1", name="app1")
    try:
        app1.start()
        settings = vcenter.resolve(
            url=vc.sdk_url, user=USER, password=PASSWORD, ca=vc.ca_file, env={}, use_profiles=False
        )
        ops = stand_in(settings, app1)
        collections = root / "collections" / "ansible_collections" / "radium"
        collections.mkdir(parents=True)
        (collections / "estate").symlink_to(ROOT / "ansible")
        (root / "home").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RADIUM_", "ANSIBLE_"))}
        env.update(
            HOME=str(root / "home"),
            RADIUM_VCENTER_URL=vc.sdk_url,
            RADIUM_VCENTER_USER=USER,
            RADIUM_VCENTER_PASSWORD=PASSWORD,
            RADIUM_VCENTER_CA=str(vc.ca_file),
            RADIUM_ADMIN_CONFIG=str(ops),
            RADIUM_LAB_DIR=str(root / "no-lab"),
            ANSIBLE_COLLECTIONS_PATH=str(root / "collections"),
            ANSIBLE_LOCALHOST_WARNING="false",
            ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_HOME=str(root / "ansible-home"),
        )
        package = ovf.write_ova(root / "radium-appliance.ova", cpus=2, memory_mib=2048, disk_gib=1)
        yield {"vc": vc, "settings": settings, "app1": app1, "env": env, "root": root, "package": package}
    finally:
        if app1.proc is not None:
            app1.stop()
        vc.stop()


def inventory(estate: dict, appliances: dict[str, dict], clients: dict[str, dict], **extra: object) -> Path:
    path = estate["root"] / f"inventory-{len(list(estate['root'].glob('inventory-*')))}.yml"
    data = {
        "all": {
            "vars": {
                "radium_appliance_package": str(estate["package"]),
                "radium_wait": False,  # nothing boots in the simulator
                "radium_client_appliances": ["app1"],
                **extra,
            },
            "children": {"appliances": {"hosts": appliances}, "clients": {"hosts": clients}},
        }
    }
    path.write_text(yaml.safe_dump(data))
    return path


def play(
    estate: dict, playbook: str, inv: Path, *args: str, env: dict | None = None
) -> subprocess.CompletedProcess:
    argv = [str(BIN / "ansible-playbook"), "-i", str(inv), str(PLAYBOOKS / playbook), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env or estate["env"], timeout=300)


def clients(estate: dict) -> dict[str, vcenter.ClientVM]:
    with vcenter.connect(estate["settings"]) as s:
        return {c.vm: c for c in vcenter.list_clients(s)}


def appliance_vms(estate: dict) -> dict[str, vcenter.Appliance]:
    with vcenter.connect(estate["settings"]) as s:
        return {a.vm: a for a in vcenter.list_appliances(s)}


def test_site_deploys_registers_then_changes_nothing(estate):
    inv = inventory(estate, {"gpu-a": {"radium_gpu_host": GPU_HOST}}, {vm: {} for vm in CLIENTS})

    # --check first: it says what it would do, and vCenter and radiumd hold nothing new.
    checked = play(estate, "site.yml", inv, "--check", "--diff")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    would = recap(checked)
    assert would["gpu-a"]["changed"] >= 1 and all(would[vm]["changed"] == 1 for vm in CLIENTS)
    assert "gpu-a" not in appliance_vms(estate)
    assert not set(CLIENTS) & set(clients(estate))

    out = play(estate, "site.yml", inv)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    # vCenter holds the appliance, with the host's GPUs passed through, and the clients' registrations.
    a = appliance_vms(estate)["gpu-a"]
    assert a.host == GPU_HOST and a.gpus and a.server_public_key
    registered = clients(estate)
    for vm in CLIENTS:
        assert registered[vm].appliances == ["app1"] and registered[vm].public_key
        # radiumd authorised the very key the VM's guestinfo carries.
        key = estate["app1"].dir / "clients.d" / f"{registered[vm].client}.key"
        assert registered[vm].public_key in key.read_text()
    with vcenter.connect(estate["settings"]) as s:
        host = next(h for h in vcenter.hosts(s) if h.name == GPU_HOST)
    assert all(d.enabled for d in host.accelerators)  # the disabled ones enabled: a reboot pending
    assert "needs a reboot" in out.stdout

    again = play(estate, "site.yml", inv)
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(r["changed"] == 0 and r["failed"] == 0 for r in recap(again).values()), again.stdout


def test_a_missing_variable_fails_before_anything_changes(estate):
    inv = inventory(estate, {"gpu-b": {}}, {})  # no radium_gpu_host
    out = play(estate, "deploy-appliances.yml", inv)
    assert out.returncode != 0
    assert "radium_gpu_host" in out.stdout and "Traceback" not in out.stdout + out.stderr
    assert recap(out)["gpu-b"]["failed"] == 1 and recap(out)["gpu-b"]["changed"] == 0
    assert "gpu-b" not in appliance_vms(estate)


def test_one_unknown_vm_fails_and_the_others_are_registered(estate):
    inv = inventory(estate, {}, {"no-such-vm": {}, "DC0_H0_VM0": {}})
    out = play(estate, "register-clients.yml", inv)
    assert out.returncode != 0
    r = recap(out)
    assert r["no-such-vm"]["failed"] == 1 and r["DC0_H0_VM0"]["failed"] == 0
    assert "no VM named 'no-such-vm'" in out.stdout and "Traceback" not in out.stdout
    assert clients(estate)["DC0_H0_VM0"].appliances == ["app1"]


def test_a_wrong_vcenter_password_is_one_clear_error(estate):
    inv = inventory(estate, {"gpu-c": {"radium_gpu_host": GPU_HOST}}, {})
    env = dict(estate["env"], RADIUM_VCENTER_PASSWORD="Xq9-not-it")
    out = play(estate, "deploy-appliances.yml", inv, env=env)
    assert out.returncode != 0 and recap(out)["gpu-c"]["failed"] == 1
    assert "refused the login of 'radium': wrong user name or password" in out.stdout, out.stdout
    assert "Traceback" not in out.stdout + out.stderr
    assert "Xq9-not-it" not in out.stdout + out.stderr  # the password is never printed


def module_call(estate: dict, module: str, args: str, *flags: str) -> dict:
    """One module run ad hoc on the controller (`ansible localhost -m`): its result, and whether it failed."""
    argv = [str(BIN / "ansible"), "localhost", "-m", f"radium.estate.{module}", "-a", args, *flags]
    out = subprocess.run(argv, capture_output=True, text=True, env=estate["env"], timeout=120)
    assert out.returncode in (0, 2), out.stdout + out.stderr
    head, _, body = out.stdout.partition(" => ")
    return {**json.loads(body), "failed": "FAILED" in head}


def test_passthrough_and_hosts_info_modules(estate):
    def adhoc(module: str, args: str, *flags: str) -> dict:
        return module_call(estate, module.removeprefix("radium.estate."), args, *flags)

    info = adhoc("radium.estate.gpu_hosts_info", "hosts=DC0_H0")
    [host] = info["hosts"]
    disabled = [d["address"] for d in host["accelerators"] if not d["enabled"]]
    assert disabled and info["changed"] is False
    wanted = f"host=DC0_H0 devices={disabled[0]} state=enabled"
    would = adhoc("radium.estate.passthrough", wanted, "--check", "--diff")
    assert would["changed"] is True and would["devices"][0]["enabled"] is True
    with vcenter.connect(estate["settings"]) as s:
        assert not next(h for h in vcenter.hosts(s) if h.name == "DC0_H0").accelerators[1].enabled
    done = adhoc("radium.estate.passthrough", wanted)
    assert done["changed"] is True and done["reboot_pending"] is True
    assert adhoc("radium.estate.passthrough", wanted)["changed"] is False
    off = adhoc("radium.estate.passthrough", f"host=DC0_H0 devices={disabled[0]} state=disabled")
    assert off["changed"] is True
    wrong = adhoc("radium.estate.passthrough", "host=DC0_H0 devices=0000:99:00.0")
    assert wrong.get("failed") and "no PCI device" in wrong["msg"]


def test_client_key_enrols_once_and_revokes(estate, tmp_path):
    bundle = tmp_path / "ws1.radium.toml"
    key = estate["app1"].dir / "clients.d" / "ws1.key"

    def adhoc(args: str, *flags: str) -> dict:
        return module_call(estate, "client_key", args, *flags)

    present = f"name=ws1 appliance=app1 bundle={bundle}"
    assert adhoc(present, "--check")["changed"] is True and not key.exists()
    first = adhoc(present)
    assert first["changed"] is True and key.exists() and bundle.exists()
    assert oct(bundle.stat().st_mode & 0o777) == "0o600"
    assert load_client_config(bundle).client.public_key in key.read_text()
    assert adhoc(present)["changed"] is False  # the appliance accepts the bundle's key already
    absent = f"name=ws1 appliance=app1 bundle={bundle} state=absent"
    assert adhoc(absent)["changed"] is True and not key.exists()
    assert adhoc(absent)["changed"] is False
    assert adhoc("name=ws1 appliance=app1 state=absent")["changed"] is False  # not there: nothing to do

    # On the appliance itself, through its radiumd configuration: the keys folder says.
    config = estate["app1"].config
    local = f"name=ws2 appliance={config} bundle={tmp_path / 'ws2.toml'}"
    assert adhoc(local)["changed"] is True and (key.parent / "ws2.key").exists()
    assert adhoc(local)["changed"] is False
    assert adhoc(f"name=ws2 appliance={config} state=absent")["changed"] is True
    assert not (key.parent / "ws2.key").exists()
    assert adhoc(f"name=ws2 appliance={config} state=absent", "--check")["changed"] is False


def test_operator_config_makes_the_key_once_and_records_appliances(estate, tmp_path):
    path = tmp_path / "operator.toml"
    estate = {**estate, "env": {**estate["env"], "RADIUM_ADMIN_CONFIG": str(path)}}

    def adhoc(args: str, *flags: str) -> dict:
        return module_call(estate, "operator_config", args, *flags)

    would = adhoc("operator_name=ops", "--check")
    assert would["changed"] is True and would["operator"]["created"] is True and not path.exists()
    made = adhoc("operator_name=ops")
    assert made["changed"] is True and oct(path.stat().st_mode & 0o777) == "0o600"
    operator = load_client_config(path)
    assert (operator.client.name, operator.client.public_key) == ("ops", made["operator"]["public_key"])
    assert operator.client.secret_key not in json.dumps(made)  # never returned
    assert adhoc("")["changed"] is False and adhoc("")["operator"]["public_key"] == operator.client.public_key

    server = zmq.curve_keypair()[0].decode()
    record = f"appliance=gpu7 address=tcp://10.0.0.7:7450 public_key={server}"
    assert adhoc(record, "--check")["changed"] is True and not load_client_config(path).appliances
    assert adhoc(record)["changed"] is True
    [entry] = load_client_config(path).appliances
    assert (entry.name, entry.address, entry.public_key) == ("gpu7", "tcp://10.0.0.7:7450", server)
    assert adhoc(record)["changed"] is False
    bad = adhoc("appliance=gpu8 address=tcp://10.0.0.8:7450 public_key=short")
    assert bad["failed"] and "public_key: expected" in bad["msg"]
    assert adhoc("appliance=gpu7 state=absent")["changed"] is True and not load_client_config(path).appliances
    assert adhoc("appliance=gpu7 state=absent")["changed"] is False


def test_every_module_is_documented_for_ansible_doc(estate):
    modules = ("gpu_hosts_info", "passthrough", "appliance", "client_vm", "client_key", "operator_config")
    for module in modules:
        argv = [str(BIN / "ansible-doc"), f"radium.estate.{module}"]
        out = subprocess.run(argv, capture_output=True, text=True, env=estate["env"], timeout=120)
        assert out.returncode == 0, out.stderr
        assert "EXAMPLES" in out.stdout and "RETURN VALUES" in out.stdout
        assert "Traceback" not in out.stderr and "ERROR" not in out.stderr


def test_ansible_lint_production_profile_passes(estate):
    lint = BIN / "ansible-lint"
    if not lint.exists():
        pytest.skip("ansible-lint is not installed (./dev setup installs it)")
    out = subprocess.run(
        [str(lint), "--profile", "production", "--offline", "--nocolor"],
        capture_output=True,
        text=True,
        cwd=ROOT / "ansible",
        env=estate["env"],
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "it passed" in out.stdout + out.stderr


# ansible-test bootstraps pip in each of its virtual environments with a script it downloads
# from ci-files.testing.ansible.com, which is not a package registry (unreachable where CI runs);
# it looks in its cache first.  This stand-in does what that script does: pip, then the
# packages asked for (setuptools and wheel too, which Python 3.11's venv lacks).
GET_PIP = """import subprocess, sys
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True, stdout=subprocess.DEVNULL)
subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)
"""


@pytest.mark.timeout(900)
def test_ansible_test_sanity_passes(tmp_path):
    """Every sanity test of ansible-test (pylint, validate-modules, import, yamllint...), its
    requirements installed from the package index into its own virtual environments."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "."],
        cwd=ROOT / "ansible",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    collection = tmp_path / "ansible_collections" / "radium" / "estate"  # where ansible-test wants it
    for name in files:
        if (ROOT / "ansible" / name).is_file():
            (collection / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / "ansible" / name, collection / name)
    subprocess.run(["git", "init", "-q", "."], cwd=collection, check=True)
    subprocess.run(["git", "add", "-A"], cwd=collection, check=True)
    home = tmp_path / "home"
    # The pip it bootstraps names the cached script (get_venv_packages: pip='24.2').
    spec = importlib.util.find_spec("ansible_test")
    assert spec and spec.submodule_search_locations
    source = Path(spec.submodule_search_locations[0], "_internal", "python_requirements.py").read_text()
    [pip_version] = re.findall(r"pip='([0-9.]+)'", source)
    cache = home / ".ansible/test/cache" / f"get_pip_{pip_version.replace('.', '_')}.py"
    cache.parent.mkdir(parents=True)
    cache.write_text(GET_PIP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(HOME=str(home), PATH=f"{BIN}:{env.get('PATH', '')}")
    out = subprocess.run(
        [str(BIN / "ansible-test"), "sanity", "--python", f"{sys.version_info[0]}.{sys.version_info[1]}",
         "--color", "no"],
        cwd=collection, capture_output=True, text=True, env=env, timeout=840,
    )  # fmt: skip
    said = out.stdout + out.stderr
    problems = [line for line in said.splitlines() if "error" in line.lower() or "FATAL" in line]
    assert out.returncode == 0, "\n".join(problems)[-6000:]
    assert said.count("Running sanity test") >= 20  # all of them ran


def test_the_collection_builds_and_carries_radiums_version(tmp_path):
    from radium.remoting import VERSION

    galaxy = yaml.safe_load((ROOT / "ansible" / "galaxy.yml").read_text())
    assert galaxy["version"] == VERSION  # one release: the collection and the package it drives
    out = subprocess.run(
        [
            str(BIN / "ansible-galaxy"),
            "collection",
            "build",
            str(ROOT / "ansible"),
            "--output-path",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    [built] = tmp_path.glob("radium-estate-*.tar.gz")
    assert built.name == f"radium-estate-{VERSION}.tar.gz"
