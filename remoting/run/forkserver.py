"""Supervisors forked from a warm parent: no Python start-up and imports per run.

A supervisor's start-up (Python, trio, pyfuse3, msgspec, blake3) costs ~0.35 s of
CPU; radiumd kept one started ahead, but back-to-back runs took it before it was
ready, and its start-up competed with the run going on.  The fork server does
that start-up once, when radiumd starts, and forks a supervisor when asked: a
few milliseconds.  Each child makes its own private mount namespace (as
`unshare --mount --propagation private` did) and runs `supervise` on the channel
it was handed.

Its control socket (SOCK_SEQPACKET, radiumd at the other end):

    radiumd -> server   b"fork NICENESS", with one descriptor: the supervisor's channel
    server -> radiumd   b"pid PID" (the child), or b"error MESSAGE"
    server -> radiumd   b"exit PID STATUS" once the child is reaped (a signal N as -N)
    radiumd -> server   b"kill PID": SIGKILL to that child (to no other process)
    radiumd -> server   b"clean RUN": remove the run folder RUN (in Settings.runs_dir)
    radiumd -> server   b"sweep": remove what clients no longer enrolled left (their warm
                        trees, kept listings, tenant records: run/revoked.py), judged by
                        the key folder of Settings, not by anything radiumd says

The last three need no answer; they are how radiumd, once it has dropped to its own
user (daemon/privileges.py), still ends a run's supervisor and removes the files
the run's ids own.  The fork server stays root for what radiumd may not do, and
does nothing else for it: it forks supervisors, signals its own children,
removes names inside the one folder it opened at start (no path from radiumd is
followed: a name with a slash is refused, and the removal does not follow links),
and sweeps what revoked clients left, judging by the key folder it was set up with.

It exits when radiumd's end closes; children carry on with their own channels
to radiumd, and end when those close.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import socket
import sys
import threading
import traceback

import msgspec
import trio

from .. import _threads
from . import limits, mounts
from .channel import Settings
from .revoked import forget_revoked
from .supervisor import supervise

MAX_MESSAGE = 4096
NAME = "radium-forksrv"  # process names (comm: what ps and pgrep show), 15 bytes at most
SUPERVISOR_NAME = "radium-sup"


def _name(name: str) -> None:
    with open("/proc/self/comm", "w") as f:
        f.write(name)


def serve(control: socket.socket, settings: Settings, runs: int | None = None) -> int:
    """Serve radiumd on `control`; `runs` is `settings.runs_dir`, opened."""
    children: set[int] = set()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wake-up byte is written
    control.send(b"ready")
    while True:
        ready, _, _ = select.select([control.fileno(), wake_r], [], [])
        if wake_r in ready:
            while True:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    break
            _reap(control, children)
        if control.fileno() in ready:
            try:
                data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 1)
            except InterruptedError:
                continue
            if not data:
                return 0  # radiumd is gone
            fields = data.split()
            if fields[:1] == [b"sweep"]:
                for fd in fds:
                    os.close(fd)
                _sweep(settings)
                continue
            if fields[:1] in ([b"kill"], [b"clean"]):
                for fd in fds:
                    os.close(fd)
                _order(fields, children, runs)
                continue
            if fields[:1] != [b"fork"] or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                control.send(b"error expected: fork NICENESS, with one descriptor")
                continue
            niceness = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
            pid = os.fork()
            if pid == 0:
                inherited = (wake_r, wake_w, *([] if runs is None else [runs]))
                _child(control, inherited, fds[0], niceness, settings)
            os.close(fds[0])
            children.add(pid)
            control.send(b"pid %d" % pid)


def _order(fields: list[bytes], children: set[int], runs: int | None) -> None:
    """`kill PID` or `clean RUN`; what is refused is said on stderr (radiumd's log)."""
    arg = fields[1].decode(errors="replace") if len(fields) == 2 else ""
    if fields[0] == b"kill":
        if arg.isdigit() and int(arg) in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(arg), signal.SIGKILL)
        else:
            print(f"radium-forkserver: refused kill {arg!r}: not a supervisor of mine", file=sys.stderr)
        return
    if runs is None or not arg or "/" in arg or arg.startswith("."):
        print(f"radium-forkserver: refused clean {arg!r}", file=sys.stderr)
        return
    try:
        shutil.rmtree(arg, dir_fd=runs)
    except FileNotFoundError:
        pass
    except OSError as exc:
        print(f"radium-forkserver: could not remove run folder {arg}: {exc}", file=sys.stderr)
    limits.remove_left(arg)  # a supervisor killed before its teardown leaves its cgroups


_sweeping = threading.Lock()
_sweeps = {"running": False, "again": False}  # under _sweeping


def _sweep(settings: Settings) -> None:
    """In a thread of its own (a warm tree's removal may wait for a run to let it go), one at a
    time; asked again while one is under way, it sweeps once more when that one ends (the keys
    it read may be older than the revocation that asked)."""
    with _sweeping:
        if _sweeps["running"]:
            _sweeps["again"] = True
            return
        _sweeps["running"] = True

    def sweep() -> None:
        while True:
            try:
                forgotten = forget_revoked(settings)
                if forgotten:
                    print(f"radium-forkserver: removed what revoked clients left: {', '.join(forgotten)}",
                          file=sys.stderr)  # fmt: skip
            except Exception:
                traceback.print_exc()
            with _sweeping:
                if not _sweeps["again"]:
                    _sweeps["running"] = False
                    return
                _sweeps["again"] = False

    _threads.Thread(target=sweep, name="radium-sweep", daemon=True).start()


def _reap(control: socket.socket, children: set[int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status)
        try:
            control.send(b"exit %d %d" % (pid, code))
        except OSError:
            pass  # radiumd is gone; the loop sees it


def _child(
    control: socket.socket, inherited: tuple[int, ...], channel: int, niceness: int, settings: Settings
) -> None:
    """The forked supervisor: never returns into the server's loop."""
    code = 70
    try:
        control.close()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in inherited:  # the server's, not the supervisor's
            os.close(fd)
        _name(SUPERVISOR_NAME)
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
        mounts.private_mount_namespace()
        code = trio.run(supervise, channel, settings)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> int:
    parser = argparse.ArgumentParser(prog="radium-forkserver")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--settings", required=True, help="the supervisors' channel.Settings, as JSON")
    args = parser.parse_args()
    _name(NAME)
    settings = msgspec.json.decode(args.settings, type=Settings)
    runs = os.open(settings.runs_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    return serve(socket.socket(fileno=args.fd), settings, runs)


if __name__ == "__main__":
    sys.exit(main())
