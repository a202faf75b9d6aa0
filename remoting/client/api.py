"""What a client does with its appliances: ask all of them, take the first good offer.

These are the operations behind the `radium` commands (and the TUI): each one
talks to every configured appliance concurrently, and reports per appliance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .. import schema as s
from .._config import ApplianceEntry, ClientConfig
from .._errors import (
    AllocationError,
    ConfigError,
    NotAvailable,
    RadiumError,
    TransportError,
    Unsatisfiable,
)
from .connection import Connection
from .session import Session

T = TypeVar("T")


@dataclass
class PerAppliance(Generic[T]):
    appliance: ApplianceEntry
    value: T | None = None
    error: RadiumError | None = None


def select(config: ClientConfig, server: str | None = None) -> list[ApplianceEntry]:
    if not config.appliances:
        raise ConfigError(
            f"{config.source}: no appliances configured; add one with `radium configure --bundle FILE`"
        )
    if server is None:
        return list(config.appliances)
    return [config.appliance(server)]


async def _each(
    config: ClientConfig,
    appliances: list[ApplianceEntry],
    call: Callable[[Connection], Awaitable[T]],
) -> list[PerAppliance[T]]:
    async def one(entry: ApplianceEntry) -> PerAppliance[T]:
        conn = Connection(entry, config.keys)
        try:
            await conn.open()
            return PerAppliance(entry, value=await call(conn))
        except RadiumError as exc:
            return PerAppliance(entry, error=exc)
        finally:
            await conn.close()

    return list(await asyncio.gather(*(one(a) for a in appliances)))


async def list_devices(
    config: ClientConfig, usage: bool = False, server: str | None = None, timeout: float = 5.0
) -> list[PerAppliance[s.DeviceList]]:
    async def call(conn: Connection) -> s.DeviceList:
        reply = await conn.request(s.ListDevices(usage=usage), timeout=timeout)
        assert isinstance(reply, s.DeviceList)
        return reply

    return await _each(config, select(config, server), call)


async def check_health(
    config: ClientConfig, server: str | None = None, timeout: float = 5.0
) -> list[PerAppliance[s.HealthReport]]:
    async def call(conn: Connection) -> s.HealthReport:
        reply = await conn.request(s.CheckHealth(), timeout=timeout)
        assert isinstance(reply, s.HealthReport)
        return reply

    return await _each(config, select(config, server), call)


async def list_sessions(
    config: ClientConfig, server: str | None = None, timeout: float = 5.0
) -> list[PerAppliance[s.SessionList]]:
    """Every open session on each appliance, with its leases and runs (needs an operator key)."""

    async def call(conn: Connection) -> s.SessionList:
        reply = await conn.request(s.ListSessions(), timeout=timeout)
        assert isinstance(reply, s.SessionList)
        return reply

    return await _each(config, select(config, server), call)


@dataclass
class Survey:
    """What an operator asks an appliance in one visit: its devices, and its sessions."""

    devices: s.DeviceList
    sessions: s.SessionList | None  #: None when radiumd would not say (`sessions_error`)
    sessions_error: str = ""


async def survey(
    config: ClientConfig, usage: bool = True, timeout: float = 5.0, sessions: bool = True
) -> list[PerAppliance[Survey]]:
    """`list_devices` and (`sessions`) `list_sessions` of every appliance, over one connection to each."""

    async def call(conn: Connection) -> Survey:
        devices = await conn.request(s.ListDevices(usage=usage), timeout=timeout)
        assert isinstance(devices, s.DeviceList)
        if not sessions:
            return Survey(devices, None, "not asked")
        try:
            listed = await conn.request(s.ListSessions(), timeout=timeout)
        except RadiumError as exc:  # a client key, or a radiumd older than ListSessions
            return Survey(devices, None, exc.message)
        assert isinstance(listed, s.SessionList)
        return Survey(devices, listed)

    return await _each(config, select(config), call)


async def end_session(admin: ClientConfig, appliance: ApplianceEntry, session: str, reason: str = "") -> None:
    """End a client's session on an appliance: its runs are killed, its leases released (operator key)."""
    async with Connection(appliance, admin.keys) as conn:
        await conn.request(s.EndSession(session=session, reason=reason))


@dataclass
class Reservation:
    """A granted lease with the session that keeps it alive."""

    lease: s.Lease
    session: Session
    appliance: ApplianceEntry

    async def release(self) -> None:
        try:
            await self.session.release(self.lease.id)
        finally:
            await self.close()

    async def close(self) -> None:
        await self.session.close()
        await self.session.conn.close()


async def reserve(
    config: ClientConfig,
    request: s.AllocationRequest,
    timeout: float = 0.0,
    server: str | None = None,
) -> Reservation:
    """Lease devices from the first appliance that can give them.

    Every appliance is asked to grant at once; if none can, the request waits
    in the queue of the first appliance that could ever meet it, up to
    `timeout` seconds.
    """
    appliances = select(config, server)
    opened: list[Session] = []
    errors: list[tuple[ApplianceEntry, RadiumError]] = []
    could_wait: list[Session] = []
    kept: Session | None = None
    try:
        for entry in appliances:
            conn = Connection(entry, config.keys)
            try:
                await conn.open()
                session = await Session(conn).open()
            except RadiumError as exc:
                await conn.close()
                errors.append((entry, exc))
                continue
            opened.append(session)
            try:
                lease = await session.acquire(request, timeout=0)
            except NotAvailable as exc:
                errors.append((entry, exc))
                could_wait.append(session)
                continue
            except RadiumError as exc:
                errors.append((entry, exc))
                continue
            kept = session
            return Reservation(lease, session, entry)
        if timeout > 0 and could_wait:
            session = could_wait[0]
            for other in opened:
                if other is not session:
                    await _close(other)
            opened = [session]
            lease = await session.acquire(request, timeout=timeout)
            kept = session
            return Reservation(lease, session, session.conn.appliance)
        raise _combine(errors)
    finally:
        for session in opened:
            if session is not kept:
                await _close(session)


async def _close(session: Session) -> None:
    await session.close()
    await session.conn.close()


def _combine(errors: list[tuple[ApplianceEntry, RadiumError]]) -> RadiumError:
    if len(errors) == 1:
        return errors[0][1]
    lines = "\n".join(f"  {e.name}: {err}" for e, err in errors)
    if all(isinstance(err, Unsatisfiable) for _, err in errors):
        return Unsatisfiable(f"no appliance can ever meet the request:\n{lines}")
    if all(isinstance(err, TransportError) for _, err in errors):
        return TransportError(f"no appliance could be reached:\n{lines}")
    if any(isinstance(err, AllocationError) for _, err in errors):
        return NotAvailable(f"no appliance can meet the request now:\n{lines}")
    return errors[0][1]


async def enroll(
    admin: ClientConfig, appliance: ApplianceEntry, name: str, public_key: str, role: str = "client"
) -> None:
    """Authorise a key on a running appliance (needs an operator key)."""
    async with Connection(appliance, admin.keys) as conn:
        await conn.request(s.Enroll(name=name, public_key=public_key, role=role))  # type: ignore[arg-type]


async def revoke(admin: ClientConfig, appliance: ApplianceEntry, name: str, role: str = "client") -> None:
    async with Connection(appliance, admin.keys) as conn:
        await conn.request(s.Revoke(name=name, role=role))  # type: ignore[arg-type]
