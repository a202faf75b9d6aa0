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

NAMESPACE = "radium-lab"
ROOT_IF, LAB_IF = "rdmlab0", "rdmlab1"
HOST_ADDRESS, APPLIANCE_ADDRESS = "10.231.255.1", "10.231.255.2"
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
        st.address = f"tcp://{APPLIANCE_ADDRESS}:{PORT}"
        st.metrics = f"http://{APPLIANCE_ADDRESS}:{METRICS_PORT}/metrics"
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
        address = f"tcp://{APPLIANCE_ADDRESS}:{PORT}"
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
        run(["ip", "netns", "add", NAMESPACE])
        run(
            [
                "ip",
                "link",
                "add",
                ROOT_IF,
                "mtu",
                "1500",
                "type",
                "veth",
                "peer",
                "name",
                LAB_IF,
                "netns",
                NAMESPACE,
                "mtu",
                "1500",
            ]
        )
        run(["ip", "addr", "add", f"{HOST_ADDRESS}/24", "dev", ROOT_IF])
        run(["ip", "link", "set", ROOT_IF, "up"])
        run(["ip", "-n", NAMESPACE, "addr", "add", f"{APPLIANCE_ADDRESS}/24", "dev", LAB_IF])
        run(["ip", "-n", NAMESPACE, "link", "set", LAB_IF, "up"])
        run(["ip", "-n", NAMESPACE, "link", "set", "lo", "up"])
        for prefix in ([], ["-n", NAMESPACE]):
            dev = LAB_IF if prefix else ROOT_IF
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
        subprocess.run(["ip", "link", "del", ROOT_IF], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", NAMESPACE], capture_output=True, check=False)

    def _write_config(self) -> None:
        text = f"""# radiumd of the Radium lab (written by `radium-admin lab up`)
[server]
name = "{APPLIANCE_NAME}"
listen = "tcp://{APPLIANCE_ADDRESS}:{PORT}"
state_dir = "state"
clients_dir = "clients.d"
admins_dir = "admins.d"

[metrics]
listen = "{APPLIANCE_ADDRESS}:{METRICS_PORT}"

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
                    NAMESPACE,
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
