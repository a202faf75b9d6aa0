"""The run agent: a warm process of the user's that runs `radium run` for the handoff.

`radium run` (handoff.py) connects to the agent's Unix socket in the client's
state directory and hands it the run: its arguments, working directory,
environment, umask and its three standard streams.  The agent does what
`radium run` would do in its own process (cli/commands.py, client/run.py),
with those streams as the run's ends: the process's output is written to the
passed descriptors, stdin is read from the passed one, signals and window-size
changes arrive as messages, and the exit status goes back as one.  Runs are
independent tasks: several `radium run`s share one agent.

It lives until `RADIUM_AGENT_IDLE` seconds (default 900) pass with no run,
`radium agent stop`, SIGTERM, or until its code changes on disk (an upgrade:
it finishes its runs and the next `radium run` starts a new one).  If the
`radium run` it serves dies, the run is ended (its session closed: the
appliance ends the remote process).  Its log is `agent.log` in the state
directory.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from .._config import client_config_path, load_client_config
from .._errors import RadiumError
from ..cli import commands
from ..output import emit_error
from . import handoff
from . import run as remote

IDLE = 900.0
HELLO_TIMEOUT = 10.0  # seconds from connecting to the request
RunRequest = tuple[list[str], str, int, dict[str, str]]
log = logging.getLogger("radium.agent")


def source_stamp() -> tuple[int, int]:
    """The newest mtime and the number of this package's modules: a change means an upgrade."""
    newest, count = 0, 0
    for folder, _, files in os.walk(Path(__file__).resolve().parents[1]):
        for name in files:
            if name.endswith(".py"):
                newest = max(newest, os.stat(os.path.join(folder, name)).st_mtime_ns)
                count += 1
    return newest, count


class AgentEnds(remote.Ends):
    """The ends of the `radium run` this run came from: its descriptors and its messages."""

    def __init__(self, conn: socket.socket, fds: list[int], umask: int) -> None:
        super().__init__(fds[0], fds[1], fds[2], umask=umask)
        self.conn = conn
        self.run: remote.RemoteRun | None = None

    def tell(self, *fields: str | bytes | int) -> None:
        try:
            self.conn.send(handoff.pack(*fields))
        except OSError:
            pass  # it is gone: the watcher has seen it too

    def attach(self, run: remote.RemoteRun) -> None:
        self.run = run
        if self.tty:
            self.tell("raw", 1)

    def detach(self) -> None:
        self.run = None
        if self.tty:
            self.tell("raw", 0)


