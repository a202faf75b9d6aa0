"""What radiumd does with each request: a handler table, testable without sockets.

`Service.handle(peer, origin, request)` returns the reply (or raises a
`RadiumError`, which the server turns into a typed `Error`).  Sessions tie
leases to a client's heartbeat: a session silent for `lease_timeout` is
dropped with everything it held or waited for.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .. import schema as s
from .._allocator import Allocator, Waiter, describe_request, validate_request
from .._errors import (
    ApplianceShutdown,
    LeaseNotFound,
    NotAvailable,
    NotPermitted,
    ProtocolError,
    RadiumError,
    SessionExpired,
    UsageError,
)
from .._keys import check_name, is_z85_key
from ..devices.base import Backend
from .auth import KeyStore, Peer
from .logs import event

Notify = Callable[[bytes, s.Message], None]


@dataclass
class Session:
    id: str
    client: str
    key: str
    origin: bytes  # the connection to send notices to
    last_seen: float
    host: str = ""  # as the client's Hello gave them
    version: str = ""
    opened_at: float = field(default_factory=time.time)


@dataclass
class Service:
    server: s.ServerInfo
    allocator: Allocator
    keys: KeyStore
    log: logging.Logger
    heartbeat_interval: float = 2.0
    lease_timeout: float = 6.0
    backends: dict[str, Backend] = field(default_factory=dict)
    notify: Notify = lambda origin, msg: None
    clock: Callable[[], float] = time.monotonic
    sessions: dict[str, Session] = field(default_factory=dict)
    _waiting: dict[int, asyncio.Future[s.Lease]] = field(default_factory=dict)
    on_expired: Callable[[], None] = lambda: None
    on_session_end: Callable[[str, str], None] = lambda session_id, reason: None
    runs_of: Callable[[str], list[s.RunInfo]] = lambda session_id: []

    def __post_init__(self) -> None:
        self.handlers: dict[type, Callable[[Peer, bytes, Any], Awaitable[s.Message]]] = {
            s.Hello: self.hello,
            s.Heartbeat: self.heartbeat,
            s.Bye: self.bye,
            s.ListDevices: self.list_devices,
            s.Acquire: self.acquire,
            s.Release: self.release,
            s.CheckHealth: self.check_health,
            s.Enroll: self.enroll,
            s.Revoke: self.revoke,
            s.ListSessions: self.list_sessions,
            s.EndSession: self.end_session,
        }

    async def handle(self, peer: Peer, origin: bytes, request: s.Message) -> s.Message:
        handler = self.handlers.get(type(request))
        if handler is None:
            raise ProtocolError(f"no handler for {type(request).__name__}")
        return await handler(peer, origin, request)

    # --- sessions -----------------------------------------------------------

    def session_of(self, peer: Peer, origin: bytes, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None or session.key != peer.key:
            raise SessionExpired(
                f"session {session_id} is not open on {self.server.name} "
                "(it expired after missed heartbeats, or the appliance restarted)"
            )
        session.last_seen = self.clock()
        session.origin = origin
        return session

    async def hello(self, peer: Peer, origin: bytes, msg: s.Hello) -> s.Welcome:
        if msg.protocol != s.PROTOCOL_VERSION:
            raise ProtocolError(
                f"client speaks protocol {msg.protocol}, {self.server.name} speaks "
                f"{s.PROTOCOL_VERSION}: upgrade the older side",
                server_protocol=s.PROTOCOL_VERSION,
            )
        session = Session(
            secrets.token_hex(12),
            peer.name,
            peer.key,
            origin,
            self.clock(),
            host=msg.hostname[:255],
            version=msg.client_version[:64],
        )
        self.sessions[session.id] = session
        event(
            self.log,
            "info",
            "session opened",
            client=peer.name,
            session=session.id,
            client_host=msg.hostname,
            client_version=msg.client_version,
        )
        return s.Welcome(
            server=self.server,
            session=session.id,
            client=peer.name,
            heartbeat_interval=self.heartbeat_interval,
            lease_timeout=self.lease_timeout,
        )

    async def heartbeat(self, peer: Peer, origin: bytes, msg: s.Heartbeat) -> s.Ok:
        self.session_of(peer, origin, msg.session)
        return s.Ok()

    async def bye(self, peer: Peer, origin: bytes, msg: s.Bye) -> s.Ok:
        session = self.session_of(peer, origin, msg.session)
        self._drop_session(session, "closed by client")
        return s.Ok()

    def _drop_session(self, session: Session, reason: str, tell: bool = False) -> None:
        """End `session`: its runs, its waiters, its leases; `tell`: send its client a `LeaseLost`
        for each lease (it is alive, and would otherwise learn it at its next heartbeat)."""
        self.sessions.pop(session.id, None)
        self.on_session_end(session.id, reason)
        released, dropped = self.allocator.release_session(session.id)
        for waiter in dropped:
            self._resolve(waiter, SessionExpired(f"session ended: {reason}"))
        for lease in released:
            event(self.log, "info", "lease released", lease=lease.id, client=lease.client, reason=reason)
            if tell:
                self.notify(session.origin, s.LeaseLost(lease_id=lease.id, reason=reason))
        event(
            self.log,
            "info",
            "session closed",
            session=session.id,
            client=session.client,
            reason=reason,
            leases_released=len(released),
        )
        self.pump()

    def expire(self) -> None:
        """Drop silent sessions and waiters whose time is up; grant what now fits."""
        now = self.clock()
        for session in list(self.sessions.values()):
            if now - session.last_seen > self.lease_timeout:
                self.on_expired()
                self._drop_session(session, f"no heartbeat for {self.lease_timeout:g}s")
        for waiter in self.allocator.expire_waiters(now):
            self._resolve(
                waiter,
                NotAvailable(
                    f"timed out waiting for {describe_request(waiter.request)}. "
                    f"Free: {self.allocator.free_summary()}"
                ),
            )
        self.pump()

    def pump(self) -> None:
        for waiter, error in self.allocator.drop_infeasible():
            self._resolve(waiter, error)
        for waiter, lease in self.allocator.pump(self.clock()):
            self._log_grant(lease, waited=True)
            future = self._waiting.pop(waiter.id, None)
            if future is not None and not future.done():
                future.set_result(lease)
            else:  # nobody waits for it any more
                self.allocator.release(lease.id)

    def _resolve(self, waiter: Waiter, error: RadiumError) -> None:
        future = self._waiting.pop(waiter.id, None)
        if future is not None and not future.done():
            future.set_exception(error)

    def shutdown(self, reason: str) -> None:
        """Tell every client, drop every session and waiter."""
        origins = {sess.origin for sess in self.sessions.values()}
        for origin in origins:
            self.notify(origin, s.Shutdown(server=self.server.name, reason=reason))
        for session in list(self.sessions.values()):
            self.sessions.pop(session.id, None)
            self.allocator.release_session(session.id)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ApplianceShutdown(f"{self.server.name} is shutting down: {reason}"))
        self._waiting.clear()

    # --- devices and leases -----------------------------------------------

    async def list_devices(self, peer: Peer, origin: bytes, msg: s.ListDevices) -> s.DeviceList:
        statuses = self.allocator.status()
        if msg.usage:
            await asyncio.to_thread(self._fill_usage, statuses)
        return s.DeviceList(server=self.server, devices=statuses, queue_length=len(self.allocator.queue))

    def _fill_usage(self, statuses: list[s.DeviceStatus]) -> None:
        for st in statuses:
            backend = self.backends.get(st.device.backend)
            if backend is None:
                continue
            try:
                usage = backend.usage(st.device)
            except Exception as exc:  # a driver hiccup must not fail the listing
                event(self.log, "warning", "usage query failed", device=st.device.id, error=str(exc))
                continue
            st.memory_used_bytes = usage.memory_used_bytes
            st.utilization_percent = usage.utilization_percent

    async def acquire(self, peer: Peer, origin: bytes, msg: s.Acquire) -> s.Granted:
        session = self.session_of(peer, origin, msg.session)
        validate_request(msg.request)
        if msg.timeout < 0:
            raise UsageError(f"--timeout must be 0 or more seconds, got {msg.timeout}")
        try:
            lease = self.allocator.try_acquire(session.id, peer.name, msg.request, self.clock())
        except NotAvailable:
            if msg.timeout == 0:
                raise
        else:
            self._log_grant(lease, waited=False)
            return s.Granted(lease=lease)
        waiter = self.allocator.enqueue(session.id, peer.name, msg.request, self.clock() + msg.timeout)
        future: asyncio.Future[s.Lease] = asyncio.get_running_loop().create_future()
        self._waiting[waiter.id] = future
        event(
            self.log,
            "info",
            "request queued",
            client=peer.name,
            request=describe_request(msg.request),
            position=len(self.allocator.queue),
        )
        self.pump()  # it may fit right away if it is alone in the queue
        try:
            lease = await future
        finally:
            self._waiting.pop(waiter.id, None)
            self.allocator.cancel_waiter(waiter)
        return s.Granted(lease=lease)

    def _log_grant(self, lease: s.Lease, waited: bool) -> None:
        event(
            self.log,
            "info",
            "lease granted",
            lease=lease.id,
            client=lease.client,
            devices=lease.device_ids,
            waited=waited,
        )

    async def release(self, peer: Peer, origin: bytes, msg: s.Release) -> s.Ok:
        self.session_of(peer, origin, msg.session)
        if msg.lease_id not in self.allocator.leases:
            raise LeaseNotFound(f"no lease {msg.lease_id} on {self.server.name}")
        self.allocator.release(msg.lease_id, peer.name)
        event(
            self.log,
            "info",
            "lease released",
            lease=msg.lease_id,
            client=peer.name,
            reason="released by client",
        )
        self.pump()
        return s.Ok()

    async def check_health(self, peer: Peer, origin: bytes, msg: s.CheckHealth) -> s.HealthReport:
        return s.HealthReport(
            server=self.server, devices=list(self.allocator.devices.values()), client=peer.name
        )

    def set_health(self, device_id: str, ok: bool, detail: str) -> None:
        device = self.allocator.devices.get(device_id)
        if device is None:
            return
        health = "ok" if ok else "failed"
        if device.health != health:
            event(
                self.log,
                "info" if ok else "error",
                "device health changed",
                device=device_id,
                health=health,
                detail=detail,
            )
        device.health = health  # type: ignore[assignment]
        device.health_detail = detail
        self.pump()

    # --- enrolment (operators only) ---------------------------------------

    def _require_admin(self, peer: Peer, what: str = "enrolment") -> None:
        if peer.role != "admin":
            raise NotPermitted(f"{peer.name} is a client key; {what} needs an operator key")

    async def enroll(self, peer: Peer, origin: bytes, msg: s.Enroll) -> s.Ok:
        self._require_admin(peer)
        check_name(msg.name, "client name")
        if not is_z85_key(msg.public_key):
            raise UsageError("public_key must be a 40-character Z85 CURVE key")
        self.keys.directory(msg.role).add(msg.name, msg.public_key)
        event(self.log, "info", "key enrolled", name=msg.name, role=msg.role, by=peer.name)
        return s.Ok()

    async def revoke(self, peer: Peer, origin: bytes, msg: s.Revoke) -> s.Ok:
        self._require_admin(peer)
        check_name(msg.name, "client name")
        if not self.keys.directory(msg.role).remove(msg.name):
            raise UsageError(f"no {msg.role} named {msg.name!r} is enrolled on {self.server.name}")
        self.revoked(msg.name)
        event(self.log, "info", "key revoked", name=msg.name, role=msg.role, by=peer.name)
        return s.Ok()

    # --- sessions (operators only) ----------------------------------------

    async def list_sessions(self, peer: Peer, origin: bytes, msg: s.ListSessions) -> s.SessionList:
        self._require_admin(peer, "listing sessions")
        now = self.clock()
        leases = self.allocator.leases
        sessions = [
            s.SessionInfo(
                id=sess.id,
                client=sess.client,
                client_host=sess.host,
                client_version=sess.version,
                opened_at=sess.opened_at,
                idle_s=round(max(0.0, now - sess.last_seen), 1),
                leases=[leases[i] for i in self.allocator.session_leases(sess.id) if i in leases],
                runs=self.runs_of(sess.id),
            )
            for sess in sorted(self.sessions.values(), key=lambda x: x.opened_at)
        ]
        return s.SessionList(server=self.server, sessions=sessions)

    async def end_session(self, peer: Peer, origin: bytes, msg: s.EndSession) -> s.Ok:
        self._require_admin(peer, "ending a session")
        session = self.sessions.get(msg.session)
        if session is None:
            raise UsageError(
                f"no session {msg.session!r} is open on {self.server.name} (it may have ended already)"
            )
        reason = f"ended by operator {peer.name}" + (f": {msg.reason[:200]}" if msg.reason else "")
        self._drop_session(session, reason, tell=True)
        event(
            self.log,
            "info",
            "session ended by operator",
            session=session.id,
            client=session.client,
            by=peer.name,
        )
        return s.Ok()

    def revoked(self, client: str) -> None:
        """A key was removed: its sessions end now, not at their next heartbeat."""
        for session in list(self.sessions.values()):
            if session.client == client and self.keys.lookup(session.key) is None:
                self._drop_session(session, "key revoked")
