"""Every run in a cgroup of its own (remoting/run/limits.py): its memory, its processes and its
CPU share held by the kernel, so that one run cannot take the appliance or other runs down.

These machines mount cgroup v1, which is what is tested here; the v2 path (the shipped image,
under systemd) is tested in the booted image (tests/test_image.py): a run's placement, its
memory limit and its device filter.  Device nodes: tests/test_run_devices.py.
"""

from __future__ import annotations

import errno
import subprocess
import time
from pathlib import Path

import pytest
from support import BIN
from test_run import PROJECT
from test_run_faults import in_client_namespace, start_remote

from radium.remoting.run import limits

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(limits.version() != 1, reason="cgroup v1 controllers memory, pids, cpu not mounted"),
]

RADIUM = str(BIN / "radium")


@pytest.fixture
def limited(two_hosts, tmp_path):
    config = "[run]\nmemory_bytes = 536870912\nmemory_max_bytes = 1073741824\npids_max = 64\n"
    r = start_remote(two_hosts, tmp_path, config)
    try:
        yield r
    finally:
        r.close()
        r.appliance.stop()


def in_project(
    client, commands: str, files: dict[str, str] | None = None, size: str = ""
) -> subprocess.CompletedProcess:
    """`commands` (sh) in the client's namespace, in a fresh tmpfs project (of `size`) holding `files`."""
    options = f"-o size={size} " if size else ""
    script = f"mkdir -p {PROJECT} && mount -t tmpfs {options}tmpfs {PROJECT} && cd {PROJECT}\n"
    script += "".join(f"cat > {name} <<'EOF'\n{text}EOF\n" for name, text in (files or {}).items())
    return subprocess.run(
        in_client_namespace(client, script + commands), env=client.env(), capture_output=True, timeout=200
    )


def _runs_folders(kind: str, runs: set[str]) -> list[Path]:
    """The cgroup folders of these runs still there."""
    own = next(line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
               if kind in line.split(":")[1].split(","))  # fmt: skip
    base = limits.ROOT / kind / own.lstrip("/") / "radium-runs"
    return [base / run for run in sorted(runs) if (base / run).exists()]


def test_a_run_past_its_memory_limit_is_ended_and_told_while_another_finishes(limited, tmp_path):
    client = limited.client()
    hog = "x = bytearray(2 << 30); x[:: 4096] = b'y' * len(x[:: 4096]); print('survived')"
    patient = (
        "import sys; print(open('/proc/self/cgroup').read().count('radium-runs')); "
        "sys.stdin.read(); print('done')"
    )
    out = in_project(
        client,
        "d=$(mktemp -d) && mkfifo $d/gate\n"
        f'{RADIUM} run -- python3 -c "{patient}" < $d/gate > $d/patient.out &\n'
        "exec 3> $d/gate\n"
        f'set +e; {RADIUM} run -- python3 -c "{hog}"; echo "hog=$?"; set -e\n'
        "exec 3>&-; wait; cat $d/patient.out; rm -r $d\n",
    )
    lines = out.stdout.decode().split()
    assert "hog=137" in lines and "survived" not in lines, (out.stdout, out.stderr)
    assert "out of memory: the run's limit is 512 MiB" in out.stderr.decode(), out.stderr.decode()
    # The other run, in its own cgroup, went on and finished.
    assert lines[-2:] == [str(len(limits.V1_CONTROLLERS)), "done"], lines
    assert limited.appliance.proc.poll() is None
    first = limited.appliance.wait_for_log("run ended")
    limited.appliance.wait_for_log("run ended", where=lambda e: e["run"] != first["run"])
    runs = {e["run"] for e in limited.appliance.lines if e.get("event") == "run started"}
    assert len(runs) == 2
    assert [f for c in limits.V1_CONTROLLERS for f in _runs_folders(c, runs)] == []  # nothing left


def test_a_fork_bomb_stops_at_the_pids_limit_and_the_appliance_answers(limited, tmp_path):
    client = limited.client()
    bomb = (
        "import os, sys, time\n"
        "kids = []\n"
        "while True:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as e:\n"
        "        print('stopped', len(kids), e.errno, flush=True); break\n"
        "    if pid == 0:\n"
        "        time.sleep(120); os._exit(0)\n"
        "    kids.append(pid)\n"
        "sys.stdin.read()\n"
        "for k in kids: os.kill(k, 9)\n"
    )
    out = in_project(
        client,
        "d=$(mktemp -d) && mkfifo $d/gate $d/said\n"
        f"{RADIUM} run -- python3 bomb.py < $d/gate > $d/said &\n"
        "exec 3> $d/gate 4< $d/said\n"
        'read line <&4; echo "$line"\n'
        f"{RADIUM} health > /dev/null && echo healthy\n"  # during the bomb, held at its limit
        "exec 3>&-; wait; rm -r $d\n",
        {"bomb.py": bomb},
    )
    assert out.returncode == 0, out.stderr.decode()
    stopped, count, errno_ = out.stdout.decode().split()[:3]
    assert stopped == "stopped" and 0 < int(count) < 64 and int(errno_) == 11  # EAGAIN at pids.max
    assert "healthy" in out.stdout.decode().split()


