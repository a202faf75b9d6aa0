"""Supervisor processes for radiumd: forked by the fork server, or started afresh.

A supervisor's Python start-up and imports cost ~0.35 s of CPU.  radiumd starts
one fork server (run/forkserver.py) that pays it once; a supervisor is then a
fork of it (milliseconds), ready before the run that takes it has finished
starting.  Should the fork server fail to start or die, supervisors are started
as processes of their own (`unshare --mount --propagation private python -m
radium.remoting.run.supervisor`), as before it existed.

Either way radiumd gets a `SupervisorProcess`: the process (pid, returncode,
wait, kill) and radiumd's end of its channel, on which it waits for its `Job`.

When radiumd has dropped to its own user (privileges.py) the fork server, still
root, is the only way: radiumd may not signal a supervisor (root's) or remove what
a run's ids wrote, so it asks the fork server to (`kill`, `clean`); and should the
fork server die, runs are refused, saying so, until radiumd is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec

from .._errors import RunsUnavailable
from ..run.channel import Settings
from .logs import event

SPARE_NICENESS = 10
START_TIMEOUT = 60.0  # the fork server's imports, on a slow or busy machine
REPORT_WAIT = 1.0  # after a forked supervisor exits, how long to wait for its status


class Process(Protocol):
    pid: int

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


@dataclass
class SupervisorProcess:
    """A supervisor process and radiumd's end of its channel; it waits for its `Job`."""

    proc: Process
    sock: socket.socket


class ForkServerGone(Exception):
    pass


class Forked:
    """A supervisor the fork server forked, seen through a pidfd (it is not radiumd's child):
    the part of asyncio.subprocess.Process that radiumd uses."""

    def __init__(self, pid: int, ask_kill: Callable[[int], bool]) -> None:
        self.pid = pid
        self._ask_kill = ask_kill  # through the fork server; False when there is none
        self.pidfd = os.pidfd_open(pid)
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[None] = loop.create_future()
        self._status: asyncio.Future[int] = loop.create_future()
        loop.add_reader(self.pidfd, self._on_exit)

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = -1
        self._exited.set_result(None)

    def reported(self, status: int) -> None:
        if not self._status.done():
            self._status.set_result(status)

    @property
    def returncode(self) -> int | None:
        if not self._exited.done():
            return None
        return self._status.result() if self._status.done() else -1  # -1: exited, status unknown

    async def wait(self) -> int:
        await self._exited
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REPORT_WAIT):  # not wait_for: connection.py's request says why
                await asyncio.shield(self._status)
        return self.returncode  # type: ignore[return-value]

    def kill(self) -> None:
        if self.pidfd >= 0 and not self._ask_kill(self.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):  # not root: it is lost
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)


