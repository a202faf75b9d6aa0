"""The two-host topology: reachability, separation, link cut, cleanup, shaping."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import textwrap

import pytest

from radium.lab import netns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(30)]

_OK, _REASON = netns.can_create_namespaces()
if not _OK:
    pytest.skip(f"network namespaces unavailable: {_REASON}", allow_module_level=True)

# A one-connection-at-a-time TCP echo server; prints "LISTENING <port>" once bound.
ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 0))
    s.listen()
    print("LISTENING", s.getsockname()[1], flush=True)
    while True:
        c, _ = s.accept()
        with c:
            while data := c.recv(65536):
                c.sendall(data)
    """
)

# Connects, sends, prints what came back; exits 0 on an echo, 1 with the error otherwise.
CLIENT = textwrap.dedent(
    """
    import socket, sys
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as c:
            c.sendall(b"ping")
            print(c.recv(64).decode())
    except OSError as exc:
        print(type(exc).__name__, exc)
        sys.exit(1)
    """
)


def start_echo(host: netns.Host, bind: str) -> tuple[subprocess.Popen, int]:
    proc = host.popen([sys.executable, "-c", ECHO_SERVER, bind], stdout=subprocess.PIPE, text=True)
    # Bounded wait for the "LISTENING" line (a crashed server makes readline return "").
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=5):
            proc.kill()
            pytest.fail("echo server did not start within 5 s")
    line = proc.stdout.readline().split()
    assert line and line[0] == "LISTENING", f"echo server said {line!r}"
    return proc, int(line[1])


def connect_from(host: netns.Host, address: str, port: int) -> subprocess.CompletedProcess:
    return host.run(
        [sys.executable, "-c", CLIENT, address, str(port)],
        capture_output=True,
        text=True,
        timeout=10,
    )


def test_hosts_reach_each_other_over_tcp(two_hosts):
    topo = two_hosts
    assert topo.client.address != topo.appliance.address
    _, port = start_echo(topo.appliance, topo.appliance.address)
    result = connect_from(topo.client, topo.appliance.address, port)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ping"


def test_namespaces_are_separate(two_hosts):
    topo = two_hosts
    # A server on the appliance's loopback only.
    _, port = start_echo(topo.appliance, "127.0.0.1")
    inside = connect_from(topo.appliance, "127.0.0.1", port)
    assert inside.returncode == 0 and inside.stdout.strip() == "ping"
    # The same address from the client namespace is the client's own loopback: refused.
    outside = connect_from(topo.client, "127.0.0.1", port)
    assert outside.returncode == 1
    assert "ConnectionRefused" in outside.stdout


def test_link_down_cuts_and_link_up_restores(two_hosts):
    topo = two_hosts
    _, port = start_echo(topo.appliance, topo.appliance.address)
    assert connect_from(topo.client, topo.appliance.address, port).returncode == 0
    topo.link_down()
    cut = connect_from(topo.client, topo.appliance.address, port)
    assert cut.returncode == 1, cut.stdout
    topo.link_up()
    back = connect_from(topo.client, topo.appliance.address, port)
    assert back.returncode == 0, back.stdout
    assert back.stdout.strip() == "ping"


