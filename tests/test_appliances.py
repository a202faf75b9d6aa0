"""One client, two appliances: listings fan out, a request goes where it fits."""

from __future__ import annotations

import subprocess

import pytest
from support import BIN, Appliance, Client

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def pair(tmp_path):
    apps = [Appliance(tmp_path / name, name=name).start() for name in ("app1", "app2")]
    yield apps
    for app in apps:
        app.stop()


def enrol_on_both(apps, name, tmp_path) -> Client:
    bundle = apps[0].enroll(name)
    out = subprocess.run(
        [
            str(BIN / "radium-admin"),
            "enroll",
            name,
            "--appliance",
            str(apps[1].config),
            "--address",
            apps[1].endpoint,
            "--from-bundle",
            str(bundle),
            "-o",
            str(bundle),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return Client(bundle, tmp_path / f"{name}-state")


def test_a_client_sees_and_uses_every_appliance(pair, tmp_path):
    a = enrol_on_both(pair, "vm1", tmp_path)
    b = enrol_on_both(pair, "vm2", tmp_path)
    try:
        listing = a.json("list-gpus")
        assert sorted({d["appliance"] for d in listing["devices"]}) == ["app1", "app2"]
        assert len(listing["devices"]) == 4

        first = a.json("request-gpus", "-n", "2")
        second = b.json("request-gpus", "-n", "2")  # app1 is full: it lands on app2
        assert {first["appliance"], second["appliance"]} == {"app1", "app2"}
        b.json("release-gpus")
        pinned = b.json("request-gpus", "-n", "1", "--server", second["appliance"])
        assert pinned["appliance"] == second["appliance"]
        b.json("release-gpus")
        by_filter = b.json("request-gpus", "--filter", f"server.name={second['appliance']}")
        assert by_filter["appliance"] == second["appliance"]
    finally:
        a.run("release-gpus")
        b.run("release-gpus")


def test_a_dead_appliance_does_not_hide_the_others(pair, tmp_path):
    a = enrol_on_both(pair, "vm1", tmp_path)
    pair[1].stop("KILL")
    out = a.run("list-gpus", "--json")
    assert out.returncode == 69  # partial answer: says which appliance failed
    import json

    data = json.loads(out.stdout)
    assert {d["appliance"] for d in data["devices"]} == {"app1"}
    assert data["errors"][0]["appliance"] == "app2"
    try:
        granted = a.json("request-gpus", "-n", "1")
        assert granted["appliance"] == "app1"
    finally:
        a.run("release-gpus")
