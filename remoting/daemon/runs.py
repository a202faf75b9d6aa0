"""Runs on this appliance: one supervisor process per `radium run`, relayed to its client.

radiumd starts the supervisor in a private mount namespace, hands it a `Job`,
and relays: the supervisor's notices (output, file requests, write-back, exit)
go to the client's connection; the client's run traffic (input, signals, file
answers, credits) goes to the supervisor.  A run ends with its process, or when
its client's session ends (the client died), or when radiumd stops; the lease it
took for itself is released then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import schema as s
from .. import wire as wire
from .._config import DaemonConfig, address_host
from .._errors import LeaseNotFound, RunsUnavailable, UsageError
from ..devices.base import Backend, MpsLimits
from ..devices.pci import device_nodes
from ..output import mib
from ..run import channel
from ..run.cas import ContentStore
from ..run.limits import memory_ceiling
from .auth import Peer
from .logs import event
from .service import Service
from .supervisors import Launcher, Process, SupervisorProcess

TINI = "/usr/bin/tini-static"
RUN_MEMORY_LEAST = 64 << 20  # below this, `radium run --memory` is a mistake (Python alone takes ~10 MiB)
REINDEX_INTERVAL = 60.0  # seconds: at most this often (and 5 % of the time), the idle store is rescanned


@dataclass
class Run:
    id: str
    client: str
    session: str
    origin: bytes
    lease: s.Lease
    own_lease: bool
    slot: int
    argv: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    ended_because: str = ""  # set when radiumd ends it (its session ended), for the client's RunExit
    proc: Process | None = None
    writer: asyncio.StreamWriter | None = None
    relay: asyncio.Task | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Runs:
    config: DaemonConfig
    service: Service
    backends: dict[str, Backend]
    send: Callable[[bytes, list[bytes]], None]
    log: logging.Logger
    launcher: Launcher
    runs: dict[str, Run] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._free_slots = list(range(self.config.run.id_slots))
        self._spares: list[SupervisorProcess] = []
        self._indexed_at = time.monotonic()
        self._reindex_after = REINDEX_INTERVAL
        self._background: set[asyncio.Task] = set()  # store scans
        self._launching: set[asyncio.Task] = set()
        self._closing = False

    def index_store(self) -> None:
        """Scan the content store once and save its index: each run's supervisor starts from it."""
        try:
            self.check_ready()
        except RunsUnavailable:
            return
        started = time.monotonic()
        store = ContentStore(Path(self.config.server.state_dir) / "cas", self.config.run.cache_bytes)
        store.save_index()
        took = time.monotonic() - started
        # A big store takes seconds to scan: scan it again no more than 5 % of the time.
        self._reindex_after = max(REINDEX_INTERVAL, 20 * took)
        stats = store.stats()
        event(
            self.log,
            "info",
            "content store indexed",
            chunks=stats.entries,
            bytes=stats.bytes_used,
            seconds=round(took, 3),
        )

    # --- spare supervisors ------------------------------------------------------------

    def keep_spares(self) -> None:
        """Start supervisors ahead of need, up to `run.spare_supervisors`.

        A spare is forked (supervisors.py) and waits for its job, so a run does not wait
        even for the fork.  Spares are refilled when radiumd starts, as soon as one is
        taken, and when a run ends.
        """
        self._spares = [sp for sp in self._spares if sp.proc.returncode is None]
        if self._closing:
            return
        try:
            self.check_ready()
        except RunsUnavailable:
            return  # said to whoever asks for a run
        for _ in range(self.config.run.spare_supervisors - len(self._spares) - len(self._launching)):
            task = asyncio.create_task(self.launcher.launch(spare=True))
            self._launching.add(task)
            task.add_done_callback(self._launched)

    def _launched(self, task: asyncio.Task) -> None:
        self._launching.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            event(self.log, "warning", "could not start a spare supervisor", error=str(task.exception()))
            return
        spare = task.result()
        if self._closing:
            spare.sock.close()  # it reads end-of-stream and exits
            return
        self._spares.append(spare)

    def _take_spare(self) -> SupervisorProcess | None:
        while self._spares:
            spare = self._spares.pop(0)
            if spare.proc.returncode is None:
                return spare
            spare.sock.close()
        return None

    # --- starting -------------------------------------------------------------

    def check_ready(self) -> None:
        """Raise a clear error if this appliance cannot run processes."""
        why = cannot_run(self.config)
        if why:
            raise RunsUnavailable(f"{self.service.server.name} cannot run processes: {why}")

    async def start(self, peer: Peer, origin: bytes, msg: s.RunStart) -> s.RunAccepted:
        self.check_ready()
        session = self.service.session_of(peer, origin, msg.session)
        if not msg.argv:
            raise UsageError("nothing to run: the command is empty")
        if not msg.cwd.startswith("/"):
            raise UsageError(f"the working directory must be absolute, got {msg.cwd!r}")
        if msg.memory > (most := self.memory_most()):
            raise UsageError(
                f"{self.service.server.name} gives a run at most {mib(most)} of memory, "
                f"not {mib(msg.memory)}: ask for less with --memory"
            )
        if msg.memory and msg.memory < RUN_MEMORY_LEAST:
            raise UsageError(
                f"--memory {mib(msg.memory)} is too little to start a process: ask for 64 MiB or more"
            )
        if not self._free_slots:
            raise RunsUnavailable(f"{self.service.server.name} runs {len(self.runs)} processes, its limit")
        own = msg.lease_id is None
        if own:
            request = msg.request or s.AllocationRequest()
            granted = await self.service.acquire(
                peer, origin, s.Acquire(session=session.id, request=request, timeout=msg.timeout)
            )
            lease = granted.lease
        else:
            found = self.service.allocator.leases.get(msg.lease_id or "")
            if found is None or found.client != peer.name:
                raise LeaseNotFound(
                    f"no lease {msg.lease_id} held by {peer.name} on {self.service.server.name}"
                )
            lease = found
        run = Run(
            id="R-" + secrets.token_hex(6),
            client=peer.name,
            session=session.id,
            origin=origin,
            lease=lease,
            own_lease=own,
            slot=self._free_slots.pop(0),
            argv=[word[:200] for word in msg.argv[: s.ARGV_SHOWN]],
        )
        try:
            await self._spawn(run, msg)
        except BaseException:
            self.launcher.clean(run.id)
            self._free_slots.append(run.slot)
            if own:
                self._release(lease)
            raise
        self.runs[run.id] = run
        event(
            self.log,
            "info",
            "run started",
            run=run.id,
            client=peer.name,
            argv=msg.argv[:8],
            lease=lease.id,
            devices=lease.device_ids,
            supervisor=run.proc.pid if run.proc else None,
        )
        return s.RunAccepted(run=run.id, lease=lease, hostname=socket.gethostname())

    async def _spawn(self, run: Run, msg: s.RunStart) -> None:
        device_env: dict[str, str] = {}
        by_backend: dict[str, list[tuple[s.Device, s.LeasePart]]] = {}
        for part in run.lease.parts:
            device = self.service.allocator.devices[part.device_id]
            by_backend.setdefault(device.backend, []).append((device, part))
        mps, nodes = None, set()
        for name, held in by_backend.items():
            for device, _ in held:
                nodes.update(device_nodes(device.pci_address))
            seen = self.backends[name].visibility([d for d, _ in held], [p for _, p in held])
            device_env.update(seen.environment)
            if seen.mps is not None:
                mps = self._mps(run, seen.mps)
        job = channel.Job(
            run=run.id,
            client=run.client,
            start=msg,
            slot=run.slot,
            device_env=device_env,
            mps=mps,
            device_nodes=sorted(nodes),
        )
        supervisor = self._take_spare() or await self.launcher.launch()
        with contextlib.suppress(OSError):  # a spare may still be importing: not at low priority now
            os.setpriority(os.PRIO_PROCESS, supervisor.proc.pid, 0)
        self.keep_spares()
        run.proc = supervisor.proc
        reader, writer = await asyncio.open_unix_connection(sock=supervisor.sock)
        run.writer = writer
        writer.write(channel.pack(job))
        run.relay = asyncio.create_task(self._relay(run, reader))

    def memory_most(self) -> int:
        """The most memory a run may ask for here (`radium run --memory`)."""
        return memory_ceiling(0, 0, self.config.run.memory_max_bytes)

    def _mps(self, run: Run, limits: MpsLimits) -> channel.Mps | None:
        """The run's private MPS daemon, if this appliance has CUDA MPS (see docs/run.md)."""
        control = self.launcher.settings.mps_control
        if control is None:
            event(
                self.log,
                "warning",
                "partial lease of NVIDIA devices not enforced",
                run=run.id,
                why="run.mps is off" if self.config.run.mps == "off" else "nvidia-cuda-mps-control not found",
            )
            return None
        return channel.Mps(memory_mib=limits.memory_mib, threads=limits.threads)

    # --- relaying ---------------------------------------------------------------

    async def _relay(self, run: Run, reader: asyncio.StreamReader) -> None:
        header = wire.encode(s.Ok(), 0)[0]  # notices carry id 0
        exited = False
        try:
            while True:
                frames = await channel.read_asyncio(reader)
                if not exited:
                    exited = isinstance(channel.decode("notice", frames[0]), s.RunExit)
                self.send(run.origin, [header, *frames])
        except channel.ChannelClosed:
            pass
        finally:
            await self._finish(run, exited)

    def forward(self, peer: Peer, msg: s.Message, extra: list[memoryview]) -> None:
        run = self.runs.get(getattr(msg, "run", ""))
        if run is None or run.client != peer.name or run.writer is None:
            return  # a late message for a finished run: nothing to do
        # Piece by piece: what the socket does not take at once is copied into the
        # transport's buffer, once (packing into one bytes object first was a second copy).
        for piece in channel.pack_pieces(msg, extra):
            run.writer.write(piece)

    async def _finish(self, run: Run, exited: bool) -> None:
        if run.proc is not None:
            try:
                async with asyncio.timeout(30):
                    await run.proc.wait()
            except TimeoutError:
                run.proc.kill()
                await run.proc.wait()
        if run.writer is not None:
            run.writer.close()
        self.runs.pop(run.id, None)
        self._free_slots.append(run.slot)
        if run.own_lease:
            self._release(run.lease)
        if run.ended_because and not exited:  # killed by radiumd: why, with SIGKILL's status
            self.send(run.origin, wire.encode(s.RunExit(run=run.id, status=137, detail=run.ended_because), 0))
        elif not exited:
            self.send(
                run.origin,
                wire.encode(
                    s.RunExit(run=run.id, status=255, detail="the run's supervisor ended unexpectedly"), 0
                ),
            )
        self.launcher.clean(run.id)  # the fork server's work: the run's ids own files in it
        event(
            self.log,
            "info",
            "run ended",
            run=run.id,
            client=run.client,
            clean=exited,
            supervisor_status=run.proc.returncode if run.proc else None,
        )
        run.ended.set()
        self.keep_spares()
        if not self.runs and time.monotonic() - self._indexed_at > self._reindex_after and not self._closing:
            # Idle: scan the store again, so that its size limit holds across the runs that
            # shared it (each kept it over what it knew of) and the next run's snapshot is fresh.
            self._indexed_at = time.monotonic()
            self.launcher.sweep()  # and what clients revoked meanwhile left (a key file removed by hand)
            task = asyncio.create_task(asyncio.to_thread(self.index_store))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _release(self, lease: s.Lease) -> None:
        if lease.id in self.service.allocator.leases:
            self.service.allocator.release(lease.id)
            self.service.pump()

    # --- ending ------------------------------------------------------------------

    def of_session(self, session_id: str) -> list[s.RunInfo]:
        """The session's runs, for operators (`ListSessions`)."""
        return [
            s.RunInfo(id=r.id, argv=r.argv, lease_id=r.lease.id, started_at=r.started_at)
            for r in self.runs.values()
            if r.session == session_id
        ]

    def end_session(self, session_id: str, reason: str) -> None:
        """The client's session is gone: end its runs (closing the channel kills them)."""
        for run in list(self.runs.values()):
            if run.session == session_id and run.writer is not None:
                event(self.log, "info", "run killed: its session ended", run=run.id, reason=reason)
                run.ended_because = f"the run was killed: its session ended ({reason})"
                run.writer.close()

    async def shutdown(self) -> None:
        self._closing = True
        for task in list(self._launching):
            task.cancel()
        if self._background:  # a store scan in its thread: let it finish writing its index
            await asyncio.gather(*self._background, return_exceptions=True)
        spares, self._spares = self._spares, []
        for spare in spares:
            spare.sock.close()  # it reads end-of-stream and exits
        for run in list(self.runs.values()):
            if run.writer is not None:
                run.writer.close()
        await asyncio.gather(*(r.ended.wait() for r in list(self.runs.values())))
        for spare in spares:
            try:
                async with asyncio.timeout(5):
                    await spare.proc.wait()
            except TimeoutError:
                spare.proc.kill()
                await spare.proc.wait()
        await self.launcher.close()


