"""`radium run` when things go wrong, what a run may see of the appliance, and devices.

Over the two-host topology, with client files hidden from the appliance as in
tests/test_run.py: the link cut mid-run, the appliance's content store out of
disk, a command or working directory that does not exist; a run seeing only its
own processes and the client's view of the appliance's state folder; each run
seeing only its allocated OpenCL devices.  The write-back's path checks are
unit-tested at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import msgspec
import pytest
from conftest import Remote
from support import BIN, PY, Appliance, hidden, wait_until

from radium.remoting import schema as s
from radium.remoting._errors import ProtocolError
from radium.remoting.run import forkserver
from radium.remoting.run.fsproto import chunk_hash
from radium.remoting.run.writeback import Applier, check_client_path

pytestmark = pytest.mark.timeout(120)

PROJECT = "/srv/radium-test-faults"
VENV_PYTHON = str(Path(PY).parent / "python")  # the test venv's interpreter (it has pyopencl)


def project_setup(tmp_path, files: dict[str, str | bytes], extra: str = "") -> str:
    """bash that mounts a private tmpfs at PROJECT and copies `files` into it."""
    stage = tmp_path / "stage"
    stage.mkdir(exist_ok=True)
    for rel, content in files.items():
        path = stage / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    mount = f"mount -t tmpfs -o size=64m tmpfs {PROJECT}"
    return f"mkdir -p {PROJECT}\n{mount}\ncp -a {stage}/. {PROJECT}/\n{extra}\n"


def run_hidden(remote, tmp_path, files, *args, cwd=PROJECT, extra="", timeout=120):
    client = remote.client()
    argv = hidden(client, project_setup(tmp_path, files, extra), cwd, "run", *args)
    return subprocess.run(argv, env=client.env(), capture_output=True, timeout=timeout)


def radium(*args: str) -> str:
    """A `radium` command line for bash."""
    return shlex.join([str(BIN / "radium"), *args])


def in_client_namespace(client, script: str) -> list[str]:
    """argv running bash `script` on the client host in a private mount namespace (as `hidden`)."""
    return client.host.command(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", "set -e\n" + script]
    )


def start_remote(two_hosts, tmp_path, extra_config: str = "", before_start=None) -> Remote:
    app = Appliance(
        tmp_path / "appliance",
        host=two_hosts.appliance,
        address=two_hosts.appliance.address,
        port=7450,
        extra_config=extra_config,
    )
    app.write_config()
    if before_start is not None:
        before_start(app)
    app.start()
    return Remote(app, two_hosts, tmp_path)


def state_dir(remote) -> Path:
    return remote.appliance.dir / "state"


def assert_nothing_left(remote, marker: str) -> None:
    """After a run ended: no supervisor but the spare, no process of the run, no mount, no run folder."""
    app = remote.appliance
    app.wait_for_log("run ended", timeout=30)
    pid = app.proc.pid  # `ip netns exec` execs radiumd in place
    supervisors = _supervisors(pid)
    assert len(supervisors) <= 1, supervisors  # the one spare radiumd keeps waiting for the next run
    stray = subprocess.run(["pgrep", "-a", "-f", marker], capture_output=True, text=True).stdout
    assert stray == "", f"the run's processes outlived it: {stray}"
    runs = state_dir(remote) / "runs"
    mounts = [line for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines() if str(runs) in line]
    assert mounts == []
    assert not runs.exists() or list(runs.iterdir()) == []


# --- the link cut mid-run -----------------------------------------------------------------

ECHO = (
    "import sys\n"
    "print('started', flush=True)\n"
    "for line in sys.stdin:\n"
    "    print('echo', line.strip(), flush=True)\n"
)


def backoff(remote) -> int:
    """How many times in a row the client's TCP to the appliance has failed to deliver (RTO backoff)."""
    out = remote.hosts.client.run(
        ["ss", "-tinH", "dst", remote.appliance.address], capture_output=True, text=True
    ).stdout
    return max((int(n) for n in re.findall(r"\bbackoff:(\d+)", out)), default=0)