class Launcher:
    """Makes supervisors: asks the fork server, or starts a process when there is none."""

    def __init__(self, log: logging.Logger, settings: Settings) -> None:
        self.log = log
        self.settings = settings  # every supervisor's, fixed now (radiumd may drop to its user)
        self.runs = Path(settings.runs_dir)  # the run folders, root's: the fork server cleans them
        self.control: socket.socket | None = None
        self.server: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Future[None] | None = None
        self._replies: deque[asyncio.Future[Forked]] = deque()
        self._forked: dict[int, Forked] = {}
        self._reader: asyncio.Task | None = None
        self._sweeps: set[asyncio.Future[None]] = set()

    def start(self) -> None:
        """Start the fork server in the background; supervisors asked for meanwhile wait for it."""
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._start())

    async def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.runs.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.server = await _start_module([], "radium.remoting.run.forkserver", theirs, self.settings)
            theirs.close()
            ours.setblocking(False)
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(START_TIMEOUT):
                hello = await loop.sock_recv(ours, 64)
            if hello != b"ready":
                raise ForkServerGone(f"it said {hello!r}")
        except (OSError, TimeoutError, ForkServerGone) as exc:
            ours.close()
            theirs.close()
            self._gone(f"the fork server did not start: {exc}")
            return
        self.control = ours
        self._reader = asyncio.create_task(self._read())
        event(self.log, "info", "supervisor fork server ready", pid=self.server.pid)

    async def ready(self) -> bool:
        """Wait until the fork server has started (or failed to): whether it serves."""
        if self._ready is not None:
            await self._ready
        return self.control is not None

    async def launch(self, spare: bool = False) -> SupervisorProcess:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self._ready is not None:
                await self._ready
            proc: Process | None = None
            if self.control is not None:
                try:
                    proc = await self._fork(theirs, SPARE_NICENESS if spare else 0)
                except (OSError, ForkServerGone) as exc:
                    self._gone(f"the fork server failed: {exc}")
            if proc is None:
                if os.geteuid() != 0:
                    raise RunsUnavailable(
                        "this appliance cannot start runs: radiumd's supervisor fork server is gone "
                        "(see radiumd's log) and radiumd, dropped to its own user, cannot start "
                        "supervisors itself; restart radiumd (systemctl restart radiumd)"
                    )
                proc = await self._exec(theirs, spare)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return SupervisorProcess(proc, ours)

    async def _fork(self, theirs: socket.socket, niceness: int) -> Forked:
        assert self.control is not None
        reply: asyncio.Future[Forked] = asyncio.get_running_loop().create_future()
        self._replies.append(reply)
        socket.send_fds(self.control, [b"fork %d" % niceness], [theirs.fileno()])
        return await reply

    async def _exec(self, theirs: socket.socket, spare: bool) -> asyncio.subprocess.Process:
        """A supervisor of its own (no fork server): spares at low priority, so that their
        start-up yields the CPU to the runs going on meanwhile."""
        nice = ["nice", "-n", str(SPARE_NICENESS)] if spare else []
        unshare = ["unshare", "--mount", "--propagation", "private"]
        return await _start_module([*nice, *unshare], "radium.remoting.run.supervisor", theirs, self.settings)

    async def _read(self) -> None:
        assert self.control is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(self.control, 4096)
            except OSError:
                data = b""
            if not data:
                self._gone("the fork server exited")
                return
            kind, _, rest = data.partition(b" ")
            if kind == b"pid" and self._replies:
                reply = self._replies.popleft()
                try:
                    forked = Forked(int(rest), self._kill)
                except (ValueError, OSError) as exc:  # it died already: ask again, or start one
                    reply.set_exception(ForkServerGone(f"no supervisor {rest!r}: {exc}"))
                    continue
                self._forked[forked.pid] = forked
                reply.set_result(forked)
            elif kind == b"error" and self._replies:
                self._replies.popleft().set_exception(ForkServerGone(rest.decode(errors="replace")))
            elif kind == b"exit":
                pid, _, status = rest.partition(b" ")
                done = self._forked.pop(int(pid), None)
                if done is not None:
                    done.reported(int(status))

    def _kill(self, pid: int) -> bool:
        """Ask the fork server to SIGKILL a supervisor it forked (radiumd may not be root)."""
        if self.control is None:
            return False
        try:
            self.control.send(b"kill %d" % pid)
        except OSError:
            return False
        return True

    def clean(self, run: str) -> None:
        """Remove a finished run's folder (its upper layer holds files of the run's ids)."""
        if self.control is not None:
            with contextlib.suppress(OSError):
                self.control.send(b"clean " + run.encode())
                return
        shutil.rmtree(self.runs / run, ignore_errors=True)

    def sweep(self) -> None:
        """Have what revoked clients left removed (run/revoked.py): by the fork server, root,
        once it has started; without one, here if radiumd is root."""

        async def sweep() -> None:
            if self._ready is not None:
                await self._ready
            if self.control is not None:
                with contextlib.suppress(OSError):
                    self.control.send(b"sweep")
                    return
            if os.geteuid() == 0:
                from ..run.revoked import forget_revoked  # the supervisors' modules: only here

                await asyncio.to_thread(forget_revoked, self.settings)

        try:
            task = asyncio.get_running_loop().create_task(sweep())
        except RuntimeError:  # not on radiumd's loop: its next sweep (when idle) covers this one
            return
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)

    def _gone(self, why: str) -> None:
        """No more forks: supervisors are started afresh from now on."""
        if self.control is not None:
            self.control.close()
            self.control = None
        while self._replies:
            self._replies.popleft().set_exception(ForkServerGone(why))
        for orphan in self._forked.values():  # their statuses went with it
            orphan.reported(-1)
        self._forked.clear()
        if os.geteuid() == 0:
            event(self.log, "warning", "supervisors are started afresh", reason=why)
        else:
            event(self.log, "error", "no run can start until radiumd is restarted", reason=why)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.control is not None:
            self.control.close()  # the fork server reads end-of-stream and exits
            self.control = None
        if self.server is not None and self.server.returncode is None:
            try:
                async with asyncio.timeout(5):
                    await self.server.wait()
            except TimeoutError:
                with contextlib.suppress(PermissionError):  # root's, once radiumd dropped to its user
                    self.server.kill()
                    await self.server.wait()


async def _start_module(
    prefix: list[str], module: str, channel: socket.socket, settings: Settings
) -> asyncio.subprocess.Process:
    """`prefix python -m module --fd N --settings JSON`, with `channel` as descriptor N."""
    return await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        module,
        "--fd",
        str(channel.fileno()),
        "--settings",
        msgspec.json.encode(settings).decode(),
        pass_fds=(channel.fileno(),),
        stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
