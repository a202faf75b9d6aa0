"""The collection's roles over SSH, on hosts made of namespaces, as operators run them.

The client hosts live in the client namespace, each in a private mount namespace of its own
(its own /opt, /root, /usr/local/bin) behind an OpenSSH sshd of its own.  The appliance host
is either a radiumd in the appliance namespace (the radium_client tests), or this machine's
OS booted in systemd-nspawn in that namespace, with its own systemd and sshd, which the
radium_appliance role makes an appliance.  Ansible reaches them over real SSH, installs from
a wheelhouse built from this repository, and ends with `radium health`; then `radium run` on
a client host runs a program on the appliance host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
import zmq.auth
from support import Appliance, Container, recap, sshd_config

from radium.remoting import guestinfo, load_client_config

pytest.importorskip("ansible", reason="ansible-core is not installed (./dev setup installs it)")

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
NC = shutil.which("nc")
PORTS = {"c1": 2201, "c2": 2202, "c3": 2203}  # c3: no sshd there (an unreachable host)
# vmware-rpctool as the hypervisor answers it: c2 is a VM configured from its guestinfo.
FAKE_RPCTOOL = """#!/bin/sh
set -eu
cmd=${1%% *}; key=${1#* }
[ "$cmd" = info-get ] && [ -s "GUESTINFO/$key" ] || { echo "No value found" >&2; exit 1; }
cat "GUESTINFO/$key"; echo
"""


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """radium[appliance] and every dependency as wheels, built from this checkout (what an air-gapped
    site ships)."""
    out = tmp_path_factory.mktemp("wheels")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", f"{ROOT}[appliance]", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot build the wheelhouse (no package index?): {done.stderr[-500:]}")
    return out


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return path.with_suffix(".pub").read_text().strip()


def start_sshds(client, ssh: Path, user_pub: str, tmp_path: Path) -> None:
    """c1 and c2: hosts of their own in the client namespace (private /opt, /root and /usr/local/bin,
    c2 with its vmware-rpctool when the test made one), each behind its own sshd."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    sshds = []
    for name, port in PORTS.items():
        if name == "c3":
            continue
        cfg = sshd_config(f"{client.address}:{port}", ssh, name)
        script = textwrap.dedent(f"""\
            set -e
            for m in /opt /root /usr/local/bin; do mount -t tmpfs -o mode=0755 tmpfs "$m"; done
            mkdir -m 700 /root/.ssh
            echo '{user_pub}' > /root/.ssh/authorized_keys
            tool={tmp_path}/{name}-rpctool
            if [ -e "$tool" ]; then cp "$tool" /usr/local/bin/vmware-rpctool; fi
            exec {SSHD} -D -e -f {cfg}
        """)
        argv = ["unshare", "--mount", "--propagation", "private", "bash", "-c", script]
        sshds.append(client.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for name, proc in zip(["c1", "c2"], sshds, strict=True):
        deadline = time.monotonic() + 15
        while client.run(["nc", "-z", client.address, str(PORTS[name])]).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd of {name} did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.05)


def controller_env(tmp_path: Path) -> dict[str, str]:
    """The controller's environment: this checkout as the collection, nothing of the caller's."""
    collections = tmp_path / "collections" / "ansible_collections" / "radium"
    collections.mkdir(parents=True)
    (collections / "estate").symlink_to(ROOT / "ansible")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RADIUM_", "ANSIBLE_"))}
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_HOST_KEY_CHECKING="false",
        # SSH's shared connections of this test's own, never a master left by an earlier
        # test to a host at the same address (a namespace since deleted).
        ANSIBLE_SSH_CONTROL_PATH_DIR=str(tmp_path / "cp"),
    )
    return env


