"""The lab: a real appliance on this machine, for the main job and for trying things.

`radium-admin lab up` makes a network namespace for the appliance, joined to
this machine's own namespace by a shaped veth pair, starts `radiumd` in it with
this machine's OpenCL devices, enrols a client and an operator key, and writes
a lab profile (client.toml, admin.toml) that `radium` and `radium-admin` use
when nothing else is configured.  `lab down` undoes all of it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from radium.remoting import enrolment
from radium.remoting._config import lab_profile_dir, load_client_config, save_client_config
from radium.remoting._errors import RadiumError
from radium.remoting._keys import write_atomic
from radium.remoting.client import api

from . import netns

# One lab per machine by default; RADIUM_LAB_NAMESPACE / RADIUM_LAB_SUBNET make another
# (the tests use that, so that they never touch an operator's running lab).
NAMESPACE = "radium-lab"
SUBNET = 255  # 10.231.SUBNET.0/24; the test topologies use 1-254
PORT = 7450
METRICS_PORT = 9450
APPLIANCE_NAME = "lab-appliance"


class LabError(RadiumError):
    code = "lab"
    exit_code = 1


def lab_dir() -> Path:
    return lab_profile_dir()


@dataclass
class LabStatus:
    up: bool
    directory: str
    pid: int | None = None
    address: str | None = None
    metrics: str | None = None
    client_config: str | None = None
    admin_config: str | None = None
    devices: list[str] | None = None
    error: str | None = None


class Lab:
    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or lab_dir()
        self.namespace = os.environ.get("RADIUM_LAB_NAMESPACE", NAMESPACE)
        subnet = int(os.environ.get("RADIUM_LAB_SUBNET", SUBNET))
        self.host_address = f"10.231.{subnet}.1"
        self.address = f"10.231.{subnet}.2"
        self.root_if, self.lab_if = f"rdmlab{subnet}a", f"rdmlab{subnet}b"
        self.config_path = self.dir / "radiumd.toml"
        self.client_path = self.dir / "client.toml"
        self.admin_path = self.dir / "admin.toml"
        self.pid_path = self.dir / "radiumd.pid"
        self.log_path = self.dir / "radiumd.log"

    # --- state --------------------------------------------------------------

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"radium.remoting.daemon" in cmdline else None

    def status(self) -> LabStatus:
        pid = self.pid()
        st = LabStatus(up=pid is not None, directory=str(self.dir), pid=pid)
        if pid is None:
            return st
        st.address = f"tcp://{self.address}:{PORT}"
        st.metrics = f"http://{self.address}:{METRICS_PORT}/metrics"
        st.client_config, st.admin_config = str(self.client_path), str(self.admin_path)
        try:
            config = load_client_config(self.client_path)
            (result,) = asyncio.run(api.list_devices(config))
            if result.error is not None:
                raise result.error
            assert result.value is not None
            st.devices = [f"{d.device.id} {d.device.model}" for d in result.value.devices]
        except RadiumError as exc:
            st.error = str(exc)
        return st

    # --- up and down ----------------------------------------------------------

    def up(self, timeout: float = 60.0) -> LabStatus:
        if self.pid() is not None:
            return self.status()
        ok, why = netns.can_create_namespaces(need_tc=True)
        if not ok:
            raise LabError(f"the lab needs a network namespace, and {why}: run it as root")
        self._teardown_network()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._make_network()
        self._write_config()
        for name in ("lab-client", "lab-admin"):
            (self.dir / "clients.d" / f"{name}.key").unlink(missing_ok=True)
        address = f"tcp://{self.address}:{PORT}"
        save_client_config(
            enrolment.enroll_local(self.config_path, "lab-client", address=address),
            self.client_path,
        )
        save_client_config(
            enrolment.enroll_local(self.config_path, "lab-admin", role="admin", address=address),
            self.admin_path,
        )
        self._start_daemon(timeout)
        return self.status()

    def down(self) -> bool:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while self.pid() is not None and time.monotonic() < deadline:
                time.sleep(0.05)  # not our child: nothing to wait on but /proc
            if self.pid() is not None:
                os.kill(pid, signal.SIGKILL)
        self.pid_path.unlink(missing_ok=True)
        self._teardown_network()
        return pid is not None

    # --- the pieces -----------------------------------------------------------

    def _make_network(self) -> None:
        run = netns._run_ip
        run(["ip", "netns", "add", self.namespace])
        run(
            [
                "ip",
                "link",
                "add",
                self.root_if,
                "mtu",
                "1500",
                "type",
                "veth",
                "peer",
                "name",
                self.lab_if,
                "netns",
                self.namespace,
                "mtu",
                "1500",
            ]
        )
        run(["ip", "addr", "add", f"{self.host_address}/24", "dev", self.root_if])
        run(["ip", "link", "set", self.root_if, "up"])
        run(["ip", "-n", self.namespace, "addr", "add", f"{self.address}/24", "dev", self.lab_if])
        run(["ip", "-n", self.namespace, "link", "set", self.lab_if, "up"])
        run(["ip", "-n", self.namespace, "link", "set", "lo", "up"])
        for prefix in ([], ["-n", self.namespace]):
            dev = self.lab_if if prefix else self.root_if
            run(
                [
                    "tc",
                    *prefix,
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    "4750mbit",
                    "burst",
                    "64kb",
                    "latency",
                    "10ms",
                ]
            )

    def _teardown_network(self) -> None:
        subprocess.run(["ip", "link", "del", self.root_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, check=False)

    def _write_config(self) -> None:
        text = f"""# radiumd of the Radium lab (written by `radium-admin lab up`)
[server]
name = "{APPLIANCE_NAME}"
listen = "tcp://{self.address}:{PORT}"
state_dir = "state"
clients_dir = "clients.d"
admins_dir = "admins.d"

[metrics]
listen = "{self.address}:{METRICS_PORT}"

[log]
format = "json"
"""
        write_atomic(self.config_path, text, 0o644)

    def _start_daemon(self, timeout: float) -> None:
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.namespace,
                    sys.executable,
                    "-m",
                    "radium.remoting.daemon",
                    "--config",
                    str(self.config_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        write_atomic(self.pid_path, str(proc.pid), 0o644)
        config = load_client_config(self.client_path)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                self._teardown_network()
                raise LabError(f"radiumd exited with {proc.returncode}; its log ends:\n{tail}")
            (result,) = asyncio.run(api.list_devices(config, timeout=1.0))
            if result.error is None:
                return
            if time.monotonic() > deadline:
                self.down()
                raise LabError(f"radiumd did not answer within {timeout:g}s: {result.error}")
