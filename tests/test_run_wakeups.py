"""The appliance's idle cores poll while a run's process makes file operations (run/wakeups.py).

What is checked is the kernel's own state: the CPU latency limit that /dev/cpu_dma_latency
reads back, the least of every request held on the machine (2,000,000,000 µs with none),
against what it was before the test.
"""

from __future__ import annotations

import os
import struct
import subprocess

import pytest
import trio
import trio.testing
from support import hidden, wait_until
from test_run_faults import PROJECT, project_setup, start_remote

from radium.remoting.run.wakeups import DEVICE, IdlePolling

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.access(DEVICE, os.R_OK | os.W_OK), reason=f"{DEVICE} needs root"),
]


def cpu_latency_limit() -> int:
    fd = os.open(DEVICE, os.O_RDONLY)
    try:
        return struct.unpack("=i", os.read(fd, 4))[0]
    finally:
        os.close(fd)


@pytest.fixture
def limit_before() -> int:
    """The limit with none of this test's requests: 2,000,000,000 µs when nobody asks for one, less
    where something else on the machine does (a tuned profile); a test needs it above 0."""
    before = cpu_latency_limit()
    if before <= 0:
        pytest.skip("another process holds a CPU latency request of 0: ours could not be told apart")
    return before


def test_the_request_is_held_while_busy_and_let_go_after_a_quiet_second(limit_before):
    """On trio's clock (virtual here): held from the first operation until a second after the
    last one, made again at the next."""
    none_held = limit_before
    seen: list[tuple[float, int, bool]] = []

    async def main() -> None:
        polling = IdlePolling(quiet=1.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(polling.keep)
            await trio.sleep(5)  # quiet from the start: nothing held
            seen.append((trio.current_time(), cpu_latency_limit(), polling.holding))
            polling.busy()
            seen.append((trio.current_time(), cpu_latency_limit(), polling.holding))
            await trio.sleep(0.6)
            polling.busy()  # another operation: a second from here
            await trio.sleep(0.9)
            seen.append((trio.current_time(), cpu_latency_limit(), polling.holding))
            await trio.sleep(0.2)
            seen.append((trio.current_time(), cpu_latency_limit(), polling.holding))
            polling.busy()  # the process works again
            seen.append((trio.current_time(), cpu_latency_limit(), polling.holding))
            assert polling.held_times == 2
            nursery.cancel_scope.cancel()
        seen.append((trio.current_time(), cpu_latency_limit(), polling.holding))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [(round(t, 1), limit, holding) for t, limit, holding in seen] == [
        (5.0, none_held, False),
        (5.0, 0, True),
        (6.5, 0, True),  # 0.9 s after the last operation
        (6.7, none_held, False),  # 1.1 s after it
        (6.7, 0, True),
        (6.7, none_held, False),  # the task's end lets it go
    ]


def test_where_no_request_can_be_made_the_cores_are_left_alone(tmp_path):
    said: list[str] = []
    polling = IdlePolling(device=str(tmp_path / "no-such-device"), log=lambda msg, **kw: said.append(msg))

    async def main() -> None:
        polling.busy()
        polling.busy()

    trio.run(main)
    assert not polling.holding and not polling.enabled and polling.held_times == 0
    assert said == ["idle cores left to halt: no CPU latency request"]  # once, not at each operation


LOOPER = r"""
import os, select, sys, time
start, said = time.monotonic(), False
while not select.select([sys.stdin], [], [], 0.002)[0]:
    os.close(os.open("data.txt", os.O_RDONLY))  # a FUSE open each time: the first run has no warm tree
    if not said and time.monotonic() - start > 2:  # past the quiet second after the run's start
        print("working", flush=True)
        said = True
sys.stdin.readline()
print("computing", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("poll_idle", [True, False], ids=["on", "off"])
def test_a_run_polls_while_its_process_uses_files_and_not_after(two_hosts, tmp_path, poll_idle, limit_before):
    """While the process opens files through radium the appliance's cores poll; a second after it
    stops (it computes) they may halt again, and nothing is held once the run is over. With
    `[run] poll_idle = false` nothing is ever held."""
    none_held = limit_before
    remote = start_remote(two_hosts, tmp_path, "" if poll_idle else "[run]\npoll_idle = false\n")
    try:
        client = remote.client()
        setup = project_setup(tmp_path, {"loop.py": LOOPER, "data.txt": "x"})
        argv = hidden(client, setup, PROJECT, "run", "--", "python3", "loop.py")
        proc = subprocess.Popen(
            argv, env=client.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert proc.stdout.readline() == b"working\n", proc.stderr.read1()
            assert cpu_latency_limit() == (0 if poll_idle else none_held)  # it opens a file every few ms
            proc.stdin.write(b"stop\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == b"computing\n"
            # No file operation now, the process still running: the cores are let halt.
            wait_until(lambda: cpu_latency_limit() == none_held, 15, "the request let go")
            proc.stdin.write(b"end\n")
            proc.stdin.flush()
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        remote.appliance.wait_for_log("run ended", timeout=30)
        assert cpu_latency_limit() == none_held
    finally:
        remote.close()
        remote.appliance.stop()