@pytest.fixture
def estate(two_hosts, tmp_path):
    if NC is None or not Path(SSHD).exists():
        pytest.skip("needs OpenSSH's sshd and netcat (./dev setup installs them)")
    app = Appliance(
        tmp_path / "appliance", host=two_hosts.appliance, address=two_hosts.appliance.address, port=7450
    ).start()
    ssh = tmp_path / "ssh"
    ssh.mkdir()
    keygen(ssh / "host_key")
    user_pub = keygen(ssh / "user_key")
    client = two_hosts.client
    # c2's guest variables: what `radium-admin register-vm` writes into a VM, for its bundle.
    variables = tmp_path / "guestinfo-c2"
    variables.mkdir()
    for key, value in guestinfo.encode(load_client_config(app.enroll("c2"))).items():
        (variables / key).write_text(value)
    tool = tmp_path / "c2-rpctool"
    tool.write_text(FAKE_RPCTOOL.replace("GUESTINFO", str(variables)))
    tool.chmod(0o755)
    try:
        start_sshds(client, ssh, user_pub, tmp_path)
        bundles = tmp_path / "bundles"
        bundles.mkdir()
        for name in ("c1", "c3"):
            shutil.copy(app.enroll(name), bundles / f"{name}.toml")
        env = controller_env(tmp_path)
        proxy = (
            f"-o ProxyCommand='ip netns exec {client.name} nc %h %p' -o UserKnownHostsFile=/dev/null "
            "-o ServerAliveInterval=5 -o ServerAliveCountMax=3"
        )
        yield {
            "app": app,
            "client": client,
            "bundles": bundles,
            "key": ssh / "user_key",
            "proxy": proxy,
            "env": env,
            "root": tmp_path,
        }
    finally:
        app.stop()


def inventory(estate: dict, wheelhouse: Path, **extra: object) -> Path:
    hosts = {
        name: {"ansible_host": estate["client"].address, "ansible_port": port} for name, port in PORTS.items()
    }
    hosts["c2"]["radium_client_config_from"] = "guestinfo"  # a VM: what register-vm wrote
    data = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(estate["key"]),
                "ansible_ssh_common_args": estate["proxy"],
                "ansible_python_interpreter": "/usr/bin/python3",
                "radium_client_python": "/usr/bin/python3",
                "radium_client_wheelhouse": str(wheelhouse),
                "radium_client_config_from": "bundle",
                "radium_client_bundle": str(estate["bundles"]) + "/{{ inventory_hostname }}.toml",
                **extra,
            },
            "children": {"clients": {"hosts": hosts}},
        }
    }
    path = estate["root"] / f"inventory-{len(list(estate['root'].glob('inventory-*')))}.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def play(estate: dict, inv: Path) -> subprocess.CompletedProcess:
    playbook = ROOT / "ansible" / "playbooks" / "install-clients.yml"
    argv = [str(BIN / "ansible-playbook"), "-i", str(inv), str(playbook)]
    return subprocess.run(argv, capture_output=True, text=True, env=estate["env"], timeout=240)