def start_echo(remote, tmp_path, marker: str) -> subprocess.Popen:
    client = remote.client()
    argv = hidden(
        client, project_setup(tmp_path, {"echo.py": ECHO}), PROJECT, "run", "--", "python3", "echo.py", marker
    )
    proc = subprocess.Popen(
        argv, env=client.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout.readline() == b"started\n", proc.stderr.read1()
    return proc


def test_a_short_link_cut_mid_run_resumes_or_ends_cleanly(remote, tmp_path):
    marker = "radium-link-cut-" + os.urandom(4).hex()
    proc = start_echo(remote, tmp_path, marker)
    try:
        remote.hosts.link_down()
        try:
            proc.stdin.write(b"during\n")  # traffic that must wait for the link
            proc.stdin.flush()
            # The cut is felt: the client's TCP has failed three times in a row to deliver it
            # (after about 1.4 s: its timeouts double from 0.2 s).
            wait_until(lambda: backoff(remote) >= 3, 10, "TCP backing off on the cut link", poll=0.05)
        finally:
            remote.hosts.link_up()
        line = proc.stdout.readline()
        if line:  # it resumed: nothing was lost, in order
            assert line == b"echo during\n"
            out, err = proc.communicate(b"after\n", timeout=30)  # and then the end of its input
            assert (out, proc.returncode) == (b"echo after\n", 0), err.decode()
        else:  # it ended: as when the appliance dies
            err = proc.communicate(timeout=30)[1]
            assert proc.returncode == 69 and b"app1" in err, err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_nothing_left(remote, marker)


@pytest.fixture
def quick_remote(two_hosts, tmp_path):
    """An appliance that gives up on a silent client after 2 s (the default is 6 s)."""
    r = start_remote(two_hosts, tmp_path, "heartbeat_interval = 0.5\nlease_timeout = 2.0\n")
    try:
        yield r
    finally:
        r.close()


def test_a_long_link_cut_ends_the_run_cleanly_and_leaves_nothing_behind(quick_remote, tmp_path):
    remote = quick_remote
    marker = "radium-link-cut-" + os.urandom(4).hex()
    proc = start_echo(remote, tmp_path, marker)
    try:
        remote.hosts.link_down()
        try:
            cut = time.monotonic()
            # Both ends give up: the client on missed heartbeats, the appliance on silence.
            err = proc.communicate(timeout=30)[1]
            noticed = time.monotonic() - cut
            remote.appliance.wait_for_log(
                "run killed: its session ended",
                timeout=30,
                where=lambda e: e.get("reason", "").startswith("no heartbeat"),
            )
        finally:
            remote.hosts.link_up()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 69, err.decode()
    assert b"app1" in err and b"Traceback" not in err, err.decode()
    assert noticed < 10, f"the client took {noticed:.1f}s to give up"
    assert_nothing_left(remote, marker)
    # The appliance still serves, and the client can run again.
    out = run_hidden(remote, tmp_path, {}, "--", "sh", "-c", "echo again")
    assert (out.returncode, out.stdout) == (0, b"again\n"), out.stderr.decode()


# --- the content store out of disk -----------------------------------------------------------


@pytest.fixture
def small_store_remote(two_hosts, tmp_path):
    """An appliance whose content store is a 4 MiB tmpfs (its limit says 10 GiB)."""
    cas = tmp_path / "appliance" / "state" / "cas"

    def mount(app):
        cas.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(cas)], check=True)

    r = None
    try:
        r = start_remote(two_hosts, tmp_path, before_start=mount)
        yield r
    finally:
        if r is not None:
            r.close()
        subprocess.run(["umount", "-l", str(cas)], check=False)


