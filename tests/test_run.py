"""`radium run` over the two-host topology: the process runs on the appliance, as if here.

Client files live on a tmpfs mounted in a private mount namespace that only the
client's `radium run` is in: the appliance cannot see them, so a process that
reads them proves they came through Radium.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import textwrap

import pytest
from support import hidden

pytestmark = pytest.mark.timeout(180)

PROJECT = "/srv/radium-test-project"


def project_setup(tmp_path, files: dict[str, str | bytes], extra: str = "") -> str:
    """bash that mounts a private tmpfs at PROJECT and copies `files` into it."""
    stage = tmp_path / "stage"
    stage.mkdir(exist_ok=True)
    for rel, content in files.items():
        path = stage / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return textwrap.dedent(f"""\
        mkdir -p {PROJECT}
        mount -t tmpfs -o size=256m tmpfs {PROJECT}
        cp -a {stage}/. {PROJECT}/
        {extra}
    """)


def run_hidden(remote, tmp_path, files, *args, cwd=PROJECT, extra="", stdin=None, timeout=120):
    client = remote.client()
    argv = hidden(client, project_setup(tmp_path, files, extra), cwd, "run", *args)
    return subprocess.run(argv, env=client.env(), capture_output=True, input=stdin, timeout=timeout)


def test_it_runs_on_the_appliance_with_the_clients_files(remote, tmp_path):
    app_if = remote.hosts.appliance.interface
    out = run_hidden(
        remote,
        tmp_path,
        {
            "data/input.txt": "hello from the client\n",
            "proj/main.py": (
                "import sys\n"
                "print(open('/srv/radium-test-project/data/input.txt').read().strip())\n"
                "print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))\n"
                "print(open('rel.txt').read().strip())\n"
            ),
            "proj/rel.txt": "relative",
        },
        "--",
        "python3",
        "main.py",
        cwd=f"{PROJECT}/proj",
    )
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().splitlines()
    assert lines[0] == "hello from the client"
    assert app_if in lines[1] and remote.hosts.client.interface not in lines[1]
    assert lines[2] == "relative"


def test_exit_status_and_signals_like_a_shell(remote, tmp_path):
    out = run_hidden(remote, tmp_path, {}, "--", "sh", "-c", "exit 7")
    assert out.returncode == 7, out.stderr.decode()
    out = run_hidden(remote, tmp_path, {}, "--", "sh", "-c", "kill -9 $$")
    assert out.returncode == 128 + 9, out.stderr.decode()


def test_streams_stay_apart_and_stdin_is_forwarded(remote, tmp_path):
    out = run_hidden(
        remote,
        tmp_path,
        {},
        "--",
        "python3",
        "-c",
        "import sys; print('out:' + input()); print('err', file=sys.stderr)",
        stdin=b"typed\n",
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"out:typed\n"
    assert out.stderr.endswith(b"err\n")


def test_a_hundred_megabytes_of_output_arrive_intact(remote, tmp_path):
    script = (
        "import sys, hashlib\n"
        "block = bytes(range(256)) * 4096\n"
        "for i in range(100):\n"
        "    sys.stdout.buffer.write(block)\n"
    )
    out = run_hidden(remote, tmp_path, {"gen.py": script}, "--", "python3", "gen.py")
    assert out.returncode == 0, out.stderr.decode()
    expected = bytes(range(256)) * 4096 * 100
    assert len(out.stdout) == len(expected)
    assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(expected).digest()


def test_many_tiny_writes_arrive_intact_and_in_order(remote, tmp_path):
    """A process that flushes every line sends a message per line: none may be dropped on
    the way (a lost message would lose its output and the credit it carries)."""
    script = "import sys\nfor i in range(300000):\n    print(i, flush=True)\n"
    out = run_hidden(remote, tmp_path, {"tiny.py": script}, "--", "python3", "tiny.py", timeout=300)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().split() == [str(i) for i in range(300000)]


def test_writes_come_back_and_tmp_is_private(remote, tmp_path):
    client = remote.client()
    result = tmp_path / "result"
    script = (
        "import os\n"
        "open('new.txt', 'w').write('made remotely')\n"
        "open('changed.txt', 'a').write(' and changed')\n"
        "os.remove('gone.txt')\n"
        "os.makedirs('out/deep')\n"
        "open('out/deep/f.bin', 'wb').write(bytes(3 << 20))\n"
        "os.symlink('new.txt', 'link')\n"
        "open('/tmp/scratch', 'w').write('x')\n"
    )
    setup = project_setup(tmp_path, {"w.py": script, "changed.txt": "original", "gone.txt": "bye"})
    check = f"; ls -la {PROJECT} > {result}.ls; cp -a {PROJECT} {result}"
    argv = hidden(client, setup, PROJECT, "run", "--", "python3", "w.py")
    # Copy the tmpfs out after the run, inside the same mount namespace.
    argv[-1] = argv[-1].replace("exec ", "").rstrip("\n") + check
    out = subprocess.run(argv, env=client.env(), capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    assert (result / "new.txt").read_text() == "made remotely"
    assert (result / "changed.txt").read_text() == "original and changed"
    assert not (result / "gone.txt").exists()
    assert (result / "out/deep/f.bin").stat().st_size == 3 << 20
    assert os.readlink(result / "link") == "new.txt"
    assert not [p for p in os.listdir(result) if ".radium-" in p]  # no temporary left behind
    assert not os.path.exists("/tmp/scratch")


def test_many_small_files_all_come_back(remote, tmp_path):
    """Each file written back is two messages or more: none may be lost on the way, however many."""
    result = tmp_path / "result"
    client = remote.client()
    count = 6000  # more than the window holds at one credit cost per message (4,096)
    script = (
        "import os\n"
        "os.makedirs('many')\n"
        f"for i in range({count}):\n"
        "    open(f'many/{i}.txt', 'w').write(str(i))\n"
    )
    setup = project_setup(tmp_path, {"w.py": script})
    argv = hidden(client, setup, PROJECT, "run", "--", "python3", "w.py")
    argv[-1] = argv[-1].replace("exec ", "").rstrip("\n") + f"; cp -a {PROJECT}/many {result}"
    out = subprocess.run(argv, env=client.env(), capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode()
    names = os.listdir(result)
    assert len(names) == count
    assert all((result / f"{i}.txt").read_text() == str(i) for i in range(0, count, 97))


def test_it_runs_unprivileged(remote, tmp_path):
    out = run_hidden(
        remote, tmp_path, {}, "--", "sh", "-c", "cat /proc/self/uid_map; echo 3 > /proc/sys/vm/drop_caches"
    )
    uid_map = out.stdout.decode().split()
    assert uid_map[0] == "0" and int(uid_map[1]) >= 200000  # root here is nobody on the appliance
    assert out.returncode != 0 and b"drop_caches" in out.stderr  # no power over the appliance


def test_sigint_reaches_the_remote_process(remote, tmp_path):
    client = remote.client()
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *a: (print('got INT', flush=True), sys.exit(3)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    argv = hidden(client, project_setup(tmp_path, {"s.py": script}), PROJECT, "run", "--", "python3", "s.py")
    proc = subprocess.Popen(argv, env=client.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    radium_pid = _radium_pid(proc.pid)
    os.kill(radium_pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert out == b"got INT\n", err.decode()
    assert proc.returncode == 3


def _radium_pid(pid: int) -> int:
    """The `radium` process under ip netns exec / unshare / bash (exec'd in place)."""
    return pid  # `ip netns exec`, `unshare` and bash's `exec` all replace themselves


def test_a_virtualenv_only_the_client_has(remote, tmp_path):
    venv = f"{PROJECT}/venv"
    extra = (
        f"{os.path.realpath('/usr/bin/env')} python3 -m venv --without-pip {venv}\n"
        f"site=$({venv}/bin/python -c 'import sysconfig; print(sysconfig.get_path(\"purelib\"))')\n"
        "mkdir -p $site/onlyhere && echo 'WHERE = \"client venv\"' > $site/onlyhere/__init__.py\n"
    )
    out = run_hidden(
        remote,
        tmp_path,
        {},
        "--",
        f"{venv}/bin/python",
        "-c",
        "import onlyhere, sys; print(onlyhere.WHERE, sys.prefix)",
        extra=extra,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().split() == ["client", "venv", venv]


def test_a_c_program_with_an_rpath_library(remote, tmp_path):
    files = {
        "src/lib.c": "int answer(void) { return 42; }\n",
        "src/main.c": (
            '#include <stdio.h>\nint answer(void);\nint main(void) { printf("%d\\n", answer()); return 0; }\n'
        ),
    }
    extra = (
        f"mkdir -p {PROJECT}/opt/lib {PROJECT}/bin\n"
        f"gcc -shared -fPIC -o {PROJECT}/opt/lib/libanswer.so {PROJECT}/src/lib.c\n"
        f"gcc -o {PROJECT}/bin/prog {PROJECT}/src/main.c -L{PROJECT}/opt/lib -lanswer "
        f"-Wl,-rpath,{PROJECT}/opt/lib\n"
    )
    out = run_hidden(remote, tmp_path, files, "--", f"{PROJECT}/bin/prog", extra=extra)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"42\n"


def test_symlinks_permissions_and_times_are_the_clients(remote, tmp_path):
    extra = (
        f"chmod 0751 {PROJECT}/tool.sh && ln -s tool.sh {PROJECT}/link"
        f" && touch -d '2001-02-03 04:05:06' {PROJECT}/tool.sh\n"
    )
    probe = (
        "import os, stat\n"
        "st = os.stat('tool.sh')\n"
        "print(oct(stat.S_IMODE(st.st_mode)), int(st.st_mtime), os.readlink('link'))\n"
    )
    out = run_hidden(
        remote,
        tmp_path,
        {"tool.sh": "#!/bin/sh\necho tool\n", "probe.py": probe},
        "--",
        "python3",
        "probe.py",
        extra=extra,
    )
    assert out.returncode == 0, out.stderr.decode()
    mode, mtime, target = out.stdout.decode().split()
    assert mode == "0o751" and target == "tool.sh"
    assert int(mtime) == int(__import__("datetime").datetime(2001, 2, 3, 4, 5, 6).timestamp())


def test_a_folder_of_small_files_costs_a_round_trip_not_one_per_file(remote, tmp_path):
    files = {f"pkg{d}/m{i:03d}.py": os.urandom(100 + 37 * i) for d in range(2) for i in range(150)}
    files["read.py"] = (
        "import hashlib, os\n"
        "h = hashlib.sha256()\n"
        "for d in ('pkg0', 'pkg1'):\n"
        "    for name in sorted(os.listdir(d)):\n"
        "        h.update(open(os.path.join(d, name), 'rb').read())\n"
        "print(h.hexdigest())\n"
    )
    expected = hashlib.sha256(b"".join(files[k] for k in sorted(files) if k.startswith("pkg"))).hexdigest()
    # python3 itself fetched first (a run in another private tmpfs at the same path: its own view)
    warm_python = run_hidden(remote, tmp_path, {}, "--", "python3", "-c", "pass")
    assert warm_python.returncode == 0, warm_python.stderr.decode()
    out = run_hidden(remote, tmp_path, files, "--stats", "--", "python3", "read.py")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().split() == [expected]
    requests = int(re.search(rb"file requests (\d+)", out.stderr)[1])
    # 300 files (2 × 150, 2.5 MB): a few listings' worth, not 300 lookups.
    assert requests < 40, out.stderr.decode()


def test_a_listing_gives_the_inode_numbers_that_stat_gives(remote, tmp_path):
    # find, du, rsync and Python's os.walk with follow_symlinks=False take an entry's inode
    # from the listing (d_ino) and expect lstat to agree: directories and files, lower
    # (the client's) and upper (written in the run) alike.
    probe = (
        "import os\n"
        "os.mkdir('made'); open('made.txt', 'w').close()\n"
        "bad = [(e.name, e.inode(), os.lstat(e.path).st_ino) for d in ('.', 'sub')\n"
        "       for e in os.scandir(d) if e.inode() != os.lstat(e.path).st_ino]\n"
        "print(len(list(os.scandir('.'))), bad)\n"
    )
    files = {"probe.py": probe, "a.txt": "a", "sub/b.txt": "b", "sub/deeper/c.txt": "c"}
    out = run_hidden(remote, tmp_path, files, "--", "python3", "probe.py")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip().split(maxsplit=1) == ["5", "[]"]


def test_the_environment_is_carried_minus_the_local_only(remote, tmp_path):
    client = remote.client()
    env = dict(client.env(), RADIUM_TEST_VALUE="carried", SSH_AUTH_SOCK="/tmp/agent", DISPLAY=":0")
    argv = hidden(
        client,
        project_setup(tmp_path, {}),
        PROJECT,
        "run",
        "--",
        "sh",
        "-c",
        'echo "$RADIUM_TEST_VALUE|${SSH_AUTH_SOCK:-none}|${DISPLAY:-none}|${RADIUM_RUN:-none}"',
    )
    out = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    value, ssh, display, run_id = out.stdout.decode().strip().split("|")
    assert (value, ssh, display) == ("carried", "none", "none")
    assert run_id.startswith("R-")


def test_a_second_run_of_an_unchanged_project_moves_almost_nothing(completing_remote, tmp_path):
    files = {f"data/part{i}.bin": os.urandom(1 << 20) for i in range(8)}
    files["read.py"] = (
        "import glob\nprint(sum(len(open(f, 'rb').read()) for f in sorted(glob.glob('data/*'))))\n"
    )
    client = completing_remote.client()
    setup = project_setup(tmp_path, files)
    first_cmd = hidden(client, setup, PROJECT, "run", "--stats", "--", "python3", "read.py")
    # Both runs in one mount namespace, so the project is the very same files.
    script = first_cmd[-1].replace("exec ", "").rstrip("\n")
    first_cmd[-1] = script + "\n" + script.splitlines()[-1] + "\n"
    out = subprocess.run(first_cmd, env=client.env(), capture_output=True, timeout=180)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().split() == [str(8 << 20)] * 2
    fetched = [
        int(line.split("bytes fetched ")[1].split(",")[0])
        for line in out.stderr.decode().splitlines()
        if "bytes fetched" in line
    ]
    assert len(fetched) == 2 and fetched[0] >= 8 << 20
    assert fetched[1] <= fetched[0] // 100, fetched


def test_output_is_live(remote, tmp_path):
    client = remote.client()
    script = "import sys, time\nprint('first', flush=True)\nsys.stdin.readline()\nprint('second')\n"
    argv = hidden(
        client, project_setup(tmp_path, {"live.py": script}), PROJECT, "run", "--", "python3", "live.py"
    )
    proc = subprocess.Popen(
        argv, env=client.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    # 'first' must arrive while the process still runs (it waits for our input).
    assert proc.stdout.readline() == b"first\n"
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=60)
    assert out == b"second\n", err.decode()


def test_two_half_devices_side_by_side_and_a_third_waits(remote, tmp_path):
    client = remote.client()
    script = "import sys\nprint('started', flush=True)\nsys.stdin.readline()\n"
    setup = project_setup(tmp_path, {"hold.py": script})
    device = sorted(d["id"] for d in client.json("list-gpus")["devices"])[0]
    args = [
        "run",
        "-p",
        "0.5",
        "--filter",
        f"device.id={device}",
        "--timeout",
        "60",
        "--",
        "python3",
        "hold.py",
    ]
    procs = [
        subprocess.Popen(
            hidden(client, setup, PROJECT, *args),
            env=client.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout.readline() == b"started\n"  # both run at once on one device
    third = subprocess.Popen(
        hidden(client, setup, PROJECT, *args),
        env=client.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    remote.appliance.wait_for_log("request queued")
    procs[0].stdin.write(b"\n")
    procs[0].stdin.flush()
    assert procs[0].wait(60) == 0
    assert third.stdout.readline() == b"started\n"  # it started when one ended
    for p in (procs[1], third):
        p.stdin.write(b"\n")
        p.stdin.flush()
        assert p.wait(60) == 0


def test_a_killed_client_ends_the_remote_process_and_frees_the_lease(remote, tmp_path):
    client = remote.client()
    marker = "radium-test-sleeper-" + os.urandom(4).hex()
    argv = hidden(
        client,
        project_setup(tmp_path, {}),
        PROJECT,
        "run",
        "--",
        "bash",
        "-c",
        f"echo started; exec -a {marker} sleep 600",
    )
    proc = subprocess.Popen(argv, env=client.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"started\n"
    from support import wait_until

    wait_until(lambda: not _no_process(marker), 10, "the remote process to start")
    proc.kill()
    proc.wait()
    wait_until(lambda: _no_process(marker), 10, "the remote process to end")
    wait_until(lambda: not any(d["leases"] for d in client.json("list-gpus")["devices"]), 10, "lease release")


def _no_process(marker: str) -> bool:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True)
    return out.returncode != 0


def test_the_appliance_dying_mid_run_ends_the_client_cleanly(remote, tmp_path):
    client = remote.client()
    script = (
        "import sys\nprint('started', flush=True)\nsys.stdin.readline()\nopen('late.txt','w').write('x')\n"
    )
    argv = hidden(client, project_setup(tmp_path, {"w.py": script}), PROJECT, "run", "--", "python3", "w.py")
    proc = subprocess.Popen(
        argv, env=client.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout.readline() == b"started\n"
    import time

    remote.appliance.stop("KILL")
    killed = time.monotonic()
    out, err = proc.communicate(timeout=20)
    assert time.monotonic() - killed < 10
    assert proc.returncode == 69
    assert b"app1" in err


def test_a_run_uses_the_reservation_of_request_gpus(remote, tmp_path):
    client = remote.client()
    reserved = client.json("request-gpus", "-n", "1", "-p", "0.5")
    out = run_hidden(remote, tmp_path, {}, "--", "sh", "-c", "echo $RADIUM_OPENCL_DEVICES")
    assert out.returncode == 0, out.stderr.decode()
    started = remote.appliance.wait_for_log("run started")
    assert started["lease"] == reserved["lease"]["id"]
    # The run did not end the reservation.
    assert any(d["leases"] for d in client.json("list-gpus")["devices"])
    client.json("release-gpus")


def test_a_working_directory_under_tmp(remote, tmp_path):
    client = remote.client()
    tag = os.urandom(3).hex()
    work, elsewhere = f"/tmp/radium-test-cwd-{tag}", f"/tmp/radium-test-elsewhere-{tag}"
    result = tmp_path / "after"
    setup = f"mkdir -p {work} && mount -t tmpfs tmpfs {work} && echo here > {work}/in.txt"
    argv = hidden(
        client, setup, work, "run", "--", "sh", "-c", f"cat in.txt; echo out > out.txt; echo x > {elsewhere}"
    )
    argv[-1] = argv[-1].replace("exec ", "").rstrip("\n") + f"; cp -a {work} {result}"
    out = subprocess.run(argv, env=client.env(), capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"here\n"
    assert (result / "out.txt").read_text() == "out\n"  # written under the working directory: back
    assert not os.path.exists(elsewhere)  # elsewhere in /tmp: thrown away


def test_a_run_longer_than_ten_seconds_keeps_its_status(remote, tmp_path):
    # Regression: the process was forked from a worker thread that trio retires after
    # 10 s idle, and its parent-death signal then killed it (exit 137).
    out = run_hidden(remote, tmp_path, {}, "--", "sh", "-c", "sleep 11; exit 3")
    assert out.returncode == 3, out.stderr.decode()
