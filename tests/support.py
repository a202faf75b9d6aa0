"""Real parts for tests: a radiumd process, enrolled clients, the CLI run as a process."""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radium.lab.netns import Host

PY = sys.executable
BIN = Path(sys.executable).parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A run whose process exits at once has its end wait for the libraries it read in part (the
# interpreter's libpython, `import hashlib`'s libcrypto: several chunks each) for a quarter of
# the process's time, 0.2-1 s by default, which a loaded machine (CI) may not fetch them in: the
# next run then faults the rest in over the link. Tests that count a later run's bytes wait as
# long as it takes (an appliance's extra configuration).
WAIT_FOR_COMPLETION = "[run]\ncomplete_at_exit = [60, 60]\n"


@dataclass
class Appliance:
    """A radiumd started as a real process (in a namespace when `host` is given)."""

    dir: Path
    name: str = "app1"
    host: Host | None = None
    address: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    pocl_devices: str = "pthread pthread"
    extra_config: str = ""
    proc: subprocess.Popen | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    _new: queue.Queue = field(default_factory=queue.Queue)

    @property
    def config(self) -> Path:
        return self.dir / "radiumd.toml"

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.address}:{self.port}"

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_port = free_port()
        self.config.write_text(
            f"""[server]
name = "{self.name}"
listen = "{self.endpoint}"
state_dir = "state"
clients_dir = "clients.d"
admins_dir = "admins.d"
{self.extra_config}
[metrics]
listen = "{"127.0.0.1" if self.host is None else self.address}:{self.metrics_port}"
"""
        )

    def start(self, timeout: float = 60.0) -> Appliance:
        if not self.config.exists():
            self.write_config()
        env = dict(os.environ, POCL_DEVICES=self.pocl_devices)
        argv = [PY, "-m", "radium.remoting.daemon", "--config", str(self.config)]
        popen = self.host.popen if self.host else lambda a, **k: subprocess.Popen(a, **k)
        self.proc = popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for_log("radiumd serving", timeout)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = {"event": "non-json", "text": line}
            self.lines.append(entry)
            self._new.put(entry)
        self._new.put(None)

    def wait_for_log(
        self, event: str, timeout: float = 15.0, where: Callable[[dict], bool] = lambda e: True
    ) -> dict:
        """Block until the daemon logs `event` (already logged counts)."""
        for entry in list(self.lines):
            if entry.get("event") == event and where(entry):
                return entry
        deadline = time.monotonic() + timeout
        while True:
            try:
                entry = self._new.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"radiumd did not log {event!r} within {timeout}s; log: {self.lines[-10:]}"
                ) from None
            if entry is None:
                raise AssertionError(
                    f"radiumd exited ({self.proc.poll()}) before logging {event!r}; log: {self.lines[-10:]}"
                )
            if entry.get("event") == event and where(entry):
                return entry

    def stop(self, sig: str = "TERM", timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            getattr(self.proc, "terminate" if sig == "TERM" else "kill")()
        return self.proc.wait(timeout)

    def enroll(self, name: str, role: str = "client") -> Path:
        bundle = self.dir / f"{name}.toml"
        out = subprocess.run(
            [
                str(BIN / "radium-admin"),
                "enroll",
                name,
                "--appliance",
                str(self.config),
                "--address",
                self.endpoint,
                "--role",
                role,
                "-o",
                str(bundle),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return bundle


@dataclass
class Client:
    """The `radium` CLI as a user runs it, on a host (namespace) or here."""

    config: Path
    state: Path
    host: Host | None = None

    def env(self) -> dict[str, str]:
        return dict(os.environ, RADIUM_CONFIG=str(self.config), RADIUM_STATE_DIR=str(self.state))

    def argv(self, *args: str) -> list[str]:
        argv = [str(BIN / "radium"), *args]
        return self.host.command(argv) if self.host else argv

    def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(*args), env=self.env(), capture_output=True, text=True, timeout=timeout
        )

    def json(self, *args: str, expect: int = 0, timeout: float = 60.0) -> Any:
        out = self.run(*args, "--json", timeout=timeout)
        assert out.returncode == expect, f"exit {out.returncode}: {out.stdout}{out.stderr}"
        return json.loads(out.stdout)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.argv(*args), env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )


def run_agents(marker: str) -> list[int]:
    """The pids of the run agents whose command line names `marker` (a state folder, or above)."""
    from radium.remoting.client.handoff import AGENT_MODULE

    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if AGENT_MODULE.encode() in argv and any(marker.encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids


def stop_run_agents(marker: str) -> list[int]:
    """SIGTERM every run agent whose command line names `marker`; wait until each has exited."""
    waits = []
    for pid in run_agents(marker):
        try:
            fd = os.pidfd_open(pid)
            signal.pidfd_send_signal(fd, signal.SIGTERM)
        except OSError:
            continue
        waits.append((pid, fd))
    for _, fd in waits:
        select.select([fd], [], [], 15)  # readable once the process has exited
        os.close(fd)
    return [pid for pid, _ in waits]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.1) -> Any:
    """Poll an outside state (another process's) until it holds, within a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(poll)


def hidden(client: Client, setup: str, cwd: str, *radium_args: str) -> list[str]:
    """argv running `radium ARGS` on the client host in a private mount namespace.

    `setup` (bash) runs first in that namespace, typically mounting a tmpfs and
    filling it: files made there exist for the client only, so whatever the remote
    process reads from them must have come through Radium.
    """
    import shlex

    radium = " ".join(shlex.quote(a) for a in [str(BIN / "radium"), *radium_args])
    script = f"set -e\n{setup}\ncd {shlex.quote(cwd)}\nexec {radium}\n"
    argv = ["unshare", "--mount", "--propagation", "private", "bash", "-c", script]
    return client.host.command(argv) if client.host else argv


# --- radium-admin against the vCenter simulator (test_deploy, test_register) -------------------


def admin_env(home: Path, vc: Any, user: str, password: str, **extra: str) -> dict[str, str]:
    """`radium-admin`'s environment for simulator `vc`: a fresh home, the simulator's URL,
    credentials and CA; nothing of this machine's own vCenter or client settings."""
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RADIUM_VCENTER_", "RADIUM_CONFIG"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        RADIUM_VCENTER_URL=vc.sdk_url,
        RADIUM_VCENTER_USER=user,
        RADIUM_VCENTER_PASSWORD=password,
        RADIUM_VCENTER_CA=str(vc.ca_file),
        **extra,
    )
    return env


