"""`radium run` on the client: carry a process to an appliance and keep it feeling local.

The client stays the home of everything the process touches: it answers the
appliance's file requests from its own file system, prints the process's
output as it arrives, forwards its own stdin and the signals it receives, and
applies the process's file changes when it ends.  Its exit status is the
process's.
"""

from __future__ import annotations

import asyncio
import os
import queue
import select
import shutil
import signal
import termios
import tty as ttymod
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .. import _threads
from .. import schema as s
from .._config import ClientConfig, address_host
from .._errors import RadiumError, TransportError, UsageError
from .._keys import write_atomic
from ..run import fsproto
from ..run.exports import ExportPolicy
from ..run.files import FileServer
from ..run.writeback import Applier
from . import api, handoff, holder
from .connection import Connection
from .paths import state_dir
from .session import Session
from .withheld import export_policy

# Not carried to the appliance: they name things that exist only on the client.
DROPPED_ENV = (
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XAUTHORITY",
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "SSH_CONNECTION",
    "SSH_CLIENT",
    "SSH_TTY",
    "GPG_AGENT_INFO",
    "DBUS_SESSION_BUS_ADDRESS",
    "XDG_RUNTIME_DIR",
    "XDG_SESSION_ID",
    "KRB5CCNAME",
    "RADIUM_CONFIG",
    "RADIUM_STATE_DIR",
    "TMUX",
    "TMUX_PANE",
)
FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
CREDIT_BATCH = 1 << 20
MAX_DELIVERED = 1_000_000  # hashes remembered per appliance (32 MB)
# Threads answering file requests over the direct channel (the first is the one that connected),
# as many as the pool that answers them relayed: a cold read keeps several ReadChunks in flight.
ANSWERING_THREADS = 8
LOST_GRACE_S = 15.0  # how long a run whose session an operator ended waits for its RunExit


def carried_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    for name in DROPPED_ENV:
        env.pop(name, None)
    return env


@dataclass
class RunResult:
    status: int
    appliance: str
    hostname: str
    stats: s.RunStats
    detail: str = ""
    writeback_errors: list[str] = field(default_factory=list)
    file_seconds: dict[str, float] = field(default_factory=dict)  # the file server's, by request kind


class Ends:
    """The run's ends on the client: its three streams, its terminal, its signals.

    `ProcessEnds` are this process's own; the run agent (agent.py) has the ends
    of the `radium run` that handed it the run (its descriptors, passed over a
    Unix socket).  `attach` starts sending the run what reaches them (signals,
    window-size changes) and puts a terminal in raw mode; `detach` undoes both.
    """

    def __init__(self, stdin: int = 0, stdout: int = 1, stderr: int = 2, umask: int | None = None) -> None:
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.tty = os.isatty(stdin) and os.isatty(stdout)
        self.umask = handoff.umask() if umask is None else umask  # the remote process's

    def window(self) -> tuple[int, int]:
        if not self.tty:
            return 24, 80
        size = os.get_terminal_size(self.stdout)
        return size.lines, size.columns

    def attach(self, run: RemoteRun) -> None:
        raise NotImplementedError

    def detach(self) -> None:
        raise NotImplementedError


