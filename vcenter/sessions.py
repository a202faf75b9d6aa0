"""Clients' sessions on the appliances: who holds what and runs what, and ending one.

An appliance's radiumd knows every open session (a client's connection with its
heartbeat), the leases it holds and the processes it carried there; it tells the
operator key (`ListSessions`) and ends a session when asked (`EndSession`): the
session's runs are killed, their clients told why (exit 137), its leases released
and granted to whoever waits.  The appliances are found in vCenter and dialled at
their recorded address with their recorded server key, as `appliances.probe` does.

    for found in sessions(vc):                       # every appliance, asked at once
        for s in found.sessions:
            print(found.appliance, s.id, s.client, [r.argv for r in s.runs])
    end_session(vc, "gpu1", "3f9a…", reason="maintenance")
"""

from __future__ import annotations

import asyncio
import shlex

import msgspec

from radium.remoting import ClientConfig, RadiumError, RunInfo, SessionInfo, UsageError

from .appliances import appliances, default_admin, entry_of, find, probe_many
from .connection import Session

__all__ = ["ApplianceSessions", "SessionEnd", "age", "command_of", "end_session", "sessions"]


class ApplianceSessions(msgspec.Struct, kw_only=True):
    """The open sessions of one appliance, or why they could not be had."""

    appliance: str  #: the VM's name
    sessions: list[SessionInfo] = msgspec.field(default_factory=list)
    error: str | None = None


class SessionEnd(msgspec.Struct, kw_only=True):
    """A session an operator ended: what it held and ran, now gone."""

    appliance: str
    session: str
    client: str
    leases: list[str]  #: released
    runs: list[RunInfo]  #: killed

    def summary(self) -> str:
        """What every face says when it is done."""
        runs = f"{len(self.runs)} run{'' if len(self.runs) == 1 else 's'} killed"
        leases = f"{len(self.leases)} lease{'' if len(self.leases) == 1 else 's'} released"
        return f"ended session {self.session} of {self.client} on {self.appliance}: {runs}, {leases}"


def command_of(run: RunInfo, width: int = 60) -> str:
    """A run's command as a shell would show it, cut to `width` characters."""
    text = shlex.join(run.argv)
    return text if len(text) <= width else text[: width - 1] + "…"


def age(seconds: float) -> str:
    """A duration as people read it: 45s, 12m, 3h05m, 2d4h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def sessions(
    session: Session, name: str | None = None, admin: ClientConfig | None = None, timeout: float = 5.0
) -> list[ApplianceSessions]:
    """The open sessions of appliance `name`, or of every appliance (asked all at once)."""
    found = [find(session, name)] if name else appliances(session)
    probes = probe_many(found, default_admin(admin), timeout, usage=False)
    return [
        ApplianceSessions(
            appliance=a.vm,
            sessions=p.sessions or [],
            error=None if p.sessions is not None else (p.health.error or p.sessions_error),
        )
        for a, p in zip(found, probes, strict=True)
    ]


def end_session(
    session: Session,
    name: str,
    session_id: str,
    admin: ClientConfig | None = None,
    reason: str = "",
    timeout: float = 5.0,
) -> SessionEnd:
    """End the client session `session_id` on appliance `name` (an id prefix of 6 or more characters
    will do when it names one session)."""
    from radium.remoting import end_session as end
    from radium.remoting import list_sessions

    admin = default_admin(admin)
    a = find(session, name)
    entry = entry_of(a, admin)
    assert admin is not None
    config = ClientConfig(client=admin.client, appliances=[entry], source=admin.source)
    [listed] = asyncio.run(list_sessions(config, timeout=timeout))
    if listed.error is not None:
        raise listed.error
    assert listed.value is not None
    target = _pick(listed.value.sessions, session_id, a.vm)
    try:
        asyncio.run(end(admin, entry, target.id, reason))
    except RadiumError as exc:
        exc.message = f"{a.vm}: {exc.message}"
        raise
    return SessionEnd(
        appliance=a.vm,
        session=target.id,
        client=target.client,
        leases=[lease.id for lease in target.leases],
        runs=target.runs,
    )


def _pick(open_: list[SessionInfo], wanted: str, vm: str) -> SessionInfo:
    exact = [x for x in open_ if x.id == wanted]
    if exact:
        return exact[0]
    close = [x for x in open_ if len(wanted) >= 6 and x.id.startswith(wanted)]
    if len(close) == 1:
        return close[0]
    listed = ", ".join(f"{x.id} ({x.client})" for x in open_) or "none"
    if len(close) > 1:
        raise UsageError(
            f"{wanted!r} names {len(close)} sessions on {vm}; give more of the id. Open: {listed}"
        )
    raise UsageError(f"no session {wanted!r} is open on {vm}. Open: {listed}")
