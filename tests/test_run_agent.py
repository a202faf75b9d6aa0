"""The run agent: `radium run` handed to a warm process of the user's (client/agent.py).

Every other `radium run` test goes through the agent too (it is the default);
these check what is the agent's own: one agent serving many runs, one per view
of the machine, its lifetime, its death, and what it refuses.
"""

from __future__ import annotations

import os
import select
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from support import hidden, run_agents, wait_until

from radium.remoting.client import agent as agent_module

pytestmark = pytest.mark.timeout(180)


def agents(client) -> list[dict]:
    return client.json("agent", "status")["agents"]


def wait_exit(pid: int, timeout: float) -> bool:
    """True once process `pid` has exited (False if still running after `timeout`)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def test_one_warm_agent_serves_the_runs_of_one_view(remote, tmp_path):
    client = remote.client()
    assert agents(client) == []
    first = client.run("run", "--", "hostname")
    assert first.returncode == 0, first.stderr
    (agent,) = agents(client)
    second = client.run("run", "--", "sh", "-c", "echo $0 $1; exit 3", "a", "b c")
    assert second.returncode == 3 and second.stdout == "a b c\n", second.stderr
    (again,) = agents(client)
    assert again["pid"] == agent["pid"] and again["served"] == agent["served"] + 1

    # A run in a private mount namespace sees other files: an agent of its own serves it.
    setup = (
        "mkdir -p /srv/radium-agent-test && mount -t tmpfs tmpfs /srv/radium-agent-test "
        "&& echo only-here > /srv/radium-agent-test/f"
    )
    out = subprocess.run(
        hidden(client, setup, "/srv/radium-agent-test", "run", "--", "cat", "f"),
        env=client.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout == "only-here\n", out.stderr
    pids = {a["pid"] for a in agents(client)}
    assert len(pids) == 2 and agent["pid"] in pids


def test_a_run_handed_to_the_agent_imports_neither_re_nor_enum(remote):
    """The installed `radium` command, up to the handoff, imports only what it needs: pip's
    entry-point wrapper imported `re` (and enum), 7.5 ms of every run (bin/radium)."""
    client = remote.client()
    assert client.run("run", "--", "true").returncode == 0  # the agent is up
    out = subprocess.run(
        client.argv("run", "--", "true"),
        env={**client.env(), "PYTHONPROFILEIMPORTTIME": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "radium.remoting.client.handoff" in imported, out.stderr  # the handoff took it
    assert not imported & {"re", "enum", "asyncio", "zmq"}, sorted(imported)


def test_the_agent_keeps_no_variable_of_the_run_that_started_it(remote):
    client = remote.client()
    env = dict(client.env(), RADIUM_TEST_ONLY_FOR_THIS_RUN="yes", PYTHONWARNINGS="ignore")
    argv = client.argv("run", "--", "sh", "-c", "echo $RADIUM_TEST_ONLY_FOR_THIS_RUN")
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "yes\n", out.stderr  # the run has it
    (agent,) = agents(client)
    environ = Path(f"/proc/{agent['pid']}/environ").read_bytes().split(b"\0")
    assert not any(v.startswith((b"RADIUM_TEST_ONLY", b"PYTHONWARNINGS=")) for v in environ)
    out = client.run("run", "--", "sh", "-c", "echo ${RADIUM_TEST_ONLY_FOR_THIS_RUN:-unset}")
    assert out.stdout == "unset\n", out.stderr  # nor does the next run


def test_the_agent_leaves_when_idle(remote):
    client = remote.client()
    env = dict(client.env(), RADIUM_AGENT_IDLE="0.5")
    out = subprocess.run(
        client.argv("run", "--", "true"), env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    sockets = list(client.state.glob("agent-*.sock"))
    assert len(sockets) == 1
    pids = run_agents(str(client.state))
    assert len(pids) == 1
    assert wait_exit(pids[0], 20), "the idle agent did not exit"
    assert not sockets[0].exists()
    assert client.run("run", "--", "true").returncode == 0  # and the next run starts another


def test_a_killed_agent_ends_the_run_and_says_so(remote):
    client = remote.client()
    marker = "radium-agent-sleeper-" + os.urandom(4).hex()
    proc = client.popen("run", "--", "bash", "-c", f"echo started; exec -a {marker} sleep 600")
    assert proc.stdout.readline() == "started\n"
    wait_until(lambda: running(marker), 10, "the remote process to start")
    (agent,) = agents(client)
    os.kill(agent["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 69, err
    assert "the run agent ended during the run" in err and "agent.log" in err
    # Its session stops: the appliance ends the process and frees the lease.
    wait_until(
        lambda: subprocess.run(["pgrep", "-f", marker]).returncode != 0, 20, "the remote process to end"
    )
    wait_until(lambda: not any(d["leases"] for d in client.json("list-gpus")["devices"]), 20, "lease release")
    assert client.run("run", "--", "true").returncode == 0  # a new agent serves the next run


def running(marker: str) -> bool:
    return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0


def test_a_changed_source_tree_hands_over_to_a_new_agent(remote):
    client = remote.client()
    assert client.run("run", "--", "true").returncode == 0
    (old,) = agents(client)
    module = Path(agent_module.__file__)
    times = module.stat()
    try:
        os.utime(module, ns=(times.st_atime_ns, time.time_ns()))  # as an upgrade would
        out = client.run("run", "--", "echo", "served")
        assert out.returncode == 0 and out.stdout == "served\n", out.stderr
        (new,) = agents(client)
        assert new["pid"] != old["pid"] and new["served"] == 1
        assert wait_exit(old["pid"], 20), "the stale agent did not leave"
    finally:
        os.utime(module, ns=(times.st_atime_ns, times.st_mtime_ns))


def test_without_the_agent_radium_run_runs_in_its_own_process(remote):
    client = remote.client()
    env = dict(client.env(), RADIUM_AGENT="off")
    out = subprocess.run(
        client.argv("run", "--", "sh", "-c", "read x; echo got $x; exit 5"),
        env=env,
        input="it\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 5 and out.stdout == "got it\n", out.stderr
    assert agents(client) == []


def test_ctrl_c_while_waiting_for_a_device_gives_up_the_wait(remote):
    client = remote.client()
    device = sorted(d["id"] for d in client.json("list-gpus")["devices"])[0]
    pick = ["-p", "1", "--filter", f"device.id={device}"]
    holder = subprocess.Popen(
        client.argv("run", *pick, "--", "sh", "-c", "echo started; read x"),
        env=client.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "started\n"
    waiter = client.popen("run", *pick, "--timeout", "120", "--", "true")
    remote.appliance.wait_for_log("request queued")
    waiter.send_signal(signal.SIGINT)
    out, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 130 and "interrupted" in err
    holder.communicate(input="\n", timeout=30)
    assert holder.returncode == 0
    # Had the wait stayed queued, it would hold the device now, and this would find it taken.
    out = client.run("run", *pick, "--", "echo", "free")
    assert out.returncode == 0 and out.stdout == "free\n", out.stderr


def test_output_to_a_closed_pipe_neither_hangs_nor_harms_the_agent(remote):
    client = remote.client()
    big = "import sys\nfor _ in range(20000): sys.stdout.write('x' * 1000 + '\\n')\n"
    argv = shlex.join(client.argv("run", "--", "python3", "-c", big))
    out = subprocess.run(
        ["bash", "-c", f"{argv} | head -c 5; status=${{PIPESTATUS[0]}}; echo; echo $status"],
        env=client.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.splitlines()[0] == "xxxxx"
    assert out.stdout.splitlines()[1] == "0"  # the remote process finished; its output went nowhere
    assert client.run("run", "--", "true").returncode == 0 and len(agents(client)) == 1


def test_the_agent_survives_malformed_requests_and_refuses_other_users(remote):
    client = remote.client()
    assert client.run("run", "--", "true").returncode == 0
    (sock_path,) = client.state.glob("agent-*.sock")
    for garbage in (b"", b"\xff\xfe", b"run", b"run\x00x\x00/\x009", b"run\x000\x00/\x00-1", b"signal\x009"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.connect(str(sock_path))
            s.sendmsg([garbage], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _fds(0, 1, 2))])
            s.settimeout(10)
            assert s.recv(100) == b""  # closed without an answer
    # Another user reaching the socket (were the folder not 0700) gets nothing either:
    # a second name for it, where that user can reach it.
    reachable = Path(tempfile.gettempdir()) / f"radium-agent-probe-{os.getpid()}.sock"
    os.link(sock_path, reachable)
    os.chmod(reachable, 0o777)
    probe = (
        "import socket\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        f"s.connect({str(reachable)!r})\n"
        "try:\n"
        "    s.send(b'status'); s.settimeout(10); print(repr(s.recv(100)))\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    print(repr(b''))\n"
    )
    other = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
    )
    reachable.unlink()
    assert other.returncode == 0 and other.stdout.strip() == "b''", other.stderr
    out = client.run("run", "--", "echo", "still here")
    assert out.returncode == 0 and out.stdout == "still here\n"
    assert len(agents(client)) == 1


def _fds(*fds: int) -> bytes:
    return b"".join(fd.to_bytes(4, "little", signed=True) for fd in fds)


def test_runs_at_once_through_one_agent_keep_their_own_streams_and_status(remote):
    client = remote.client()
    assert client.run("run", "--", "true").returncode == 0  # the agent is up
    script = (
        "import sys\nprint('ready', flush=True)\nline = sys.stdin.readline()\nprint(line.upper(), end='')\n"
    )

    def start(code: int) -> subprocess.Popen:
        return subprocess.Popen(
            client.argv("run", "-p", "0.25", "--", "python3", "-c", script + f"sys.exit({code})"),
            env=client.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    procs = [start(code) for code in (3, 4, 5)]
    for p in procs:
        assert p.stdout.readline() == "ready\n"  # all three run at once
    (agent,) = agents(client)
    assert agent["runs"] == 3
    outs = [p.communicate(input=f"run {i}\n", timeout=60) for i, p in reversed(list(enumerate(procs)))]
    assert [o for o, _ in reversed(outs)] == ["RUN 0\n", "RUN 1\n", "RUN 2\n"]
    assert [p.returncode for p in procs] == [3, 4, 5]