class ProcessEnds(Ends):
    """This process's own streams and signals."""

    def __init__(self) -> None:
        super().__init__()
        self._saved: list | None = None

    def attach(self, run: RemoteRun) -> None:
        loop = asyncio.get_running_loop()
        for sig in FORWARDED_SIGNALS:
            loop.add_signal_handler(sig, run.signal, sig)
        if self.tty:
            # Keys go to the remote terminal as typed: ^C becomes its SIGINT there.
            self._saved = termios.tcgetattr(self.stdin)
            ttymod.setraw(self.stdin)
            loop.add_signal_handler(signal.SIGWINCH, run.resize)

    def detach(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in FORWARDED_SIGNALS:
            loop.remove_signal_handler(sig)
        if self._saved is not None:
            loop.remove_signal_handler(signal.SIGWINCH)
            termios.tcsetattr(self.stdin, termios.TCSADRAIN, self._saved)
            self._saved = None


class Output:
    """Writes the process's output to the client's streams in a thread of its own.

    A slow reader (a pager, a full pipe) holds up only this thread; what it has
    written is credited back to the appliance, which sends no more than its
    window ahead.  A stream its reader closed (`| head`) swallows the rest.  It
    writes to duplicates of the descriptors, closed when it ends: a write still
    blocked after the run can never land in a descriptor reused since.
    """

    def __init__(self, fds: dict[int, int], written: Callable[[int], None]) -> None:
        self.fds = {k: os.dup(fd) for k, fd in fds.items()}
        self.written = written  # called in the loop with each piece's size
        self.queue: queue.SimpleQueue[tuple[int, bytes] | asyncio.Future | None] = queue.SimpleQueue()
        self.broken: set[int] = set()
        self.closing = False
        self.loop = asyncio.get_running_loop()
        self.thread = _threads.Thread(target=self._write_all, name="radium-output", daemon=True)
        self.thread.start()

    def write(self, fd: int, data: bytes) -> None:
        self.queue.put((fd, data))

    async def drain(self) -> None:
        """Wait until everything queued has been written."""
        done = self.loop.create_future()
        self.queue.put(done)
        await done

    def close(self) -> None:
        """Write nothing more (what is still queued is dropped); the thread ends."""
        self.closing = True
        self.queue.put(None)

    def _write_all(self) -> None:
        try:
            while (item := self.queue.get()) is not None:
                if isinstance(item, asyncio.Future):
                    self.loop.call_soon_threadsafe(_resolve, item)
                elif not self.closing:
                    fd, data = item
                    self._write(self.fds[fd], memoryview(data))
                    self.loop.call_soon_threadsafe(self.written, len(data))
        except RuntimeError:
            pass  # the loop is gone
        finally:
            for fd in self.fds.values():
                os.close(fd)

    def _write(self, fd: int, view: memoryview) -> None:
        while view and fd not in self.broken and not self.closing:
            try:
                view = view[os.write(fd, view) :]
            except InterruptedError:
                continue
            except OSError:
                self.broken.add(fd)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class RemoteRun:
    def __init__(
        self,
        session: Session,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        ends: Ends | None = None,
        exports: ExportPolicy | None = None,
        memory: int = 0,  # bytes of the appliance's memory asked for (0: its default)
    ) -> None:
        self.session = session
        self.memory = memory
        self.conn: Connection = session.conn
        self.argv, self.cwd, self.env = argv, cwd, env
        self.ends = ends or ProcessEnds()
        state = state_dir()
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.delivered_path = state / f"delivered-{self.conn.appliance.name}.bin"
        self.files = FileServer(
            root="/",
            serve_mounts=[cwd],
            cwd=cwd,
            hash_cache=state / "hashes.cache",
            delivered=_load_hashes(self.delivered_path),
            exports=exports,
        )
        self.pool = ThreadPoolExecutor(
            max_workers=8, thread_name_prefix="radium-files", initializer=_threads.name_for_the_os
        )
        self.queue: asyncio.Queue[tuple[s.Message, list[bytes]]] = asyncio.Queue()
        self.applier = Applier()
        self.run_id: str | None = None
        self.unacked = 0
        self.direct: Any = None  # the direct file channel (run/direct.py's Link), once connected
        self.closing = False

    def _on_notice(self, notice: s.Message, extra: list[bytes]) -> None:
        # Queued in arrival order; notices may come before RunAccepted's reply does.
        self.queue.put_nowait((notice, extra))

    async def execute(
        self, lease_id: str | None, request: s.AllocationRequest | None, timeout: float
    ) -> RunResult:
        self.conn.on_notice(self._on_notice)
        tty = self.ends.tty
        rows, cols = self.ends.window()
        accepted = await self.conn.request(
            s.RunStart(
                session=self.session.id,
                argv=self.argv,
                cwd=self.cwd,
                env=self.env,
                uid=os.getuid(),
                gid=os.getgid(),
                umask=self.ends.umask,
                lease_id=lease_id,
                request=request,
                timeout=timeout,
                tty=tty,
                rows=rows,
                cols=cols,
                prefetch=prefetch_paths(self.argv, self.cwd, self.env.get("PATH")),
                memory=self.memory,
            ),
            timeout=None if lease_id is None else 30.0,
        )
        assert isinstance(accepted, s.RunAccepted)
        self.run_id = accepted.run
        loop = asyncio.get_running_loop()
        self.output = Output({1: self.ends.stdout, 2: self.ends.stderr}, self._credit)
        stop_r, stop_w = os.pipe()
        stdin = _threads.Thread(
            target=self._read_stdin, args=(loop, stop_r), name="radium-stdin", daemon=True
        )
        self.ends.attach(self)
        stdin.start()
        try:
            exit_msg = await self._serve()
            await self.output.drain()
        finally:
            self.ends.detach()
            os.write(stop_w, b"x")  # the stdin reader stops; it never reads past the run
            stdin.join()
            os.close(stop_r)
            os.close(stop_w)
            self.output.close()
            self.applier.abort()
            self.closing = True
            if self.direct is not None:
                self.direct.close()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self._save_state()
        return RunResult(
            status=exit_msg.status,
            appliance=self.conn.appliance.name,
            hostname=accepted.hostname,
            stats=exit_msg.stats,
            detail=exit_msg.detail,
            writeback_errors=self.applier.errors,
            file_seconds=dict(self.files.stats.seconds),
        )

    def _save_state(self) -> None:
        """Keep what makes the next run cheap: file hashes, and what the appliance holds."""
        try:
            self.files.close()
            hashes = list(self.files.delivered)[-MAX_DELIVERED:]
            write_atomic(self.delivered_path, b"".join(h for h in hashes if len(h) == 32), 0o600)
        except OSError:
            pass  # a cache, not a record: the next run is slower, not wrong

    def resize(self) -> None:
        """The client's terminal changed size: so does the remote one."""
        if self.run_id is not None:
            rows, cols = self.ends.window()
            self.conn.post(s.RunResize(run=self.run_id, rows=rows, cols=cols))

    def signal(self, sig: int) -> None:
        """Send `sig` to the remote process group."""
        if self.run_id is not None:
            self.conn.post(s.RunSignal(run=self.run_id, signal=int(sig)))

    def _read_stdin(self, loop: asyncio.AbstractEventLoop, stop: int) -> None:
        """Reads of stdin in a thread, each chunk posted from the loop, until EOF or `stop`.

        It reads only when there is input, and never after the run: a terminal
        shared with the shell keeps the keys typed after `radium run` returned.
        """
        poll = select.poll()
        poll.register(self.ends.stdin, select.POLLIN)
        poll.register(stop, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poll.poll()}
                if stop in ready:
                    return
                data = os.read(self.ends.stdin, 65536)
                loop.call_soon_threadsafe(self._post_input, data, not data)
                if not data:
                    return
        except (OSError, RuntimeError):
            pass  # stdin closed, or the loop is gone at exit

    def _post_input(self, data: bytes, eof: bool) -> None:
        if self.run_id is not None:
            try:
                self.conn.post(s.RunInput(run=self.run_id, eof=eof), [data])
            except RadiumError:
                pass

    async def _serve(self) -> s.RunExit:
        wait_dead = asyncio.ensure_future(self.session.ended.wait())
        try:
            while True:
                get = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({get, wait_dead}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done and self.session.lost:
                    # An operator ended the session: radiumd kills the run and sends its RunExit
                    # (with the reason); the heartbeat may fail first.  Wait for it, a while.
                    done, _ = await asyncio.wait({get}, timeout=LOST_GRACE_S)
                if get not in done:
                    get.cancel()
                    raise self.session.error or TransportError(
                        f"{self.conn.label} stopped answering during the run"
                    )
                msg, extra = get.result()
                if getattr(msg, "run", self.run_id) != self.run_id:
                    continue
                if isinstance(msg, s.RunExit):
                    return msg
                if isinstance(msg, s.Shutdown):
                    raise TransportError(f"{self.conn.label} shut down during the run: {msg.reason}")
                self._handle(msg, extra)
        finally:
            wait_dead.cancel()

    def _handle(self, msg: s.Message, extra: list[bytes]) -> None:
        data = extra[0] if extra else b""
        if isinstance(msg, s.RunOutput):
            self.output.write(1 if msg.fd == 1 else 2, data)  # credited once written
        elif isinstance(msg, s.FsCall):
            asyncio.ensure_future(self._answer(msg.id, data))
        elif isinstance(msg, s.RunDirect):
            _threads.Thread(
                target=self._direct, args=(msg.port, msg.key), name="radium-direct", daemon=True
            ).start()
        elif isinstance(msg, s.Writeback):
            self.applier.change(msg.change)
            self._credit(0)
        elif isinstance(msg, s.WritebackData):
            self.applier.data(msg.path, msg.offset, data, msg.last)
            self._credit(len(data))
        elif isinstance(msg, s.WritebackEnd):
            self.applier.finish()
            self._flush_credit()
            assert self.run_id is not None
            self.conn.post(
                s.WritebackAck(
                    run=self.run_id, ok=not self.applier.errors, error="; ".join(self.applier.errors[:5])
                )
            )

    def _credit(self, size: int) -> None:
        """A credited message of `size` bytes was handled: return its cost, in batches."""
        self.unacked += s.credit_cost(size)
        if self.unacked >= CREDIT_BATCH:
            self._flush_credit()

    def _flush_credit(self) -> None:
        if self.unacked:
            assert self.run_id is not None
            self.conn.post(s.RunCredit(run=self.run_id, bytes=self.unacked))
            self.unacked = 0

    async def _answer(self, call_id: int, body: bytes) -> None:
        loop = asyncio.get_running_loop()
        frames = await loop.run_in_executor(self.pool, self._file_reply, body)
        if self.run_id is not None:
            try:
                self.conn.post(s.FsAnswer(run=self.run_id, id=call_id), frames)
            except RadiumError:
                pass

    def _direct(self, port: int, key: bytes) -> None:
        """Connect the direct file channel the supervisor offered, and answer what comes over it.

        A thread, and up to ANSWERING_THREADS - 1 more, started as requests find all of them
        busy (`direct.serve`): each takes its turn reading the next request and answers it
        itself, each reply sent whole.
        If it cannot connect (a firewall lets only radiumd's port through), or the channel
        fails later, the supervisor asks through radiumd: nothing to do here.
        """
        from ..run import direct  # its cipher's import is paid only by runs that use it

        try:
            link = direct.connect(address_host(self.conn.appliance.address), port, key)
        except (OSError, direct.DirectError):
            return
        self.direct = link
        if self.closing:
            link.close()
            return

        direct.serve(link, self._file_reply, ANSWERING_THREADS, "radium-files")

    def _file_reply(self, body: bytes | memoryview) -> list[bytes]:
        try:
            request = fsproto.decode_request(body)
        except Exception as exc:  # a request we cannot read still gets an answer
            return [fsproto.encode(fsproto.FsError(errno=22, message=f"bad request: {exc}"))]
        return fsproto.reply_frames(request, self.files.handle(request))


def _load_hashes(path) -> set[bytes]:  # type: ignore[no-untyped-def]
    try:
        data = path.read_bytes()
    except OSError:
        return set()
    return {data[i : i + 32] for i in range(0, len(data) - 31, 32)}


def prefetch_paths(argv: list[str], cwd: str, search: str | None = None) -> list[str]:
    """What the process will surely look at first: its working directory and its program's folder."""
    paths = [cwd]
    program = shutil.which(argv[0], path=search) if argv else None
    if program:
        paths.append(os.path.dirname(os.path.realpath(program)))
    return [p for p in dict.fromkeys(paths) if p != "/"]


async def run(
    config: ClientConfig,
    argv: list[str],
    request: s.AllocationRequest | None,
    timeout: float,
    server: str | None,
    ends: Ends | None = None,
    cwd: str | None = None,
    environ: Mapping[str, str] | None = None,
    memory: int = 0,
) -> RunResult:
    """Run `argv` remotely: on the reserved lease if there is one, else on a new one.

    `ends`, `cwd` and `environ` are this process's unless given (the run agent
    gives those of the `radium run` it serves).
    """
    env = carried_environment(environ)
    exports = export_policy(config, os.environ if environ is None else environ)
    if cwd is None:
        try:
            cwd = os.getcwd()
        except OSError as exc:  # removed (ENOENT) or not searchable any more (EACCES)
            raise UsageError(f"the working directory cannot be used here: {exc.strerror}") from None
    reservation = holder.read_reservation()
    if reservation is not None and request is None and (server in (None, reservation.appliance)):
        entry = config.appliance(reservation.appliance)
        conn = await Connection(entry, config.keys).open()
        session = await Session(conn).open()
        try:
            run = RemoteRun(session, argv, cwd, env, ends, exports, memory)
            return await run.execute(reservation.lease.id, None, 0)
        finally:
            await session.close()
            await conn.close()
    reserved = await api.reserve(config, request or s.AllocationRequest(), timeout, server)
    try:
        run = RemoteRun(reserved.session, argv, cwd, env, ends, exports, memory)
        return await run.execute(reserved.lease.id, None, 0)
    finally:
        await reserved.release()
