"""`radium run`'s quick start: hand the run to this user's run agent.

A warm `radium run -- python -c pass` used to spend half its time before the
first message left the client: starting Python and importing the client
(asyncio, pyzmq, msgspec) is ~0.2 s on a small VM.  The run agent (agent.py) is
a process of the same user that has paid that once and serves runs for
`agent_idle` seconds after the last one.  `radium run` imports only this
module (the standard library) when an agent is up: it passes its three
standard streams (SCM_RIGHTS), its arguments, working directory and
environment over a Unix socket in the client's 0700 state directory, forwards
the signals it receives, puts its terminal in raw mode when the agent says the
run has started, and exits with the status the agent sends.

One agent serves one view of the machine: the socket's name is a digest of
what the served files and the network depend on (the mount table, the network
namespace, the user's groups, the Python that runs it), so a `radium run` in a
private mount namespace gets an agent of its own that sees what it sees.

Its messages are NUL-separated fields (paths, arguments and environment
entries cannot hold a NUL), and it imports the C halves of socket, signal
and blake2: json, socket.py and signal.py pull in `re` and `enum`, a third of
a Python start.

If the agent cannot be reached or started, or RADIUM_AGENT=off, `radium run`
runs in its own process as before (None from `run`).  If the agent dies
during a run, the run ends with exit code 69 and a message; the appliance ends
the remote process when the agent's session stops.
"""

from __future__ import annotations

import _signal
import _socket
import fcntl
import os
import sys

try:
    from _blake2 import blake2b
except ImportError:  # a Python built without it
    from hashlib import blake2b

AGENT_MODULE = "radium.remoting.client.agent"
# The agent's own environment: only these of the `radium run` that starts it. It outlives
# that run, and each run brings its environment along: a variable meant for one remote
# program (LD_PRELOAD, PYTHONPATH, ...) must not shape the agent that serves the next ones.
AGENT_ENVIRONMENT = (
    "HOME",
    "USER",
    "LOGNAME",
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "RADIUM_AGENT_IDLE",
)
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
MAX_MESSAGE = 1 << 20
START_TIMEOUT = 30.0  # seconds for a new agent to say it listens
AGENT_GONE = 69  # EX_UNAVAILABLE, as for an appliance that stops answering
DISABLED = ("0", "off", "no", "false")


def state_dir(environ) -> str:  # type: ignore[no-untyped-def]
    """As paths.state_dir, without importing pathlib (this module's import time is the point)."""
    if environ.get("RADIUM_STATE_DIR"):
        return environ["RADIUM_STATE_DIR"]
    if environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(environ["XDG_RUNTIME_DIR"], "radium")
    home = environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".local", "state", "radium")


def view_digest() -> str:
    """What an agent must share with this process to serve its runs: the same files, network, rights."""
    with open("/proc/self/mountinfo", "rb") as f:
        # Without the mount ids (fresh in a copied table, as `ip netns exec` makes), but with each
        # file system's device: two tmpfs mounted at one path in two private mount namespaces
        # are two views (an agent of the first one would serve its files to the second).
        mounts = [line.split(b" ", 2)[2] for line in f]
    parts = [
        b"\n".join(mounts),
        str(os.stat("/proc/self/ns/net").st_ino).encode(),
        str((os.getuid(), os.getgid(), sorted(os.getgroups()))).encode(),
        os.fsencode(sys.executable),
    ]
    return blake2b(b"\0".join(parts), digest_size=10).hexdigest()


def socket_name() -> str:
    return f"agent-{view_digest()}.sock"


# --- messages: NUL-separated fields ----------------------------------------------------


def pack(*fields: str | bytes | int) -> bytes:
    return b"\0".join(f if isinstance(f, bytes) else os.fsencode(str(f)) for f in fields)


def unpack(data: bytes, maxsplit: int = -1) -> list[str]:
    return [os.fsdecode(f) for f in data.split(b"\0", maxsplit)]


def run_request(args: list[str], cwd: str, umask: int, environ: dict[bytes, bytes]) -> bytes:
    env = [k + b"=" + v for k, v in environ.items()]
    return pack("run", umask, cwd, len(args), *args, *env)


def parse_run_request(fields: list[str]) -> tuple[list[str], str, int, dict[str, str]]:
    """(args, cwd, umask, environment) of a packed run request; ValueError when malformed."""
    umask, cwd, count = int(fields[1]), fields[2], int(fields[3])
    if not 0 <= count <= len(fields) - 4 or not 0 <= umask <= 0o777:
        raise ValueError("malformed run request")
    args = fields[4 : 4 + count]
    env = dict(entry.partition("=")[::2] for entry in fields[4 + count :])
    return args, cwd, umask, env


# --- the socket ------------------------------------------------------------------------


class Link:
    """The state directory, opened once: Unix socket paths are short through /proc/self/fd."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = directory
        self.fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def path(self, name: str) -> str:
        return f"/proc/self/fd/{self.fd}/{name}"

    def connect(self, name: str) -> _socket.socket | None:
        """A connection to the agent listening at `name`, or None when none listens there."""
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.path(name))
            _, uid, _ = peer_credentials(sock)
        except OSError:
            sock.close()
            return None
        if uid != os.getuid():  # not ours: never hand our streams and environment to it
            sock.close()
            return None
        return sock

    def close(self) -> None:
        os.close(self.fd)


def peer_credentials(sock: _socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end."""
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    pid, uid, gid = (int.from_bytes(creds[i : i + 4], sys.byteorder, signed=True) for i in (0, 4, 8))
    return pid, uid, gid


