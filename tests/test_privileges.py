"""radiumd's own user: the drop from root, what it hands over, and what the root side refuses.

radiumd started as root with `--user` keeps root only in its supervisors' fork server
(daemon/privileges.py, run/forkserver.py).  Here: the drop itself (in a forked copy of
this process), the folders it hands over, a fork server that signals only its own
children and removes only names in its run folders, a supervisor that refuses a job
outside its settings, and radiumd's messages for a user it cannot be.  The whole
(radiumd as `radium` under the shipped unit, a run, enrolment, a lost fork server) is
tests/test_appliance.py::test_the_units_boot_an_appliance_under_systemd.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess

import msgspec
import pytest
from support import PY, wait_until

from radium.remoting import schema as s
from radium.remoting.daemon import privileges
from radium.remoting.run import channel

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (radiumd drops from root)")


def nobody() -> privileges.User:
    return privileges.resolve(pwd.getpwuid(65534).pw_name)


@needs_root
def test_the_drop_leaves_no_id_no_group_and_no_capability_of_root():
    user = nobody()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops; the test process stays root
        os.close(read)
        try:
            privileges.drop(user)
            status = open("/proc/self/status").read()
            fields = {line.split(":")[0]: line.split()[1:] for line in status.splitlines() if ":" in line}
            try:
                os.setuid(0)
                regained = "yes"
            except PermissionError:
                regained = "no"
            report = {k: fields[k] for k in ("Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapAmb")}
            report["regained"] = regained
            os.write(write, msgspec.json.encode(report))
        finally:
            os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.waitpid(pid, 0)
    report = msgspec.json.decode(data)
    assert report["Uid"] == [str(user.uid)] * 4 and report["Gid"] == [str(user.gid)] * 4
    assert "0" not in report["Groups"]
    assert report["CapEff"] == report["CapPrm"] == report["CapAmb"] == ["0000000000000000"]
    assert report["regained"] == "no"


@needs_root
def test_hand_over_gives_the_store_and_keys_and_keeps_the_runs_roots(tmp_path):
    user = nobody()
    state, clients, admins = tmp_path / "state", tmp_path / "clients.d", tmp_path / "admins.d"
    (state / "cas" / "ab").mkdir(parents=True)
    (state / "runs" / "R-old").mkdir(parents=True)
    admins.mkdir()
    (admins / "ops.key").write_text("key\n")
    (admins / "ops.key").chmod(0o600)
    privileges.clear_runs(state / "runs")
    privileges.hand_over(user, state, [clients, admins])

    def owner(path):
        st = path.stat()
        return st.st_uid, st.st_gid

    mine = (user.uid, user.gid)
    assert owner(state / "cas") == owner(state / "cas" / "ab") == mine
    assert owner(clients) == owner(admins) == owner(admins / "ops.key") == mine
    assert owner(state) == (0, 0) and state.stat().st_mode & 0o777 == 0o711  # searchable, not readable
    assert owner(state / "runs") == (0, 0)
    assert (state / "runs").stat().st_mode & 0o777 == 0o700
    assert list((state / "runs").iterdir()) == []  # a crash's run folder cleared


def test_radiumd_says_which_user_it_cannot_be(tmp_path):
    config = tmp_path / "radiumd.toml"
    config.write_text('[server]\nname = "a"\nstate_dir = "state"\n')
    out = subprocess.run(
        [PY, "-m", "radium.remoting.daemon", "--config", str(config), "--user", "no-such-user-here"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 78 and "Traceback" not in out.stderr
    assert "no such user" in out.stderr and "systemd-sysusers" in out.stderr
    out = subprocess.run(
        [PY, "-m", "radium.remoting.daemon", "--config", str(config), "--user", "root"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 78 and "unprivileged user" in out.stderr


@needs_root
def test_radiumd_started_as_another_user_cannot_drop():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            privileges.drop(nobody())
            try:
                privileges.needs_drop(privileges.User("daemon", 1, 1))
                os.write(write, b"no error")
            except privileges.UserError as exc:
                os.write(write, str(exc).encode())
        finally:
            os._exit(0)
    os.close(write)
    said = os.read(read, 4096).decode()
    os.waitpid(pid, 0)
    assert "must be started as root" in said and "runs as uid 65534" in said, said


# --- the fork server: what radiumd may ask of it ----------------------------------------


def settings(tmp_path, **change) -> channel.Settings:
    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)
    values = dict(
        runs_dir=str(runs), store_dir=str(tmp_path / "cas"), store_limit=1 << 30, id_base=200000,
        id_slots=4, appliance_paths=["/etc/OpenCL/vendors"], tini="/usr/bin/tini-static", mps_control=None,
    )  # fmt: skip
    values.update(change)
    return channel.Settings(**values)  # type: ignore[arg-type]


class ForkServer:
    def __init__(self, tmp_path) -> None:
        self.ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.settings = settings(tmp_path)
        self.proc = subprocess.Popen(
            [PY, "-m", "radium.remoting.run.forkserver", "--fd", str(theirs.fileno()),
             "--settings", msgspec.json.encode(self.settings).decode()],
            pass_fds=[theirs.fileno()], stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        theirs.close()
        self.ours.settimeout(60)
        assert self.ours.recv(64) == b"ready"

    def fork(self) -> tuple[int, socket.socket]:
        mine, child = socket.socketpair()
        socket.send_fds(self.ours, [b"fork 0"], [child.fileno()])
        child.close()
        kind, _, pid = self.ours.recv(64).partition(b" ")
        assert kind == b"pid", kind
        return int(pid), mine

    def close(self) -> str:
        self.ours.close()
        self.proc.wait(30)
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


def test_the_fork_server_signals_only_its_children_and_cleans_only_run_folders(tmp_path):
    server = ForkServer(tmp_path)
    bystander = subprocess.Popen(["sleep", "60"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not a run's")
    runs = tmp_path / "runs"
    (runs / "R-1" / "upper").mkdir(parents=True)
    (runs / "R-1" / "upper" / "file").write_text("a run's")
    (runs / "R-link").symlink_to(outside, target_is_directory=True)
    try:
        pid, channel_end = server.fork()  # a spare supervisor, waiting for its job
        server.ours.send(b"kill %d" % bystander.pid)
        server.ours.send(b"clean ../outside")
        server.ours.send(b"clean R-link")
        server.ours.send(b"clean R-1")
        server.ours.send(b"kill %d" % pid)
        assert server.ours.recv(64) == b"exit %d -%d" % (pid, signal.SIGKILL)  # its child: killed
        channel_end.close()
        wait_until(lambda: not (runs / "R-1").exists(), 10, "the run folder removed")
        assert bystander.poll() is None  # not its child: untouched
        assert (outside / "keep").read_text() == "not a run's"  # neither by name nor through a link
        assert (runs / "R-link").is_symlink()
    finally:
        bystander.kill()
        said = server.close()
    assert f"refused kill '{bystander.pid}'" in said and "refused clean '../outside'" in said
    assert "could not remove run folder R-link" in said


def test_a_supervisor_refuses_a_job_outside_its_settings(tmp_path):
    def make(**change) -> channel.Job:
        values = {"run": "R-1", "client": "c", "start": start, "slot": 0, "device_env": {}, **change}
        return channel.Job(**values)  # type: ignore[arg-type]

    server = ForkServer(tmp_path)
    start = s.RunStart(session="S-1", argv=["true"], cwd="/", uid=0, gid=0, env={})
    try:
        for job, why in (
            (make(run="../../etc"), "not a plain name"),
            (make(client="a/b"), "not a plain name"),
            (make(slot=4), "id slot 4 outside 0-3"),
            (make(mps=channel.Mps(memory_mib={0: 1}, threads=50)), "without nvidia-cuda-mps-control"),
        ):
            pid, end = server.fork()
            end.sendall(channel.pack(job))
            assert server.ours.recv(64) == b"exit %d 2" % pid, why  # refused before anything
            end.close()
        assert list((tmp_path / "runs").iterdir()) == []  # and nothing made
    finally:
        said = server.close()
    for why in ("not a plain name", "id slot 4 outside 0-3", "without nvidia-cuda-mps-control"):
        assert why in said  # in the supervisors' log lines (radiumd's log)