def test_tbf_on_both_ends(two_hosts):
    for host in (two_hosts.client, two_hosts.appliance):
        out = subprocess.run(
            ["tc", "-n", host.name, "qdisc", "show", "dev", host.interface],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        assert "tbf" in out and "rate 4750Mbit" in out, out
        mtu = subprocess.run(
            ["ip", "-n", host.name, "link", "show", "dev", host.interface],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        assert "mtu 1500" in mtu


# Takes one connection, reads it to its end, prints how many bytes came.
SINK = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket()
    s.bind((sys.argv[1], 0))
    s.listen()
    print("LISTENING", s.getsockname()[1], flush=True)
    c, _ = s.accept()
    n = 0
    while data := c.recv(1 << 20):
        n += len(data)
    print(n, flush=True)
    """
)


def _received(host: netns.Host) -> tuple[int, int]:
    """Bytes and packets the host's end of the veth pair has received (a packet as it came:
    a frame that crossed whole counts once)."""
    out = subprocess.run(
        ["ip", "-n", host.name, "-s", "-j", "link", "show", "dev", host.interface],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    rx = json.loads(out)[0]["stats64"]["rx"]
    return rx["bytes"], rx["packets"]


def test_the_shaped_link_passes_tcp_frames_whole(two_hosts):
    """A real NIC segments what TCP hands it in hardware; tbf does it in software, on the sending
    thread, when a frame is bigger than its bucket (64 KiB frames through a 64kb bucket went as
    1,500-byte packets, 1.3 of the lab VM's two cores busy at the link's rate).  The bucket
    holds a whole frame, so big writes cross in big packets."""
    topo = two_hosts
    sink = topo.appliance.popen([sys.executable, "-c", SINK, topo.appliance.address],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = sink.stdout.readline().split()
        assert line and line[0] == "LISTENING", line
        size = 32 << 20
        bytes0, packets0 = _received(topo.appliance)
        topo.client.run(
            [sys.executable, "-c",
             "import socket, sys; c = socket.create_connection((sys.argv[1], int(sys.argv[2])));"
             f" c.sendall(bytes({size})); c.close()", topo.appliance.address, line[1]],
            check=True, timeout=20,
        )  # fmt: skip
        assert sink.stdout.readline().strip() == str(size)
        assert sink.wait(timeout=10) == 0
    finally:
        sink.kill()
    got, packets = (a - b for a, b in zip(_received(topo.appliance), (bytes0, packets0), strict=True))
    assert got >= size
    assert got / packets > 8 * 1500, f"{got} bytes in {packets} packets: segmented by the shaper"


def test_unshaped_topology_has_no_tbf():
    with netns.topology(rate=None) as topo:
        out = topo.client.run(
            ["tc", "qdisc", "show", "dev", topo.client.interface],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        assert "tbf" not in out


def test_close_removes_namespaces_and_is_idempotent():
    topo = netns.create_topology()
    names = {topo.client.name, topo.appliance.name}
    # A process still running inside is stopped by close(), so the namespace really goes.
    server, _ = start_echo(topo.appliance, topo.appliance.address)
    assert names <= set(_netns_list())
    topo.close()
    assert server.poll() is not None
    assert not names & set(_netns_list())
    topo.close()  # idempotent


def test_concurrent_topologies_get_distinct_subnets_and_names():
    with netns.topology(rate=None) as a, netns.topology(rate=None) as b:
        assert a.client.name != b.client.name
        assert a.subnet_index != b.subnet_index
        assert a.client.address.rsplit(".", 1)[0] != b.client.address.rsplit(".", 1)[0]
        for host in (a.client, a.appliance, b.client, b.appliance):
            assert len(host.interface) <= 15


def test_explicit_subnet_index():
    with netns.topology(rate=None, subnet_index=250) as topo:
        assert topo.client.address == "10.231.250.1"
        assert topo.appliance.address == "10.231.250.2"


def test_failure_cleans_up_and_names_the_command():
    with pytest.raises(RuntimeError, match="tc .*qdisc add") as info:
        netns.create_topology(prefix="rdmfail", rate="not-a-rate")
    assert "not-a-rate" in str(info.value)
    assert not [n for n in _netns_list() if n.startswith(f"rdmfail-{os.getpid()}-")]


def test_cleanup_stale_deletes_dead_owners_only():
    # A pid that is certainly dead: a child we started and reaped.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=10)
    prefix = f"rdmstale{os.getpid()}"  # private to this test run
    dead = f"{prefix}-{child.pid}-9-cli"
    alive = f"{prefix}-1-9-cli"  # pid 1 is always alive
    for name in (dead, alive):
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        removed = netns.cleanup_stale(prefix=prefix)
        assert removed == [dead]
        names = set(_netns_list())
        assert dead not in names and alive in names
    finally:
        for name in (dead, alive):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)


def _netns_list() -> list[str]:
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]
