"""Operators see every client's session on an appliance (leases, carried processes) and end one."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest
from support import hidden, wait_until

from radium.remoting import (
    NotPermitted,
    UsageError,
    end_session,
    list_devices,
    list_sessions,
    load_client_config,
)

pytestmark = pytest.mark.timeout(120)

SLEEPER = "import time; print('ready', flush=True); time.sleep(300)"


@pytest.fixture
def operator(appliance):
    return load_client_config(appliance.enroll("ops", role="admin"))


def sessions_of(config) -> list:
    [answer] = asyncio.run(list_sessions(config))
    if answer.error is not None:
        raise answer.error
    return answer.value.sessions


def leases_on(config) -> int:
    [answer] = asyncio.run(list_devices(config))
    return sum(len(d.leases) for d in answer.value.devices)


def start_run(client, tmp_path) -> subprocess.Popen:
    setup = f"mkdir -p {tmp_path}/work"
    argv = hidden(client, setup, str(tmp_path / "work"), "run", "-p", "0.5", "--", "python3", "-c", SLEEPER)
    proc = subprocess.Popen(argv, env=client.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.poll() is not None else ""
    return proc


def test_an_operator_sees_a_run_and_ends_its_session(appliance, client, operator, tmp_path):
    started = time.time()
    proc = start_run(client, tmp_path)
    try:
        [session] = [x for x in sessions_of(operator) if x.client == "vm1"]
        assert session.client_host and session.client_version
        assert started - 5 <= session.opened_at <= time.time()
        [run] = session.runs
        assert run.argv == ["python3", "-c", SLEEPER]
        [lease] = session.leases
        assert run.lease_id == lease.id and lease.parts[0].fraction == pytest.approx(0.5, abs=1e-6)
        assert leases_on(operator) == 1

        entry = operator.appliances[0]
        asyncio.run(end_session(operator, entry, session.id, reason="maintenance"))
        status = proc.wait(30)
        stderr = proc.stderr.read() if proc.stderr else ""
        assert status == 137, stderr
        assert "ended by operator ops: maintenance" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
    # Its lease went back, the session is gone, and radiumd says who ended it.
    assert leases_on(operator) == 0
    assert [x for x in sessions_of(operator) if x.client == "vm1"] == []
    logged = appliance.wait_for_log("session ended by operator", where=lambda e: e.get("by") == "ops")
    assert logged["client"] == "vm1"
    assert appliance.wait_for_log("run ended", where=lambda e: e.get("client") == "vm1")


def test_a_held_reservation_ends_with_its_session(appliance, client, operator):
    granted = client.json("request-gpus", "-n", "1")
    holder = json.loads((client.state / "reservation.json").read_text())["pid"]
    [session] = [x for x in sessions_of(operator) if x.client == "vm1"]
    assert [lease.id for lease in session.leases] == [granted["lease"]["id"]]
    assert session.runs == []
    asyncio.run(end_session(operator, operator.appliances[0], session.id))
    assert leases_on(operator) == 0
    # The holder's next heartbeat fails: it exits by itself, its reservation file with it.
    wait_until(lambda: not Path(f"/proc/{holder}").exists(), 15, "the holder ending")
    assert not (client.state / "reservation.json").exists()


def test_only_operators_list_or_end_sessions(appliance, client, operator):
    config = load_client_config(client.config)
    [answer] = asyncio.run(list_sessions(config))
    assert isinstance(answer.error, NotPermitted) and "needs an operator key" in answer.error.message
    with pytest.raises(NotPermitted):
        asyncio.run(end_session(config, config.appliances[0], "0" * 24))
    with pytest.raises(UsageError, match="no session 'nope' is open"):
        asyncio.run(end_session(operator, operator.appliances[0], "nope"))


def test_a_request_cancelled_as_its_reply_arrives_is_cancelled(appliance):
    """Python 3.11's asyncio.wait_for returns the result when its task is cancelled in the turn
    of the loop its awaited future completes in (CPython gh-86296). A session's heartbeat
    cancelled by Session.close() just as a Heartbeat reply came beat on, and close(), and the
    `radium run` whose lease it ended, waited for ever (seen in 2 of ~8 full runs of the run
    benchmark: the run done, its agent idle). Here the cancellation is made to come exactly so,
    from the reply's own callback, ahead of the task's wake-up."""
    from radium.remoting import schema as s
    from radium.remoting.client.connection import Connection
    from radium.remoting.client.session import Session

    config = load_client_config(appliance.enroll("vm1"))

    async def main() -> None:
        conn = await Connection(config.appliances[0], config.keys).open()
        try:
            session = await Session(conn).open()
            replies = []
            sent = conn.send

            def send(msg):  # the cancellation comes with the reply, before its task resumes
                reply = sent(msg)
                reply.add_done_callback(lambda _: request.cancel())
                replies.append(reply)
                return reply

            conn.send = send
            request = asyncio.create_task(conn.request(s.Heartbeat(session=session.id)))
            with pytest.raises(asyncio.CancelledError):
                await request
            conn.send = sent
            assert replies[0].done() and not replies[0].cancelled()  # the reply came: not lost to it
            async with asyncio.timeout(10):
                await session.close()
        finally:
            await conn.close()

    asyncio.run(main())