class Agent:
    def __init__(self, directory: str, name: str, idle: float) -> None:
        self.link = handoff.Link(directory)
        self.name = name
        self.idle = idle
        self.stamp = source_stamp()
        self.runs: set[asyncio.Task] = set()
        self.handlers: set[asyncio.Task] = set()
        self.stopping = False
        self.stopped_by: str | None = None
        self.last_active = time.monotonic()
        self.started = time.time()
        self.served = 0

    # --- life -------------------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        path = self.link.path(self.name)
        try:
            os.unlink(path)  # left by an agent that died: we were started under the starters' lock
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.listener.bind(path)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.inode = os.stat(path).st_ino
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stop, f"signal {signal.Signals(sig).name}", True)
        _ready()
        log.info(
            "agent %s serving %s/%s (idle exit after %gs)",
            os.getpid(),
            self.link.directory,
            self.name,
            self.idle,
        )
        self.accepting = asyncio.create_task(self._accept())
        watch = asyncio.create_task(self._watch_idle())
        try:
            await asyncio.gather(self.accepting, return_exceptions=True)
            while self.handlers:
                await asyncio.gather(*self.handlers, return_exceptions=True)
        finally:
            watch.cancel()
            log.info("agent %s stopped (%s) after %d runs", os.getpid(), self.stopped_by, self.served)

    def stop(self, why: str, end_runs: bool) -> None:
        """Take no more runs; end the running ones too when `end_runs`."""
        if not self.stopping:
            self.stopping, self.stopped_by = True, why
            try:
                if os.stat(self.link.path(self.name)).st_ino == self.inode:
                    os.unlink(self.link.path(self.name))
            except OSError:
                pass
            self.accepting.cancel()
            self.listener.close()
        if end_runs:
            for task in self.runs:
                task.cancel()

    async def _watch_idle(self) -> None:
        while not self.stopping:
            await asyncio.sleep(min(60.0, max(0.05, self.last_active + self.idle - time.monotonic())))
            try:
                ours = os.stat(self.link.path(self.name)).st_ino == self.inode
            except OSError:
                ours = False
            if not ours:
                self.stop("its socket was removed", False)
            elif not self.handlers and time.monotonic() - self.last_active >= self.idle:
                self.stop(f"idle for {self.idle:g}s", False)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.listener)
            task = asyncio.create_task(self._handle(conn))
            self.handlers.add(task)
            task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Task) -> None:
        self.handlers.discard(task)
        self.last_active = time.monotonic()

    # --- one connection ------------------------------------------------------------

    async def _handle(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            conn.setblocking(False)
            _, uid, _ = handoff.peer_credentials(conn)
            if uid != os.getuid():
                return
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(HELLO_TIMEOUT):
                    await _readable(loop, conn)
            except TimeoutError:
                return  # connected and said nothing: not a `radium run`
            data, fds, _, _ = socket.recv_fds(conn, handoff.MAX_MESSAGE, 3)
            fields = handoff.unpack(data)
            if fields[0] == "status":
                conn.send(json.dumps(self.status()).encode())
            elif fields[0] == "stop":
                conn.send(json.dumps(self.status()).encode())
                self.stop("radium agent stop", True)
            elif fields[0] == "run" and len(fds) == 3:
                try:
                    request = handoff.parse_run_request(fields)
                except (ValueError, IndexError):
                    log.warning("a malformed run request (%d bytes)", len(data))
                    return  # not from a `radium run` of ours: nothing to answer
                await self._run(conn, request, fds)
        except OSError as exc:
            log.warning("a connection failed: %s", exc)
        except Exception:
            log.error("a connection failed:\n%s", traceback.format_exc())
        finally:
            for fd in fds:
                os.close(fd)
            conn.close()

    def status(self) -> dict:
        return {
            "pid": os.getpid(),
            "socket": self.name,
            "runs": len(self.runs),
            "served": self.served,
            "started": self.started,
            "idle_exit_s": self.idle,
        }

    async def _run(self, conn: socket.socket, request: RunRequest, fds: list[int]) -> None:
        if self.stopping or source_stamp() != self.stamp:
            conn.send(b"stale")
            self.stop("its code changed on disk", False)
            return
        conn.send(b"accepted")
        self.served += 1
        args, cwd, umask, environ = request
        ends = AgentEnds(conn, fds, umask)
        task = asyncio.create_task(self._execute(args, cwd, environ, ends))
        self.runs.add(task)
        watcher = asyncio.create_task(self._follow(conn, ends, task))
        try:
            code, out, err = await task
        except asyncio.CancelledError:
            if watcher.done() and watcher.result() == "gone":
                return  # nobody to tell: the run's session is closed, the appliance ends it
            signum = watcher.result() if watcher.done() else None
            if isinstance(signum, int):
                try:
                    name = signal.Signals(signum).name
                except ValueError:
                    name = f"signal {signum}"
                code, out = 128 + signum, ""
                err = "radium: interrupted\n" if signum == signal.SIGINT else f"radium: ended by {name}\n"
            else:
                code, out = handoff.AGENT_GONE, ""
                err = f"radium: the run agent was stopped ({self.stopped_by}) during the run\n"
        finally:
            self.runs.discard(task)
            watcher.cancel()
        ends.tell("exit", code, out, err)

    async def _follow(self, conn: socket.socket, ends: AgentEnds, task: asyncio.Task) -> str | int:
        """Signals and resizes from `radium run`; "gone" when it went away, a signal that ended the wait."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(conn, handoff.MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                task.cancel()
                return "gone"
            fields = handoff.unpack(data)
            if fields[0] == "signal" and len(fields) == 2 and fields[1].isdigit():
                signum = int(fields[1])
                if ends.run is not None:
                    ends.run.signal(signum)
                else:  # still waiting for devices, or for the run to start: give up, as here
                    task.cancel()
                    return signum
            elif fields[0] == "resize" and ends.run is not None:
                ends.run.resize()

    async def _execute(
        self, run_args: list[str], cwd: str, environ: dict[str, str], ends: AgentEnds
    ) -> tuple[int, str, str]:
        """What `radium run ARGS` does in its own process (cli.commands.cmd_run), with these ends."""
        out, err = io.StringIO(), io.StringIO()
        as_json = False
        try:
            with redirect_stdout(out), redirect_stderr(err):
                args = commands.build_parser().parse_args(["run", *run_args])
            as_json = args.json
            config = load_client_config(Path(cwd) / client_config_path(environ))  # relative: to cwd
            if args.show_exports:
                return 0, commands.show_exports(config, environ), ""
            argv, request = commands.run_arguments(args)
            result = await remote.run(
                config,
                argv,
                request,
                args.timeout,
                args.server,
                memory=args.memory,
                ends=ends,
                cwd=cwd,
                environ=environ,
            )
        except SystemExit as exc:  # --help, or a usage error argparse reported
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
            return code, out.getvalue(), err.getvalue()
        except RadiumError as exc:
            with redirect_stdout(out), redirect_stderr(err):
                code = emit_error(commands.PROG, exc, as_json)
            return code, out.getvalue(), err.getvalue()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.error("a run failed:\n%s", traceback.format_exc())
            where = os.path.join(self.link.directory, "agent.log")
            return 70, "", f"radium: internal error in the run agent; see {where}\n"
        return result.status, "", commands.run_report(result, args.stats)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def _ready() -> None:
    """Tell the starting `radium run` we listen; then nothing more goes to its pipe."""
    os.write(1, b"ready\n")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def main() -> int:
    directory, name = sys.argv[1:3]
    os.environ["RADIUM_STATE_DIR"] = directory  # absolute: where this agent's runs keep their state
    os.chdir("/")  # hold no folder of the user's (a test's, a mount) busy
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s agent %(levelname)s %(message)s",
    )
    if os.fstat(2).st_size > 1 << 20:
        os.ftruncate(2, 0)  # the log is opened for appending: keep it small
    try:
        idle = float(os.environ.get("RADIUM_AGENT_IDLE", IDLE))
    except ValueError:
        idle = IDLE
    asyncio.run(Agent(directory, name, idle).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