def on_host(estate: dict, name: str, command: str) -> subprocess.CompletedProcess:
    """`command` on client host `name`, over SSH as Ansible reached it."""
    argv = [
        "ssh",
        "-i",
        str(estate["key"]),
        "-p",
        str(PORTS[name]),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        f"ProxyCommand=ip netns exec {estate['client'].name} nc %h %p",
        f"root@{estate['client'].address}",
        command,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_the_client_role_installs_configures_and_radium_run_works(estate, wheelhouse):
    inv = inventory(estate, wheelhouse)
    out = play(estate, inv)
    r = recap(out)
    # c3 has no sshd: reported unreachable, and the others still complete.
    assert r["c3"]["unreachable"] == 1, out.stdout
    for name in ("c1", "c2"):
        assert r[name]["failed"] == 0 and r[name]["unreachable"] == 0 and r[name]["changed"] >= 3, out.stdout
    assert "Traceback" not in out.stdout + out.stderr

    # Each host has its own installation and configuration: c1 the one its bundle holds, c2 the
    # one its guestinfo does.
    for name in ("c1", "c2"):
        done = on_host(estate, name, "readlink /usr/local/bin/radium && cat ~/.config/radium/client.toml")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("/opt/radium/bin/radium") and f'name = "{name}"' in done.stdout
    # From a client host, a program runs on the appliance host and its output comes back.
    for name in ("c1", "c2"):
        ran = on_host(estate, name, "cd /root && radium run -- ip -o -4 addr show")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert estate["app"].address in ran.stdout  # the appliance host's interface, not the client's

    again = play(estate, inv)
    r = recap(again)
    for name in ("c1", "c2"):
        assert r[name]["changed"] == 0 and r[name]["failed"] == 0, again.stdout


def test_a_missing_role_variable_fails_before_anything_changes(estate, wheelhouse):
    inv = inventory(estate, wheelhouse, radium_client_bundle="")
    out = play(estate, inv)
    r = recap(out)
    assert r["c1"]["failed"] == 1 and r["c1"]["changed"] == 0
    assert "set radium_client_bundle" in out.stdout
    assert on_host(estate, "c1", "test -e /opt/radium").returncode != 0  # nothing was made
    # A wheelhouse with no wheels in it (a wrong folder): said so, before anything is made.
    empty = estate["root"] / "no-wheels"
    empty.mkdir()
    out = play(estate, inventory(estate, empty))
    r = recap(out)
    assert r["c1"]["failed"] == 1 and r["c1"]["changed"] == 0, out.stdout
    assert f"The wheelhouse {empty} holds no wheels" in out.stdout
    assert on_host(estate, "c1", "test -e /opt/radium").returncode != 0


# --- the radium_appliance role: a host with systemd made an appliance, then clients enrolled on it ---


@pytest.fixture
def linux_estate(two_hosts, tmp_path):
    """a1: a booted host (systemd, sshd) in the appliance namespace, nothing of Radium on it;
    c1, c2 (and an unreachable c3) in the client namespace; the controller runs there too."""
    reason = Container.missing()
    if reason or NC is None or not Path(SSHD).exists():
        pytest.skip(reason or "needs OpenSSH's sshd and netcat (./dev setup installs them)")
    ssh = tmp_path / "ssh"
    ssh.mkdir()
    keygen(ssh / "host_key")
    user_pub = keygen(ssh / "user_key")
    box = Container(tmp_path / "a1", network=two_hosts.appliance.name)
    try:
        for stale in ("opt/radium", "etc/radium", "etc/systemd/system/radiumd.service"):
            path = box.root / stale
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        (box.root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
        (box.root / "root/.ssh/authorized_keys").write_text(user_pub + "\n")
        box.start()
        box.wait_until(
            lambda: box.inside("systemctl is-active ssh.service").stdout.strip() == "active", "sshd"
        )
        start_sshds(two_hosts.client, ssh, user_pub, tmp_path)
        env = controller_env(tmp_path)
        env["RADIUM_ADMIN_CONFIG"] = str(tmp_path / "operator.toml")  # none yet: the role makes it
        yield {"box": box, "client": two_hosts.client, "appliance": two_hosts.appliance,
               "key": ssh / "user_key", "env": env, "root": tmp_path}  # fmt: skip
    finally:
        box.close()


def linux_inventory(estate: dict, wheelhouse: Path) -> Path:
    on_host = {"ansible_python_interpreter": "/usr/bin/python3"}  # not the controller's (localhost)
    data = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(estate["key"]),
                "ansible_ssh_common_args": "-o UserKnownHostsFile=/dev/null",
            },
            "children": {
                "appliance_hosts": {
                    "hosts": {"a1": {"ansible_host": estate["appliance"].address}},
                    "vars": {
                        **on_host,
                        "radium_appliance_python": "/usr/bin/python3",
                        "radium_appliance_wheelhouse": str(wheelhouse),
                    },
                },
                "clients": {
                    "hosts": {
                        name: {"ansible_host": estate["client"].address, "ansible_port": port}
                        for name, port in PORTS.items()
                    },
                    "vars": {
                        **on_host,
                        "radium_client_python": "/usr/bin/python3",
                        "radium_client_wheelhouse": str(wheelhouse),
                        "radium_client_config_from": "enrol",
                        "radium_client_appliances": ["a1"],
                        "radium_client_bundle_dir": str(estate["root"] / "bundles"),
                    },
                },
            },
        }
    }
    path = estate["root"] / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def linux_play(estate: dict, inv: Path, *extra: str) -> subprocess.CompletedProcess:
    """Both plays, from a controller on the clients' network (it dials the appliance to enrol)."""
    books = [
        str(ROOT / "ansible" / "playbooks" / b) for b in ("install-appliances.yml", "install-clients.yml")
    ]
    argv = ["ip", "netns", "exec", estate["client"].name, str(BIN / "ansible-playbook"), "-i", str(inv)]
    return subprocess.run(
        [*argv, *extra, *books], capture_output=True, text=True, env=estate["env"], timeout=600
    )