def test_the_limits_are_the_kernels_not_the_processes_to_change(limited, tmp_path):
    """Inside the run: its cgroup's limits, which it cannot raise (it owns nothing there)."""
    client = limited.client()
    probe = (
        "import os\n"
        "cg = [l.split(':', 2)[2] for l in open('/proc/self/cgroup') if ':memory:' in l][0].strip()\n"
        "print(cg.rsplit('/', 2)[-2])\n"
        "print(open('/sys/fs/cgroup/memory' + cg + '/memory.limit_in_bytes').read())\n"
        "try:\n"
        "    open('/sys/fs/cgroup/memory' + cg + '/memory.limit_in_bytes', 'w').write(str(8 << 30))\n"
        "    print('raised')\n"
        "except OSError as e:\n"
        "    print('refused', e.errno)\n"
    )
    out = in_project(client, f"{RADIUM} run -- python3 probe.py\n", {"probe.py": probe})
    assert out.returncode == 0, out.stderr.decode()
    where, limit, verdict, errno_ = out.stdout.decode().split()[:4]
    assert where == "radium-runs" and int(limit) == 512 << 20, out.stdout
    assert verdict == "refused" and int(errno_) in (errno.EACCES, errno.EPERM), out.stdout


def test_a_run_asks_for_its_memory_within_what_the_appliance_gives(limited, tmp_path):
    """`radium run --memory`: the run's limit, at most `[run] memory_max_bytes`; a bigger ask is
    refused before anything runs, a malformed one told as such."""
    client = limited.client()
    probe = (
        "cg = [l.split(':', 2)[2] for l in open('/proc/self/cgroup') if ':memory:' in l][0].strip()\n"
        "print(open('/sys/fs/cgroup/memory' + cg + '/memory.limit_in_bytes').read())\n"
    )
    out = in_project(
        client,
        f"{RADIUM} run --memory 300M -- python3 probe.py\n"
        f"{RADIUM} run --memory 1GiB -- python3 probe.py\n"
        f"set +e; {RADIUM} run --memory 2G -- touch ran; echo status=$?\n"
        f"{RADIUM} run --memory lots -- touch ran; echo status=$?\n"
        f"{RADIUM} run --memory 1M -- touch ran; echo status=$?\n"
        "test -e ran || echo nothing-ran\n",
        {"probe.py": probe},
    )
    said, told = out.stdout.decode().split(), out.stderr.decode()
    assert said[:2] == [str(300 << 20), str(1 << 30)], (said, told)
    assert "status=0" not in said[2:5] and said[5] == "nothing-ran", (said, told)
    assert "gives a run at most 1,024 MiB of memory, not 2,048 MiB: ask for less with --memory" in told, told
    assert "expected a size such as 512M or 8G, got 'lots'" in told, told
    assert "--memory 1 MiB is too little to start a process: ask for 64 MiB or more" in told, told
    assert "Traceback" not in told


def test_a_run_filling_its_writable_layer_gets_enospc_and_the_next_starts(two_hosts, tmp_path):
    """The run's writes land on a file system of its own (64 MiB here): filling it is the run's
    ENOSPC, not the appliance's; the next run starts normally and nothing stays attached."""
    r = start_remote(two_hosts, tmp_path, "[run]\nwritable_bytes = 67108864\n")
    try:
        client = r.client()
        out = in_project(
            client,
            f"{RADIUM} run -- sh -c 'dd if=/dev/zero of=big bs=1M count=200 2>&1; echo dd=$?'\n"
            f"{RADIUM} run -- sh -c 'echo next > n.txt && cat n.txt'\n"
            "stat -c 'big=%s' big\n",
            size="512m",
        )
        assert out.returncode == 0, out.stderr.decode()
        text = out.stdout.decode()
        assert "No space left on device" in text and "dd=1" in text, text
        assert "next" in text.split()
        big = int(text.split("big=")[1].split()[0])
        assert 0 < big <= 64 << 20  # as the run left it, whole: what it managed to write
        r.appliance.wait_for_log("run ended")
        r.close()
        r.appliance.stop()
        # Every layer's loop device (the runs', and the one a spare made ahead) goes with its
        # supervisor's mount namespace; the kernel frees them as those namespaces go.
        deadline = time.monotonic() + 10
        while str(tmp_path) in (
            attached := subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        ):
            assert time.monotonic() < deadline, attached
            time.sleep(0.05)
    finally:
        r.close()
        r.appliance.stop()
