"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
from support import stop_run_agents

from radium.lab import netns as _netns


@pytest.fixture(autouse=True)
def _stop_run_agents(tmp_path_factory):
    """After each test, end the run agents its `radium run`s started (they would idle for 15 min)."""
    yield
    stop_run_agents(str(tmp_path_factory.getbasetemp()))


# --------------------------------------------------------------------------
# Two-host network topology (radium.lab.netns): a client and an appliance in
# separate network namespaces joined by a tbf-shaped veth pair.
# --------------------------------------------------------------------------


@pytest.fixture
def two_hosts():
    """Yield a fresh netns Topology (client, appliance); skip when namespaces can't be made."""
    ok, reason = _netns.can_create_namespaces()
    if not ok:
        pytest.skip(f"two-host topology unavailable: {reason}")
    _netns.cleanup_stale()
    topo = _netns.create_topology()
    try:
        yield topo
    finally:
        topo.close()


# --------------------------------------------------------------------------
# Appliances (radiumd processes) and clients (the radium CLI as a process).
# --------------------------------------------------------------------------
from support import WAIT_FOR_COMPLETION, Appliance, Client  # noqa: E402


@pytest.fixture
def appliance(tmp_path):
    """A radiumd on loopback with two PoCL devices and one enrolled client."""
    app = Appliance(tmp_path / "appliance").start()
    try:
        yield app
    finally:
        app.stop("KILL" if app.proc and app.proc.poll() is None else "TERM")


@pytest.fixture
def client(appliance, tmp_path):
    return Client(appliance.enroll("vm1"), tmp_path / "client-state")


class Remote:
    """radiumd on the appliance host; `client(name)` enrols a user on the client host."""

    def __init__(self, appliance: Appliance, hosts, base) -> None:
        self.appliance, self.hosts, self.base = appliance, hosts, base
        self.clients: dict[str, Client] = {}

    def client(self, name: str = "vm1") -> Client:
        if name not in self.clients:
            self.clients[name] = Client(
                self.appliance.enroll(name), self.base / f"{name}-state", host=self.hosts.client
            )
        return self.clients[name]

    def close(self) -> None:
        for c in self.clients.values():  # no reservation holder outlives its test
            c.run("release-gpus")
        self.appliance.stop()


def _remote(two_hosts, tmp_path, extra_config: str = ""):
    app = Appliance(
        tmp_path / "appliance",
        host=two_hosts.appliance,
        address=two_hosts.appliance.address,
        port=7450,
        extra_config=extra_config,
    ).start()
    r = Remote(app, two_hosts, tmp_path)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def remote(two_hosts, tmp_path):
    yield from _remote(two_hosts, tmp_path)


@pytest.fixture
def completing_remote(two_hosts, tmp_path):
    """A `remote` whose runs' ends wait until the files their process read in part are whole
    (WAIT_FOR_COMPLETION): for tests that count what a later run fetches."""
    yield from _remote(two_hosts, tmp_path, WAIT_FOR_COMPLETION)
