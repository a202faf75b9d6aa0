"""Leases over the two-host topology: radiumd on the appliance host, `radium` on the client host."""

from __future__ import annotations

import os
import signal
import time

import pytest
from support import wait_until

pytestmark = pytest.mark.timeout(120)


def leases_on(client) -> int:
    data = client.json("smi")
    return sum(len(d["leases"]) for a in data["appliances"] for d in a["devices"])


def test_list_gpus_shows_the_appliances_devices(remote):
    client = remote.client()
    data = client.json("list-gpus")
    assert data["errors"] == []
    assert len(data["devices"]) == 2
    assert {d["appliance"] for d in data["devices"]} == {"app1"}
    assert all(d["health"] == "ok" and d["backend"] == "opencl" for d in data["devices"])
    assert all(d["memory_bytes"] > 0 and d["free"] for d in data["devices"])


def test_request_and_release_gpus(remote):
    client = remote.client()
    granted = client.json("request-gpus", "-n", "2", "-p", "0.5")
    assert len(granted["lease"]["parts"]) == 2
    assert all(p["fraction"] == pytest.approx(0.5, abs=1e-6) for p in granted["lease"]["parts"])
    assert leases_on(client) == 2  # one lease, shown against each of its two devices

    released = client.json("release-gpus")
    assert released["released"]["lease"]["id"] == granted["lease"]["id"]
    assert leases_on(client) == 0
    assert client.json("release-gpus")["released"] is None


def test_partial_leases_share_a_device_while_they_fit(remote):
    client = remote.client()
    other = remote.client("vm2")
    a = client.json("request-gpus", "-n", "1", "-p", "0.5", "--filter", "device.id=" + first_device(client))
    b = other.json("request-gpus", "-n", "1", "-p", "0.5", "--filter", "device.id=" + first_device(client))
    assert a["lease"]["parts"][0]["device_id"] == b["lease"]["parts"][0]["device_id"]
    third = remote.client("vm3")
    out = third.run("request-gpus", "-p", "0.1", "--filter", "device.id=" + first_device(client))
    assert out.returncode == 3
    assert "not free now" in out.stderr and "MiB free" in out.stderr
    client.json("release-gpus")
    other.json("release-gpus")


def first_device(client) -> str:
    return sorted(d["id"] for d in client.json("list-gpus")["devices"])[0]


def test_a_request_that_can_never_be_met_fails_at_once(remote):
    client = remote.client()
    started = time.monotonic()
    out = client.run("request-gpus", "-n", "3", "--timeout", "60")
    assert out.returncode == 3
    assert "can never be met" in out.stderr and "2 device(s)" in out.stderr
    assert time.monotonic() - started < 10
    out = client.run("request-gpus", "-m", "99999999")
    assert out.returncode == 3 and "can never be met" in out.stderr


def test_waiting_requests_are_served_first_come_first_served(remote):
    app, client = remote.appliance, remote.client()
    holder = client.json("request-gpus", "-n", "2")  # both devices, whole
    waiting = []
    for i in range(2):
        c = remote.client(f"w{i}")
        proc = c.popen("request-gpus", "-n", "2", "--timeout", "60", "--json")
        app.wait_for_log("request queued", where=lambda e, n=f"w{i}": e.get("client") == n)
        waiting.append((c, proc))
    client.json("release-gpus")
    first, second = waiting
    out, err = first[1].communicate(timeout=30)
    assert first[1].returncode == 0, err
    assert second[1].poll() is None  # still queued behind the first
    first[0].json("release-gpus")
    out, err = second[1].communicate(timeout=30)
    assert second[1].returncode == 0, err
    second[0].json("release-gpus")
    assert holder["lease"]["id"]


def test_a_request_times_out_with_what_is_free(remote):
    client = remote.client()
    client.json("request-gpus", "-n", "2")
    other = remote.client("vm2")
    started = time.monotonic()
    out = other.run("request-gpus", "-n", "1", "--timeout", "1.5")
    assert out.returncode == 3
    assert "timed out" in out.stderr and "0 of" in out.stderr
    assert 1.4 < time.monotonic() - started < 10
    out = other.run("request-gpus", "-n", "1")  # timeout 0: at once
    assert out.returncode == 3 and "not free now" in out.stderr
    client.json("release-gpus")


def test_a_killed_holder_loses_its_leases_within_ten_seconds(remote):
    app, client = remote.appliance, remote.client()
    granted = client.json("request-gpus", "-n", "1")
    os.kill(granted["pid"], signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: leases_on(client) == 0, 10, "lease release after SIGKILL")
    assert time.monotonic() - killed < 10
    entry = app.wait_for_log("lease released", where=lambda e: e.get("lease") == granted["lease"]["id"])
    assert "no heartbeat" in entry["reason"]


def test_appliance_stopped_while_a_client_waits(remote):
    app, client = remote.appliance, remote.client()
    client.json("request-gpus", "-n", "2")
    other = remote.client("vm2")
    waiting = other.popen("request-gpus", "-n", "1", "--timeout", "120")
    app.wait_for_log("request queued", where=lambda e: e.get("client") == "vm2")
    app.stop("KILL")
    killed = time.monotonic()
    out, err = waiting.communicate(timeout=15)
    assert time.monotonic() - killed < 10
    assert waiting.returncode == 69
    assert "app1" in err and "stopped answering" in err


def test_appliance_shutdown_tells_waiting_clients(remote):
    app, client = remote.appliance, remote.client()
    client.json("request-gpus", "-n", "2")
    other = remote.client("vm2")
    waiting = other.popen("request-gpus", "-n", "1", "--timeout", "120")
    app.wait_for_log("request queued", where=lambda e: e.get("client") == "vm2")
    assert app.stop("TERM") == 0
    out, err = waiting.communicate(timeout=15)
    assert waiting.returncode == 69
    assert "shutting down" in err
    assert app.wait_for_log("radiumd stopped")
