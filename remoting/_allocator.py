"""Leases on an appliance's devices, and the first-come-first-served queue.

Pure bookkeeping: no sockets, no clocks of its own (callers pass `now`), so it
is tested directly.  The model: each device has memory; a lease takes a share
of it on each of `count` devices.  A whole-device lease takes all of it; a
partial lease (`fraction` or `memory_mib`) takes that share, and partial
leases share a device while their sum fits.  Placement packs partial leases
onto devices already in use, keeping whole devices free for whole requests.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections import deque
from dataclasses import dataclass, field

from ._errors import LeaseNotFound, NotAvailable, Unsatisfiable, UsageError
from ._filters import describe, matches_all
from .schema import (
    AllocationRequest,
    Device,
    DeviceStatus,
    Lease,
    LeaseHolding,
    LeasePart,
    ServerInfo,
)

MIB = 1 << 20


def validate_request(req: AllocationRequest) -> None:
    if req.count < 1:
        raise UsageError(f"-n must be at least 1, got {req.count}")
    if req.fraction is not None and req.memory_mib is not None:
        raise UsageError("give either -p (a fraction of each device) or -m (MiB), not both")
    if req.fraction is not None and not (0 < req.fraction <= 1):
        raise UsageError(f"-p must be a fraction with 0 < F <= 1, got {req.fraction}")
    if req.memory_mib is not None and req.memory_mib <= 0:
        raise UsageError(f"-m must be a positive number of MiB, got {req.memory_mib}")


def describe_request(req: AllocationRequest) -> str:
    each = ""
    if req.fraction is not None:
        each = f" at {req.fraction:g} of each"
    elif req.memory_mib is not None:
        each = f" with {req.memory_mib} MiB each"
    where = f" matching {describe(req.filters)}" if req.filters else ""
    return f"{req.count} device{'s' if req.count != 1 else ''}{each}{where}"


@dataclass
class Waiter:
    """A request waiting in the queue."""

    id: int
    session: str
    client: str
    request: AllocationRequest
    deadline: float


@dataclass
class Allocator:
    server: ServerInfo
    devices: dict[str, Device] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    queue: deque[Waiter] = field(default_factory=deque)
    _allocated: dict[str, int] = field(default_factory=dict)
    _by_session: dict[str, list[str]] = field(default_factory=dict)  # session -> lease ids
    _waiter_ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        for d in self.devices.values():
            self._allocated.setdefault(d.id, 0)

    # --- devices ------------------------------------------------------------

    def set_devices(self, devices: list[Device]) -> None:
        for d in devices:
            self.devices[d.id] = d
            self._allocated.setdefault(d.id, 0)

    def allocated(self, device_id: str) -> int:
        return self._allocated.get(device_id, 0)

    def status(self) -> list[DeviceStatus]:
        holdings: dict[str, list[LeaseHolding]] = {d: [] for d in self.devices}
        for lease in self.leases.values():
            for p in lease.parts:
                holdings[p.device_id].append(
                    LeaseHolding(
                        lease_id=lease.id,
                        client=lease.client,
                        memory_bytes=p.memory_bytes,
                        fraction=p.fraction,
                    )
                )
        return [
            DeviceStatus(device=d, memory_allocated_bytes=self.allocated(d.id), leases=holdings[d.id])
            for d in self.devices.values()
        ]

    # --- placement ----------------------------------------------------------

    def _need(self, req: AllocationRequest, device: Device) -> int:
        if req.fraction is not None:
            # Rounded down, so that shares whose fractions sum to 1 fit on one device.
            return max(1, math.floor(req.fraction * device.memory_bytes))
        if req.memory_mib is not None:
            return req.memory_mib * MIB
        return device.memory_bytes

    def _candidates(self, req: AllocationRequest) -> list[Device]:
        """Devices that could ever hold one share of this request."""
        return [
            d
            for d in self.devices.values()
            if d.health != "failed"
            and matches_all(req.filters, d, self.server)
            and self._need(req, d) <= d.memory_bytes
        ]

    def check_feasible(self, req: AllocationRequest) -> None:
        """Raise `Unsatisfiable` if the request could never be met here."""
        validate_request(req)
        candidates = self._candidates(req)
        if len(candidates) >= req.count:
            return
        matching = [d for d in self.devices.values() if matches_all(req.filters, d, self.server)]
        failed = [d.id for d in matching if d.health == "failed"]
        reason = f"{self.server.name} has {len(self.devices)} device(s), {len(matching)} matching the filters"
        if failed:
            reason += f", of which {len(failed)} failed health checks ({', '.join(failed)})"
        if req.memory_mib is not None and matching:
            biggest = max(d.memory_bytes for d in matching) // MIB
            reason += f"; the largest has {biggest} MiB"
        raise Unsatisfiable(
            f"{describe_request(req)} can never be met: {reason}",
            server=self.server.name,
        )

    def _place(self, req: AllocationRequest) -> list[LeasePart] | None:
        fits: list[tuple[int, int, Device, int]] = []
        for order, d in enumerate(self._candidates(req)):
            need = self._need(req, d)
            free = d.memory_bytes - self.allocated(d.id)
            if need <= free:
                # Best fit: the least memory left over first, ties by inventory order.
                fits.append((free - need, order, d, need))
        if len(fits) < req.count:
            return None
        fits.sort(key=lambda t: (t[0], t[1]))
        return [
            LeasePart(device_id=d.id, memory_bytes=need, fraction=need / d.memory_bytes)
            for _, _, d, need in fits[: req.count]
        ]

    def _grant(self, parts: list[LeasePart], client: str, now: float) -> Lease:
        lease = Lease(
            id="L-" + secrets.token_hex(6),
            client=client,
            server=self.server.name,
            parts=parts,
            granted_at=now,
        )
        for p in parts:
            self._allocated[p.device_id] += p.memory_bytes
        self.leases[lease.id] = lease
        return lease

    def free_summary(self) -> str:
        parts = []
        for d in self.devices.values():
            if d.health == "failed":
                parts.append(f"{d.id}: failed health check")
                continue
            free = (d.memory_bytes - self.allocated(d.id)) // MIB
            parts.append(f"{d.id}: {free} of {d.memory_bytes // MIB} MiB free")
        return "; ".join(parts) or "no devices"

    # --- the public operations ----------------------------------------------

    def try_acquire(self, session: str, client: str, req: AllocationRequest, now: float) -> Lease:
        """Grant at once, or raise `NotAvailable` (or `Unsatisfiable`)."""
        self.check_feasible(req)
        if self.queue:
            raise NotAvailable(
                f"{describe_request(req)} is not free now: {len(self.queue)} request(s) "
                f"are waiting ahead. Free: {self.free_summary()}",
                queue_length=len(self.queue),
            )
        parts = self._place(req)
        if parts is None:
            raise NotAvailable(f"{describe_request(req)} is not free now. Free: {self.free_summary()}")
        lease = self._grant(parts, client, now)
        self._sessions_leases(session).append(lease.id)
        return lease

    def enqueue(self, session: str, client: str, req: AllocationRequest, deadline: float) -> Waiter:
        self.check_feasible(req)
        waiter = Waiter(next(self._waiter_ids), session, client, req, deadline)
        self.queue.append(waiter)
        return waiter

    def pump(self, now: float) -> list[tuple[Waiter, Lease]]:
        """Grant waiting requests in order; the head blocks those behind it."""
        granted = []
        while self.queue:
            head = self.queue[0]
            parts = self._place(head.request)
            if parts is None:
                break
            self.queue.popleft()
            lease = self._grant(parts, head.client, now)
            self._sessions_leases(head.session).append(lease.id)
            granted.append((head, lease))
        return granted

    def drop_infeasible(self) -> list[tuple[Waiter, Unsatisfiable]]:
        """Waiters that can never be met any more (a device failed): out of the queue."""
        dropped = []
        for waiter in list(self.queue):
            try:
                self.check_feasible(waiter.request)
            except Unsatisfiable as exc:
                self.queue.remove(waiter)
                dropped.append((waiter, exc))
        return dropped

    def expire_waiters(self, now: float) -> list[Waiter]:
        expired = [w for w in self.queue if w.deadline <= now]
        for w in expired:
            self.queue.remove(w)
        return expired

    def cancel_waiter(self, waiter: Waiter) -> None:
        try:
            self.queue.remove(waiter)
        except ValueError:
            pass

    def release(self, lease_id: str, client: str | None = None) -> Lease:
        lease = self.leases.get(lease_id)
        if lease is None or (client is not None and lease.client != client):
            raise LeaseNotFound(f"no lease {lease_id} held by {client or 'anyone'} on {self.server.name}")
        del self.leases[lease_id]
        for p in lease.parts:
            self._allocated[p.device_id] -= p.memory_bytes
        for ids in self._by_session.values():
            if lease_id in ids:
                ids.remove(lease_id)
        return lease

    def release_session(self, session: str) -> tuple[list[Lease], list[Waiter]]:
        """Everything a session held or waited for, dropped."""
        released = [self.release(lid) for lid in list(self._by_session.pop(session, []))]
        dropped = [w for w in self.queue if w.session == session]
        for w in dropped:
            self.queue.remove(w)
        return released, dropped

    def session_leases(self, session: str) -> list[str]:
        return list(self._by_session.get(session, []))

    def _sessions_leases(self, session: str) -> list[str]:
        return self._by_session.setdefault(session, [])
