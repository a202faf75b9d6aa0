"""`radium-admin lab`: a real appliance in a namespace, and `radium` finding it unconfigured."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from support import BIN

from radium.lab import netns
from radium.vcenter import sim

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def lab_env(tmp_path):
    ok, why = netns.can_create_namespaces()
    if not ok:
        pytest.skip(f"the lab needs network namespaces: {why}")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADIUM_VCENTER_")}
    env.update(
        # The simulator's build cache stays where it is (a fresh HOME would rebuild it: a minute).
        RADIUM_VCSIM_CACHE=str(sim.default_cache_dir()),
        HOME=str(home),
        RADIUM_LAB_DIR=str(tmp_path / "lab"),
        RADIUM_LAB_NAMESPACE=f"radium-labtest-{os.getpid()}",
        RADIUM_LAB_SUBNET="0",
    )
    for var in ("RADIUM_CONFIG", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR", "RADIUM_ADMIN_CONFIG"):
        env.pop(var, None)
    yield env
    subprocess.run([str(BIN / "radium-admin"), "lab", "down"], env=env, capture_output=True, timeout=60)


def run(env, tool, *args):
    out = subprocess.run([str(BIN / tool), *args], env=env, capture_output=True, text=True, timeout=120)
    return out


def test_lab_up_serves_radium_with_no_other_setup(lab_env):
    out = run(lab_env, "radium-admin", "lab", "up", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    status = json.loads(out.stdout)
    assert status["up"] and status["devices"] and status["error"] is None
    assert status["vcenter_error"] is None

    devices = run(lab_env, "radium", "list-gpus", "--json")
    assert devices.returncode == 0, devices.stderr
    assert json.loads(devices.stdout)["devices"][0]["appliance"] == "lab-appliance"

    again = run(lab_env, "radium-admin", "lab", "up", "--json")  # idempotent
    assert json.loads(again.stdout)["pid"] == status["pid"]
    assert json.loads(again.stdout)["vcenter_pid"] == status["vcenter_pid"]

    down = run(lab_env, "radium-admin", "lab", "down", "--json")
    assert json.loads(down.stdout)["stopped"] is True
    assert run(lab_env, "radium-admin", "lab", "status").returncode == 1
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lab_env["RADIUM_LAB_NAMESPACE"] not in listed


def test_lab_up_includes_a_vcenter_with_the_lab_appliance(lab_env):
    missing = sim.missing()
    if missing:
        pytest.skip("vCenter simulator unavailable: " + "; ".join(missing))
    out = run(lab_env, "radium-admin", "lab", "up", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    status = json.loads(out.stdout)
    assert status["vcenter_pid"] and status["vcenter"].startswith("https://127.0.0.1:")
    assert status["appliance_vm"].startswith("lab-appliance on ")

    # No flags, no RADIUM_VCENTER_*: radium-admin uses the lab's vCenter profile.
    hosts = run(lab_env, "radium-admin", "hosts", "--json")
    assert hosts.returncode == 0, hosts.stderr
    inventory = json.loads(hosts.stdout)["hosts"]
    assert {h["name"] for h in inventory} == {"DC0_C0_H0", "DC0_C0_H1", "DC0_H0"}
    held = [(h["name"], d["address"]) for h in inventory for d in h["accelerators"] if d["held_by"]]
    assert held == [("DC0_C0_H0", "0000:3b:00.0")]

    listed = run(lab_env, "radium-admin", "appliance", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (appliance,) = json.loads(listed.stdout)["appliances"]
    assert appliance["vm"] == "lab-appliance" and appliance["power_state"] == "poweredOn"
    assert appliance["address"] == status["address"]
    assert [g["address"] for g in appliance["gpus"]] == ["0000:3b:00.0"]

    # Healthy: radiumd answers at the recorded address, with the recorded key, to the lab's operator key.
    health = run(lab_env, "radium-admin", "appliance", "status", "lab-appliance", "--json")
    assert health.returncode == 0, health.stdout + health.stderr
    report = json.loads(health.stdout)
    assert report["healthy"] and report["health"]["server"] == "lab-appliance" and report["health"]["devices"]

    down = run(lab_env, "radium-admin", "lab", "down", "--json")
    assert json.loads(down.stdout)["stopped"] is True
    gone = run(lab_env, "radium-admin", "hosts")
    assert gone.returncode != 0 and "no vCenter given" in gone.stderr
    assert (
        not os.path.exists(f"/proc/{status['vcenter_pid']}")
        or b"radium-vcsim" not in open(f"/proc/{status['vcenter_pid']}/cmdline", "rb").read()
    )
