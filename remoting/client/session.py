"""A client session on one appliance: the heartbeat that keeps leases alive.

While a session is open it heartbeats every `heartbeat_interval`; if the
appliance stops answering for `dead_after` seconds, every request in flight
fails with a `TransportError` naming the appliance (so a client waiting in the
queue of a dead appliance learns it within seconds, not at its timeout).
"""

from __future__ import annotations

import asyncio
import socket

from .. import schema as s
from .._errors import RadiumError, SessionExpired
from .._version import VERSION
from .connection import Connection

DEAD_AFTER = 5.0


class Session:
    def __init__(self, conn: Connection, dead_after: float = DEAD_AFTER) -> None:
        self.conn = conn
        self.dead_after = dead_after
        self.welcome: s.Welcome | None = None
        self._heartbeat: asyncio.Task | None = None
        self.leases: dict[str, s.Lease] = {}
        self.error: RadiumError | None = None
        self.ended = asyncio.Event()
        self.lost: dict[str, str] = {}  # lease id -> why the appliance took it away (LeaseLost)
        self._closing = False

    @property
    def id(self) -> str:
        assert self.welcome is not None
        return self.welcome.session

    async def open(self) -> Session:
        reply = await self.conn.request(
            s.Hello(protocol=s.PROTOCOL_VERSION, client_version=VERSION, hostname=socket.gethostname())
        )
        assert isinstance(reply, s.Welcome)
        self.welcome = reply
        self.conn.on_notice(self._on_notice)
        self._heartbeat = asyncio.create_task(self._beat())
        return self

    def _on_notice(self, notice: s.Message, extra: list[bytes]) -> None:
        # An operator ended the session: its runs get their own RunExit saying so, and the
        # next heartbeat fails (SessionExpired), with this reason rather than "missed heartbeats".
        if isinstance(notice, s.LeaseLost):
            self.lost[notice.lease_id] = notice.reason
            self.leases.pop(notice.lease_id, None)

    async def _beat(self) -> None:
        assert self.welcome is not None
        interval = self.welcome.heartbeat_interval
        try:
            while not self._closing:  # also if a cancellation was lost on the way (close)
                await asyncio.sleep(interval)
                try:
                    await self.conn.request(s.Heartbeat(session=self.id), timeout=self.dead_after)
                except RadiumError as exc:
                    if isinstance(exc, SessionExpired) and self.lost:
                        leases = ", ".join(sorted(self.lost))
                        exc = SessionExpired(
                            f"{self.conn.label} ended this session (lease {leases}): "
                            f"{next(iter(self.lost.values()))}"
                        )
                    self.error = exc
                    self.conn.fail(exc)
                    self.ended.set()
                    return
        except asyncio.CancelledError:
            pass

    async def acquire(self, request: s.AllocationRequest, timeout: float = 0.0) -> s.Lease:
        # The session's heartbeat, not a timer here, decides when the appliance is gone.
        reply = await self.conn.request(
            s.Acquire(session=self.id, request=request, timeout=timeout), timeout=None
        )
        assert isinstance(reply, s.Granted)
        self.leases[reply.lease.id] = reply.lease
        return reply.lease

    async def release(self, lease_id: str) -> None:
        if lease_id in self.lost:
            return  # the appliance took it back already (and the session with it)
        await self.conn.request(s.Release(session=self.id, lease_id=lease_id))
        self.leases.pop(lease_id, None)

    async def close(self) -> None:
        """End the session; the appliance releases whatever it still holds."""
        self._closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        if self.welcome is not None and self.error is None and not self.lost:
            try:
                await self.conn.request(s.Bye(session=self.id), timeout=2.0)
            except RadiumError:
                pass  # it will expire on its own
        self.leases.clear()
        self.ended.set()
