"""radiumd's network side: a CURVE-encrypted ZeroMQ ROUTER socket feeding `Service`.

A malformed frame is dropped and counted; a malformed message, a wrong
protocol version, or an oversized message gets a typed `Error` reply; a
handler's exception comes back as an `Error` too.  Nothing a peer sends can
stop the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio

from .. import schema as s
from .. import wire as wire
from .._allocator import Allocator
from .._config import DaemonConfig
from .._errors import AuthError, ProtocolError, RadiumError
from .._keys import load_or_create_server_keys
from .._version import VERSION
from ..devices import load_backends
from ..devices.base import Backend
from ..devices.pci import undriven
from ..run import limits
from . import privileges
from .auth import KeyStore, Peer, ZapHandler, run_zap
from .logs import event
from .metrics import Metrics
from .runs import Runs, cannot_run, supervisor_settings
from .service import Service
from .supervisors import Launcher

SWEEP_INTERVAL = 0.5


@dataclass
class Daemon:
    config: DaemonConfig
    log: logging.Logger
    user: privileges.User | None = None  #: drop to this user once the fork server runs

    async def run(self, ready: asyncio.Event | None = None) -> None:
        cfg = self.config
        state = Path(cfg.server.state_dir)
        key_dirs = [Path(cfg.server.clients_dir), Path(cfg.server.admins_dir)]
        dropping = self.user is not None and privileges.needs_drop(self.user)
        privileges.clear_runs(state / "runs")
        if os.geteuid() == 0:
            limits.settle_v2()  # before the fork server: its supervisors make runs' cgroups beside us
        if dropping:
            assert self.user is not None
            # systemd's CacheDirectory= (the unit points XDG_CACHE_HOME there): radiumd's own.
            cache = os.environ.get("CACHE_DIRECTORY")
            privileges.hand_over(self.user, state, key_dirs, Path(cache) if cache else None)
        server_keys = load_or_create_server_keys(state, cfg.server.name)
        self.keys = KeyStore(*key_dirs)
        for directory in (self.keys.clients.path, self.keys.admins.path):
            directory.mkdir(parents=True, exist_ok=True)
        # The fork server is started first: when radiumd drops to its user it must be root.
        self.launcher = Launcher(self.log, supervisor_settings(cfg))
        # A client key gone (revoked through radiumd, or its file removed by hand): what the
        # client left on this appliance goes too (run/revoked.py).
        self.keys.clients.on_removed = self.launcher.sweep
        runnable = cannot_run(cfg) is None
        if runnable:  # else whoever asks for a run is told why
            self.launcher.start()
        if dropping:
            assert self.user is not None
            if not await self.launcher.ready() and runnable:
                event(self.log, "error", "no run can start: the supervisors' fork server did not start")
            privileges.drop(self.user)
            event(self.log, "info", "radiumd runs as its own user", user=self.user.name, uid=self.user.uid)

        backends = await asyncio.to_thread(load_backends, list(cfg.devices.backends))
        self.backends: dict[str, Backend] = {b.name: b for b in backends}
        devices = []
        for backend in backends:
            for device in await asyncio.to_thread(backend.discover):
                if device.id not in cfg.devices.exclude:
                    devices.append(device)
        # GPUs on the bus that no backend can use (no driver): listed as failed, saying why.
        known = {d.pci_address for d in devices if d.pci_address}
        for device in await asyncio.to_thread(undriven):
            if device.pci_address not in known and device.id not in cfg.devices.exclude:
                devices.append(device)
                event(
                    self.log,
                    "warning",
                    "device without a driver",
                    device=device.id,
                    detail=device.health_detail,
                )
        info = s.ServerInfo(name=cfg.server.name, hostname=socket.gethostname(), version=VERSION)
        self.allocator = Allocator(server=info)
        self.allocator.set_devices(devices)
        self.metrics = Metrics(lambda: self.allocator)

        self.ctx = zmq.asyncio.Context()
        self.zap = ZapHandler(self.ctx, self.keys, self.log, on_refused=self.metrics.refused.inc)
        self.socket = self.ctx.socket(zmq.ROUTER)
        self.socket.curve_server = True
        self.socket.curve_secretkey = server_keys.secret.encode()  # type: ignore[union-attr]
        self.socket.curve_publickey = server_keys.public.encode()
        # A message body over max_message_bytes gets a typed error from us; bulk
        # frames (file content for runs) may be larger; anything beyond this is cut
        # by libzmq before it is buffered.
        self.socket.setsockopt(zmq.MAXMSGSIZE, max(4 * cfg.server.max_message_bytes, 80 << 20))
        self.socket.linger = 1000
        self.socket.sndhwm = 10000  # run output is bounded by credits well below this
        self.socket.bind(cfg.server.listen)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

        self.service = Service(
            server=info,
            allocator=self.allocator,
            keys=self.keys,
            log=self.log,
            heartbeat_interval=cfg.server.heartbeat_interval,
            lease_timeout=cfg.server.lease_timeout,
            backends=self.backends,
            notify=self._notify,
            on_expired=self.metrics.sessions_expired.inc,
        )
        self.runs = Runs(cfg, self.service, self.backends, self._send, self.log, self.launcher)
        self.service.on_session_end = self.runs.end_session
        self.service.runs_of = self.runs.of_session
        self.service.handlers[s.RunStart] = self.runs.start
        self.metrics_address = None
        if cfg.metrics.enabled:
            self.metrics_address = self.metrics.serve(cfg.metrics.listen)

        # Check health before serving, so that no failed device is ever handed out.
        await self._check_health_once()

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self._tasks: set[asyncio.Task] = set()
        background = [
            asyncio.create_task(run_zap(self.zap)),
            asyncio.create_task(self._receive()),
            asyncio.create_task(self._sweep()),
            asyncio.create_task(self._health_loop()),
        ]
        event(
            self.log,
            "info",
            "radiumd serving",
            name=info.name,
            endpoint=self.endpoint,
            server_key=server_keys.public,
            devices=[d.id for d in devices],
            metrics=self.metrics_address and f"{self.metrics_address[0]}:{self.metrics_address[1]}",
        )
        await asyncio.to_thread(self.runs.index_store)
        self.launcher.sweep()
        self.runs.keep_spares()
        if ready is not None:
            ready.set()
        await stop.wait()

        event(
            self.log, "info", "radiumd stopping", leases=len(self.allocator.leases), runs=len(self.runs.runs)
        )
        await self.runs.shutdown()
        self.service.shutdown("radiumd stopped")
        await asyncio.sleep(0)  # let handler tasks send their Error replies
        for task in background + list(self._tasks):
            task.cancel()
        await asyncio.gather(*background, *self._tasks, return_exceptions=True)
        self.zap.close()
        self.socket.close(linger=1000)  # let the shutdown notices out
        self.ctx.term()
        event(self.log, "info", "radiumd stopped")

    # --- the socket loop --------------------------------------------------

    def _send(self, origin: bytes, frames: list[bytes]) -> None:
        self.metrics.bytes_sent.inc(sum(len(f) for f in frames))
        try:
            self.socket.send_multipart([origin, *frames], flags=zmq.NOBLOCK)
        except zmq.Again:  # the peer's queue is full: it is not reading; drop
            event(self.log, "warning", "reply dropped, peer not reading")
        except zmq.ZMQError as exc:
            event(self.log, "warning", "reply failed", error=str(exc))

    def _notify(self, origin: bytes, msg: s.Message) -> None:
        self._send(origin, wire.encode(msg, 0))

    async def _receive(self) -> None:
        while True:
            frames = await self.socket.recv_multipart(copy=False)
            self.metrics.bytes_received.inc(sum(len(f) for f in frames))
            try:
                self._dispatch(frames)
            except Exception:  # never let one message stop the loop
                self.log.exception("dispatch failed")

    def _dispatch(self, frames: list[zmq.Frame]) -> None:
        origin = frames[0].bytes
        if len(frames) < 3:
            self.metrics.malformed.inc()
            event(self.log, "warning", "malformed frame dropped", frames=len(frames))
            return
        try:
            header = wire.decode_header(frames[1].bytes)
        except ProtocolError as exc:
            self.metrics.malformed.inc()
            event(self.log, "warning", "malformed frame dropped", error=str(exc))
            return
        msg_id = header.id
        key = frames[1].get("User-Id")
        peer = self.keys.lookup(str(key)) if key else None
        if peer is None:
            self.metrics.refused.inc()
            event(self.log, "warning", "message from revoked key refused", key=key)
            self._reply_error(
                origin,
                msg_id,
                AuthError(
                    f"this client's key is no longer authorised on {self.service.server.name}: "
                    "ask your operator to enrol it again"
                ),
            )
            return
        if header.protocol != s.PROTOCOL_VERSION:
            self.metrics.malformed.inc()
            self._reply_error(
                origin,
                msg_id,
                ProtocolError(
                    f"client speaks protocol {header.protocol}, {self.service.server.name} speaks "
                    f"{s.PROTOCOL_VERSION}: upgrade the older side",
                    server_protocol=s.PROTOCOL_VERSION,
                ),
            )
            return
        try:
            request = wire.decode_body(frames[2].bytes, s.Request, self.config.server.max_message_bytes)
        except ProtocolError as exc:
            self.metrics.malformed.inc()
            event(self.log, "warning", "malformed message", client=peer.name, error=str(exc)[:200])
            self._reply_error(origin, msg_id, exc)
            return
        if isinstance(request, s.RunTraffic):  # relayed to the run, never answered
            # Views of zmq's own buffers: file content is not copied on its way through.
            self.runs.forward(peer, request, [f.buffer for f in frames[3:]])
            return
        task = asyncio.create_task(self._handle(peer, origin, msg_id, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, peer: Peer, origin: bytes, msg_id: int, request: s.Message) -> None:
        kind = type(request).__name__
        try:
            reply = await self.service.handle(peer, origin, request)
        except RadiumError as exc:
            self.metrics.requests.labels(kind, exc.code).inc()
            self._reply_error(origin, msg_id, exc)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.requests.labels(kind, "internal").inc()
            self.log.exception("handler failed", extra={"fields": {"kind": kind}})
            self._reply_error(origin, msg_id, RadiumError(f"internal error in radiumd: {exc}"))
            return
        self.metrics.requests.labels(kind, "ok").inc()
        self._send(origin, wire.encode(reply, msg_id))

    def _reply_error(self, origin: bytes, msg_id: int, exc: RadiumError) -> None:
        detail = {k: v for k, v in exc.detail.items() if isinstance(v, (str, int, float, bool))}
        self._send(origin, wire.encode(s.Error(code=exc.code, message=exc.message, detail=detail), msg_id))

    # --- timers --------------------------------------------------------------

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.service.expire()

    async def _check_health_once(self) -> None:
        for device in list(self.allocator.devices.values()):
            backend = self.backends.get(device.backend)
            if backend is None:  # a GPU without a driver: failed until radiumd restarts with one
                continue
            try:
                result = await asyncio.to_thread(backend.check_health, device)
                ok, detail = result.ok, result.detail
            except Exception as exc:
                ok, detail = False, f"health check raised: {exc}"
            self.service.set_health(device.id, ok, detail)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.devices.health_interval)
            await self._check_health_once()