def supervisor_settings(config: DaemonConfig) -> channel.Settings:
    """What every supervisor of this radiumd is held to (channel.Settings), from its configuration."""
    state = Path(config.server.state_dir)
    return channel.Settings(
        runs_dir=str(state / "runs"),
        store_dir=str(state / "cas"),
        store_limit=config.run.cache_bytes,
        id_base=config.run.id_base,
        id_slots=config.run.id_slots,
        appliance_paths=list(config.run.appliance_paths),
        tini=TINI,
        mps_control=None if config.run.mps == "off" else shutil.which("nvidia-cuda-mps-control"),
        direct_host=listen_host(config.server.listen) if config.run.direct else None,
        warm_dir=str(state / "warm"),
        clients_dir=config.server.clients_dir,
        warm_limit=config.run.warm_tree_bytes,
        complete_files=config.run.complete_files,
        complete_at_exit=config.run.complete_at_exit,
        poll_idle=config.run.poll_idle,
        tenant_groups=dict(config.run.tenant_groups),
        memory_bytes=config.run.memory_bytes,
        memory_max_bytes=config.run.memory_max_bytes,
        writable_bytes=config.run.writable_bytes,
        pids_max=config.run.pids_max,
        cpu_weight=config.run.cpu_weight,
        device_nodes=list(config.run.device_nodes),
    )


def listen_host(address: str) -> str:
    """The host part of a `tcp://HOST:PORT` listen address, as a socket binds it."""
    host = address_host(address)
    return "0.0.0.0" if host == "*" else host


def cannot_run(config: DaemonConfig) -> str | None:
    """Why this appliance cannot run processes (None: it can)."""
    missing = [tool for tool in ("unshare", "mount") if shutil.which(tool) is None]
    if not Path(TINI).exists():
        missing.append(f"{TINI} (Debian package tini)")
    if not Path("/dev/fuse").exists():
        missing.append("/dev/fuse")
    if missing:
        return f"missing {', '.join(missing)}"
    need = config.run.id_base + config.run.id_slots * 65536
    for file in ("/etc/subuid", "/etc/subgid"):
        if not _delegated(Path(file), config.run.id_base, need):
            return (
                f"{file} must give root the ids {config.run.id_base}-{need - 1} "
                f"(a line 'root:{config.run.id_base}:{need - config.run.id_base}')"
            )
    return None


def _delegated(path: Path, start: int, end: int) -> bool:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in ("root", "0"):
            try:
                first, count = int(parts[1]), int(parts[2])
            except ValueError:
                continue
            if first <= start and first + count >= end:
                return True
    return False