def admin(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    """`radium-admin ARGS`, with no terminal input."""
    return subprocess.run(
        [str(BIN / "radium-admin"), *args], capture_output=True, text=True, input="", timeout=timeout, env=env
    )


def ok_json(out: subprocess.CompletedProcess) -> Any:
    """The JSON a successful command printed (the test fails with its output otherwise)."""
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


def stand_in(settings: Any, app: Appliance) -> Path:
    """Enrol an operator key on radiumd `app` and make it an appliance in the vCenter of `settings`
    (`vcenter.register_standin`, as the lab does); the operator's bundle."""
    from radium import vcenter
    from radium.remoting import load_client_config

    ops = app.enroll("ops", role="admin")
    admin = load_client_config(ops)
    with vcenter.connect(settings) as s:
        vcenter.register_standin(
            s,
            name=app.name,
            address="127.0.0.1",
            port=app.port,
            server_public_key=admin.appliances[0].public_key,
            admin=admin,
        )
    return ops


def recap(out: subprocess.CompletedProcess) -> dict[str, dict[str, int]]:
    """`ansible-playbook`'s PLAY RECAP, per host: {"ok": .., "changed": .., "failed": .., ...}."""
    import re

    found = {}
    for line in out.stdout.split("PLAY RECAP", 1)[-1].splitlines():
        m = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if m:
            found[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return found


def sshd_config(listen: str, folder: Path, name: str = "sshd", *extra: str) -> Path:
    """A test sshd's configuration: its host key and pid file in `folder`, keys only, no PAM."""
    path = folder / f"{name}.conf"
    lines = [
        f"ListenAddress {listen}",
        f"HostKey {folder}/host_key",
        f"PidFile {folder}/{name}.pid",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        "UsePAM no",
        *extra,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- a host with a real systemd: this machine's OS booted in systemd-nspawn --------------------


class Container:
    """This machine's OS booted in systemd-nspawn over an overlay of /, as a host of its own.

    Its changes land in the overlay's upper layer under `top`; `state` (a real file system,
    since an overlay's upper layer cannot be on overlayfs) is bound at /var/lib/radium, where
    radiumd's runs keep theirs.  `network` is a namespace (`ip netns`) to boot into; without
    one it has a private network.
    """

    def __init__(self, top: Path, network: str | None = None) -> None:
        self.top = top
        self.root = top / "root"
        self.state = top / "state"
        self.network = network
        self.machine = f"radium-test-{os.getpid()}-{top.name}"[:60]
        self.boot: subprocess.Popen | None = None
        for d in ("upper", "work", "root", "state"):
            (top / d).mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir=/,upperdir={top}/upper,workdir={top}/work", str(self.root)],
            check=True,
        )  # fmt: skip

    @staticmethod
    def missing() -> str | None:
        """Why no container can be booted here (None: it can)."""
        if os.geteuid() != 0:
            return "needs root"
        for tool in ("systemd-nspawn", "nsenter"):
            if shutil.which(tool) is None:
                return f"{tool} not installed (systemd-nspawn: Debian package systemd-container)"
        if not Path("/usr/bin/python3.11").exists() or not Path("/lib/systemd/systemd").exists():
            return "needs Debian 12's python3.11 and systemd on this machine"
        return None

    @property
    def nspawn(self) -> list[str]:
        return ["systemd-nspawn", "-q", "-D", str(self.root), "-M", self.machine, "--register=no",
                "--keep-unit", "--link-journal=no"]  # fmt: skip

    def start(self, *extra: str) -> Container:
        """Boot it (systemd as its PID 1)."""
        network = (
            [f"--network-namespace-path=/run/netns/{self.network}"] if self.network else ["--private-network"]
        )
        self.boot = subprocess.Popen(
            [*self.nspawn, "-b", *network, "--console=pipe", "--bind=/dev/fuse",
             f"--bind={self.state}:/var/lib/radium", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, SYSTEMD_NSPAWN_API_VFS_WRITABLE="1"),
        )  # fmt: skip
        return self

    def leader(self) -> int | None:
        """The container's PID 1, as this machine sees it."""
        assert self.boot is not None
        children = Path(f"/proc/{self.boot.pid}/task/{self.boot.pid}/children")
        text = children.read_text().split() if children.exists() else []
        return int(text[0]) if text else None

    def inside(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`script` run by sh inside the container (every namespace of its PID 1)."""
        pid = self.leader()
        assert pid, "the container is not running"
        argv = ["nsenter", "-t", str(pid), "-a", "sh", "-c", script]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 120) -> None:
        """Poll `ready` while the container runs; fail with its units' state after `timeout`."""
        assert self.boot is not None
        deadline = time.monotonic() + timeout
        while not (self.leader() and ready()):
            if self.boot.poll() is not None:
                raise AssertionError(
                    f"the container stopped: {self.boot.stdout.read() if self.boot.stdout else ''}"
                )
            if time.monotonic() > deadline:
                state = (
                    self.inside("systemctl --failed --no-pager; systemctl status --no-pager")
                    if self.leader()
                    else None
                )
                raise AssertionError(f"{what}: not after {timeout} s\n{state.stdout if state else ''}")
            time.sleep(0.5)

    def close(self) -> None:
        if self.boot is not None and self.boot.poll() is None:
            self.boot.terminate()  # asks the container's systemd to power off
            try:
                self.boot.wait(60)
            except subprocess.TimeoutExpired:
                self.boot.kill()
                self.boot.wait(10)
        subprocess.run(["umount", "-l", str(self.root)], check=False)
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.machine}", ignore_errors=True)