def send_fds(sock: _socket.socket, data: bytes, fds: list[int]) -> None:
    rights = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)
    sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])


def connect_or_start(link: Link, name: str) -> _socket.socket | None:
    sock = link.connect(name)
    if sock is not None:
        return sock
    # One starter at a time: the others wait here and find the agent it started.
    lock = os.open(link.path("agent.lock"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = link.connect(name)
        if sock is None and start_agent(link, name):
            sock = link.connect(name)
        return sock
    finally:
        os.close(lock)


def start_agent(link: Link, name: str) -> bool:
    """Start an agent for this view; True once it listens."""
    import subprocess

    ready_r, ready_w = os.pipe()
    log = os.open(link.path("agent.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        subprocess.Popen(
            [sys.executable, "-m", AGENT_MODULE, link.directory, name],
            stdin=subprocess.DEVNULL,
            stdout=ready_w,
            stderr=log,
            start_new_session=True,  # no terminal's signals; it outlives this process
            env={k: v for k, v in os.environ.items() if k in AGENT_ENVIRONMENT},
        )
    except OSError:
        return False
    finally:
        os.close(ready_w)
        os.close(log)
    with os.fdopen(ready_r, "rb") as ready:
        # Its imports take a fraction of a second; an agent stuck past this (a hung file
        # system) is left to itself, and this run goes on in its own process.
        import select

        if not select.select([ready], [], [], START_TIMEOUT)[0]:
            return False
        return ready.readline() == b"ready\n"


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- `radium run` ----------------------------------------------------------------------


def run(args: list[str]) -> int | None:
    """Run `radium run ARGS` through the agent: its exit status, or None to run it here."""
    if os.environ.get("RADIUM_AGENT", "").lower() in DISABLED:
        return None
    try:
        cwd = os.getcwd()
        link = Link(os.path.abspath(state_dir(os.environ)))
        name = socket_name()
    except OSError:
        return None  # no working directory, state directory or /proc: the full path explains
    request = run_request(args, cwd, umask(), dict(os.environb))
    try:
        for _ in range(3):
            sock = connect_or_start(link, name)
            if sock is None:
                return None
            try:
                send_fds(sock, request, [0, 1, 2])
                first = sock.recv(MAX_MESSAGE)
            except OSError:  # EMSGSIZE for a huge environment, or the agent went away
                first = b""
            if first == b"accepted":
                return follow(sock, link.directory)
            sock.close()  # an agent about to exit (stale, or idle): start another
        return None
    finally:
        link.close()


def follow(sock: _socket.socket, directory: str) -> int:
    """Forward signals to the agent until it sends the run's exit status."""

    def forward(signum: int, frame: object) -> None:
        try:
            sock.send(pack("signal", signum))
        except OSError:
            pass  # the agent is gone: the loop below says so

    def resize(signum: int, frame: object) -> None:
        try:
            sock.send(b"resize")
        except OSError:
            pass

    for sig in FORWARDED:
        _signal.signal(getattr(_signal, sig), forward)
    _signal.signal(_signal.SIGWINCH, resize)
    saved = None
    try:
        while True:
            try:
                data = sock.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                os.write(
                    2, f"radium: the run agent ended during the run; see {directory}/agent.log\n".encode()
                )
                return AGENT_GONE
            kind, _, rest = data.partition(b"\0")
            if kind == b"raw":
                saved = _terminal(rest == b"1", saved)
            elif kind == b"exit":
                saved = _terminal(False, saved)
                code, out, err = rest.split(b"\0", 2)
                _write_all(1, out)
                _write_all(2, err)
                return int(code)
    finally:
        _terminal(False, saved)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        pass  # closed by its reader


def _terminal(raw: bool, saved: list | None) -> list | None:
    """Raw mode on (keys go to the remote terminal as typed) or back to what it was."""
    import termios

    if raw and saved is None and os.isatty(0):
        import tty

        saved = termios.tcgetattr(0)
        tty.setraw(0)
    elif not raw and saved is not None:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
        saved = None
    return saved


# --- `radium agent` --------------------------------------------------------------------


def control(op: str, environ=None) -> list[dict]:  # type: ignore[no-untyped-def]
    """Send `op` ("status" or "stop") to every agent of this state directory; their answers."""
    import json

    directory = state_dir(os.environ if environ is None else environ)
    try:
        link = Link(directory)
    except OSError:
        return []
    answers = []
    try:
        for entry in sorted(os.listdir(directory)):
            if not (entry.startswith("agent-") and entry.endswith(".sock")):
                continue
            sock = link.connect(entry)
            if sock is None:
                continue
            try:
                sock.settimeout(10)
                sock.send(pack(op))
                answer = sock.recv(MAX_MESSAGE)
            except OSError:
                answer = b""
            finally:
                sock.close()
            if answer:
                answers.append(json.loads(answer))
    finally:
        link.close()
    return answers
