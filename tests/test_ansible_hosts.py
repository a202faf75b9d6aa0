"""The collection's radium_client role over SSH, on hosts made of namespaces, as operators run it.

The appliance host is a network namespace running radiumd; the client hosts live in the
client namespace, each in a private mount namespace of its own (its own /opt, /root,
/usr/local/bin) behind an OpenSSH sshd of its own. Ansible reaches them over real SSH
(through `ip netns exec ... nc` as the proxy command), installs the client from a
wheelhouse built from this repository, configures it from a bundle, and ends with
`radium health`; then `radium run` on a client host runs a program on the appliance host.
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
from support import Appliance, recap

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
    """radium and every dependency as wheels, built from this checkout (what an air-gapped site ships)."""
    out = tmp_path_factory.mktemp("wheels")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", str(ROOT), "-w", str(out)],
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
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    client = two_hosts.client
    # c2's guest variables: what `radium-admin register-vm` writes into a VM, for its bundle.
    variables = tmp_path / "guestinfo-c2"
    variables.mkdir()
    for key, value in guestinfo.encode(load_client_config(app.enroll("c2"))).items():
        (variables / key).write_text(value)
    tool = tmp_path / "c2-rpctool"
    tool.write_text(FAKE_RPCTOOL.replace("GUESTINFO", str(variables)))
    tool.chmod(0o755)
    sshds = []
    try:
        for name, port in PORTS.items():
            if name == "c3":
                continue
            cfg = ssh / f"{name}.conf"
            cfg.write_text(
                textwrap.dedent(f"""\
                ListenAddress {client.address}:{port}
                HostKey {ssh}/host_key
                PidFile {ssh}/{name}.pid
                PubkeyAuthentication yes
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                PermitRootLogin prohibit-password
                StrictModes no
                UsePAM no
                """)
            )
            # A host of its own: private /opt, /root and /usr/local/bin, then its sshd.
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
        bundles = tmp_path / "bundles"
        bundles.mkdir()
        for name in ("c1", "c3"):
            shutil.copy(app.enroll(name), bundles / f"{name}.toml")
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
