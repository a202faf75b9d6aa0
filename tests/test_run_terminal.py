"""`radium run` with a terminal on the client, and signals sent to `radium run` itself.

The client's terminal is a pseudo-terminal made here: `radium run` gets its slave
as stdin, stdout and stderr (and as its controlling terminal, through `setsid -c`),
and the test types into its master and reads what shows on the screen from it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time

import pytest
from support import hidden

pytestmark = pytest.mark.timeout(120)

PROJECT = "/srv/radium-test-terminal"


def setup_files(tmp_path, files: dict[str, str]) -> str:
    stage = tmp_path / "stage"
    stage.mkdir(exist_ok=True)
    for rel, content in files.items():
        (stage / rel).write_text(content)
    return f"mkdir -p {PROJECT}\nmount -t tmpfs -o size=16m tmpfs {PROJECT}\ncp -a {stage}/. {PROJECT}/\n"


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Terminal:
    """`radium run ...` on a pseudo-terminal of its own; `expect` reads the screen."""

    def __init__(
        self, remote, tmp_path, files: dict[str, str], *args: str, rows: int = 24, cols: int = 80, env=None
    ):
        client = remote.client()
        self.master, slave = os.openpty()
        set_size(self.master, rows, cols)
        argv = ["setsid", "-c", *hidden(client, setup_files(tmp_path, files), PROJECT, "run", *args)]
        # setsid execs in place (the child is no group leader): proc.pid is `radium`'s pid.
        env = {**client.env(), **(env or {})}
        self.proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self.screen = b""

    def expect(self, pattern: bytes, timeout: float = 30.0) -> re.Match:
        """Wait until what was printed matches `pattern` (a regex); consume up to the match."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.screen)
            if found:
                self.screen = self.screen[found.end() :]
                return found
            left = deadline - time.monotonic()
            if left <= 0 or not self._more(left):
                raise AssertionError(
                    f"{pattern!r} did not show within {timeout}s; screen: {self.screen!r}, "
                    f"radium run: {'running' if self.proc.poll() is None else f'exit {self.proc.returncode}'}"
                )

    def _more(self, timeout: float) -> bool:
        if not select.select([self.master], [], [], timeout)[0]:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError as exc:  # EIO: every holder of the slave closed it
            if exc.errno != errno.EIO:
                raise
            return False
        self.screen += data
        return bool(data)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def finish(self, timeout: float = 30.0) -> int:
        status = self.proc.wait(timeout)
        while self._more(0.2):
            pass
        return status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


@pytest.fixture
def terminal(remote, tmp_path):
    made: list[Terminal] = []

    def start(files, *args, **size):
        made.append(Terminal(remote, tmp_path, files, *args, **size))
        return made[-1]

    yield start
    for t in made:
        t.close()


def test_pythonpath_is_the_programs_not_the_terminal_helpers_run_as_root(terminal, tmp_path):
    """On a terminal the process starts through a Python of the supervisor's, as root, with the
    process's environment: the client's PYTHONPATH must not choose what it imports (-I)."""
    planted = tmp_path / "planted"  # on the appliance's disk (the test hosts share one)
    planted.mkdir()
    ran = tmp_path / "ran-as-root"
    (planted / "sitecustomize.py").write_text(  # what any Python imports as it starts
        f"if b'TIOCSCTTY' in open('/proc/self/cmdline', 'rb').read():\n"
        f"    open({str(ran)!r}, 'a').write('ran')\n"
    )
    t = terminal({}, "sh", "-c", 'echo "path=$PYTHONPATH"', env={"PYTHONPATH": str(planted)})
    t.expect(b"path=" + str(planted).encode())  # the program has it
    assert t.finish() == 0
    assert not ran.exists(), ran.read_text()


