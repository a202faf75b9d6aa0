"""`radium-admin lab`: a real appliance in a namespace, and `radium` finding it unconfigured."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from support import BIN

from radium.lab import netns

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def lab_env(tmp_path):
    ok, why = netns.can_create_namespaces()
    if not ok:
        pytest.skip(f"the lab needs network namespaces: {why}")
    home = tmp_path / "home"
    home.mkdir()
    env = dict(
        os.environ,
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

    devices = run(lab_env, "radium", "list-gpus", "--json")
    assert devices.returncode == 0, devices.stderr
    assert json.loads(devices.stdout)["devices"][0]["appliance"] == "lab-appliance"

    again = run(lab_env, "radium-admin", "lab", "up", "--json")  # idempotent
    assert json.loads(again.stdout)["pid"] == status["pid"]

    down = run(lab_env, "radium-admin", "lab", "down", "--json")
    assert json.loads(down.stdout)["stopped"] is True
    assert run(lab_env, "radium-admin", "lab", "status").returncode == 1
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lab_env["RADIUM_LAB_NAMESPACE"] not in listed
