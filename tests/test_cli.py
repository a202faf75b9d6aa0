"""The command lines as a user and an operator meet them: bundles, enrolment, mistakes."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest
from support import BIN, Client

from radium.remoting._config import load_client_config
from radium.remoting.schema import PROTOCOL_VERSION

pytestmark = pytest.mark.timeout(120)


def admin(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "radium-admin"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, **(env or {})),
    )


def radium(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "radium"), *args], capture_output=True, text=True, timeout=60, env=env)


def test_versions():
    out = radium("version", "--json", env=dict(os.environ))
    assert out.returncode == 0 and json.loads(out.stdout)["protocol"] == PROTOCOL_VERSION
    out = admin("version", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["radium"]


def test_configure_installs_a_bundle_and_merges_appliances(appliance, tmp_path):
    home = tmp_path / "home"
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    env.pop("RADIUM_CONFIG", None)
    bundle = appliance.enroll("vm1")
    out = radium("configure", "--bundle", str(bundle), env=env)
    assert out.returncode == 0, out.stderr
    installed = home / ".config" / "radium" / "client.toml"
    assert stat.S_IMODE(installed.stat().st_mode) == 0o600
    # Again: nothing to change, and it says so (what makes Ansible's radium_client idempotent).
    again_out = radium("configure", "--bundle", str(bundle), "--json", env=env)
    assert again_out.returncode == 0 and json.loads(again_out.stdout)["changed"] is False
    assert "already configured" in radium("configure", "--bundle", str(bundle), env=env).stdout
    out = radium("list-gpus", "--json", env=env)
    assert out.returncode == 0 and len(json.loads(out.stdout)["devices"]) == 2

    # The same client, enrolled with a second appliance: one config, two appliances.
    second = tmp_path / "second.toml"
    again = admin(
        "enroll",
        "vm1",
        "--appliance",
        str(appliance.config),
        "--address",
        "tcp://127.0.0.1:1",
        "--from-bundle",
        str(bundle),
        "-o",
        str(second),
    )
    assert again.returncode == 0, again.stderr
    text = second.read_text().replace('name = "app1"', 'name = "app2"')
    second.write_text(text)
    assert radium("configure", "--bundle", str(second), env=env).returncode == 0
    assert [a.name for a in load_client_config(installed).appliances] == ["app1", "app2"]

    # Another identity is refused unless asked for.
    other = appliance.enroll("vm2")
    out = radium("configure", "--bundle", str(other), env=env)
    assert out.returncode == 2 and "--replace" in out.stderr
    assert radium("configure", "--bundle", str(other), "--replace", env=env).returncode == 0
    assert load_client_config(installed).client.name == "vm2"


def test_enrolment_over_the_network_with_an_operator_key(appliance, tmp_path):
    ops = appliance.enroll("ops", role="admin")
    env = {"RADIUM_ADMIN_CONFIG": str(ops)}
    bundle = tmp_path / "vm5.toml"
    out = admin("enroll", "vm5", "--appliance", "app1", "-o", str(bundle), "--json", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["address"] == appliance.endpoint
    vm5 = Client(bundle, tmp_path / "vm5-state")
    assert len(vm5.json("list-gpus")["devices"]) == 2

    # A client key cannot enrol others.
    out = admin("enroll", "vm6", "--appliance", "app1", env={"RADIUM_ADMIN_CONFIG": str(bundle)})
    assert out.returncode == 77 and "needs an operator key" in out.stderr

    out = admin("revoke", "vm5", "--appliance", "app1", env=env)
    assert out.returncode == 0, out.stderr
    assert vm5.run("list-gpus").returncode == 77


@pytest.mark.parametrize(
    "args, message",
    [
        (["request-gpus", "--filter", "device.colour=red"], "unknown filter key 'device.colour'"),
        (["request-gpus", "--filter", "nonsense"], "expected KEY OP VALUE"),
        (["request-gpus", "-p", "1.5"], "0 < F <= 1"),
        (["request-gpus", "-n", "0"], "-n must be at least 1"),
        (["request-gpus", "--timeout", "-1"], "--timeout must be 0 or more"),
        (["list-gpus", "--server", "nowhere"], "no appliance named 'nowhere'"),
    ],
)
def test_user_mistakes_get_one_clear_line(client, args, message):
    out = client.run(*args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_errors_are_json_with_json(client):
    out = client.run("request-gpus", "-p", "2", "--json")
    assert out.returncode == 2
    error = json.loads(out.stdout)["error"]
    assert error["code"] == "usage" and "0 < F <= 1" in error["message"]


def test_no_configuration_says_what_to_do(tmp_path):
    env = dict(os.environ, RADIUM_CONFIG=str(tmp_path / "missing.toml"))
    out = radium("list-gpus", env=env)
    assert out.returncode == 2
    assert "radium configure --bundle" in out.stderr and "Traceback" not in out.stderr


def test_enrolling_a_bad_name_is_refused(appliance):
    out = admin("enroll", "../etc", "--appliance", str(appliance.config))
    assert out.returncode == 2 and "invalid client name" in out.stderr
    assert not (appliance.dir / "etc.key").exists()