def test_the_appliance_role_makes_a_host_an_appliance_that_enrolled_clients_run_on(linux_estate, wheelhouse):
    estate, box = linux_estate, linux_estate["box"]
    inv = linux_inventory(estate, wheelhouse)
    out = linux_play(estate, inv)
    r = recap(out)
    assert r["a1"]["failed"] == 0 and r["a1"]["changed"] >= 3, out.stdout[-6000:]
    for name in ("c1", "c2"):
        assert r[name]["failed"] == 0 and r[name]["unreachable"] == 0 and r[name]["changed"] >= 3, out.stdout
    assert r["c3"]["unreachable"] == 1, out.stdout
    assert "Traceback" not in out.stdout + out.stderr

    # The host: radiumd enabled and running under the shipped unit's hardening, from /opt/radium.
    shown = box.inside(
        "systemctl is-enabled radiumd; systemctl is-active radiumd;"
        " systemctl show radiumd -p ExecStart -p NoNewPrivileges -p ProtectSystem"
    ).stdout
    assert shown.startswith("enabled\nactive\n"), shown
    assert (
        "/opt/radium/bin/radiumd" in shown
        and "NoNewPrivileges=yes" in shown
        and "ProtectSystem=strict" in shown
    )
    # Its server key was made there and stays there; the operator configuration (made on the
    # controller) records it, and the appliance trusts that operator and the two enrolled clients.
    state = box.state
    assert (state / "server.key_secret").stat().st_mode & 0o777 == 0o600
    server_public = zmq.auth.load_certificate(str(state / "server.key"))[0].decode()
    secret = zmq.auth.load_certificate(str(state / "server.key_secret"))[1]
    assert secret and secret.decode() not in out.stdout + out.stderr
    operator = load_client_config(Path(estate["env"]["RADIUM_ADMIN_CONFIG"]))
    assert Path(estate["env"]["RADIUM_ADMIN_CONFIG"]).stat().st_mode & 0o777 == 0o600
    assert [(a.name, a.address, a.public_key) for a in operator.appliances] == [
        ("a1", f"tcp://{estate['appliance'].address}:7450", server_public)
    ]
    keys = box.inside("cat /etc/radium/admins.d/operator.key; ls /etc/radium/clients.d").stdout
    assert operator.client.public_key in keys and "c1.key" in keys and "c2.key" in keys

    # From each client host, a program runs on the appliance host and its output comes back.
    for name in ("c1", "c2"):
        ran = on_host(estate, name, "cd /root && radium run -- ip -o -4 addr show")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert estate["appliance"].address in ran.stdout

    again = linux_play(estate, inv)
    r = recap(again)
    for name in ("a1", "c1", "c2"):
        assert r[name]["changed"] == 0 and r[name]["failed"] == 0, again.stdout[-6000:]
    started = "systemctl show radiumd -p NRestarts -p ExecMainStartTimestampMonotonic"
    restarts = box.inside(started).stdout

    # A bad variable fails before anything changes: radiumd keeps running as it was.
    bad = linux_play(estate, inv, "-e", "radium_appliance_firewall=iptables", "--limit", "a1")
    assert recap(bad)["a1"]["failed"] == 1 and recap(bad)["a1"]["changed"] == 0
    assert "radium_appliance_firewall" in bad.stdout
    assert box.inside(started).stdout == restarts
