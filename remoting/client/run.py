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
import shutil
import signal
import sys
import termios
import threading
import tty as ttymod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .. import _schema as s
from .._config import ClientConfig
from .._errors import RadiumError, TransportError, UsageError
from .._keys import write_atomic
from ..run import fsproto
from ..run.files import FileServer
from ..run.writeback import Applier
from . import api, holder
from .connection import Connection
from .session import Session

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


def carried_environment(env: dict[str, str] | None = None) -> dict[str, str]:
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


class RemoteRun:
    def __init__(self, session: Session, argv: list[str], cwd: str, env: dict[str, str]) -> None:
        self.session = session
        self.conn: Connection = session.conn
        self.argv, self.cwd, self.env = argv, cwd, env
        state = holder.state_dir()
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.delivered_path = state / f"delivered-{self.conn.appliance.name}.bin"
        self.files = FileServer(
            root="/",
            serve_mounts=[cwd],
            hash_cache=state / "hashes.cache",
            delivered=_load_hashes(self.delivered_path),
        )
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="radium-files")
        self.queue: asyncio.Queue[tuple[s.Message, list[bytes]]] = asyncio.Queue()
        self.applier = Applier()
        self.run_id: str | None = None
        self.unacked = 0

    def _on_notice(self, notice: s.Message, extra: list[bytes]) -> None:
        # Queued in arrival order; notices may come before RunAccepted's reply does.
        self.queue.put_nowait((notice, extra))

    async def execute(
        self, lease_id: str | None, request: s.AllocationRequest | None, timeout: float
    ) -> RunResult:
        self.conn.on_notice(self._on_notice)
        tty = os.isatty(0) and os.isatty(1)
        rows, cols = _window() if tty else (24, 80)
        accepted = await self.conn.request(
            s.RunStart(
                session=self.session.id,
                argv=self.argv,
                cwd=self.cwd,
                env=self.env,
                uid=os.getuid(),
                gid=os.getgid(),
                umask=_umask(),
                lease_id=lease_id,
                request=request,
                timeout=timeout,
                tty=tty,
                rows=rows,
                cols=cols,
                prefetch=prefetch_paths(self.argv, self.cwd),
            ),
            timeout=None if lease_id is None else 30.0,
        )
        assert isinstance(accepted, s.RunAccepted)
        self.run_id = accepted.run
        loop = asyncio.get_running_loop()
        for sig in FORWARDED_SIGNALS:
            loop.add_signal_handler(sig, self._signal, sig)
        saved = None
        if tty:
            # Keys go to the remote terminal as typed: ^C becomes its SIGINT there.
            saved = termios.tcgetattr(0)
            ttymod.setraw(0)
            loop.add_signal_handler(signal.SIGWINCH, self._resize)
        stdin = threading.Thread(target=self._read_stdin, args=(loop,), daemon=True)
        stdin.start()
        try:
            exit_msg = await self._serve()
        finally:
            for sig in FORWARDED_SIGNALS:
                loop.remove_signal_handler(sig)
            if saved is not None:
                loop.remove_signal_handler(signal.SIGWINCH)
                termios.tcsetattr(0, termios.TCSADRAIN, saved)
            self.applier.abort()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self._save_state()
        return RunResult(
            status=exit_msg.status,
            appliance=self.conn.appliance.name,
            hostname=accepted.hostname,
            stats=exit_msg.stats,
            detail=exit_msg.detail,
            writeback_errors=self.applier.errors,
        )

    def _save_state(self) -> None:
        """Keep what makes the next run cheap: file hashes, and what the appliance holds."""
        try:
            self.files.close()
            hashes = list(self.files.delivered)[-MAX_DELIVERED:]
            write_atomic(self.delivered_path, b"".join(h for h in hashes if len(h) == 32), 0o600)
        except OSError:
            pass  # a cache, not a record: the next run is slower, not wrong

    def _resize(self) -> None:
        if self.run_id is not None:
            rows, cols = _window()
            self.conn.post(s.RunResize(run=self.run_id, rows=rows, cols=cols))

    def _signal(self, sig: int) -> None:
        if self.run_id is not None:
            self.conn.post(s.RunSignal(run=self.run_id, signal=int(sig)))

    def _read_stdin(self, loop: asyncio.AbstractEventLoop) -> None:
        """Blocking reads of fd 0 in a thread; each chunk posted from the loop."""
        try:
            while True:
                data = os.read(0, 65536)
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
            out = sys.stdout.buffer if msg.fd == 1 else sys.stderr.buffer
            out.write(data)
            out.flush()
            self._credit(len(data))
        elif isinstance(msg, s.FsCall):
            asyncio.ensure_future(self._answer(msg.id, data))
        elif isinstance(msg, s.Writeback):
            self.applier.change(msg.change)
        elif isinstance(msg, s.WritebackData):
            self.applier.data(msg.path, msg.offset, data, msg.last)
            self._credit(len(data))
        elif isinstance(msg, s.WritebackEnd):
            self.applier.finish()
            self._credit(0, flush=True)
            assert self.run_id is not None
            self.conn.post(
                s.WritebackAck(
                    run=self.run_id, ok=not self.applier.errors, error="; ".join(self.applier.errors[:5])
                )
            )

    def _credit(self, n: int, flush: bool = False) -> None:
        self.unacked += n
        if self.unacked >= CREDIT_BATCH or (flush and self.unacked):
            assert self.run_id is not None
            self.conn.post(s.RunCredit(run=self.run_id, bytes=self.unacked))
            self.unacked = 0

    async def _answer(self, call_id: int, body: bytes) -> None:
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(self.pool, self._file_reply, body)
        if self.run_id is not None:
            try:
                self.conn.post(s.FsAnswer(run=self.run_id, id=call_id), [reply])
            except RadiumError:
                pass

    def _file_reply(self, body: bytes) -> bytes:
        try:
            request = fsproto.decode_request(body)
        except Exception as exc:  # a request we cannot read still gets an answer
            return fsproto.encode(fsproto.FsError(errno=22, message=f"bad request: {exc}"))
        return fsproto.encode(self.files.handle(request))


def _load_hashes(path) -> set[bytes]:  # type: ignore[no-untyped-def]
    try:
        data = path.read_bytes()
    except OSError:
        return set()
    return {data[i : i + 32] for i in range(0, len(data) - 31, 32)}


def prefetch_paths(argv: list[str], cwd: str) -> list[str]:
    """What the process will surely look at first: its working directory and its program's folder."""
    paths = [cwd]
    program = shutil.which(argv[0]) if argv else None
    if program:
        paths.append(os.path.dirname(os.path.realpath(program)))
    return [p for p in dict.fromkeys(paths) if p != "/"]


def _window() -> tuple[int, int]:
    size = os.get_terminal_size(1)
    return size.lines, size.columns


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


async def run(
    config: ClientConfig,
    argv: list[str],
    request: s.AllocationRequest | None,
    timeout: float,
    server: str | None,
) -> RunResult:
    """Run `argv` remotely: on the reserved lease if there is one, else on a new one."""
    env = carried_environment()
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
            return await RemoteRun(session, argv, cwd, env).execute(reservation.lease.id, None, 0)
        finally:
            await session.close()
            await conn.close()
    reserved = await api.reserve(config, request or s.AllocationRequest(), timeout, server)
    try:
        return await RemoteRun(reserved.session, argv, cwd, env).execute(reserved.lease.id, None, 0)
    finally:
        await reserved.release()