def test_a_full_store_gives_correct_content_and_stays_usable(small_store_remote, tmp_path):
    remote = small_store_remote
    files: dict[str, str | bytes] = {f"data/part{i}.bin": os.urandom(1 << 20) for i in range(10)}
    files["small.txt"] = "small and correct\n"  # read by the second run only
    files["sums.py"] = (
        "import hashlib, sys\n"
        "for f in sys.argv[1:]:\n"
        "    print(f, hashlib.sha256(open(f, 'rb').read()).hexdigest(), flush=True)\n"
    )
    expected = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items() if rel.endswith(".bin")}
    client = remote.client()
    # Two runs in one client mount namespace (the same client files), one after the other.
    script = (
        f"{project_setup(tmp_path, files)}cd {PROJECT}\n"
        f"{radium('run', '--', 'python3', 'sums.py', *sorted(expected))} && echo first-status=0"
        " || echo first-status=$?\n"
        f"exec {radium('run', '--', 'python3', 'sums.py', 'small.txt', 'data/part9.bin')}\n"
    )
    out = subprocess.run(
        in_client_namespace(client, script), env=client.env(), capture_output=True, timeout=120
    )
    lines = out.stdout.decode().splitlines()
    status_line = next(i for i, line in enumerate(lines) if line.startswith("first-status="))
    first_status = int(lines[status_line].split("=")[1])
    if first_status == 0:  # served from memory what the store could not keep
        assert dict(line.split() for line in lines[:status_line]) == expected
    else:  # or refused clearly: a message, never wrong data
        assert b"Traceback" not in out.stderr and re.search(rb"(full|space)", out.stderr), out.stderr
        assert all(dict([line.split()]).items() <= expected.items() for line in lines[:status_line])
    assert out.returncode == 0, out.stderr.decode()  # the second run
    expected["small.txt"] = hashlib.sha256(b"small and correct\n").hexdigest()
    assert [line.split() for line in lines[status_line + 1 :]] == [
        [f, expected[f]] for f in ("small.txt", "data/part9.bin")
    ]
    cas = state_dir(remote) / "cas"
    disk = os.statvfs(cas)
    assert disk.f_bavail * disk.f_frsize < 1 << 20, "the store's disk never filled up"
    # Nothing corrupted: every stored chunk is what its name says, no temporary is left.
    chunks = [p for p in cas.glob("??/*") if p.is_file()]
    assert chunks, "the store kept nothing"
    for chunk in chunks:
        assert chunk_hash(chunk.read_bytes()).hex() == chunk.parent.name + chunk.name
    assert list((cas / "tmp").iterdir()) == []


# --- what a run sees of the appliance --------------------------------------------------------


@pytest.mark.skipif(
    VENV_PYTHON.startswith("/tmp/"),
    reason="the checkout is under /tmp, which a run sees as its own private /tmp: its venv is not there",
)
def test_a_run_sees_only_its_allocated_opencl_devices(remote, tmp_path):
    client = remote.client()
    devices = sorted(d["id"] for d in client.json("list-gpus")["devices"])
    assert len(devices) == 2
    probe = (
        "import json, os, pyopencl as cl\n"
        "pocl = [p for p in cl.get_platforms() if 'pocl' in (p.name + p.vendor).lower()]\n"
        "print(json.dumps({'devices': sum(len(p.get_devices()) for p in pocl),\n"
        "  'radium': os.environ.get('RADIUM_OPENCL_DEVICES'), 'pocl': os.environ.get('POCL_DEVICES')}))\n"
    )
    one = run_hidden(
        remote,
        tmp_path,
        {"probe.py": probe},
        "--filter",
        f"device.id={devices[1]}",
        "--",
        VENV_PYTHON,
        "probe.py",
    )
    assert one.returncode == 0, one.stderr.decode()
    seen = json.loads(one.stdout)
    assert remote.appliance.wait_for_log("run started")["devices"] == [devices[1]]
    assert seen["devices"] == 1  # of the appliance's two
    assert seen["radium"] == "0:0" and seen["pocl"] == "pthread", seen
    both = run_hidden(remote, tmp_path, {"probe.py": probe}, "-n", "2", "--", VENV_PYTHON, "probe.py")
    assert both.returncode == 0, both.stderr.decode()
    seen = json.loads(both.stdout)
    assert seen["devices"] == 2 and len(seen["radium"].split(",")) == 2, seen