def test_the_remote_side_gets_a_terminal_of_the_clients_size_and_typing_works(terminal):
    t = terminal(
        {
            "ask.py": "import os, sys\nprint('tty', os.ttyname(0), *os.get_terminal_size(1), flush=True)\n"
            "print('got:' + input('name? '))\n"
        },
        "--",
        "sh",
        "-c",
        "tty; stty size; exec python3 ask.py",
        rows=37,
        cols=101,
    )
    t.expect(rb"/dev/pts/\d+\r\n")
    t.expect(rb"37 101\r\n")  # `stty size`: the client's rows and columns
    t.expect(rb"tty /dev/pts/\d+ 101 37\r\n")
    t.expect(rb"name\? ")
    t.type(b"radium\r")  # Enter as a raw terminal sends it
    t.expect(rb"got:radium\r\n")
    assert t.finish() == 0


def test_ctrl_c_typed_interrupts_the_remote_process(terminal):
    t = terminal({}, "--", "python3", "-c", "import time; print('ready', flush=True); time.sleep(60)")
    t.expect(rb"ready\r\n")
    started = time.monotonic()
    t.type(b"\x03")  # the remote terminal turns it into SIGINT for its foreground group
    assert t.finish() == 128 + signal.SIGINT, t.screen
    assert time.monotonic() - started < 20
    assert b"KeyboardInterrupt" in t.screen


def test_ctrl_c_reaches_the_remote_handler(terminal):
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *a: (print('handled INT', flush=True), sys.exit(5)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    t = terminal({"h.py": script}, "--", "python3", "h.py")
    t.expect(rb"ready\r\n")
    t.type(b"\x03")
    t.expect(rb"handled INT\r\n")
    assert t.finish() == 5


def test_a_window_size_change_reaches_the_remote_process(terminal):
    script = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGWINCH, lambda *a: print('winch', *os.get_terminal_size(1), flush=True))\n"
        "print('ready', *os.get_terminal_size(1), flush=True)\n"
        "sys.stdin.readline()\n"
        "print('size', *os.get_terminal_size(1), flush=True)\n"
    )
    t = terminal({"w.py": script}, "--", "python3", "w.py", rows=30, cols=90)
    t.expect(rb"ready 90 30\r\n")
    set_size(t.master, 50, 132)  # what a terminal emulator does when its window is resized ...
    os.kill(t.proc.pid, signal.SIGWINCH)  # ... and the kernel's signal to its foreground group
    t.expect(rb"winch 132 50\r\n")
    t.type(b"\r")
    t.expect(rb"size 132 50\r\n")
    assert t.finish() == 0


# --- signals sent to `radium run` (no terminal) ---------------------------------------------

PARENT = """\
import os, signal, subprocess, sys, time
def handler(n, frame):
    os.write(1, b'parent got %d\\n' % n)
    child.wait()
    sys.exit(40)
signal.signal(signal.SIGTERM, handler)
signal.signal(signal.SIGHUP, handler)
child = subprocess.Popen([sys.executable, 'child.py'])
print('parent ready', flush=True)
time.sleep(60)
"""
CHILD = """\
import os, signal, sys, time
def handler(n, frame):
    os.write(1, b'child got %d\\n' % n)
    sys.exit(0)
signal.signal(signal.SIGTERM, handler)
signal.signal(signal.SIGHUP, handler)
print('child ready', flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_signals_to_radium_reach_the_remote_process_group(remote, tmp_path, sig):
    client = remote.client()
    argv = hidden(
        client,
        setup_files(tmp_path, {"parent.py": PARENT, "child.py": CHILD}),
        PROJECT,
        "run",
        "--",
        "python3",
        "parent.py",
    )
    proc = subprocess.Popen(argv, env=client.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready = {proc.stdout.readline(), proc.stdout.readline()}
        assert ready == {b"parent ready\n", b"child ready\n"}, (ready, proc.stderr.read1())
        os.kill(proc.pid, sig)  # `ip netns exec`, `unshare` and bash's `exec` run in place
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sorted(out.decode().splitlines()) == [f"child got {int(sig)}", f"parent got {int(sig)}"], err
    assert proc.returncode == 40, err.decode()