def test_the_runs_world_is_mounted_with_the_options_that_keep_it_safe(remote, tmp_path):
    """Lent appliance paths are read-only; the scratch folders are fresh tmpfs without suid or devices."""
    out = run_hidden(remote, tmp_path, {"x.txt": "x"}, "--", "cat", "/proc/self/mountinfo")
    assert out.returncode == 0, out.stderr.decode()
    options = {}
    for line in out.stdout.decode().splitlines():
        fields = line.split()
        sep = fields.index("-")
        options[fields[4]] = (set(fields[5].split(",")), fields[sep + 1])
    lent = options["/etc/OpenCL/vendors"]
    assert "ro" in lent[0], lent
    for scratch in ("/tmp", "/dev/shm"):
        flags, fstype = options[scratch]
        assert fstype == "tmpfs" and {"nosuid", "nodev"} <= flags, (scratch, flags, fstype)
    assert options["/"][1] == "overlay" and "/.radium/init" in options


def _children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _supervisors(radiumd_pid: int) -> set[int]:
    """radiumd's supervisors: forked by its fork server, or (without one) started by radiumd."""
    servers = {p for p in _children(radiumd_pid) if _comm(p) == forkserver.NAME}
    forked = {p for s in servers for p in _children(s) if _comm(p) == forkserver.SUPERVISOR_NAME}
    started = {p for p in _children(radiumd_pid) if "radium.remoting.run.supervisor" in _cmdline(p)}
    return forked | started


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def _niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_a_run_takes_the_spare_supervisor_and_another_is_made_ready(remote, tmp_path):
    app = remote.appliance
    pid = app.proc.pid
    spare = wait_until(lambda: _supervisors(pid), 30, "radiumd to start a spare supervisor")
    assert len(spare) == 1
    assert _niceness(next(iter(spare))) == 10  # it waits at a low priority...
    script = "cat x.txt; echo; cut -d' ' -f19 /proc/self/stat"
    out = run_hidden(remote, tmp_path, {"x.txt": "x"}, "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().split() == ["x", "0"]  # ...and the run has the normal one
    assert app.wait_for_log("run started")["supervisor"] in spare  # no start-up to wait for
    app.wait_for_log("run ended")
    # radiumd indexed the content store when it started; the run saved its view when it ended.
    assert app.wait_for_log("content store indexed")["chunks"] == 0
    index = state_dir(remote) / "cas" / "index.bin"
    assert len(msgspec.msgpack.decode(index.read_bytes())) >= 1  # x.txt's chunk, at least
    nxt = wait_until(lambda: _supervisors(pid) - spare, 30, "the next spare supervisor")
    assert len(_supervisors(pid)) == 1
    app.stop()  # the spare reads end-of-stream and exits with radiumd
    for p in nxt:
        wait_until(lambda p=p: not Path(f"/proc/{p}").exists(), 10, f"spare supervisor {p} to exit")


def test_without_its_fork_server_radiumd_starts_supervisors_afresh(remote, tmp_path):
    app = remote.appliance
    pid = app.proc.pid
    (server,) = wait_until(
        lambda: {p for p in _children(pid) if _comm(p) == forkserver.NAME}, 30, "the fork server to start"
    )
    wait_until(lambda: _supervisors(pid), 30, "a spare supervisor")
    os.kill(server, signal.SIGKILL)
    app.wait_for_log("supervisors are started afresh")
    for _ in range(2):  # the spare forked before, then one started afresh
        out = run_hidden(remote, tmp_path, {"x.txt": "x"}, "--", "cat", "x.txt")
        assert out.returncode == 0 and out.stdout == b"x", out.stderr.decode()
    wait_until(
        lambda: any("radium.remoting.run.supervisor" in _cmdline(p) for p in _children(pid)),
        30,
        "a supervisor started afresh",
    )


def test_a_run_sees_neither_other_runs_nor_the_appliances_state(remote, tmp_path):
    client = remote.client()
    shared = tmp_path / "shared"  # one working directory for both runs
    shared.mkdir()
    marker = "radium-other-run-" + os.urandom(4).hex()
    holder = (
        "import sys\n"
        "open('a-secret.txt', 'w').write('secret of run A')\n"
        "open('/tmp/a-secret', 'w').write('secret of run A')\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    (shared / "a.py").write_text(holder)
    a = subprocess.Popen(
        hidden(client, "true", str(shared), "run", "--", "python3", "a.py", marker),
        env=client.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert a.stdout.readline() == b"ready\n", a.stderr.read1()
        state = state_dir(remote)
        (shared / "b.py").write_text(
            textwrap.dedent(f"""\
            import json, os
            pids = [p for p in os.listdir('/proc') if p.isdigit()]
            cmdlines = [open(f'/proc/{{p}}/cmdline', 'rb').read().decode(errors='replace') for p in pids]
            print(json.dumps({{
                'pids': pids,
                'cmdlines': cmdlines,
                'state': sorted(os.listdir({str(state)!r})),
                'a_cwd': os.path.exists('a-secret.txt'),
                'a_tmp': os.path.exists('/tmp/a-secret'),
            }}))
            """)
        )
        # The client's own view of the appliance's state folder is an empty one.
        hide_state = f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(state))}"
        b = subprocess.run(
            hidden(client, hide_state, str(shared), "run", "--", "python3", "b.py"),
            env=client.env(),
            capture_output=True,
            timeout=60,
        )
        assert b.returncode == 0, b.stderr.decode()
        seen = json.loads(b.stdout)
        assert sorted(seen["pids"], key=int) == ["1", "2"], seen  # its init and itself: its own PID namespace
        assert not any(marker in c for c in seen["cmdlines"]), seen
        assert seen["state"] == []  # not the appliance's keys, runs and store: the client's empty folder
        assert not seen["a_cwd"] and not seen["a_tmp"], seen  # nothing of run A's layer or /tmp
    finally:
        if a.poll() is None:
            a.stdin.write(b"\n")
            a.stdin.close()
        a.wait(60)
    assert a.returncode == 0, a.stderr.read().decode()
    assert (shared / "a-secret.txt").read_text() == "secret of run A"  # run A did write it


# --- a command or working directory that does not exist ---------------------------------------


def test_the_clients_path_never_chooses_what_the_appliance_runs_as_root(remote, tmp_path):
    """The process's environment is the client's, PATH too; the helpers the supervisor runs as
    root to start it (setpriv, nsenter, unshare and what they run) are found in the system's
    folders only. A client could otherwise name a folder of the appliance holding a file of its
    own (its warm tree lays out what its runs read, modes kept) and have root run it."""
    planted = tmp_path / "planted"  # on the appliance's disk (the test hosts share one)
    planted.mkdir()
    ran = tmp_path / "ran-as-root"
    for name in ("sh", "setpriv", "nsenter", "unshare", "newuidmap", "newgidmap", "tini"):
        helper = planted / name
        helper.write_text(f'#!/bin/sh\necho {name} $(id -u) >> {ran}\nexec /usr/bin/{name} "$@"\n')
        helper.chmod(0o755)
    client = remote.client()
    env = dict(client.env(), PATH=f"{planted}:/usr/bin:/bin")
    out = subprocess.run(client.argv("run", "--", "echo", "ran"), env=env, capture_output=True, timeout=60)
    assert out.returncode == 0 and out.stdout == b"ran\n", out.stderr.decode()
    assert not ran.exists(), ran.read_text()


def test_a_working_directory_through_a_symlink_stays_in_the_runs_world(remote, tmp_path):
    """The working directory is the client's word (RunStart.cwd): a path through a symlink to
    "/" must lead to the root of the run's world, never to the appliance's own, whoever
    resolves it. A client sending it takes the library, not the CLI (which sends its real
    working directory)."""
    client = remote.client()
    code = (
        "import asyncio, sys\n"
        "from radium.remoting._config import load_client_config\n"
        "from radium.remoting.client.run import run\n"
        f"cwd = {PROJECT + '/escape'!r}\n"
        "result = asyncio.run(run(load_client_config(), ['ls', '-a', '.'], None, 60.0, None, cwd=cwd))\n"
        "sys.exit(result.status)\n"
    )
    setup = f"{project_setup(tmp_path, {})}ln -s / {PROJECT}/escape\n"
    script = f"{setup}{shlex.quote(PY)} -c {shlex.quote(code)}"
    argv = in_client_namespace(client, script)
    out = subprocess.run(argv, env=client.env(), capture_output=True, timeout=90)
    assert out.returncode == 0, out.stderr.decode()
    # The run's root holds its init (/.radium); the appliance's root does not.
    assert ".radium" in out.stdout.decode().split(), out.stdout.decode()


def test_loader_variables_reach_the_program_not_the_helpers_run_as_root(remote, tmp_path):
    """LD_PRELOAD, LD_LIBRARY_PATH, GCONV_PATH… name files that a program loads before it does
    anything: the helpers that start the process as root never get the client's (a library it
    placed on the appliance would run as root); the program gets them all."""
    client = remote.client()
    env = dict(client.env(), LD_PRELOAD="/radium-test-nowhere.so", LD_LIBRARY_PATH="/a b", GCONV_PATH="/c'd")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(client.argv(*args), env=env, capture_output=True, timeout=60)

    out = run("run", "--", "sh", "-c", 'echo "$LD_PRELOAD|$LD_LIBRARY_PATH|$GCONV_PATH"')
    assert out.returncode == 0 and out.stdout == b"/radium-test-nowhere.so|/a b|/c'd\n", out.stderr.decode()
    # The loader says it cannot preload the library once per program that had it: on this
    # side as for any command (`radium --help`), then there the shell the client asked for
    # (its echo is a builtin), and none of the helpers before it.
    here = run("--help").stderr.count(b"radium-test-nowhere.so")
    assert out.stderr.count(b"radium-test-nowhere.so") == here + 1, out.stderr.decode()


def test_loader_variables_without_a_shell_on_the_client_are_a_clear_refusal(remote, tmp_path):
    """The program gets LD_* from the client's own /bin/sh (its helpers run as root must not):
    a client whose /bin/sh the appliance cannot see (here its export rules withhold it) is told
    what is missing and why, exit 127 as a shell's; without such variables nothing needs it."""
    import tomllib

    import tomli_w

    client = remote.client()
    config = tomllib.loads(Path(client.env()["RADIUM_CONFIG"]).read_text())
    config.setdefault("exports", {}).setdefault("deny", []).append(os.path.realpath("/bin/sh"))
    mine = tmp_path / "no-shell.toml"
    mine.write_text(tomli_w.dumps(config))
    mine.chmod(0o600)
    env = dict(client.env(), RADIUM_CONFIG=str(mine))

    def run(**extra: str) -> subprocess.CompletedProcess:
        argv = client.argv("run", "--", "sh", "-c", "exit 3")
        return subprocess.run(argv, env={**env, **extra}, capture_output=True, timeout=60)

    assert run().returncode == 127  # the withheld shell is missing in the run, as it should be
    plain = subprocess.run(client.argv("run", "--", "true"), env=env, capture_output=True, timeout=60)
    assert plain.returncode == 0, plain.stderr.decode()
    out = subprocess.run(
        client.argv("run", "--", "true"),
        env={**env, "LD_LIBRARY_PATH": "/radium-test-nowhere"},
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 127, out.stderr.decode()
    assert b"the environment sets LD_LIBRARY_PATH" in out.stderr, out.stderr.decode()
    assert b"takes /bin/sh, which the client lacks" in out.stderr, out.stderr.decode()
    assert b"Traceback" not in out.stderr


def test_a_command_that_does_not_exist_fails_like_in_a_shell(remote, tmp_path):
    out = run_hidden(remote, tmp_path, {}, "--", "radium-no-such-command", "arg")
    assert out.returncode == 127, out.stderr.decode()
    assert re.search(rb"radium-no-such-command.*not found", out.stderr), out.stderr.decode()
    assert b"Traceback" not in out.stderr
    out = run_hidden(remote, tmp_path, {}, "--", f"{PROJECT}/missing/prog")
    assert out.returncode == 127, out.stderr.decode()
    assert re.search(rb"missing/prog.*(not found|No such file)", out.stderr), out.stderr.decode()


def test_a_working_directory_gone_on_the_client_is_a_clear_error(remote, tmp_path):
    client = remote.client()
    script = (
        f"{project_setup(tmp_path, {})}mkdir {PROJECT}/gone\ncd {PROJECT}/gone\nrmdir {PROJECT}/gone\n"
        f"exec {radium('run', '--', 'true')}\n"
    )
    out = subprocess.run(
        in_client_namespace(client, script), env=client.env(), capture_output=True, timeout=60
    )
    assert out.returncode not in (0, 1, 255), out.stderr.decode()  # a usage or setup error, not the program's
    assert b"Traceback" not in out.stderr, out.stderr.decode()
    assert b"working directory" in out.stderr, out.stderr.decode()


# --- the write-back's checks (unit) ----------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "relative/file",
        "",
        "/",
        "/a/../../etc/passwd",
        "/a/..",
        "/a/./b",
        "/a/b/",
        "/a\0b",
        "/a//b",
        "//etc/passwd",
    ],
)
def test_write_back_refuses_paths_that_are_not_absolute_and_normal(path):
    with pytest.raises(ProtocolError):
        check_client_path(path)


def test_write_back_accepts_normal_absolute_paths():
    assert check_client_path("/home/u/project/out.txt") == "/home/u/project/out.txt"
    assert check_client_path("/a/..b/c..") == "/a/..b/c.."  # dots inside a name are a name


@pytest.mark.parametrize("kind", ["file", "dir", "symlink", "delete"])
@pytest.mark.parametrize("path", ["/../outside", "outside", "/in/../../outside", "/in\0side"])
def test_an_applier_refuses_escaping_paths_and_touches_nothing(tmp_path, kind, path):
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    applier = Applier(root=root)
    with pytest.raises(ProtocolError):
        applier.change(s.Change(kind=kind, path=path, mode=0o644, size=3, target="x"))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["in", "root"]
    assert applier.files == {}


def test_an_aborted_write_back_leaves_no_temporary_file(tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj/keep.txt").write_text("old")
    applier = Applier(root=tmp_path)
    applier.change(s.Change(kind="file", path="/proj/keep.txt", mode=0o644, size=6))
    applier.data("/proj/keep.txt", 0, b"new", last=False)
    applier.change(s.Change(kind="file", path="/proj/new/deep.bin", mode=0o600, size=10))
    applier.data("/proj/new/deep.bin", 0, b"12345", last=False)
    assert len([p for p in tmp_path.rglob("*") if ".radium-" in p.name]) == 2  # the half files, hidden
    applier.abort()  # the appliance went away mid-file
    assert [p for p in tmp_path.rglob("*") if ".radium-" in p.name] == []
    assert (tmp_path / "proj/keep.txt").read_text() == "old"  # untouched, not half-written
    assert not (tmp_path / "proj/new/deep.bin").exists()


def test_an_incomplete_or_out_of_order_write_back_leaves_no_temporary_file(tmp_path):
    applier = Applier(root=tmp_path)
    applier.change(s.Change(kind="file", path="/short.bin", mode=0o644, size=10))
    applier.data("/short.bin", 0, b"12345", last=False)
    applier.change(s.Change(kind="file", path="/jumbled.bin", mode=0o644, size=10))
    with pytest.raises(ProtocolError):
        applier.data("/jumbled.bin", 5, b"67890", last=True)
    applier.finish()  # the end arrives with /short.bin unfinished
    assert any("short.bin" in e and "incomplete" in e for e in applier.errors), applier.errors
    applier.abort()  # what the client does when a protocol error ends the run
    assert sorted(p.name for p in tmp_path.iterdir()) == []
